"""instaseg: instance segmentation — every object's class, score, box and pixel mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from instaseg.inference import Predictor


def __getattr__(name: str) -> object:
    # `instaseg.Predictor` without importing torch and the models for `instaseg --version` or the data tools.
    if name == "Predictor":
        from instaseg.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'instaseg' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
