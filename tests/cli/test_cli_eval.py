"""`instaseg eval` as a user runs it: exit codes, printed summary, written files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instaseg.cli.main import main
from instaseg.structures.masks import encode_rle, rle_area


def _write_inputs(folder: Path, num_objects: int = 150) -> tuple[Path, Path]:
    """One dense 200x200 image of `num_objects` 6x6 squares, each detected exactly (distinct scores)."""
    annotations, results = [], []
    for k in range(num_objects):
        mask = np.zeros((200, 200), dtype=bool)
        top, left = 13 * (k // 15) + 1, 13 * (k % 15) + 1
        mask[top : top + 6, left : left + 6] = True
        (rle,) = encode_rle(mask[None])
        annotations.append(
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0}
            | {"area": int(rle_area([rle])[0]), "bbox": [float(left), float(top), 6.0, 6.0]}
        )
        results.append({"image_id": 1, "category_id": 1, "segmentation": rle, "score": 1.0 - k / 1000})
    gt = {
        "images": [{"id": 1, "file_name": "dense.png", "height": 200, "width": 200}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus"}],
    }
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "res.json").write_text(json.dumps(results))
    return folder / "gt.json", folder / "res.json"


def test_eval_prints_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = _write_inputs(tmp_path)
    out = tmp_path / "report.json"
    code = main(["eval", "--gt", str(gt), "--pred", str(res), "--max-detections", "500", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AR500" in printed and "DSB score" in printed and "nucleus" in printed
    report = json.loads(out.read_text())
    assert report["coco"]["segm"]["stats"]["AP"] == pytest.approx(1.0)
    assert report["coco"]["segm"]["stats"]["AR_max"] == pytest.approx(1.0)
    assert report["pixel_metrics"]["dsb_score"] == pytest.approx(1.0)
    assert (tmp_path / "report_pr_segm.png").is_file() and (tmp_path / "report_pr_boundary.png").is_file()


def test_old_flag_spellings_still_work_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, res = _write_inputs(tmp_path)
    argv = ["eval", "--gt", str(gt), "--pred", str(res), "--out", str(tmp_path / "report.json")]
    assert main([*argv, "--max-dets", "500", "--min-score", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "--max-dets is deprecated" in captured.err and "use --max-detections" in captured.err
    assert "--min-score is deprecated" in captured.err and "use --score-threshold" in captured.err
    assert "AR500" in captured.out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    printed = capsys.readouterr().out
    assert "--max-detections" in printed and "--max-dets" not in printed and "--min-score" not in printed


def test_default_cap_of_100_misses_objects_in_a_dense_scene(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, res = _write_inputs(tmp_path)
    out = tmp_path / "report.json"
    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--out", str(out)]) == 0
    stats = json.loads(out.read_text())["coco"]["segm"]["stats"]
    assert stats["AR_max"] == pytest.approx(100 / 150)
    assert "AR100" in capsys.readouterr().out


def test_bbox_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = _write_inputs(tmp_path, num_objects=20)
    results = json.loads(res.read_text())
    annotations = json.loads(gt.read_text())["annotations"]
    for record, annotation in zip(results, annotations, strict=True):
        record["bbox"] = annotation["bbox"]
    res.write_text(json.dumps(results))
    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--iou-type", "bbox"]) == 0
    printed = capsys.readouterr().out
    assert "COCO bbox" in printed and "COCO boundary" not in printed


def test_bad_results_give_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = _write_inputs(tmp_path, num_objects=20)
    results = json.loads(res.read_text())
    results[4]["image_id"] = 42
    res.write_text(json.dumps(results))
    assert main(["eval", "--gt", str(gt), "--pred", str(res)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "instaseg eval: error:" in error and "record 4" in error and "image_id 42" in error


def test_missing_file_and_empty_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = _write_inputs(tmp_path, num_objects=20)
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    res.write_text("[]")
    assert main(["eval", "--gt", str(gt), "--pred", str(res)]) == 2
    assert "holds no detections" in capsys.readouterr().err


def test_metrics_choose_a_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = _write_inputs(tmp_path, num_objects=20)
    out = tmp_path / "report.json"
    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--metrics", "ap", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "COCO segm" in printed and "COCO boundary" not in printed and "DSB" not in printed
    report = json.loads(out.read_text())
    assert report["metrics"] == ["ap"] and set(report["coco"]) == {"segm"}
    assert "pixel_metrics" not in report and "matched_masks" not in report and "panoptic" not in report

    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--metrics", "dsb,pq", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "COCO" not in printed and "DSB score 1.000" in printed and "PQ 1.000" in printed
    report = json.loads(out.read_text())
    assert report["coco"] == {} and report["panoptic"]["groups"]["All"]["PQ"] == pytest.approx(1.0)


def test_unknown_or_inapplicable_metrics_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, res = _write_inputs(tmp_path, num_objects=20)
    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--metrics", "ap,speed"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "metrics must be a non-empty subset of ap, boundary_ap" in error
    assert main(["eval", "--gt", str(gt), "--pred", str(res), "--iou-type", "bbox", "--metrics", "dsb"]) == 2
    assert "dsb need iou_type 'segm'" in capsys.readouterr().err


def test_panoptic_and_semantic_evaluation_of_predict_outputs(tmp_path, capsys):
    """`predict --panoptic/--semantic` output scored against itself: PQ 1 and mean IoU 1; a changed copy
    scores lower."""
    from PIL import Image

    from instaseg.inference.panoptic import PanopticResults
    from instaseg.structures.panoptic import PanopticSegmentation, Segment

    ids = np.zeros((8, 8), dtype=np.int32)
    ids[:4, :4], ids[4:, 4:] = 1, 2
    segmentation = PanopticSegmentation(
        ids, [Segment(1, 5, True, 16, (0, 0, 4, 4)), Segment(2, 6, False, 16, (4, 4, 4, 4))]
    )
    for name in ("gt", "pred"):
        (tmp_path / name).mkdir()
        Image.fromarray(segmentation.to_rgb()).save(tmp_path / name / "a.png")
        results = PanopticResults(tmp_path, [{"id": 5, "name": "cell"}, {"id": 6, "name": "glass"}])
        results.add(1, "a.png", "a.png", segmentation)
        results.save()
        (tmp_path / "panoptic.json").rename(tmp_path / f"{name}.json")
    assert (
        main(
            [
                "eval",
                "--gt",
                str(tmp_path / "gt.json"),
                "--pred",
                str(tmp_path / "pred.json"),
                "--iou-type",
                "panoptic",
                "--out",
                str(tmp_path / "pq.json"),
            ]
        )
        == 0
    )
    assert "All: PQ 1.0000" in capsys.readouterr().out
    assert json.loads((tmp_path / "pq.json").read_text())["panoptic"]["groups"]["Stuff"]["PQ"] == 1.0
    semantic_gt, semantic_pred = tmp_path / "sem_gt", tmp_path / "sem_pred"
    semantic_gt.mkdir(), semantic_pred.mkdir()
    Image.fromarray(segmentation.semantic_map({5: 1, 6: 2}, unlabelled=0)).save(semantic_gt / "a.png")
    changed = segmentation.semantic_map({5: 1, 6: 1}, unlabelled=0)
    Image.fromarray(changed).save(semantic_pred / "a.png")
    assert (
        main(["eval", "--gt", str(semantic_gt), "--pred", str(semantic_pred), "--iou-type", "semantic"]) == 0
    )
    printed = capsys.readouterr().out
    assert "class 1: IoU 0.5000" in printed and "class 2: IoU 0.0000" in printed
