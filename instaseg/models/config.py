"""`MaskRCNNConfig`: every architecture and inference setting of a Mask R-CNN, as a dataclass that round-trips
to a small YAML / JSON file (and into checkpoints, so that a checkpoint carries its own architecture)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from instaseg.io.atomic import atomic_write
from instaseg.io.config_schema import ConfigError, parse_yaml
from instaseg.models.inputs import DEFAULT_MAX_IMAGE_PIXELS
from instaseg.models.norm import NORM_KINDS
from instaseg.models.resnet import RESNET_DEPTHS

BACKBONES = ("resnet", "efficientnet_lite0")


SettingsT = TypeVar("SettingsT", bound="ModelSettings")


class ModelSettings:
    """The plain-data round trip every family's architecture config (a dataclass of numbers, strings and
    tuples) shares: `to_dict` for model files and YAML, `from_dict` with each value checked against the type
    of its field's default."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / YAML types only (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls: type[SettingsT], data: dict[str, Any], source: str = "config") -> SettingsT:
        """Build from `to_dict`'s output; missing keys take defaults, unknown keys raise `ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        defaults = {item.name: item.default for item in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in defaults:
                raise ConfigError(f"{source}: unknown key {key!r} (known keys: {', '.join(defaults)})")
            values[key] = _coerce(key, value, defaults[key], source)
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


@dataclass
class MaskRCNNConfig(ModelSettings):
    """Mask R-CNN settings; defaults are torchvision's `maskrcnn_resnet50_fpn` defaults.

    `num_classes` counts the background (COCO: 91). `num_stuff_classes` > 0 adds Panoptic FPN's semantic
    head (`semantic_head.py`) for that many stuff classes, model classes num_classes..num_classes + S - 1;
    its loss is weighted by `semantic_loss_weight`, and stuff regions smaller than `stuff_min_area` pixels
    are not output. `backbone` is `"resnet"` (depth `backbone_depth`) or
    `"efficientnet_lite0"`. `frozen_bn_eps` only affects `norm="frozen_bn"`; torchvision's COCO weights need
    0.0. `box_head_dim` is the width of the box head's two FC layers, `mask_head_channels` that of the mask
    head's convolutions. Sizes are in pixels; thresholds are IoUs or probabilities in [0, 1].
    """

    num_classes: int = 91
    backbone: str = "resnet"
    backbone_depth: int = 50
    norm: str = "frozen_bn"
    frozen_bn_eps: float = 1e-5
    trainable_layers: int = 3
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, ...] = field(default=(10.0, 10.0, 5.0, 5.0))
    num_stuff_classes: int = 0
    semantic_head_channels: int = 128
    semantic_loss_weight: float = 0.5
    stuff_min_area: int = 64

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.backbone == "resnet" and self.backbone_depth not in RESNET_DEPTHS:
            raise ConfigError(f"backbone_depth: {self.backbone_depth} is not one of {sorted(RESNET_DEPTHS)}")
        if self.norm not in NORM_KINDS:
            raise ConfigError(f"norm: {self.norm!r} is not one of {', '.join(NORM_KINDS)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: {self.num_classes} must be at least 2 (background + one class)")
        if self.num_stuff_classes < 0 or self.stuff_min_area < 0 or self.semantic_loss_weight < 0:
            raise ConfigError(
                f"num_stuff_classes {self.num_stuff_classes}, stuff_min_area {self.stuff_min_area} and "
                f"semantic_loss_weight {self.semantic_loss_weight} must be >= 0"
            )
        for name in ("fpn_channels", "box_head_dim", "mask_head_channels", "semantic_head_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be a positive number of channels")
        if not 0 <= self.trainable_layers <= 5:
            raise ConfigError(f"trainable_layers: {self.trainable_layers} must be between 0 and 5")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(
                f"anchor_sizes: need one size per pyramid level P2..P6 (5), got {self.anchor_sizes}"
            )
        min_sizes = self.min_size if isinstance(self.min_size, tuple) else (self.min_size,)
        if not min_sizes or min(min_sizes) < 1 or self.max_size < 1:
            raise ConfigError(f"min_size {self.min_size} / max_size {self.max_size} must be positive")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{name}: need 3 values (R, G, B), got {getattr(self, name)}")
        if len(self.bbox_reg_weights) != 4:
            raise ConfigError(f"bbox_reg_weights: need 4 values, got {self.bbox_reg_weights}")
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith(("_thresh", "_fraction")) and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{item.name}: {value} must be within [0, 1]")

    def save(self, path: str | Path) -> None:
        """Write as YAML (`.yaml` / `.yml`) or JSON (`.json`), atomically."""
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        elif path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .json")
        with atomic_write(path, "w") as handle:
            handle.write(text)

    @classmethod
    def load(cls, path: str | Path) -> MaskRCNNConfig:
        """Read a YAML or JSON config written by `save` (or by hand); raises `ConfigError` naming the file."""
        path = Path(path)
        if path.suffix not in (".json", ".yaml", ".yml"):
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .json")
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        text = path.read_text()
        if path.suffix != ".json":
            return cls.from_dict(parse_yaml(text, str(path)), source=str(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON: {error}") from None
        return cls.from_dict(data, source=str(path))


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check `value` against the type of the field's default; lists become tuples."""

    def number(item: Any, kind: type) -> Any:
        if (
            isinstance(item, bool)
            or not isinstance(item, (int, float))
            or (kind is int and not isinstance(item, int))
        ):
            raise ConfigError(
                f"{source}: {key} must be {'an integer' if kind is int else 'a number'}, got {item!r}"
            )
        return kind(item)

    if key == "min_size" and isinstance(value, (list, tuple)):
        return tuple(number(item, int) for item in value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(number(item, type(default[0])) for item in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    return number(value, type(default))
