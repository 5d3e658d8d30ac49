"""Matcher and balanced sampler on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from instaseg.models.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher


def test_matcher_thresholds_without_low_quality_matches() -> None:
    # rows: ground truth, columns: predictions
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.2], [0.2, 0.65, 0.05, 0.7]])
    matches = Matcher(0.7, 0.3)(iou)
    assert matches.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, 1]


def test_matcher_low_quality_matches_give_every_ground_truth_its_best_predictions_including_ties() -> None:
    iou = torch.tensor([[0.9, 0.1, 0.1, 0.2, 0.0], [0.0, 0.4, 0.05, 0.4, 0.2]])
    plain = Matcher(0.7, 0.3)(iou)
    assert plain.tolist() == [0, BETWEEN_THRESHOLDS, -1, BETWEEN_THRESHOLDS, -1]
    # ground truth 1 never reaches 0.7; its best IoU (0.4) is shared by predictions 1 and 3: both positive
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -1, 1, -1]


def test_matcher_equal_thresholds_leave_nothing_in_between() -> None:
    iou = torch.tensor([[0.5, 0.49999, 0.8]])
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, BELOW_LOW_THRESHOLD, 0]


def test_matcher_rejects_empty_matrices_and_inverted_thresholds() -> None:
    with pytest.raises(ValueError, match="empty IoU matrix"):
        Matcher(0.7, 0.3)(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="must not exceed"):
        Matcher(0.3, 0.7)


def labels_with(positives: int, negatives: int, ignored: int) -> torch.Tensor:
    labels = torch.cat([torch.ones(positives), torch.zeros(negatives), -torch.ones(ignored)])
    return labels[torch.randperm(len(labels))]


def test_sampler_takes_the_positive_fraction_and_fills_with_negatives() -> None:
    torch.manual_seed(0)
    labels = labels_with(positives=10, negatives=100, ignored=7)
    (positive,), (negative,) = BalancedSampler(20, 0.25)([labels])
    assert int(positive.sum()) == 5 and int(negative.sum()) == 15
    assert (labels[positive] >= 1).all() and (labels[negative] == 0).all()
    assert not (positive & negative).any()


def test_sampler_with_few_positives_or_negatives_takes_all_of_them() -> None:
    torch.manual_seed(0)
    few_positives = labels_with(positives=2, negatives=100, ignored=0)
    few_negatives = labels_with(positives=100, negatives=3, ignored=50)
    positive, negative = BalancedSampler(20, 0.5)([few_positives, few_negatives])
    assert [int(mask.sum()) for mask in positive] == [2, 10]
    assert [int(mask.sum()) for mask in negative] == [18, 3]


def test_sampler_treats_any_class_label_as_positive_and_never_samples_ignored() -> None:
    labels = torch.tensor([3, 0, -1, 7, -1, 0, 1])
    (positive,), (negative,) = BalancedSampler(100, 0.5)([labels])
    assert torch.where(positive)[0].tolist() == [0, 3, 6]
    assert torch.where(negative)[0].tolist() == [1, 5]
