"""Training checkpoints: one `torch.save`d dict per file, written atomically, plus the RNG states to resume
exactly.

A training checkpoint holds `config` (the model's `MaskRCNNConfig.to_dict()`) and `model` (its state dict),
the layout `instaseg.models.build(path)` reads, so a checkpoint is also a model file; and for resuming:
`categories` (the dataset categories behind model classes 1..K, as `{"id", "name"}` dicts), `train_config`
(the resolved training config as plain data), `optimizer`, `scheduler`, `ema` (or None), `iteration`
(optimiser steps done), `rng` (Python, NumPy and torch generator states) and `best` (the best validation mask
AP so far, or None). Everything in it is tensors and plain data, so it loads with `torch.load(...,
weights_only=True)`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instaseg.io.atomic import atomic_write
from instaseg.models.build import WeightsError, read_weights

CHECKPOINT_KEYS = (
    "config",
    "model",
    "categories",
    "train_config",
    "optimizer",
    "scheduler",
    "ema",
    "iteration",
    "rng",
    "best",
)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not a training checkpoint."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, say); the file it would have replaced is unchanged."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: an interrupted or failed write (full disk) leaves the old file
    valid."""
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state for {path} lacks {', '.join(missing)}")
    save_model_file(path, state)


def save_model_file(path: str | Path, state: dict[str, Any]) -> None:
    """Write a model file atomically: at least `config` (the model config dict) and `model` (the state dict),
    which is what `instaseg.models.build(path)` loads; other keys (categories, metrics) ride along."""
    if "config" not in state or "model" not in state:
        raise ValueError(f"model file {path} needs 'config' and 'model'")
    try:
        with atomic_write(path, "wb") as stream:
            torch.save(state, stream)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno,
            f"could not write {path} ({exc.strerror or exc}); its previous version, if any, is unchanged",
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = read_weights(path)
    except WeightsError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if any(key not in state for key in CHECKPOINT_KEYS):
        raise CheckpointError(
            f"{path} is not an instaseg training checkpoint (expected keys {CHECKPOINT_KEYS})"
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
