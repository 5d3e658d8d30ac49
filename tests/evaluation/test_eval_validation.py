"""Bad evaluation input raises an `EvaluationInputError` naming the file and the record, never a silent 0."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from instaseg.evaluation import EvaluationInputError, evaluate_coco, evaluate_files, normalize_results
from instaseg.structures.masks import encode_rle


def _square(top: int, left: int, size: int, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _ground_truth() -> dict:
    annotations = []
    for k, (top, left) in enumerate([(2, 2), (2, 20), (18, 8)], start=1):
        rle = encode_rle(_square(top, left, 8)[None])[0]
        bbox = [float(left), float(top), 8.0, 8.0]
        annotation = {"id": k, "image_id": 7, "category_id": 1, "segmentation": rle, "area": 64, "bbox": bbox}
        annotations.append({**annotation, "iscrowd": 0})
    return {
        "images": [{"id": 7, "file_name": "a.png", "height": 32, "width": 40}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus"}],
    }


def _results(gt: dict) -> list[dict]:
    return [
        {"image_id": 7, "category_id": 1, "segmentation": a["segmentation"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]


def _expect_error(gt: dict, results: object, match: str, iou_type: str = "segm") -> None:
    with pytest.raises(EvaluationInputError, match=match):
        evaluate_coco(gt, results, iou_type, gt_source="gt.json", results_source="res.json")


def test_valid_input_scores_perfectly() -> None:
    gt = _ground_truth()
    assert evaluate_coco(gt, _results(gt), "segm").stats["AP"] == pytest.approx(1.0)
    assert evaluate_coco(gt, _results(gt), "bbox").stats["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image_id": 99}, r"res\.json: record 1 \(image_id 99\): image_id 99 is not in the ground truth"),
        ({"category_id": 5}, r"res\.json: record 1 \(image_id 7\): category_id 5 is not in the ground truth"),
        ({"score": float("nan")}, r"record 1 .*'score' must be a finite number; got nan"),
        ({"score": float("inf")}, r"record 1 .*'score' must be a finite number; got inf"),
        ({"score": "0.9"}, r"record 1 .*'score' must be a finite number; got '0.9'"),
        ({"score": True}, r"record 1 .*'score' must be a finite number; got True"),
        ({"segmentation": {"size": [16, 40], "counts": "abc"}}, r"record 1 .*RLE size 16x40 .* 32x40"),
        ({"segmentation": [[1, 1, 5, 1]]}, r"record 1 .*polygon 0 has 2 point"),
        ({"segmentation": {"size": [32, 40], "counts": [5, 3]}}, r"record 1 .*counts sum to 8"),
        ({"bbox": [1, 2, -3, 4]}, r"record 1 .*negative width or height"),
    ],
)
def test_bad_result_record_is_named(change: dict, match: str) -> None:
    gt = _ground_truth()
    results = _results(gt)
    results[1] = {**results[1], **change}
    _expect_error(gt, results, match)


@pytest.mark.parametrize("key", ["image_id", "category_id", "score", "segmentation"])
def test_missing_result_field_is_named(key: str) -> None:
    gt = _ground_truth()
    results = _results(gt)
    del results[2][key]
    _expect_error(gt, results, rf"res\.json: record 2.*missing '{key}'")


def test_missing_bbox_for_bbox_evaluation() -> None:
    gt = _ground_truth()
    results = [{k: v for k, v in r.items() if k != "bbox"} for r in _results(gt)]
    _expect_error(gt, results, r"record 0 .*missing 'bbox' \(needed for bbox evaluation\)", "bbox")
    # COCO's loader decides the format from record 0: a bbox on some records only is refused, not guessed.
    results[0]["bbox"] = [2.0, 2.0, 8.0, 8.0]
    _expect_error(gt, results, r"record 1 .*missing 'bbox' \(record 0 has one\)")


def test_empty_results_raise_unless_allowed() -> None:
    gt = _ground_truth()
    _expect_error(gt, [], r"res\.json: holds no detections")
    metrics = evaluate_coco(gt, [], "segm", allow_empty_results=True)
    assert metrics.stats["AP"] == 0.0 and metrics.stats["AR_max"] == 0.0


def test_swapped_files_are_recognised() -> None:
    gt = _ground_truth()
    _expect_error(gt, gt, r"res\.json: expected a list of COCO result records \(this looks like a COCO")
    _expect_error(_results(gt), _results(gt), r"gt\.json: expected a COCO dataset .*looks like a results")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda gt: gt.pop("categories"), r"gt\.json: missing the 'categories' list"),
        (lambda gt: gt["annotations"].clear(), r"gt\.json: holds no annotations"),
        (lambda gt: gt["images"].append(dict(gt["images"][0])), r"gt\.json: image 7: duplicate image id"),
        (lambda gt: gt["images"][0].update(height=0), r"gt\.json: image 7: needs positive integer 'height'"),
        (lambda gt: gt["annotations"][1].update(id=1), r"gt\.json: annotation 1: duplicate annotation id"),
        (lambda gt: gt["annotations"][0].update(id=0), r"annotation 0: annotation ids must be positive"),
        (lambda gt: gt["annotations"][0].update(id=-4), r"annotation -4: annotation ids must be positive"),
        (lambda gt: gt["images"][0].update(id=-7), r"gt\.json: image -7: image ids must be positive"),
        (
            lambda gt: gt["annotations"][2].update(segmentation={"size": [32, 40], "counts": "1"}),
            r"annotation 3: compressed RLE runs sum to 1 pixels, not height \* width = 1280",
        ),
        (lambda gt: gt["annotations"][2].update(image_id=8), r"annotation 3: image_id 8 is not in 'images'"),
        (lambda gt: gt["annotations"][2].update(category_id=3), r"annotation 3: category_id 3 is not in"),
        (
            lambda gt: gt["annotations"][2].pop("area"),
            r"annotation 3: 'area' must be a finite, non-negative number",
        ),
        (lambda gt: gt["annotations"][2].update(iscrowd=2), r"annotation 3: 'iscrowd' must be 0 or 1"),
        (lambda gt: gt["annotations"][2].pop("segmentation"), r"annotation 3: missing 'segmentation'"),
        (
            lambda gt: gt["annotations"][2].update(segmentation={"size": [40, 32], "counts": "x"}),
            r"annotation 3: RLE size 40x32 .* 32x40",
        ),
    ],
)
def test_bad_ground_truth_is_named(edit: object, match: str) -> None:
    gt = _ground_truth()
    results = _results(gt)
    edit(gt)
    _expect_error(gt, results, match)


def test_max_dets_below_ten_is_refused() -> None:
    gt = _ground_truth()
    with pytest.raises(EvaluationInputError, match="max_dets must be an integer of at least 10"):
        evaluate_coco(gt, _results(gt), "segm", max_dets=5)


def test_inputs_are_not_modified() -> None:
    gt = _ground_truth()
    results = _results(gt)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate_coco(gt, results, "segm")
    evaluate_coco(gt, results, "boundary")
    assert gt == gt_before and results == results_before


def test_polygon_and_uncompressed_results_equal_compressed_rle() -> None:
    gt = _ground_truth()
    compressed = normalize_results(_results(gt), gt, "segm", "results")
    mask = _square(2, 2, 8)
    counts, run, value = [], 0, False
    for pixel in mask.flatten(order="F"):  # COCO's uncompressed RLE: column-major run lengths, from 0s
        if pixel != value:
            counts.append(run)
            run, value = 0, pixel
        run += 1
    counts.append(run)
    mixed = _results(gt)
    mixed[0]["segmentation"] = {"size": [32, 40], "counts": counts}
    mixed[1]["segmentation"] = [[20, 2, 28, 2, 28, 10, 20, 10]]  # the square at (2, 20) as a polygon
    normalized = normalize_results(mixed, gt, "segm", "results")
    assert normalized[0]["segmentation"] == compressed[0]["segmentation"]
    assert isinstance(normalized[1]["segmentation"]["counts"], str)
    assert evaluate_coco(gt, mixed, "segm").stats["AP50"] == pytest.approx(1.0)


def test_files_name_themselves(tmp_path: Path) -> None:
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(_ground_truth()))
    results_path.write_text('[{"image_id": 7,')
    with pytest.raises(EvaluationInputError, match=r"res\.json: not a valid JSON results file"):
        evaluate_files(gt_path, results_path)
    with pytest.raises(FileNotFoundError, match=r"results file not found: .*missing\.json"):
        evaluate_files(gt_path, tmp_path / "missing.json")


def test_mappings_that_are_not_dicts_are_checked_record_by_record() -> None:
    """The column-wise checks take plain dicts; other mappings go through the record-by-record pass and give
    the same numbers."""
    gt = _ground_truth()
    mapped = {**gt, "annotations": [MappingProxyType(a) for a in gt["annotations"]]}
    assert evaluate_coco(mapped, _results(gt), "segm").stats["AP"] == pytest.approx(1.0)
    bad = copy.deepcopy(gt)
    bad["annotations"][1]["iscrowd"] = True  # a bool is not 0 or 1 here
    mapped = {**bad, "annotations": [MappingProxyType(a) for a in bad["annotations"]]}
    _expect_error(mapped, _results(gt), r"gt\.json: annotation 2: 'iscrowd' must be 0 or 1, got True")
