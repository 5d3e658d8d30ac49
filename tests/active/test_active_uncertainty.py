"""Per-image uncertainty terms: values, count invariance, and errors for models without mask logits."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.active.uncertainty import (
    EMPTY_IMAGE_UNCERTAINTY,
    MissingCapabilityError,
    binary_entropy,
    detection_components,
    mask_entropy,
    tta_disagreement,
    weighted_quantile,
)
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks


def _instances(scores: list[float], logit: float = 0.0, size: tuple[int, int] = (20, 20)) -> Instances:
    count = len(scores)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0]] * count).reshape(count, 4)
    bitmaps = torch.zeros((count, *size), dtype=torch.bool)
    bitmaps[:, 1:5, 1:5] = True
    return Instances(
        size,
        boxes,
        torch.ones(count, dtype=torch.int64),
        torch.tensor(scores),
        Masks.from_bitmaps(bitmaps),
        mask_logits=torch.full((count, 28, 28), logit),
    )


def test_binary_entropy_is_one_bit_at_one_half_and_zero_at_the_ends() -> None:
    values = binary_entropy(torch.tensor([0.5, 0.0, 1.0, 0.1]))
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(0.0, abs=1e-4)
    assert values[2] == pytest.approx(0.0, abs=1e-4)
    assert values[3] == pytest.approx(-(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)))


def test_detection_components_do_not_grow_with_the_number_of_objects() -> None:
    few = detection_components(_instances([0.9, 0.5, 0.2]))
    many = detection_components(_instances([0.9, 0.5, 0.2] * 40))
    for key in ("mean_entropy", "max_entropy", "mean_one_minus_score"):
        assert many[key] == pytest.approx(few[key])
    assert (few["detections"], many["detections"]) == (3.0, 120.0)


def test_mean_entropy_weights_detections_by_score() -> None:
    # One confident object and a tail of background candidates at 0.06: the tail weighs 0.06 each.
    components = detection_components(_instances([0.97] + [0.06] * 10))
    entropy = binary_entropy(torch.tensor([0.97, 0.06])).tolist()
    expected = (0.97 * entropy[0] + 10 * 0.06 * entropy[1]) / (0.97 + 0.6)
    assert components["mean_entropy"] == pytest.approx(expected)


def test_max_entropy_is_the_maximum_for_few_detections() -> None:
    components = detection_components(_instances([0.95, 0.5, 0.9]))
    assert components["max_entropy"] == pytest.approx(1.0)


def test_weighted_quantile_ignores_a_lone_light_outlier() -> None:
    values = torch.tensor([0.1] * 20 + [1.0])
    weights = torch.tensor([1.0] * 20 + [0.05])
    assert weighted_quantile(values, weights, 0.9) == pytest.approx(0.1)


def test_an_image_without_detections_gets_the_highest_uncertainty() -> None:
    components = detection_components(_instances([]))
    assert components["mean_entropy"] == EMPTY_IMAGE_UNCERTAINTY
    assert components["detections"] == 0.0


def test_mask_entropy_from_logits() -> None:
    assert mask_entropy(_instances([0.9, 0.8], logit=0.0)) == pytest.approx(1.0)
    assert mask_entropy(_instances([0.9, 0.8], logit=12.0)) == pytest.approx(0.0, abs=1e-3)


def test_mask_entropy_names_the_missing_field() -> None:
    instances = Instances((8, 8), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    with pytest.raises(MissingCapabilityError, match="mask_logits"):
        mask_entropy(instances)


def test_tta_disagreement_is_zero_for_equal_views_and_one_for_disjoint_ones() -> None:
    view = _instances([0.9])
    assert tta_disagreement([view, view]) == pytest.approx(0.0)
    moved = torch.zeros((1, 20, 20), dtype=torch.bool)
    moved[0, 10:15, 10:15] = True
    other = view.replace(masks=Masks.from_bitmaps(moved))
    assert tta_disagreement([view, other]) == pytest.approx(1.0)


def test_tta_disagreement_counts_objects_only_one_view_finds() -> None:
    empty = _instances([])
    assert tta_disagreement([_instances([0.9]), empty]) == pytest.approx(1.0)
