"""The Data Science Bowl score on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from instaseg.evaluation import dsb_image_score, dsb_score
from instaseg.structures.masks import encode_rle, rle_area


def _box(rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, int] = (10, 20)) -> np.ndarray:
    """Mask of rows [r0, r1) x cols [c0, c1)."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


LEFT = _box((0, 10), (0, 10))  # 100 px
RIGHT = _box((0, 10), (10, 20))  # 100 px


def test_perfect_prediction_scores_one() -> None:
    assert dsb_image_score([LEFT, RIGHT], [RIGHT, LEFT], [0.3, 0.8]) == 1.0


def test_match_needs_iou_strictly_above_the_threshold() -> None:
    # IoU 80/100 = 0.8: a match at t = 0.5 ... 0.75 (6 thresholds), not at 0.8 (0.8 > 0.8 is false) and up,
    # where TP=0, FP=1, FN=1 gives 0. Score = 6/10.
    assert dsb_image_score([LEFT], [_box((0, 8), (0, 10))], [0.9]) == pytest.approx(0.6)


def test_contested_pixels_go_to_the_higher_score() -> None:
    wide_left = _box((0, 10), (0, 13))  # 130 px, reaches 3 columns into RIGHT
    wide_right = _box((0, 10), (8, 20))  # 120 px, reaches 2 columns into LEFT
    # wide_left first: it keeps all 130 px (IoU with LEFT 100/130 = 0.769); wide_right keeps columns
    # 13-19, 70 px (IoU with RIGHT 0.7). Thresholds 0.5-0.65: 2 TP -> 1; 0.7, 0.75: 1 TP, 1 FP, 1 FN -> 1/3.
    score = dsb_image_score([LEFT, RIGHT], [wide_left, wide_right], [0.9, 0.5])
    assert score == pytest.approx((4 + 2 / 3) / 10)
    # wide_right first: it keeps 120 px (IoU with RIGHT 100/120 = 0.833); wide_left keeps columns 0-7
    # (IoU 0.8).
    # Thresholds 0.5-0.75: 1; 0.8: only RIGHT matches -> 1/3; 0.85 and up: 0.
    score = dsb_image_score([LEFT, RIGHT], [wide_left, wide_right], [0.5, 0.9])
    assert score == pytest.approx((6 + 1 / 3) / 10)


def test_false_positives_and_negatives_count() -> None:
    stray = _box((0, 3), (17, 20), shape=(10, 20))
    # LEFT found, RIGHT missed, one stray prediction: TP 1, FP 1, FN 1 at every threshold.
    assert dsb_image_score([LEFT, RIGHT], [LEFT, stray], [0.9, 0.8]) == pytest.approx(1 / 3)
    assert dsb_image_score([LEFT], [], []) == 0.0
    assert dsb_image_score([], [LEFT], [0.5]) == 0.0
    assert dsb_image_score([], [], []) == 1.0


def test_prediction_covered_by_a_higher_score_claims_nothing() -> None:
    inner = _box((2, 6), (2, 6))
    assert dsb_image_score([LEFT], [LEFT, inner], [0.9, 0.4]) == 1.0
    # The other way round the inner one keeps its pixels, and LEFT's remainder (84 px, IoU 0.84) is still a
    # match up to t = 0.8; the inner prediction is a false positive everywhere.
    expected = (7 * (1 / 2) + 3 * 0) / 10
    assert dsb_image_score([LEFT], [LEFT, inner], [0.4, 0.9]) == pytest.approx(expected)


def test_overlapping_ground_truth_is_matched_one_to_one() -> None:
    almost_left = _box((0, 10), (1, 10))  # overlaps LEFT in 90 px
    # The prediction LEFT has IoU 1.0 with LEFT and 0.9 with almost_left; it matches one of them only:
    # TP 1, FP 0, FN 1 at every threshold.
    assert dsb_image_score([LEFT, almost_left], [LEFT], [0.9]) == pytest.approx(0.5)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="predicted mask 0 has shape"):
        dsb_image_score([LEFT], [np.zeros((5, 5), bool)], [0.5])
    with pytest.raises(ValueError, match="got 1 predicted masks but 2 scores"):
        dsb_image_score([LEFT], [LEFT], [0.5, 0.6])


def _coco(masks_per_image: dict[int, list[np.ndarray]]) -> dict:
    images, annotations = [], []
    for image_id, masks in masks_per_image.items():
        images.append({"id": image_id, "height": 10, "width": 20})
        for rle in encode_rle(np.stack(masks)):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle}
                | {"area": int(rle_area([rle])[0]), "iscrowd": 0}
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1}]}


def test_dataset_score_is_the_mean_over_ground_truth_images() -> None:
    gt = _coco({1: [LEFT, RIGHT], 2: [LEFT]})
    (left_rle,) = encode_rle(LEFT[None])
    (short_rle,) = encode_rle(_box((0, 8), (0, 10))[None])
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": left_rle, "score": 0.9},  # image 1: RIGHT missed
        {"image_id": 2, "category_id": 1, "segmentation": short_rle, "score": 0.8},  # image 2: 0.6
        {"image_id": 2, "category_id": 1, "segmentation": left_rle, "score": 0.1},  # covered by the 0.8 one
    ]
    score = dsb_score(gt, results)
    # image 2: the 0.1 prediction keeps LEFT's last 2 rows (20 px, IoU 0.2 with nothing matched): a FP.
    image2 = (6 * (1 / 2) + 4 * 0) / 10
    assert score.per_image == pytest.approx({1: 0.5, 2: image2})
    assert score.score == pytest.approx((0.5 + image2) / 2)
    # Leaving the low-score prediction out (min_score) removes its false positive.
    assert dsb_score(gt, results, min_score=0.5).per_image[2] == pytest.approx(0.6)
