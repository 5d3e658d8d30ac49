"""predict_files: many inputs, bad ones among them, every finished image saved, per-image outputs."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from PIL import Image

import instaseg.io.atomic as atomic
from instaseg.inference.outputs import OutputWriteError
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.inference.runner import OutputOptions, predict_files
from instaseg.models.protocol import OperatingPoint
from instaseg.structures.panoptic import PanopticSegmentation

DISCS = [(20.0, 30.0, 8.0), (40.0, 70.0, 10.0)]


@pytest.fixture
def image_folder(tmp_path, make_disc_image):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(make_disc_image(60, 100, DISCS)).save(folder / "two.png")
    Image.fromarray(make_disc_image(60, 100, DISCS[:1])).save(folder / "sub" / "one.png")
    Image.fromarray(make_disc_image(50, 50, [])).save(folder / "sub" / "two.png")  # same stem, other folder
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is text")
    good = (folder / "two.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return folder


def read(path):
    return json.loads(path.read_text())


def test_bad_files_never_stop_the_rest(tmp_path, image_folder, make_segmenter):
    out = tmp_path / "out"
    summary = predict_files(
        [image_folder, tmp_path / "missing.png"], out, Predictor(make_segmenter(), tiling=None)
    )
    assert summary.images == 3 and summary.instances == 3
    reasons = {failure.source.split("/")[-1]: failure.reason for failure in summary.failures}
    assert set(reasons) == {"zero.png", "notes.png", "truncated.png", "missing.png"}
    assert "empty (0 bytes)" in reasons["zero.png"]
    assert "not an image format" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.png"]
    assert reasons["missing.png"] == "no such file or folder"
    text = summary.format()
    assert "3 images, 3 instances" in text and "4 failed:" in text and "zero.png" in text
    results, images = read(out / "results.json"), read(out / "images.json")
    assert len(results) == 3 and len(images["images"]) == 3 and len(images["failures"]) == 4
    # Ids follow the input order (1-based, failed files included); every record names its file.
    by_name = {image["file_name"].split("images/")[-1]: image["id"] for image in images["images"]}
    assert {r["file_name"].split("images/")[-1] for r in results} == {"two.png", "sub/one.png"}
    assert by_name == {"sub/one.png": 2, "sub/two.png": 3, "two.png": 5}  # notes 1, truncated 4, zero 6


def test_image_ids_from_a_mapping(tmp_path, image_folder, make_segmenter):
    summary = predict_files(
        [image_folder / "two.png", image_folder / "sub" / "one.png"],
        tmp_path / "out",
        Predictor(make_segmenter(), tiling=None),
        image_ids={"two.png": 41},
    )
    assert summary.images == 1
    assert summary.failures[0].reason.startswith("file name not found in the image-id mapping")
    assert {r["image_id"] for r in read(tmp_path / "out" / "results.json")} == {41}


def test_two_files_matching_one_image_id_are_not_merged(tmp_path, image_folder, make_segmenter):
    summary = predict_files(
        [image_folder / "two.png", image_folder / "sub" / "two.png"],  # both match "two.png" by name
        tmp_path / "out",
        Predictor(make_segmenter(), tiling=None),
        image_ids={"two.png": 41},
    )
    assert summary.images == 1
    (failure,) = summary.failures
    assert failure.source.endswith("sub/two.png")
    assert failure.reason == f"image id 41 (--coco-gt) already belongs to {image_folder / 'two.png'}"
    assert [image["id"] for image in read(tmp_path / "out" / "images.json")["images"]] == [41]


def test_per_image_outputs(tmp_path, image_folder, make_segmenter):
    out = tmp_path / "out"
    inputs = [image_folder / "two.png", image_folder / "sub" / "two.png", image_folder / "sub" / "one.png"]
    summary = predict_files(
        inputs,
        out,
        Predictor(make_segmenter(), tiling=None),
        OutputOptions(overlay=True, label_maps=True, polygons=True),
    )
    assert summary.failures == []
    images = read(out / "images.json")["images"]
    assert [image["overlay"] for image in images] == [
        "overlays/two.png",
        "overlays/two_2.png",
        "overlays/one.png",
    ]
    labels = np.asarray(Image.open(out / images[0]["label_map"]))
    assert labels.shape == (60, 100) and sorted(np.unique(labels).tolist()) == [0, 1, 2]
    features = read(out / images[0]["polygons"])["features"]
    assert [feature["properties"]["index"] for feature in features] == [1, 2]
    overlay = np.asarray(Image.open(out / images[0]["overlay"]))
    assert overlay.shape == (60, 100, 3)


def test_an_interrupted_run_keeps_every_finished_image(tmp_path, image_folder, make_segmenter):
    model = make_segmenter()
    original = model.detect

    def detect(images, *options):
        if len(model.calls) == 2:
            raise KeyboardInterrupt
        return original(images, *options)

    model.detect = detect
    inputs = [image_folder / "two.png", image_folder / "sub" / "one.png", image_folder / "sub" / "two.png"]
    with pytest.raises(KeyboardInterrupt):
        predict_files(inputs, tmp_path / "out", Predictor(model, tiling=None))
    images = read(tmp_path / "out" / "images.json")["images"]
    assert [image["file_name"] for image in images] == [str(inputs[0]), str(inputs[1])]
    assert len(read(tmp_path / "out" / "results.json")) == 3


def test_a_model_error_on_one_image_of_a_batch(tmp_path, image_folder, make_segmenter):
    model = make_segmenter()
    original = model.detect

    def detect(images, *options):
        if any(image.shape[-1] == 50 for image in images):
            raise ValueError("image too odd for this model")
        return original(images, *options)

    model.detect = detect
    inputs = [image_folder / "two.png", image_folder / "sub" / "two.png", image_folder / "sub" / "one.png"]
    summary = predict_files(inputs, tmp_path / "out", Predictor(model, tiling=None, batch_size=3))
    assert summary.images == 2
    assert [(f.source, f.reason) for f in summary.failures] == [
        (str(inputs[1]), "image too odd for this model")
    ]


def test_unwritable_output_folder(tmp_path, image_folder, make_segmenter):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError, match="cannot create output folder"):
        predict_files([image_folder], tmp_path / "file" / "out", Predictor(make_segmenter()))


def test_disk_full_while_writing(tmp_path, image_folder, make_segmenter, monkeypatch):
    real_replace = atomic.os.replace

    def full_disk_for(*names: str):
        def replace(source, target):
            if any(name in str(target) for name in names):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(source, target)

        return replace

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("[]\n")
    inputs = [image_folder / "two.png", image_folder / "sub" / "one.png"]
    monkeypatch.setattr(atomic.os, "replace", full_disk_for("results.json"))
    with pytest.raises(OutputWriteError, match=r"results\.json: No space left on device"):
        predict_files(inputs, out, Predictor(make_segmenter(), tiling=None))
    assert read(out / "results.json") == []  # the previous file is intact, not truncated
    # Overlays that cannot be written are failures of their images; the results are still saved.
    monkeypatch.setattr(atomic.os, "replace", full_disk_for("overlays/two.png", "overlays/one.png"))
    summary = predict_files(
        inputs, out, Predictor(make_segmenter(), tiling=None), OutputOptions(overlay=True)
    )
    assert summary.images == 2 and len(summary.failures) == 2
    assert all("results kept, but an output file failed" in f.reason for f in summary.failures)
    assert all("No space left on device" in f.reason for f in summary.failures)
    assert len(read(out / "results.json")) == 3
    assert len(read(out / "images.json")["failures"]) == 2


def test_per_image_file_names_never_collide() -> None:
    from instaseg.inference.runner import _unused_stem

    used: set[str] = set()
    names = []
    for stem, image_id in [("a_3", 1), ("a", 2), ("a", 3), ("a", 4)]:  # image 3's fallback a_3 is taken
        names.append(_unused_stem(stem, image_id, used))
        used.add(names[-1])
    assert names == ["a_3", "a", "a_3_2", "a_4"]


def test_images_json_and_the_summary_say_which_thresholds_were_used(tmp_path, image_folder, make_segmenter):
    model = make_segmenter()
    model.operating_point = OperatingPoint(score_threshold=0.7, mask_threshold=0.6)
    summary = predict_files([image_folder / "two.png"], tmp_path / "a", Predictor(model, tiling=None))
    assert read(tmp_path / "a" / "images.json")["thresholds"] == {
        "score_threshold": 0.7,
        "mask_threshold": 0.6,
    }
    assert "thresholds: score_threshold 0.7, mask_threshold 0.6" in summary.format()
    # A threshold the user gives wins; the other one stays the model's.
    given = Predictor(model, tiling=None, postprocess=PostprocessOptions(score_threshold=0.05))
    predict_files([image_folder / "two.png"], tmp_path / "b", given)
    assert read(tmp_path / "b" / "images.json")["thresholds"] == {
        "score_threshold": 0.05,
        "mask_threshold": 0.6,
    }


def test_semantic_and_panoptic_outputs_agree_with_the_instances(tmp_path, image_folder, make_segmenter):
    out = tmp_path / "out"
    categories = [{"id": 7, "name": "disc"}, {"id": 9, "name": "other"}]
    predictor = Predictor(make_segmenter(), tiling=None, categories=categories)
    summary = predict_files(
        [image_folder / "two.png"], out, predictor, OutputOptions(semantic=True, panoptic=True)
    )
    assert summary.failures == []
    (image,) = read(out / "images.json")["images"]
    results = read(out / "results.json")
    semantic = np.asarray(Image.open(out / image["semantic"]))
    assert sorted(np.unique(semantic).tolist()) == [0, 7]
    panoptic = read(out / "panoptic.json")
    assert [c["isthing"] for c in panoptic["categories"]] == [1, 1]
    (annotation,) = panoptic["annotations"]
    rgb = np.asarray(Image.open(out / "panoptic" / annotation["file_name"]))
    ids = PanopticSegmentation.ids_from_rgb(rgb)
    assert sorted(np.unique(ids).tolist()) == [0] + [s["id"] for s in annotation["segments_info"]]
    assert len(annotation["segments_info"]) == len(results) == 2
    for segment in annotation["segments_info"]:
        assert int((ids == segment["id"]).sum()) == segment["area"] and segment["category_id"] == 7
    assert int((semantic == 7).sum()) == sum(s["area"] for s in annotation["segments_info"])
