"""`instaseg predict` through the CLI entry point, with a small random-weight Mask R-CNN checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.cli import main as cli_main
from instaseg.data.convert import convert
from instaseg.models import build, save_weights
from instaseg.models.default_model import held_out_samples_path
from instaseg.models.loading import load_model
from instaseg.models.protocol import OperatingPoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build(
        "maskrcnn_resnet18_fpn",
        num_classes=2,
        min_size=128,
        max_size=160,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=20,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    model.categories = [{"id": 1, "name": "nucleus"}]
    save_weights(model, path)
    return path


@pytest.fixture
def nuclei(tmp_path, dsb_root, dsb_image_ids) -> Path:
    """Two real nuclei images in the DSB layout, plus a zero-byte and a truncated PNG among them."""
    root = tmp_path / "nuclei"
    root.mkdir()
    for image_id in dsb_image_ids[:2]:
        (root / image_id).symlink_to(dsb_root / image_id, target_is_directory=True)
    broken = root / "zz_broken" / "images"
    broken.mkdir(parents=True)
    (broken / "empty.png").write_bytes(b"")
    first = dsb_root / dsb_image_ids[0] / "images" / f"{dsb_image_ids[0]}.png"
    (broken / "cut.png").write_bytes(first.read_bytes()[:500])
    return root


def test_predict_writes_every_output_and_reports_bad_files(tmp_path, checkpoint, nuclei, capsys):
    out = tmp_path / "out"
    pattern = str(nuclei / "*" / "images" / "*.png")
    argv = [
        "predict",
        pattern,
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--overlay",
        "--label-maps",
        "--polygons",
        "--score-threshold",
        "0.0",
    ]
    assert cli_main.main(argv) == 1  # two inputs failed
    printed = capsys.readouterr().out
    assert "2 images" in printed and "2 failed:" in printed
    assert "empty.png: cannot read image" in printed and "cut.png: cannot read image" in printed
    images = json.loads((out / "images.json").read_text())
    assert len(images["images"]) == 2 and images["categories"] == [{"id": 1, "name": "nucleus"}]
    results = json.loads((out / "results.json").read_text())
    assert results and {r["category_id"] for r in results} == {1}
    for image in images["images"]:
        overlay = np.asarray(Image.open(out / image["overlay"]))
        assert overlay.shape == (image["height"], image["width"], 3)
        labels = np.asarray(Image.open(out / image["label_map"]))
        assert labels.max() == sum(r["image_id"] == image["id"] for r in results)
        features = json.loads((out / image["polygons"]).read_text())["features"]
        assert {f["properties"]["category_name"] for f in features} <= {"nucleus"}


def test_results_evaluate_against_the_ground_truth(tmp_path, checkpoint, nuclei, capsys):
    for broken in (nuclei / "zz_broken" / "images").iterdir():
        broken.unlink()
    (nuclei / "zz_broken" / "images").rmdir()
    (nuclei / "zz_broken").rmdir()
    gt = tmp_path / "gt.json"
    convert("mask-folders", nuclei, gt, category_name="nucleus")
    out = tmp_path / "out"
    argv = ["predict", str(nuclei), "--model", str(checkpoint), "--out", str(out), "--coco-gt", str(gt)]
    # The folder also holds the mask PNGs; predicting on the images/ subfolders only is the usual call.
    argv[1] = str(nuclei / "*" / "images")
    assert cli_main.main(argv) == 0
    gt_ids = {image["id"] for image in json.loads(gt.read_text())["images"]}
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} <= gt_ids and results
    capsys.readouterr()
    assert cli_main.main(["eval", "--gt", str(gt), "--pred", str(out / "results.json")]) == 0
    assert "AP" in capsys.readouterr().out


def test_output_folder_that_cannot_be_written(tmp_path, checkpoint, nuclei, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["predict", str(nuclei), "--model", str(checkpoint), "--out", str(tmp_path / "file" / "out")]
    assert cli_main.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot create output folder" in error


def test_folder_without_images_and_unknown_model(tmp_path, checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        cli_main.main(
            ["predict", str(tmp_path / "empty"), "--model", str(checkpoint), "--out", str(tmp_path / "o")]
        )
        == 1
    )
    assert "folder holds no image files" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text()) == []
    assert (
        cli_main.main(
            ["predict", str(tmp_path / "empty"), "--model", "no_such_model", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "neither a file nor a model name" in capsys.readouterr().err


def test_video_gets_tracks_and_an_overlay_video(tmp_path, checkpoint, capsys):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    rows, cols = np.mgrid[0:64, 0:96]
    for frame in range(3):
        image = np.full((64, 96, 3), 30, np.uint8)
        image[(rows - 32) ** 2 + (cols - 20 - 10 * frame) ** 2 < 100] = 220
        writer.write(image)
    writer.release()
    out = tmp_path / "out"
    argv = [
        "predict",
        str(clip),
        "--video",
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--overlay",
        "--score-threshold",
        "0.0",
    ]
    assert cli_main.main(argv) == 0
    assert "3 frames" in capsys.readouterr().out
    document = json.loads((out / "tracks.json").read_text())
    assert len(document["frames"]) == 3
    assert all(isinstance(record["track_id"], int) for record in document["instances"])
    assert (out / "clip_overlay.mp4").stat().st_size > 0
    assert cli_main.main(["predict", str(clip), str(clip), "--video", "--model", str(checkpoint)]) == 2
    assert "exactly one video" in capsys.readouterr().err


def test_without_thresholds_the_model_files_operating_point_is_used(tmp_path, checkpoint, capsys):
    image = tmp_path / "cells.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    argv = ["predict", str(image), "--no-progress"]
    everything_argv = [
        *argv,
        "--model",
        str(checkpoint),
        "--score-threshold",
        "0",
        "--out",
        str(tmp_path / "all"),
    ]
    assert cli_main.main(everything_argv) == 0
    scores = sorted(r["score"] for r in json.loads((tmp_path / "all" / "results.json").read_text()))
    cut = round(scores[len(scores) // 2], 2)  # some detections below the model's recommended cut, some above
    assert scores[0] < cut <= scores[-1]
    model = load_model(checkpoint)
    model.operating_point = OperatingPoint(score_threshold=cut, mask_threshold=0.6)
    save_weights(model, tmp_path / "with_point.pt")
    capsys.readouterr()
    assert (
        cli_main.main([*argv, "--model", str(tmp_path / "with_point.pt"), "--out", str(tmp_path / "d")]) == 0
    )
    assert f"thresholds: score_threshold {cut:g}, mask_threshold 0.6" in capsys.readouterr().out
    images = json.loads((tmp_path / "d" / "images.json").read_text())
    assert images["thresholds"] == {"score_threshold": cut, "mask_threshold": 0.6}
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert sorted(r["score"] for r in results) == pytest.approx([score for score in scores if score >= cut])


@pytest.mark.slow
def test_without_thresholds_the_bundled_models_operating_point_is_used(tmp_path, capsys):
    sample = next(held_out_samples_path().glob("*/images/*.png"))
    out = tmp_path / "default"
    assert cli_main.main(["predict", str(sample), "--out", str(out), "--no-progress"]) == 0
    assert "thresholds: score_threshold 0.7, mask_threshold 0.6" in capsys.readouterr().out
    images = json.loads((out / "images.json").read_text())
    assert images["thresholds"] == {"score_threshold": 0.7, "mask_threshold": 0.6}
    at_operating_point = json.loads((out / "results.json").read_text())
    assert at_operating_point and min(r["score"] for r in at_operating_point) >= 0.7
    # For AP every detection counts: ask for 0.05; the mask cut stays the model's.
    out = tmp_path / "for_ap"
    argv = ["predict", str(sample), "--out", str(out), "--no-progress", "--score-threshold", "0.05"]
    assert cli_main.main(argv) == 0
    assert json.loads((out / "images.json").read_text())["thresholds"] == {
        "score_threshold": 0.05,
        "mask_threshold": 0.6,
    }
    assert len(json.loads((out / "results.json").read_text())) > len(at_operating_point)


def test_old_flag_spellings_still_work_with_a_warning(tmp_path, checkpoint, capsys, monkeypatch):
    from instaseg.inference import command

    called = {}

    def fake_run_predict(inputs, out_dir, model, **options):
        called.update(options)
        raise ValueError("stop here")

    monkeypatch.setattr(command, "run_predict", fake_run_predict)
    argv = ["predict", "x.png", "--nms", "hard", "--nms-iou", "0.4", "--video", "--track-iou", "0.2"]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "--nms-iou is deprecated" in err and "use --nms-iou-threshold" in err
    assert "--track-iou is deprecated" in err and "use --track-iou-threshold" in err
    assert called["postprocess"].nms_iou_threshold == 0.4 and called["tracker"].iou_threshold == 0.2
    # Unset options are left to the library: the defaults are PostprocessOptions' own.
    assert called["postprocess"].score_threshold is None and called["postprocess"].min_mask_area == 0
