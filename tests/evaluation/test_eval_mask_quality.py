"""Matched-mask IoU, Dice and boundary IoU, and foreground Dice on a hand-made image."""

from __future__ import annotations

import numpy as np
import pytest

from instaseg.evaluation import (
    boundary_iou,
    check_ground_truth,
    foreground_dice,
    mask_quality,
    match_detections,
    normalize_results,
)
from instaseg.structures.masks import encode_rle, rle_area


def _box(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((40, 40), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


GT_MASKS = {
    1: (_box((5, 15), (5, 15)), 0),  # A, 100 px
    2: (_box((20, 30), (20, 30)), 0),  # B, 100 px
    3: (_box((5, 10), (30, 35)), 0),  # C, 25 px, never found
    4: (_box((32, 40), (32, 40)), 1),  # a crowd region
}
PREDICTIONS = [
    (_box((5, 15), (5, 13)), 0.9),  # a: 80 px inside A -> IoU 0.8
    (_box((20, 30), (22, 32)), 0.8),  # b: B shifted 2 columns -> IoU 80/120
    (_box((30, 36), (0, 6)), 0.7),  # a false positive, 36 px
    (_box((32, 40), (32, 40)), 0.6),  # on the crowd region
]


def _inputs() -> tuple[dict, list[dict]]:
    annotations = []
    for annotation_id, (mask, iscrowd) in GT_MASKS.items():
        (rle,) = encode_rle(mask[None])
        area = int(rle_area([rle])[0])
        annotations.append(
            {"id": annotation_id, "image_id": 1, "category_id": 1, "segmentation": rle, "area": area}
            | {"iscrowd": iscrowd, "bbox": [0.0, 0.0, 1.0, 1.0]}
        )
    gt = {
        "images": [{"id": 1, "height": 40, "width": 40}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": encode_rle(mask[None])[0], "score": score}
        for mask, score in PREDICTIONS
    ]
    check_ground_truth(gt, "gt", "segm")
    return gt, normalize_results(results, gt, "segm", "results")


def test_coco_matches_at_iou_half() -> None:
    gt, results = _inputs()
    pairs = {(m.result_index, m.gt_id): m.iou for m in match_detections(gt, results, "segm", max_dets=100)}
    assert pairs[(0, 1)] == pytest.approx(0.8)
    assert pairs[(1, 2)] == pytest.approx(80 / 120)
    assert not any(index == 2 for index, _ in pairs)  # the false positive matches nothing


def test_boundary_iou_by_hand() -> None:
    # The image diagonal is 56.6 px, so the band is round(0.02 * 56.6) = 1 px wide: each mask's outer ring.
    # A's ring: 36 px; a's ring (10 x 8): 32 px; they share rows 5 and 14 over columns 5-12 and column 5
    # over rows 6-13: 16 + 8 = 24 px. Boundary IoU = 24 / (36 + 32 - 24).
    (a,) = encode_rle(PREDICTIONS[0][0][None])
    (big_a,) = encode_rle(GT_MASKS[1][0][None])
    assert boundary_iou(a, big_a) == pytest.approx(24 / 44)
    assert boundary_iou(big_a, big_a) == pytest.approx(1.0)


def test_matched_pair_metrics_by_hand() -> None:
    gt, results = _inputs()
    quality = mask_quality(gt, results, match_detections(gt, results, "segm", max_dets=100))
    assert quality.num_matched == 2  # the crowd pair is left out
    assert quality.mean_iou == pytest.approx((0.8 + 80 / 120) / 2)
    assert quality.mean_dice == pytest.approx((2 * 80 / 180 + 2 * 80 / 200) / 2)
    # b vs B: rings of 36 px each share rows 20 and 29 over columns 22-29 only: 16 / (72 - 16).
    assert quality.mean_boundary_iou == pytest.approx((24 / 44 + 16 / 56) / 2)


def test_foreground_dice_by_hand() -> None:
    gt, results = _inputs()
    # Predicted union (crowd-region prediction included): 80 + 100 + 36 + 64; objects (no crowd): 225 px;
    # overlap 80 + 80.
    assert foreground_dice(gt, results) == pytest.approx(2 * 160 / (280 + 225))
    # min_score 0.75 keeps a and b only.
    assert foreground_dice(gt, results, min_score=0.75) == pytest.approx(2 * 160 / (180 + 225))
    assert foreground_dice(gt, []) == 0.0


def test_nothing_matched_gives_none_not_zero() -> None:
    gt, results = _inputs()
    quality = mask_quality(gt, results[2:3], [])
    assert quality.num_matched == 0
    assert quality.mean_iou is None and quality.mean_dice is None and quality.mean_boundary_iou is None
