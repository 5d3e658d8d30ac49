"""The training loop end to end on a tiny synthetic set: run folder, exact resume, refusals, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instaseg.data.records import DatasetError
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine import trainer as trainer_module
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.config import ConfigError, config_from_dict, load_config
from instaseg.engine.metrics_log import read_metrics
from instaseg.engine.run_dir import RunExistsError
from instaseg.engine.schedule import lr_factor
from instaseg.engine.trainer import LOSS_KEYS, TrainingDivergedError, train
from instaseg.inference.predictor import Predictor
from instaseg.models import load_model
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.structures.instances import Instances

ITERATIONS = 4

# A small but complete Mask R-CNN: ResNet-18, narrow FPN, few proposals, inputs of 64-96 px.
TINY_MODEL = {
    "min_size": 64,
    "max_size": 96,
    "fpn_channels": 64,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 25,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 20,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine oversubscribed OpenMP threads
    make them several times slower; the setting is restored for the tests that follow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(root: Path, output: str = "run", with_val: bool = True) -> dict:
    """A config (plain data) for a few fast iterations on a synthetic set made under `root` (once)."""
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
            "val": {"path": str(root / "data" / "val" / "annotations.json")} if with_val else None,
        },
        "model": {"name": "maskrcnn_resnet18_fpn", "settings": dict(TINY_MODEL)},
        "augment": {"hflip": 0.5, "scale_range": [0.8, 1.25], "crop_size": [64, 64], "brightness": 0.2},
        "optim": {"lr": 0.01, "grad_clip_norm": 5.0},
        "schedule": {"iterations": ITERATIONS, "warmup_iterations": 2, "decay": "cosine"},
        "train": {
            "batch_size": 2,
            "log_period": 1,
            "checkpoint_period": 2,
            "device": "cpu",
            "ema_decay": 0.9,
        },
    }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run of ITERATIONS iterations with validation; returns (workdir, its config data)."""
    root = tmp_path_factory.mktemp("engine")
    data = tiny_config(root)
    result = train(config_from_dict(data), progress=False)
    assert result.iteration == ITERATIONS
    assert result.best_metric == "segm_AP" and 0.0 <= result.best_score <= 1.0  # picks best.pt
    return root, data


def test_run_folder_holds_config_checkpoints_and_metrics(full_run):
    root, data = full_run
    run = root / "run"
    assert load_config(run / "config.yaml") == config_from_dict(data)
    records = read_metrics(run / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == list(range(1, ITERATIONS + 1))
    schedule = config_from_dict(data).schedule
    for record in train_records:
        assert record["lr"] == pytest.approx(0.01 * lr_factor(schedule, record["iteration"] - 1))
        assert record["loss"] == pytest.approx(sum(record[key] for key in LOSS_KEYS), rel=1e-5)
        assert record["images_per_s"] > 0 and record["grad_norm"] > 0
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert evaluation["iteration"] == ITERATIONS and evaluation["best"] is True
    assert 0.0 <= evaluation["segm_AP"] <= 1.0 and 0.0 <= evaluation["bbox_AP"] <= 1.0

    last = load_checkpoint(run / "last.pt")
    assert last["iteration"] == ITERATIONS
    assert last["categories"] == [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}]
    assert last["ema"]["updates"] == ITERATIONS
    assert last["best"] == evaluation["segm_AP"]
    ground_truth = json.loads((run / "val_ground_truth.json").read_text())
    assert len(ground_truth["images"]) == 2

    # best.pt is a model file: `load_model` restores the evaluated (EMA) weights, architecture and categories.
    model = load_model(run / "best.pt")
    assert model.categories == last["categories"]
    assert isinstance(model, MaskRCNN) and model.num_classes == 3
    best = torch.load(run / "best.pt", weights_only=True)
    torch.testing.assert_close(model.state_dict(), best["model"])
    torch.testing.assert_close(best["model"], last["ema"]["module"])
    (prediction,) = model([torch.rand(3, 80, 72)])
    assert isinstance(prediction, Instances) and prediction.image_size == (80, 72)
    # The inference side reads the category names that map model classes back to dataset ids.
    assert Predictor(run / "best.pt").categories == last["categories"]


def test_resume_repeats_an_uninterrupted_run_bit_for_bit(full_run, tmp_path):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "resumed")}
    train(config_from_dict(data), stop_at=ITERATIONS // 2, progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == ITERATIONS // 2
    # The second half loads data in a worker process: the data order does not depend on it.
    data["train"] = {**data["train"], "workers": 1}
    result = train(config_from_dict(data), resume=True, progress=False)
    assert result.iteration == ITERATIONS

    reference = load_checkpoint(root / "run" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for name, tensor in reference["ema"]["module"].items():
        assert torch.equal(tensor, resumed["ema"]["module"][name]), name
    for index, state in reference["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    assert reference["scheduler"] == resumed["scheduler"]
    first = [r for r in read_metrics(root / "run" / "metrics.jsonl") if r["kind"] == "train"]
    second = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    assert [[r[k] for k in LOSS_KEYS] for r in first] == [[r[k] for k in LOSS_KEYS] for r in second]


def test_a_run_resumed_with_more_iterations_follows_the_new_learning_rate_curve(full_run, tmp_path):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "run"), "data": {**data["data"], "val": None}}
    unvalidated = train(config_from_dict(data), progress=False)  # a finished cosine run ends at lr 0
    assert unvalidated.best_metric is None and unvalidated.best_score is None  # nothing picks best.pt
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)  # a resume may name the folder differently, or find it moved
    longer = config_from_dict(
        {**data, "output_dir": str(moved), "schedule": {**data["schedule"], "iterations": 2 * ITERATIONS}}
    )
    train(longer, resume=True, progress=False)
    records = [r for r in read_metrics(moved / "metrics.jsonl") if r["kind"] == "train"]
    resumed = [r for r in records if r["iteration"] > ITERATIONS]
    assert [r["iteration"] for r in resumed] == list(range(ITERATIONS + 1, 2 * ITERATIONS + 1))
    for record in resumed:
        assert record["lr"] == pytest.approx(0.01 * lr_factor(longer.schedule, record["iteration"] - 1))


def test_existing_runs_are_refused_unless_resumed_or_overwritten(full_run, tmp_path):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "run"), "data": {**data["data"], "val": None}}
    config = config_from_dict(data)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(config, resume=True, progress=False)
    train(config, stop_at=1, progress=False)
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(config, progress=False)
    with pytest.raises(ValueError, match="either resume or overwrite"):
        train(config, resume=True, overwrite=True, progress=False)
    changed = config_from_dict({**data, "optim": {**data["optim"], "lr": 0.5}})
    with pytest.raises(ConfigError, match=r"cannot resume .* differs from the run's in optim\.lr"):
        train(changed, resume=True, progress=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = train(changed, overwrite=True, stop_at=1, progress=False)
    assert result.iteration == 1
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # overwrite removes only the run's files
    assert load_config(tmp_path / "run" / "config.yaml").optim.lr == 0.5


def test_an_overwrite_that_fails_to_start_leaves_the_old_run(full_run, tmp_path):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "run"), "data": {**data["data"], "val": None}}
    train(config_from_dict(data), stop_at=1, progress=False)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()}
    typo = {**data, "data": {**data["data"], "train": {"path": str(tmp_path / "typo.json")}}}
    with pytest.raises(DatasetError, match="no such file"):
        train(config_from_dict(typo), overwrite=True, progress=False)
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()} == before


def test_a_validation_set_without_annotations_is_refused_before_training(full_run, tmp_path):
    root, data = full_run
    val = json.loads(Path(data["data"]["val"]["path"]).read_text())
    val["annotations"] = []
    empty = Path(data["data"]["val"]["path"]).parent / "no_annotations.json"
    empty.write_text(json.dumps(val))
    data = {
        **data,
        "output_dir": str(tmp_path / "run"),
        "data": {**data["data"], "val": {"path": str(empty)}},
    }
    with pytest.raises(ValueError, match="has no annotations"):
        train(config_from_dict(data), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(full_run, tmp_path, monkeypatch):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "run"), "data": {**data["data"], "val": None}}
    original = MaskRCNN.forward
    calls = []

    def forward_with_nan_on_third_call(self, images, targets=None):
        calls.append(1)
        losses = original(self, images, targets)
        if self.training and len(calls) == 3:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    monkeypatch.setattr(MaskRCNN, "forward", forward_with_nan_on_third_call)
    with pytest.raises(TrainingDivergedError) as info:
        train(config_from_dict(data), progress=False)
    message = str(info.value)
    assert "iteration 3" in message and "loss_mask=nan" in message and "last.pt" in message
    assert "is intact" in message
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2


def test_empty_training_set_is_refused(tmp_path):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    (data_dir / "annotations.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]})
    )
    config = tiny_config(tmp_path, with_val=False)
    config["data"]["train"]["path"] = str(data_dir / "annotations.json")
    with pytest.raises(ValueError, match="has no usable images"):
        train(config_from_dict(config), progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_trains_where_native_and_falls_back_to_float32_elsewhere(
    full_run, tmp_path, monkeypatch, capsys, native
):
    root, data = full_run
    data = {**data, "output_dir": str(tmp_path / "bf16"), "data": {**data["data"], "val": None}}
    data["train"] = {**data["train"], "bf16": True}
    monkeypatch.setattr(trainer_module, "bf16_is_native", lambda device: native)
    autocasts = []
    real_autocast = torch.autocast

    def recording_autocast(device_type, dtype, enabled):
        autocasts.append(enabled)
        return real_autocast(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(trainer_module.torch, "autocast", recording_autocast)
    train(config_from_dict(data), stop_at=1, progress=False)
    (record,) = read_metrics(tmp_path / "bf16" / "metrics.jsonl")
    assert all(record[key] is not None and record[key] >= 0 for key in LOSS_KEYS)
    assert autocasts and set(autocasts) == {native}
    provenance = load_checkpoint(tmp_path / "bf16" / "last.pt")["provenance"]
    assert provenance["precision"] == ("bf16 autocast" if native else "float32")
    assert ("no bfloat16 support" in capsys.readouterr().err) is not native
