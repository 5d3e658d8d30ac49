"""The bundled default model: found in the installed package, used by `Predictor()` and `instaseg predict`
without `--model`, and good at its job on bundled images it never saw in training."""

from __future__ import annotations

import json
from pathlib import Path

from instaseg.cli.main import main
from instaseg.data.mask_folders import read_mask_folders
from instaseg.inference.predictor import Predictor
from instaseg.models.build import read_weights
from instaseg.models.condinst.model import CondInst
from instaseg.models.default_model import bundled_model_source, default_model_path, held_out_samples_path
from instaseg.models.loading import load_model
from instaseg.models.mask_rcnn import MaskRCNN


def _samples():
    return read_mask_folders(held_out_samples_path(), category_name="nucleus", strict=True)


def test_bundled_checkpoint_is_small_and_carries_its_architecture_and_classes() -> None:
    path = default_model_path()
    assert path.stat().st_size < 30e6, path.stat().st_size
    checkpoint = read_weights(path)
    assert checkpoint["config"]["backbone"] == "efficientnet_lite0"
    assert checkpoint["config"]["box_detections_per_img"] >= 500
    assert [c["name"] for c in checkpoint["categories"]] == ["nucleus"]


def test_predictor_without_a_model_finds_the_nuclei_of_a_held_out_image() -> None:
    predictor = Predictor()
    assert predictor.class_names == {1: "nucleus"}
    dataset = _samples()
    image = dataset.images[0]
    instances = predictor.predict(dataset.image_path(image))
    assert instances.image_size == (image.height, image.width)
    assert set(instances.labels.tolist()) == {1}
    # Counting is what users do with it: confident detections within 30% of the annotated count.
    expected = len(image.annotations)
    confident = int((instances.scores > 0.5).sum())
    assert 0.7 * expected <= confident <= 1.3 * expected, (confident, expected)
    assert len(instances.masks) == len(instances)


def test_predict_cli_uses_the_bundled_model_when_none_is_named(tmp_path: Path) -> None:
    dataset = _samples()
    image_path = dataset.image_path(dataset.images[0])
    assert main(["predict", str(image_path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) > 10 and {r["category_id"] for r in results} == {1}


def test_bundled_models_load_by_name() -> None:
    fast = load_model("nuclei_condinst")
    assert isinstance(fast, CondInst) and fast.categories == [{"id": 1, "name": "nucleus"}]
    assert fast.operating_point is not None and 0 < fast.operating_point.score_threshold < 1
    assert bundled_model_source("nuclei_condinst").stat().st_size < 15e6  # the limit
    assert isinstance(load_model("nuclei_maskrcnn"), MaskRCNN)
    assert bundled_model_source(None) == bundled_model_source("nuclei_maskrcnn") == default_model_path()


def test_the_fast_bundled_model_counts_the_nuclei_of_a_held_out_image() -> None:
    predictor = Predictor("nuclei_condinst")
    dataset = _samples()
    image = dataset.images[0]
    instances = predictor.predict(dataset.image_path(image))  # at the model's own operating point
    expected = len(image.annotations)
    assert 0.7 * expected <= len(instances) <= 1.3 * expected, (len(instances), expected)
