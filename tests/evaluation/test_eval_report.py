"""The report: JSON and PR-curve PNGs written atomically, every section present, the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.evaluation import evaluate, evaluate_files, format_report
from instaseg.structures.masks import encode_rle, rle_area, rle_to_boxes


def _dataset(seed: int = 0) -> tuple[dict, list[dict]]:
    """Three 64x64 images with 12 squares each; detections find 10 of them (2 shifted) plus 2 false ones."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 64, "width": 64})
        for k in range(12):
            mask = np.zeros((64, 64), dtype=bool)
            top, left = 16 * (k // 4) + 2, 16 * (k % 4) + 2
            mask[top : top + 10, left : left + 10] = True
            (rle,) = encode_rle(mask[None])
            x1, y1, x2, y2 = rle_to_boxes([rle])[0].tolist()
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle}
                | {"area": int(rle_area([rle])[0]), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
            )
            if k < 10:
                shifted = np.roll(mask, 2 if k < 2 else 0, axis=1)
                (rle,) = encode_rle(shifted[None])
                score = float(rng.uniform(0.3, 1.0))
                results.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": score})
        for _ in range(2):
            mask = np.zeros((64, 64), dtype=bool)
            mask[50:56, 50:60] = True
            (rle,) = encode_rle(mask[None])
            results.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": 0.2})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    return gt, results


def test_segm_report_has_every_section() -> None:
    gt, results = _dataset()
    report, metrics = evaluate(gt, results, iou_type="segm", max_dets=100)
    assert set(report["coco"]) == {"segm", "boundary"} == set(metrics)
    assert report["num_images"] == 3 and report["num_gt_instances"] == 36 and report["num_detections"] == 36
    segm = report["coco"]["segm"]
    # 30 of 36 objects found, 2 of them shifted by 2 px (IoU 0.67): recall at IoU 0.5 is 30/36.
    assert segm["stats"]["AR_max"] < 30 / 36
    assert 0.5 < segm["stats"]["AP50"] <= 30 / 36 + 1e-9
    assert report["matched_masks"]["num_matched"] == 30
    assert report["matched_masks"]["mean_iou"] == pytest.approx((24 + 6 * 80 / 120) / 30)
    pixel = report["pixel_metrics"]
    assert [entry["image_id"] for entry in pixel["dsb_per_image"]] == [1, 2, 3]
    assert pixel["dsb_score"] == pytest.approx(np.mean([entry["score"] for entry in pixel["dsb_per_image"]]))
    curve = segm["pr_curve"]
    assert len(curve["recall"]) == 101 and len(curve["precision"]["0.50"]) == 101
    # Interpolated precision is non-increasing in recall, and zero beyond the highest recall reached.
    p50 = np.array(curve["precision"]["0.50"])
    assert np.all(np.diff(p50) <= 1e-12) and p50[-1] == 0.0
    json.dumps(report)  # JSON-ready as it is


def test_bbox_report_has_box_ap_only() -> None:
    gt, results = _dataset()
    for record in results:
        x1, y1, x2, y2 = rle_to_boxes([record["segmentation"]])[0].tolist()
        record["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    report, _ = evaluate(gt, results, iou_type="bbox", max_dets=100)
    assert set(report["coco"]) == {"bbox"}
    assert "matched_masks" not in report and "pixel_metrics" not in report
    assert report["coco"]["bbox"]["stats"]["AP50"] > 0.5


def test_files_are_written_atomically(tmp_path: Path) -> None:
    gt, results = _dataset()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "out" / "report.json"
    out.parent.mkdir()
    report = evaluate_files(tmp_path / "gt.json", tmp_path / "res.json", max_dets=300, out=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["max_dets"] == 300
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "report.json",
        "report_pr_boundary.png",
        "report_pr_segm.png",
    ]  # and no temporary files left behind
    with Image.open(out.parent / "report_pr_segm.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    text = format_report(report)
    assert "AR300" in text and "nucleus" in text and "DSB score" in text and str(out) in text


def test_missing_output_folder_is_reported(tmp_path: Path) -> None:
    gt, results = _dataset()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        evaluate_files(tmp_path / "gt.json", tmp_path / "res.json", out=tmp_path / "nope" / "r.json")
