"""The training loop trains the single-stage CondInst family too: losses, model files, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.config import config_from_dict
from instaseg.engine.metrics_log import read_metrics
from instaseg.engine.trainer import CONDINST_LOSS_KEYS, train
from instaseg.models import load_model
from instaseg.models.condinst import CondInst

ITERATIONS = 4
# A narrow CondInst: the EfficientNet-Lite0 body, 32-channel neck and head, few candidates at inference.
TINY_CONDINST = {"neck_channels": 32, "head_channels": 32, "pre_nms_top_k": 100, "detections_per_img": 20}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def condinst_config(root: Path, output: str = "run") -> dict:
    """Plain config data for a few iterations on a two-class synthetic set made under `root` (once)."""
    train_json = root / "data" / "train" / "annotations.json"
    if not train_json.exists():
        make_synthetic_dataset(
            train_json.parent, 4, size_range=(64, 96), max_instances=3, num_negatives=1, seed=0
        )
        make_synthetic_dataset(root / "data" / "val", 2, size_range=(64, 96), seed=1)
    return {
        "output_dir": str(root / output),
        "data": {
            "train": {"path": str(train_json)},
            "val": {"path": str(root / "data" / "val" / "annotations.json")},
        },
        "model": {"name": "condinst_efficientnet_lite0", "settings": dict(TINY_CONDINST)},
        "augment": {"hflip": 0.5, "scale_range": [0.8, 1.25], "crop_size": [64, 64]},
        "optim": {"name": "adamw", "lr": 0.001, "grad_clip_norm": 5.0},
        "schedule": {"iterations": ITERATIONS, "warmup_iterations": 2, "decay": "cosine"},
        "train": {
            "batch_size": 2,
            "log_period": 1,
            "checkpoint_period": 2,
            "device": "cpu",
            "ema_decay": 0.9,
            "eval_max_detections": 20,
        },
    }


@pytest.fixture(scope="module")
def condinst_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("condinst")
    data = condinst_config(root)
    assert train(config_from_dict(data), progress=False).iteration == ITERATIONS
    return root, data


def test_condinst_trains_logs_its_losses_and_writes_model_files(condinst_run):
    root, _ = condinst_run
    records = read_metrics(root / "run" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == list(range(1, ITERATIONS + 1))
    for record in train_records:
        assert record["loss"] == pytest.approx(sum(record[key] for key in CONDINST_LOSS_KEYS), rel=1e-5)
        assert all(record[key] >= 0 for key in CONDINST_LOSS_KEYS) and record["grad_norm"] > 0
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert 0.0 <= evaluation["segm_AP"] <= 1.0

    last = load_checkpoint(root / "run" / "last.pt")
    assert last["family"] == "condinst" and last["iteration"] == ITERATIONS
    model = load_model(root / "run" / "best.pt")
    assert isinstance(model, CondInst) and model.num_classes == 3
    assert model.categories == [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}]
    torch.testing.assert_close(model.state_dict(), last["ema"]["module"])
    # the frozen stem and first stage did not move from their ImageNet start
    start = load_model(root / "run" / "last.pt").body._conv_stem.weight
    assert model.body._conv_stem.weight.requires_grad is False
    torch.testing.assert_close(start, model.body._conv_stem.weight)


@pytest.mark.slow
def test_condinst_resume_repeats_an_uninterrupted_run_bit_for_bit(condinst_run, tmp_path):
    root, data = condinst_run
    data = {**data, "output_dir": str(tmp_path / "resumed")}
    train(config_from_dict(data), stop_at=ITERATIONS // 2, progress=False)
    train(config_from_dict(data), resume=True, progress=False)
    reference = load_checkpoint(root / "run" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    first = [r for r in read_metrics(root / "run" / "metrics.jsonl") if r["kind"] == "train"]
    second = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    keys = CONDINST_LOSS_KEYS
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
