"""The training loop trains the promptable family: simulated prompts, its losses, validation, model files,
the encoder started from a detector and kept frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.config import ConfigError, config_from_dict
from instaseg.engine.metrics_log import read_metrics
from instaseg.engine.trainer import train
from instaseg.models import build, load_model, load_promptable
from instaseg.models.build import save_weights
from instaseg.models.promptable import LOSS_KEYS as PROMPTABLE_LOSS_KEYS
from instaseg.models.promptable import PromptableSam

ITERATIONS = 3
# 64-pixel frame: an 8x8 embedding, 32x32 low-res masks.
TINY = {"image_size": 64, "prompts_per_image": 2, "corrective_clicks": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    """A Mask R-CNN with the bundled model's EfficientNet-Lite0 FPN (random weights, 128 channels)."""
    path = tmp_path_factory.mktemp("detector") / "detector.pt"
    torch.manual_seed(3)
    save_weights(build("maskrcnn_efficientnet_lite0_fpn", num_classes=2), path)
    return path


def promptable_config(root: Path, detector: Path, output: str = "run") -> dict:
    train_json = root / "data" / "train" / "annotations.json"
    if not train_json.exists():
        make_synthetic_dataset(train_json.parent, 4, size_range=(48, 64), max_instances=3, num_negatives=1)
        make_synthetic_dataset(root / "data" / "val", 2, size_range=(48, 64), seed=1)
    return {
        "output_dir": str(root / output),
        "data": {
            "train": {"path": str(train_json)},
            "val": {"path": str(root / "data" / "val" / "annotations.json")},
        },
        "model": {
            "name": "promptable_efficientnet_lite0",
            "settings": dict(TINY),
            "backbone_weights": str(detector),
        },
        "augment": {"hflip": 0.5},
        "optim": {"name": "adamw", "lr": 0.001, "grad_clip_norm": 1.0},
        "schedule": {"iterations": ITERATIONS, "warmup_iterations": 1, "decay": "cosine"},
        "train": {
            "batch_size": 2,
            "log_period": 1,
            "checkpoint_period": 2,
            "device": "cpu",
            "ema_decay": 0.9,
        },
    }


@pytest.fixture(scope="module")
def promptable_run(tmp_path_factory, detector_file) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("promptable")
    data = promptable_config(root, detector_file)
    result = train(config_from_dict(data), progress=False)
    assert result.iteration == ITERATIONS
    # best.pt is picked by the prompt simulation's IoU, and the result says so (not "mask AP").
    assert result.best_metric == "prompt_iou" and 0.0 <= result.best_score <= 1.0
    return root, data


def test_promptable_trains_logs_its_losses_and_validation(promptable_run):
    root, _ = promptable_run
    records = read_metrics(root / "run" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == list(range(1, ITERATIONS + 1))
    for record in train_records:
        assert record["loss"] == pytest.approx(sum(record[key] for key in PROMPTABLE_LOSS_KEYS), rel=1e-5)
        assert all(record[key] >= 0 for key in PROMPTABLE_LOSS_KEYS) and record["grad_norm"] > 0
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    # two rounds (first prompt, one corrective click), IoUs of real objects
    assert evaluation["prompt_objects"] > 0
    for key in ("prompt_iou_round0", "prompt_iou_round1", "prompt_iou"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert evaluation["prompt_iou"] == pytest.approx(
        (evaluation["prompt_iou_round0"] + evaluation["prompt_iou_round1"]) / 2
    )


def test_promptable_model_files_and_frozen_encoder(promptable_run, detector_file):
    root, _ = promptable_run
    last = load_checkpoint(root / "run" / "last.pt")
    assert last["family"] == "promptable" and last["iteration"] == ITERATIONS
    model = load_promptable(root / "run" / "best.pt")
    assert isinstance(model, PromptableSam) and model.image_size == 64
    assert model.categories == [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}]
    torch.testing.assert_close(model.state_dict(), last["ema"]["module"])
    # the encoder is the detector's, unchanged; the decoder moved from its start
    detector = load_model(detector_file)
    torch.testing.assert_close(
        model.image_encoder.backbone.fpn.layer_blocks[1][0].weight,
        detector.backbone.fpn.layer_blocks[1][0].weight,
    )
    trained = load_promptable(root / "run" / "last.pt")
    assert all(not p.requires_grad for p in trained.image_encoder.backbone.parameters())


def test_promptable_refuses_a_detector_of_another_width(tmp_path, detector_file):
    wide = tmp_path / "wide.pt"
    save_weights(build("maskrcnn_resnet18_fpn", num_classes=2, min_size=64), wide)
    data = promptable_config(tmp_path, detector_file)
    data["model"]["backbone_weights"] = str(wide)
    with pytest.raises(ValueError, match="efficientnet_lite0 backbone"):
        train(config_from_dict(data), progress=False)


def test_promptable_settings_are_checked_by_name():
    data = {"output_dir": "x", "data": {"train": {"path": "t.json"}}}
    data["model"] = {"name": "promptable_efficientnet_lite0", "settings": {"image_size": 100}}
    with pytest.raises(ConfigError, match="image_size"):
        config_from_dict(data)


@pytest.mark.slow
def test_promptable_resume_repeats_an_uninterrupted_run_bit_for_bit(promptable_run, detector_file, tmp_path):
    root, data = promptable_run
    data = {**data, "output_dir": str(tmp_path / "resumed")}
    train(config_from_dict(data), stop_at=2, progress=False)
    train(config_from_dict(data), resume=True, progress=False)
    reference = load_checkpoint(root / "run" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
