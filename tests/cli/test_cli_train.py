"""`instaseg train` and `instaseg plot-metrics` as a user runs them: a YAML file, overrides, flags."""

from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image

from instaseg.cli import plot_metrics as plot_metrics_command
from instaseg.cli import train as train_command
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.engine import trainer
from instaseg.engine.config import ConfigError
from instaseg.engine.run_dir import RunExistsError
from instaseg.engine.trainer import TrainResult

CONFIG = """\
output_dir: {root}/run
data:
  train: {{path: {root}/data/annotations.json}}
  val: {{path: {root}/data/annotations.json}}
model:
  name: maskrcnn_resnet18_fpn
  settings:
    min_size: 64
    max_size: 96
    fpn_channels: 64
    rpn_pre_nms_top_n_train: 100
    rpn_post_nms_top_n_train: 50
    rpn_pre_nms_top_n_test: 50
    rpn_post_nms_top_n_test: 25
    box_batch_size_per_image: 32
    box_detections_per_img: 20
augment: {{hflip: 0.5}}
optim: {{lr: 0.01, grad_clip_norm: 5.0}}
schedule: {{iterations: 3, warmup_iterations: 1}}
train: {{batch_size: 2, log_period: 1, device: cpu}}
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine oversubscribed OpenMP threads
    make them several times slower; the setting is restored for the tests that follow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="instaseg")
    subparsers = parser.add_subparsers(dest="command", required=True)
    train_command.add_parser(subparsers)
    plot_metrics_command.add_parser(subparsers)
    return parser.parse_args(argv)


@pytest.fixture
def config_path(tmp_path):
    make_synthetic_dataset(tmp_path / "data", 3, size_range=(64, 80), max_instances=2, seed=3)
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG.format(root=tmp_path))
    return path


def test_train_then_plot(config_path, tmp_path, capsys):
    args = _cli("train", "--config", str(config_path), "schedule.iterations=2", "--no-progress")
    assert args.func(args) == 0
    assert "trained to iteration 2" in capsys.readouterr().out
    run = tmp_path / "run"
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in run.iterdir()}

    args = _cli("train", "--config", str(config_path), "--no-progress")
    with pytest.raises(RunExistsError, match="--resume"):
        args.func(args)
    # Resuming may extend the schedule: the run continues from iteration 2 to 3.
    args = _cli("train", "--config", str(config_path), "--resume", "--no-progress")
    assert args.func(args) == 0
    assert "trained to iteration 3" in capsys.readouterr().out

    args = _cli("plot-metrics", str(run))
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / "loss.png"), str(run / "ap.png")]
    for name in ("loss.png", "ap.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_bad_overrides_and_flags(config_path, tmp_path):
    args = _cli("train", "--config", str(config_path), "optim.lr_typo=0.1")
    with pytest.raises(ConfigError, match="config key 'optim.lr_typo' is unknown"):
        args.func(args)
    with pytest.raises(SystemExit):
        _cli("train", "--config", str(config_path), "--resume", "--overwrite")
    args = _cli("plot-metrics", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        args.func(args)


def test_only_the_main_process_prints_the_summary(config_path, tmp_path, capsys, monkeypatch):
    other_rank = TrainResult(tmp_path / "run", 2, "segm_AP", None, None, is_main=False)
    monkeypatch.setattr(trainer, "train", lambda config, **options: other_rank)  # the command imports it late
    args = _cli("train", "--config", str(config_path), "--no-progress")
    assert args.func(args) == 0
    assert capsys.readouterr().out == ""  # rank 1 would say "best validation segm_AP n/a" beside rank 0


@pytest.mark.parametrize(
    ("metric", "score", "expected"),
    [
        ("prompt_iou", 0.666, "best validation prompt_iou 0.6660"),
        ("segm_AP", None, "best validation segm_AP n/a"),
        (None, None, "no validation set"),
    ],
)
def test_the_summary_names_the_metric_that_picked_best(
    config_path, tmp_path, capsys, monkeypatch, metric, score, expected
):
    finished = TrainResult(tmp_path / "run", 5, metric, score, None)
    monkeypatch.setattr(trainer, "train", lambda config, **options: finished)
    args = _cli("train", "--config", str(config_path), "--no-progress")
    assert args.func(args) == 0
    assert capsys.readouterr().out == f"trained to iteration 5; {expected}; run in {tmp_path / 'run'}\n"
