"""The quality gate (`instaseg.serving.golden`): golden sets, evaluation of a version on one, the decision,
and `check_promotion`, which never changes the deployment.

The golden set's ground truth is what version 1 (a tiny random-weight Mask R-CNN) predicts on a few images,
so version 1 scores 1.0 on it and version 2 (other random weights) far less: a regression to refuse.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils
from test_serving_http import png, tiny_checkpoint

from instaseg.cli.main import main
from instaseg.inference import Predictor
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.serving.config import ServingConfig
from instaseg.serving.golden import (
    GateError,
    GateRefused,
    GoldenScore,
    GoldenSet,
    check_promotion,
    decide,
    define_golden_set,
    evaluate_on_golden_set,
)
from instaseg.serving.model_listing import list_models
from instaseg.serving.registration import register_model
from instaseg.serving.registry import Deployment, ModelRegistry, RegistryError, open_registry
from instaseg.serving.schemas import ModelOut


def golden_from_predictions(checkpoint: Path, folder: Path, count: int = 2) -> Path:
    """Images under `folder/images` and, as their ground truth, `checkpoint`'s own predictions on them (score
    >= 0.05, empty masks left out); returns the COCO file."""
    (folder / "images").mkdir(parents=True)
    predictor = Predictor(checkpoint, postprocess=PostprocessOptions(score_threshold=0.05))
    images, annotations = [], []
    for i in range(count):
        path = folder / "images" / f"{i}.png"
        path.write_bytes(png(48 + 8 * i, 64, seed=30 + i))
        instances = predictor.predict(path)
        height, width = instances.image_size
        images.append({"id": i + 1, "file_name": f"images/{i}.png", "height": height, "width": width})
        for record in instances.to_coco_results(i + 1):
            area = float(mask_utils.area(record["segmentation"]))
            if area > 0:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": 1,
                        "bbox": record["bbox"],
                        "area": area,
                        "iscrowd": 0,
                        "segmentation": record["segmentation"],
                    }
                )
    assert annotations, "the tiny model predicted no mask: the golden set would be empty"
    gt = folder / "gt.json"
    categories = [{"id": 1, "name": "nucleus"}]
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return gt


@dataclass
class Setup:
    registry: ModelRegistry
    gt: Path
    images: Path


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A registry (nuclei v1 production, v2 registered) and the golden set's COCO file, made once."""
    folder = tmp_path_factory.mktemp("golden")
    first = tiny_checkpoint(folder / "v1.pt", seed=0)
    register_model(folder / "registry", "nuclei", first, class_names=["nucleus"])
    second = tiny_checkpoint(folder / "v2.pt", seed=1)
    register_model(folder / "registry", "nuclei", second, class_names=["nucleus"])
    return folder / "registry", golden_from_predictions(first, folder / "set")


@pytest.fixture()
def setup(tmp_path: Path, golden_files: tuple[Path, Path]) -> Setup:
    """A copy of the module's registry for each test (tests change it); the golden files are shared."""
    registry, gt = golden_files
    shutil.copytree(registry, tmp_path / "registry")
    return Setup(ModelRegistry(tmp_path / "registry"), gt, gt.parent)


def score(registry: ModelRegistry, version: int, golden: GoldenSet) -> GoldenScore:
    entry = registry.get("nuclei", version)
    return evaluate_on_golden_set(entry, registry.fetch_checkpoint(entry), golden)


@pytest.mark.parametrize("metric", ["mask_ap", "dsb", "pq"])
def test_a_version_scores_one_on_its_own_predictions_and_another_less(setup: Setup, metric: str) -> None:
    golden = define_golden_set(setup.registry, "nuclei", setup.gt, setup.images, metric, 0.01)
    own, other = score(setup.registry, 1, golden), score(setup.registry, 2, golden)
    assert own.metric == metric and own.num_images == 2 and own.num_detections > 0
    assert own.value == pytest.approx(1.0, abs=1e-6) and own.mask_ap == pytest.approx(1.0, abs=1e-6)
    assert other.value < 0.5


def test_a_regression_is_refused_with_both_numbers_and_production_stays(setup: Setup) -> None:
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images, "mask_ap", 0.05)
    revision = setup.registry.revision()
    with pytest.raises(GateRefused) as refused:
        check_promotion(setup.registry, "nuclei", 2)
    decision = refused.value.decision
    assert not decision.passed and not decision.forced
    assert decision.production is not None and decision.production.version == 1
    message = str(refused.value)
    assert "nuclei v2 mask AP" in message and "production v1 1.0000" in message and "REFUSED" in message
    assert f"{decision.candidate.value:.4f}" in message
    assert setup.registry.deployment("nuclei").production == 1
    assert setup.registry.revision() == revision  # nothing the service follows changed
    stored = setup.registry.quality_gates("nuclei")
    assert set(stored) == {2} and stored[2]["passed"] is False and stored[2]["candidate"]["version"] == 2


def test_force_overrides_and_is_logged(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    with caplog.at_level(logging.WARNING, logger="instaseg.serving.golden"):
        decision = check_promotion(setup.registry, "nuclei", 2, force=True)
    assert decision is not None and decision.forced and not decision.passed
    assert any("overridden with --force" in r.getMessage() for r in caplog.records)
    assert setup.registry.quality_gates("nuclei")[2]["forced"] is True
    assert setup.registry.deployment("nuclei").production == 1  # the caller promotes, not the gate


def test_a_better_candidate_passes(setup: Setup) -> None:
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    setup.registry.promote("nuclei", 2)
    decision = check_promotion(setup.registry, "nuclei", 1)
    assert decision is not None and decision.passed and decision.candidate.value > decision.production.value
    assert "passed" in decision.message()


def test_no_golden_set_or_the_production_version_needs_no_gate(setup: Setup) -> None:
    assert check_promotion(setup.registry, "nuclei", 2) is None
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    assert check_promotion(setup.registry, "nuclei", 1) is None
    assert setup.registry.quality_gates("nuclei") == {}


def test_decide_margins() -> None:
    golden = GoldenSet("gt.json", "images", "0" * 64, "mask_ap", 0.02)

    def version(number: int, value: float) -> GoldenScore:
        return GoldenScore(number, "mask_ap", value, value, 3, 9)

    assert decide("m", golden, version(2, 0.48), version(1, 0.5), False).passed  # within the margin
    assert not decide("m", golden, version(2, 0.479), version(1, 0.5), False).passed
    assert decide("m", golden, version(2, 0.1), None, False).passed  # nothing to compare with
    forced = decide("m", golden, version(2, 0.1), version(1, 0.5), True)
    assert forced.forced and not forced.passed and "--force" in forced.message()
    assert not decide("m", golden, version(2, 0.6), version(1, 0.5), True).forced  # no override needed


def test_missing_golden_images_are_named(setup: Setup, tmp_path: Path) -> None:
    gt = json.loads(setup.gt.read_text())
    gt["images"][1]["file_name"] = "images/gone.png"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(GateError, match=r"1 of 2 images missing: id 2 .*images/gone\.png"):
        define_golden_set(setup.registry, "nuclei", path, setup.images)
    assert setup.registry.golden_set("nuclei") is None


def test_images_removed_after_the_set_was_defined_stop_the_gate(setup: Setup, tmp_path: Path) -> None:
    images = tmp_path / "copy"
    (images / "images").mkdir(parents=True)
    for file in (setup.images / "images").iterdir():
        (images / "images" / file.name).write_bytes(file.read_bytes())
    define_golden_set(setup.registry, "nuclei", setup.gt, images)
    (images / "images" / "0.png").unlink()
    with pytest.raises(GateError, match=r"id 1 .*0\.png"):
        check_promotion(setup.registry, "nuclei", 2)
    assert setup.registry.deployment("nuclei").production == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": "iou"}, "metric must be one of mask_ap, dsb, pq"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"annotations": "nowhere.json"}, "annotations not found"),
        ({"images": "no_folder"}, "images folder not found"),
    ],
)
def test_bad_golden_set_arguments(setup: Setup, change: dict, message: str) -> None:
    arguments = {"annotations": setup.gt, "images": setup.images, "metric": "mask_ap", "margin": 0.01}
    with pytest.raises(GateError, match=message):
        define_golden_set(setup.registry, "nuclei", **{**arguments, **change})


def test_unknown_model_and_invalid_coco_are_refused(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no model named 'cells'"):
        define_golden_set(setup.registry, "cells", setup.gt, setup.images)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(GateError, match=r"golden set annotations .*bad\.json"):
        define_golden_set(setup.registry, "nuclei", bad, setup.images)


def test_an_edited_golden_set_is_refused_until_set_again(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(setup.gt.read_text())
    define_golden_set(setup.registry, "nuclei", path, setup.images)
    gt = json.loads(path.read_text())
    gt["annotations"] = gt["annotations"][:1]
    path.write_text(json.dumps(gt))
    with pytest.raises(GateError, match="changed since the golden set was defined"):
        check_promotion(setup.registry, "nuclei", 2)


def test_a_candidate_that_cannot_load_fails_the_gate_by_name(setup: Setup, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    entry = setup.registry.register("nuclei", broken, [{"id": 1, "name": "nucleus"}], {})
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    with pytest.raises(GateError, match=f"nuclei v{entry.version} cannot be loaded for the quality gate"):
        check_promotion(setup.registry, "nuclei", entry.version)
    assert setup.registry.deployment("nuclei").production == 1
    assert entry.version not in setup.registry.quality_gates("nuclei")


def test_a_candidate_that_crashes_on_an_image_names_it(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    real = Predictor.predict

    def crash_on_second(self: Predictor, image: object) -> object:
        if str(image).endswith("1.png"):
            raise RuntimeError("CUDA out of memory")
        return real(self, image)

    monkeypatch.setattr(Predictor, "predict", crash_on_second)
    with pytest.raises(
        GateError, match=r"nuclei v2 failed on golden image .*1\.png \(id 2\): RuntimeError: CUDA"
    ):
        check_promotion(setup.registry, "nuclei", 2)
    assert setup.registry.deployment("nuclei").production == 1


def test_a_golden_set_of_other_categories_is_refused(setup: Setup, tmp_path: Path) -> None:
    gt = json.loads(setup.gt.read_text())
    gt["categories"] = [{"id": 7, "name": "cell"}]
    for annotation in gt["annotations"]:
        annotation["category_id"] = 7
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    define_golden_set(setup.registry, "nuclei", path, setup.images)
    with pytest.raises(GateError, match=r"category ids \[1\] share none with the golden set's \[7\]"):
        check_promotion(setup.registry, "nuclei", 2)


def test_the_models_commands_gate_promotion_and_canary(setup: Setup, capsys: pytest.CaptureFixture) -> None:
    registry = str(setup.registry.root)
    assert (
        main(["models", "set-golden", "nuclei", str(setup.gt), str(setup.images), "--registry", registry])
        == 0
    )
    assert "gate: mask_ap, margin 0.01" in capsys.readouterr().out

    assert main(["models", "set-canary", "nuclei", "2", "--share", "0.1", "--registry", registry]) == 2
    error = capsys.readouterr().err
    assert "nuclei v2 mask AP" in error and "production v1 1.0000" in error and "REFUSED" in error
    assert main(["models", "promote", "nuclei", "--version", "2", "--registry", registry]) == 2
    assert setup.registry.deployment("nuclei") == Deployment("nuclei", 1, None, 0.0, (1,))

    assert main(["models", "list", "--registry", registry]) == 0
    listing = capsys.readouterr().out
    assert re.search(
        r"quality gate nuclei v2 \(.*\): mask_ap 0\.\d{4} vs production v1 1\.0000 .*refused", listing
    )
    assert main(["models", "promote", "nuclei", "--version", "2", "--force", "--registry", registry]) == 0
    out = capsys.readouterr().out
    assert "promoted anyway (--force)" in out and "nuclei: production v2" in out
    assert setup.registry.deployment("nuclei").production == 2

    assert main(["models", "list", "--json", "--registry", registry]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["golden_set"]["metric"] == "mask_ap"
    assert listed["quality_gates"]["2"]["forced"] is True and listed["quality_gates"]["2"]["passed"] is False


def test_set_golden_names_missing_images(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    command = [
        "models",
        "set-golden",
        "nuclei",
        str(setup.gt),
        str(empty),
        "--registry",
        str(setup.registry.root),
    ]
    assert main(command) == 2
    assert "2 of 2 images missing: id 1" in capsys.readouterr().err


class NothingLoaded:
    """What `list_models` asks a `DeploymentManager`, for a process that has loaded nothing yet."""

    def states(self) -> dict:
        return {}

    def active(self) -> dict:
        return {}


def test_v1_models_shows_each_versions_gate_decision(setup: Setup) -> None:
    define_golden_set(setup.registry, "nuclei", setup.gt, setup.images)
    with pytest.raises(GateRefused):
        check_promotion(setup.registry, "nuclei", 2)
    (model,) = list_models(setup.registry, NothingLoaded(), ServingConfig(registry=str(setup.registry.root)))
    validated = ModelOut.model_validate(model)  # the response schema of GET /v1/models keeps the field
    first, second = validated.versions
    assert first.quality_gate is None
    assert second.quality_gate is not None and second.quality_gate["passed"] is False
    assert second.quality_gate["production"]["value"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_golden_sets_and_gate_decisions_are_stored_by_both_registry_backends(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        registry = open_registry(tmp_path / "registry")
    else:
        url = request.getfixturevalue("postgres_url")
        registry = open_registry(
            f"{url}?checkpoints={tmp_path / 'store'}&checkpoint_cache={tmp_path / 'cache'}"
        )
    try:
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(b"weights")
        for _ in range(2):
            registry.register("nuclei", checkpoint, [{"id": 1, "name": "nucleus"}], {})
        assert (
            registry.golden_set("nuclei") is None and registry.quality_gates("nuclei") == {}
        )  # no tables yet
        registry.set_golden_set("nuclei", {"metric": "mask_ap", "margin": 0.01})
        registry.set_golden_set("nuclei", {"metric": "dsb", "margin": 0.02})
        assert registry.golden_set("nuclei") == {"metric": "dsb", "margin": 0.02}
        registry.record_quality_gate("nuclei", 2, {"passed": False})
        registry.record_quality_gate("nuclei", 2, {"passed": True, "forced": False})
        assert registry.quality_gates("nuclei") == {2: {"passed": True, "forced": False}}
        with pytest.raises(RegistryError, match="no model named 'cells'"):
            registry.set_golden_set("cells", {})
        with pytest.raises(RegistryError, match="has no version 7"):
            registry.record_quality_gate("nuclei", 7, {})
        assert registry.deployment("nuclei").production == 1
    finally:
        registry.close()
