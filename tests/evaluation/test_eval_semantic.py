"""Semantic metrics on hand-computed cases: IoU, Dice, pixel accuracy, ignore pixels, absent classes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instaseg.evaluation.semantic import SemanticInputError, evaluate_semantic_folders, semantic_metrics


def test_hand_computed_two_class_case():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    metrics = semantic_metrics([("a", gt, pred)])
    # Class 0: gt 4 pixels, pred 4 (excluding the ignored one), TP 3 -> IoU 3/5, Dice 6/8.
    # Class 1: gt 3, pred 3, TP 2 -> IoU 2/4, Dice 4/6. Class 2 only sits on an ignored pixel: absent.
    assert metrics["per_class"][0]["iou"] == pytest.approx(3 / 5)
    assert metrics["per_class"][0]["dice"] == pytest.approx(6 / 8)
    assert metrics["per_class"][1]["iou"] == pytest.approx(2 / 4)
    assert set(metrics["per_class"]) == {0, 1}
    assert metrics["mean_iou"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 7)


def test_matrix_sums_over_images_and_a_predicted_only_class_scores_zero():
    first = (np.zeros((2, 2), dtype=np.uint8), np.zeros((2, 2), dtype=np.uint8))
    second = (np.zeros((1, 2), dtype=np.uint8), np.array([[0, 3]], dtype=np.uint8))
    metrics = semantic_metrics([("a", *first), ("b", *second)])
    assert metrics["num_images"] == 2
    assert metrics["per_class"][3]["iou"] == 0.0 and metrics["per_class"][3]["gt_pixels"] == 0
    assert metrics["per_class"][0]["iou"] == pytest.approx(5 / 6)


def test_bad_label_maps_are_named():
    with pytest.raises(SemanticInputError, match="b.png: prediction is 3x2"):
        semantic_metrics([("b.png", np.zeros((2, 2), int), np.zeros((2, 3), int))])
    with pytest.raises(SemanticInputError, match="c: prediction must hold integer"):
        semantic_metrics([("c", np.zeros((2, 2), int), np.zeros((2, 2), float))])
    with pytest.raises(SemanticInputError, match="uses the ignore index 255"):
        semantic_metrics([("d", np.zeros((1, 1), int), np.full((1, 1), 255))])


def test_folders_match_by_stem_and_missing_files_are_errors(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    Image.fromarray(np.array([[0, 1], [1, 1]], dtype=np.uint8)).save(gt_dir / "x.png")
    Image.fromarray(np.array([[0, 1], [0, 1]], dtype=np.uint8)).save(pred_dir / "x.png")
    metrics = evaluate_semantic_folders(gt_dir, pred_dir)
    assert metrics["per_class"][1]["iou"] == pytest.approx(2 / 3)
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(gt_dir / "y.png")
    with pytest.raises(SemanticInputError, match=r"predictions missing for \['y'\]"):
        evaluate_semantic_folders(gt_dir, pred_dir)
