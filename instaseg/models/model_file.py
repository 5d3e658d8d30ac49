"""The one model-file format: `ModelFile` (architecture, weights, categories, operating point, provenance).

On disk a model file is one `torch.save`d dict of tensors and plain data (it loads with `torch.load(...,
weights_only=True)`):

    format_version   2 (a file without it is version 1: these keys less family, operating_point, provenance)
    family           the model family that `instaseg.models.loading` builds: "mask_rcnn", "condinst" or
                     "promptable"
    config           the family's architecture config as plain data (`MaskRCNNConfig.to_dict()` or
                     `CondInstConfig.to_dict()`)
    model            the state dict
    categories       [{"id": int, "name": str}] behind model classes 1..K, or None
    operating_point  `OperatingPoint.to_dict()` or None
    provenance       plain data: instaseg_version, data, recipe, iteration, metrics, ... (may be empty)

Training checkpoints (`instaseg.engine.checkpoint`) are model files with the optimiser state and the rest of
the run beside these keys, so `last.pt` and `best.pt` load like any model file. Version-1 files (the bundled
model before this format, checkpoints of older runs) read as family "mask_rcnn" with their `iteration` and
`metrics` taken into the provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from instaseg import __version__
from instaseg.io.atomic import atomic_write
from instaseg.models.protocol import OperatingPoint

FORMAT_VERSION = 2
FAMILIES = ("mask_rcnn", "condinst", "promptable")
MODEL_FILE_KEYS = (
    "format_version",
    "family",
    "config",
    "model",
    "categories",
    "operating_point",
    "provenance",
)
# Keys of version-1 files that move into the provenance when such a file is read.
_V1_PROVENANCE_KEYS = ("iteration", "metrics")


class WeightsError(ValueError):
    """Weights cannot be read or do not fit the model; the message names the file and the offending keys."""


@dataclass
class ModelFile:
    """Everything a model file holds (see the module docstring); `state_dict` maps names to tensors."""

    family: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    categories: list[dict] | None = None
    operating_point: OperatingPoint | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise WeightsError(f"unknown model family {self.family!r}: expected one of {', '.join(FAMILIES)}")

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict; `provenance` gets this instaseg's version when it has none."""
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "config": self.config,
            "model": self.state_dict,
            "categories": self.categories,
            "operating_point": self.operating_point.to_dict() if self.operating_point else None,
            "provenance": {"instaseg_version": __version__, **self.provenance},
        }

    def half_precision(self) -> ModelFile:
        """A copy with its float32 weights stored as float16: half the file size, for shipping. Loading
        copies them into the float32 model (`load_state_dict` converts), so inference stays float32; only
        the weights are rounded (relative error at most 2^-11). `WeightsError` if a weight does not fit
        float16."""
        limit = torch.finfo(torch.float16).max
        state = {}
        for name, tensor in self.state_dict.items():
            if tensor.dtype == torch.float32:
                if tensor.numel() and float(tensor.abs().max()) > limit:
                    raise WeightsError(f"weight {name!r} holds values beyond float16's range ({limit:g})")
                tensor = tensor.half()
            state[name] = tensor
        return dataclasses.replace(
            self, state_dict=state, provenance={**self.provenance, "weights": "float16"}
        )

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write atomically (a failed write leaves the old file); `extra` keys ride along (training state)."""
        clash = sorted(set(extra) & set(MODEL_FILE_KEYS))
        if clash:
            raise ValueError(f"model file {path}: extra keys {clash} would replace model-file fields")
        with atomic_write(path, "wb") as stream:
            torch.save({**self.to_dict(), **extra}, stream)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> ModelFile:
        """Parse an on-disk dict (version 1 or 2); `WeightsError` names `source` and what is wrong."""
        if "config" not in data or "model" not in data:
            raise WeightsError(
                f"{source}: not an instaseg model file (no 'config' and 'model'); a plain state dict "
                "carries no architecture"
            )
        version = data.get("format_version", 1)
        if version not in (1, FORMAT_VERSION):
            raise WeightsError(
                f"{source}: model file format {version}, but this instaseg {__version__} reads formats 1 "
                f"and {FORMAT_VERSION}"
            )
        if not isinstance(data["config"], dict):
            raise WeightsError(f"{source}: 'config' must be a mapping, got {type(data['config']).__name__}")
        provenance = dict(data.get("provenance") or {})
        if version == 1:
            provenance.update({key: data[key] for key in _V1_PROVENANCE_KEYS if key in data})
        try:
            point = data.get("operating_point")
            return cls(
                family=data.get("family", "mask_rcnn"),
                config=data["config"],
                state_dict=tensors_only(data["model"], source),
                categories=check_categories(data.get("categories"), source),
                operating_point=OperatingPoint.from_dict(point, source) if point is not None else None,
                provenance=provenance,
            )
        except WeightsError:
            raise
        except ValueError as error:
            raise WeightsError(str(error)) from None

    @classmethod
    def read(cls, path: str | Path) -> ModelFile:
        """Read a model file (or training checkpoint) from `path` onto the CPU."""
        return cls.from_dict(read_weights(path), str(path))


def read_weights(path: str | Path) -> dict[str, Any]:
    """Load a model file or state-dict file on the CPU (tensors and plain data only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt / foreign files
        raise WeightsError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def tensors_only(state_dict: Any, source: str) -> dict[str, torch.Tensor]:
    """`state_dict` itself, checked to map names to tensors."""
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{source}: the state dict is a {type(state_dict).__name__}, not a mapping")
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: not a state dict: entries {bad[:5]} are not tensors")
    return dict(state_dict)


def check_categories(categories: Any, source: str) -> list[dict] | None:
    """`[{"id": int, "name": str}]` in class order (names default to the id), or None; `ValueError` names
    the entry that is not one."""
    if categories is None:
        return None
    if not isinstance(categories, (list, tuple)):
        raise ValueError(f"{source}: categories must be a list of {{'id', 'name'}} dicts")
    checked = []
    for index, category in enumerate(categories):
        if (
            not isinstance(category, dict)
            or isinstance(category.get("id"), bool)
            or not isinstance(category.get("id"), int)
        ):
            raise ValueError(
                f"{source}: categories[{index}] must be a dict with an integer 'id' and a 'name'"
            )
        checked.append({"id": int(category["id"]), "name": str(category.get("name", category["id"]))})
    return checked
