"""Training checkpoints: a model file (`instaseg.models.model_file.ModelFile`) plus the state to resume
exactly, in one `torch.save`d dict per file, written atomically.

Beside the model-file keys (architecture, weights, categories, operating point, provenance), a checkpoint
holds `TRAINING_KEYS`: `train_config` (the resolved training config as plain data), `optimizer`,
`scheduler`, `ema` (or None), `iteration` (optimiser steps done), `rng` (Python, NumPy and torch generator
states) and `best` (the best validation score so far, or None: see `TrainResult`). So `last.pt` loads like
any model file (`instaseg.models.load_model`), and everything in it is tensors and plain data
(`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instaseg.models.model_file import ModelFile, WeightsError, read_weights

TRAINING_KEYS = ("train_config", "optimizer", "scheduler", "ema", "iteration", "rng", "best")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not a training checkpoint."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, say); the file it would have replaced is unchanged."""


def save_checkpoint(path: str | Path, model_file: ModelFile, training: dict[str, Any]) -> None:
    """Write `model_file` with the `TRAINING_KEYS` of `training` to `path` atomically: an interrupted or
    failed write (full disk) leaves the old file valid."""
    missing = [key for key in TRAINING_KEYS if key not in training]
    if missing:
        raise ValueError(f"checkpoint state for {path} lacks {', '.join(missing)}")
    save_model_file(path, model_file, **training)


def save_model_file(path: str | Path, model_file: ModelFile, **extra: Any) -> None:
    """`model_file.save(path, **extra)`, with a failed write reported as `CheckpointWriteError`."""
    try:
        model_file.save(path, **extra)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno,
            f"could not write {path} ({exc.strerror or exc}); its previous version, if any, is unchanged",
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU: model-file keys and `TRAINING_KEYS`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = read_weights(path)
        ModelFile.from_dict(state, str(path))
    except WeightsError as exc:
        message = str(exc)
        if "not an instaseg model file" in message:
            raise CheckpointError(
                f"{path} is not an instaseg training checkpoint (expected a model file with {TRAINING_KEYS})"
            ) from None
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if any(key not in state for key in TRAINING_KEYS):
        raise CheckpointError(
            f"{path} is not an instaseg training checkpoint (expected a model file with {TRAINING_KEYS})"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (and CUDA's when it is in use)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generator states saved by `capture_rng_state`."""
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        **numpy_state["state"],
        "key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
