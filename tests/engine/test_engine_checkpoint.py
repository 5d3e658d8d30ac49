"""Checkpoints: atomic writes (a failed save keeps the old file), bad files, RNG state round trip."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from instaseg.engine import checkpoint
from instaseg.engine.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    CheckpointWriteError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from instaseg.io.atomic import atomic_write
from instaseg.models.model_file import ModelFile


def _model_file(iteration: int) -> ModelFile:
    return ModelFile("mask_rcnn", {}, {"w": torch.full((3,), float(iteration))})


def _state(iteration: int) -> dict:
    state = {key: None for key in TRAINING_KEYS}
    state.update(iteration=iteration, rng={})
    return state


def test_save_then_load(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _model_file(7), _state(7))
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 7
    torch.testing.assert_close(loaded["model"]["w"], torch.full((3,), 7.0))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _model_file(1), _state(1))

    def save_half_then_fail(obj, stream):
        stream.write(b"partial bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointWriteError, match=r"could not write .*last\.pt \(No space left on device\)"):
        save_checkpoint(path, _model_file(2), _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_atomic_write_text_and_mode_check(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_write(target, "w") as stream:
        stream.write("héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    with pytest.raises(ValueError, match="mode must be"), atomic_write(target, "a"):
        pass
    with pytest.raises(IsADirectoryError) as error, atomic_write(tmp_path, "w"):
        pass
    assert error.value.filename == str(tmp_path)  # the target, not the temporary file
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind
    with (
        pytest.raises(FileNotFoundError, match="output folder does not exist: .*new"),
        atomic_write(tmp_path / "new" / "b.txt", "w"),
    ):
        pass


def test_missing_truncated_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, _model_file(3), _state(3))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated\.pt cannot be read"):
        load_checkpoint(truncated)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an instaseg training checkpoint"):
        load_checkpoint(foreign)


def test_missing_keys_are_refused_when_saving(tmp_path):
    with pytest.raises(ValueError, match="lacks optimizer"):
        save_checkpoint(
            tmp_path / "x.pt", _model_file(0), {key: None for key in TRAINING_KEYS if key != "optimizer"}
        )


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = _state(0)
    state["rng"] = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    path = tmp_path / "rng.pt"
    save_checkpoint(path, _model_file(0), state)
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    torch.testing.assert_close(torch.rand(2), expected[2])
