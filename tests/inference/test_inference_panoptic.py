"""The panoptic merge of instance predictions (and a semantic map) on hand-made cases; COCO PNG ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.inference.panoptic import PanopticOptions, instances_to_panoptic
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks
from instaseg.structures.panoptic import PanopticSegmentation


def instances(masks: list[np.ndarray], scores: list[float], labels: list[int]) -> Instances:
    bitmaps = torch.from_numpy(np.stack(masks))
    boxes = torch.zeros((len(masks), 4))
    return Instances(
        bitmaps.shape[1:],
        boxes,
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(scores),
        Masks.from_bitmaps(bitmaps),
    )


def box_mask(y0: int, x0: int, y1: int, x1: int, size=(10, 10)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_higher_scores_claim_first_and_mostly_covered_instances_are_dropped():
    low = box_mask(0, 2, 4, 6)  # 16 pixels, 8 of them under `high`
    high = box_mask(0, 0, 4, 4)
    covered = box_mask(1, 1, 3, 3)  # entirely under `high`
    result = instances_to_panoptic(instances([low, high, covered], [0.6, 0.9, 0.8], [1, 2, 1]))
    assert [(s.category_id, s.area) for s in result.segments] == [(2, 16), (1, 8)]  # 8/16 is not > 0.5
    assert [s.score for s in result.segments] == pytest.approx([0.9, 0.6])
    high_id, low_id = (s.id for s in result.segments)
    assert (result.segment_ids[high] == high_id).all()
    assert (result.segment_ids[low & ~high] == low_id).all()
    assert result.segments[1].bbox == (4.0, 0.0, 2.0, 4.0)  # only its unclaimed pixels
    assert (result.segment_ids[~(low | high)] == 0).all()


def test_score_overlap_and_area_thresholds():
    first, second = box_mask(0, 0, 4, 4), box_mask(0, 3, 4, 6)  # second: 12 pixels, 4 claimed
    masks = instances([first, second], [0.9, 0.4], [1, 1])
    assert len(instances_to_panoptic(masks).segments) == 1  # 0.4 is below the default 0.5
    kept = instances_to_panoptic(masks, PanopticOptions(score_threshold=0.3))
    assert [s.area for s in kept.segments] == [16, 8]
    strict = PanopticOptions(score_threshold=0.3, overlap_threshold=0.3)  # 4/12 > 0.3
    assert len(instances_to_panoptic(masks, strict).segments) == 1
    assert len(instances_to_panoptic(masks, PanopticOptions(score_threshold=0.3, min_area=9)).segments) == 1


def test_stuff_fills_unclaimed_pixels_when_large_enough():
    thing = box_mask(0, 0, 5, 5)  # 25 pixels
    right = box_mask(0, 5, 10, 10)  # stuff 7: 50 pixels, all free
    left = box_mask(0, 0, 10, 5)  # stuff 8: 50 pixels, 25 under the thing
    bottom = box_mask(9, 0, 10, 10)  # stuff 9: all of its pixels taken by 7 and 8 already
    small = box_mask(4, 4, 6, 6)  # stuff 6: 4 pixels, 3 of them free: below the default 4096
    predicted = instances([thing, right, left, bottom], [0.9, 0.8, 0.7, 0.6], [1, 7, 8, 9])
    predicted = predicted.replace(isthing=torch.tensor([True, False, False, False]))
    result = instances_to_panoptic(predicted, PanopticOptions(stuff_area_threshold=10))
    assert [(s.category_id, s.isthing, s.area) for s in result.segments] == [
        (1, True, 25),
        (7, False, 50),
        (8, False, 25),
    ]
    assert result.segments[1].bbox == (5.0, 0.0, 5.0, 10.0)
    assert (result.segment_ids > 0).all()
    # Stuff below the area threshold stays unlabelled.
    tiny = instances([thing, small], [0.9, 0.5], [1, 6]).replace(isthing=torch.tensor([True, False]))
    assert [s.category_id for s in instances_to_panoptic(tiny).segments] == [1]


def test_coco_png_encoding_round_trip_and_semantic_map():
    ids = np.array([[0, 1], [300, 70000]], dtype=np.int32)
    segmentation = PanopticSegmentation(ids, [])
    rgb = segmentation.to_rgb()
    assert rgb.dtype == np.uint8 and tuple(rgb[1, 0]) == (300 % 256, 1, 0)
    assert np.array_equal(PanopticSegmentation.ids_from_rgb(rgb), ids)
    result = instances_to_panoptic(instances([box_mask(0, 0, 2, 2, (3, 3))], [0.9], [5]))
    semantic = result.semantic_map({5: 1})
    assert semantic.tolist() == [[1, 1, 255], [1, 1, 255], [255, 255, 255]]
    assert result.segments_info()[0] == {
        "id": 1,
        "category_id": 5,
        "iscrowd": 0,
        "bbox": [0.0, 0.0, 2.0, 2.0],
        "area": 4,
        "isthing": True,
        "score": pytest.approx(0.9),
    }


def test_no_instances_gives_an_empty_segmentation():
    empty = Instances(
        (4, 5),
        torch.zeros((0, 4)),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0),
        Masks.from_bitmaps(torch.zeros((0, 4, 5), dtype=torch.bool)),
    )
    result = instances_to_panoptic(empty)
    assert result.segments == [] and result.segment_ids.shape == (4, 5) and not result.segment_ids.any()
