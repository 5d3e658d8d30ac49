"""Two processes under torchrun (gloo, CPU) train the same model as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml
from test_engine_trainer import one_thread, tiny_config  # noqa: F401 (one_thread: autouse fixture)

from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.config import config_from_dict
from instaseg.engine.metrics_log import read_metrics
from instaseg.engine.trainer import LOSS_KEYS, train

LAUNCHED_SCRIPT = """
import sys
from instaseg.engine.config import load_config
from instaseg.engine.trainer import train

train(load_config(sys.argv[1]), progress=False)
"""


def test_two_processes_match_one_process(tmp_path):
    data = tiny_config(tmp_path, output="single")
    data["schedule"]["iterations"] = 3
    data["train"].update(checkpoint_period=0, eval_period=0)
    # One process: the global batch of 2 as two forward passes of 1 image with accumulated gradients. Two
    # processes: one image each, gradients averaged by DistributedDataParallel. Same images, same random
    # draws.
    single = {**data, "train": {**data["train"], "images_per_forward": 1}}
    train(config_from_dict(single), progress=False)

    distributed = {**data, "output_dir": str(tmp_path / "distributed")}
    config_path = tmp_path / "distributed.yaml"
    config_path.write_text(yaml.safe_dump(distributed))
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        str(script), str(config_path),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]

    reference = load_checkpoint(tmp_path / "single" / "last.pt")
    result = load_checkpoint(tmp_path / "distributed" / "last.pt")
    assert result["iteration"] == reference["iteration"] == 3
    for name, tensor in reference["model"].items():
        torch.testing.assert_close(result["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    single_losses = _train_losses(tmp_path / "single" / "metrics.jsonl")
    distributed_losses = _train_losses(tmp_path / "distributed" / "metrics.jsonl")
    assert len(distributed_losses) == 3  # only rank 0 writes: one record per iteration
    torch.testing.assert_close(
        torch.tensor(distributed_losses), torch.tensor(single_losses), rtol=1e-4, atol=1e-5
    )
    # Validation is split over the ranks and gathered: the same predictions give the same COCO numbers.
    (single_eval,) = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "eval"]
    (distributed_eval,) = [
        r for r in read_metrics(tmp_path / "distributed" / "metrics.jsonl") if r["kind"] == "eval"
    ]
    for key in ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AR_max"):
        assert abs(distributed_eval[key] - single_eval[key]) < 1e-3, key
    # No stray temporary files from the other rank.
    assert sorted(p.name for p in (tmp_path / "distributed").iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "val_ground_truth.json",
    ]  # fmt: skip


def _train_losses(path) -> list[list[float]]:
    return [[record[key] for key in LOSS_KEYS] for record in read_metrics(path) if record["kind"] == "train"]
