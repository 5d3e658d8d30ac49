"""What an exported ONNX file says about itself: the `instaseg.*` entries of the model's `metadata_props`.

Written by `instaseg.export` and read by `instaseg.models.onnx_runtime` (which runs the file), so it lives
below both.

Every value is a string; structured values are JSON. The keys (see `ExportMetadata` for their meaning):

    instaseg.format_version   the graph contract below; a reader refuses any other version
    instaseg.version          the instaseg version that exported the file
    instaseg.num_classes      classes including background (the model predicts 1..num_classes-1)
    instaseg.categories       JSON [{"id", "name"}] in model class order, or null
    instaseg.min_size / instaseg.max_size / instaseg.size_divisible / instaseg.max_image_pixels
    instaseg.image_mean / instaseg.image_std      JSON lists of 3 floats (RGB, images in [0, 1])
    instaseg.input_size       "dynamic", or "HxW" for a graph exported for one resized image size only
    instaseg.source / instaseg.source_sha256      what was exported (name or path) and the file's sha256
    instaseg.opset            the ONNX opset of the default domain
    instaseg.bn_folded        "true" when frozen batch norm was folded into the convolutions
    instaseg.quantization     "none", "int8-dynamic" or "int8-static"
    instaseg.config           JSON of the model's MaskRCNNConfig (null for a model built without one)
    instaseg.operating_point  JSON `OperatingPoint.to_dict()` of the model file, or null (older files lack it)

Graph contract of format version 1: one input `image (1, 3, h, w) float32`, the image resized (short side to
`min_size`, long side at most `max_size`) and normalised with `image_mean` / `image_std`, not padded; outputs
`boxes (N, 4) float32` x1y1x2y2 in pixels of that resized image, `scores (N,) float32`, `labels (N,) int64`
(model classes 1..num_classes-1) and `mask_logits (N, 28, 28) float32` of each detection's own class, in its
box, by decreasing score.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import ModuleType
from typing import Any

from instaseg import __version__


class ExportError(ValueError):
    """The model cannot be exported as asked (bad opset, missing onnx packages, a failed trace)."""


FORMAT_VERSION = 1
PREFIX = "instaseg."
INPUT_NAMES = ("image",)
OUTPUT_NAMES = ("boxes", "scores", "labels", "mask_logits")
QUANTIZATION_KINDS = ("none", "int8-dynamic", "int8-static")


def require_onnx() -> ModuleType:
    """The `onnx` module, or an `ExportError` saying how to install the ONNX extra."""
    try:
        for name in ("onnxscript", "onnxruntime"):
            importlib.import_module(name)
        return importlib.import_module("onnx")
    except ImportError as error:
        raise ExportError(
            f"ONNX export and the ONNX Runtime backend need onnx, onnxscript and onnxruntime ({error}): "
            "pip install 'instaseg[onnx]'"
        ) from None


class OnnxModelError(ValueError):
    """An ONNX file instaseg cannot use: not an instaseg export, another export format version, or bad
    metadata. The message names the file and what is wrong."""


@dataclass(frozen=True)
class ExportMetadata:
    """The metadata of one exported model; `to_props` / `from_props` convert to and from `metadata_props`.

    `input_size` is None for a graph with dynamic image size, else the one resized `(h, w)` it accepts.
    """

    num_classes: int
    min_size: int
    max_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    size_divisible: int
    max_image_pixels: int
    opset: int
    categories: list[dict] | None = None
    input_size: tuple[int, int] | None = None
    source: str = ""
    source_sha256: str | None = None
    bn_folded: bool = False
    quantization: str = "none"
    config: dict[str, Any] | None = None
    operating_point: dict[str, Any] | None = None
    version: str = __version__
    format_version: int = FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def with_quantization(self, kind: str) -> ExportMetadata:
        if kind not in QUANTIZATION_KINDS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_KINDS)}, got {kind!r}")
        return replace(self, quantization=kind)

    def to_props(self) -> dict[str, str]:
        """`instaseg.<key>` -> string value, for `onnx.ModelProto.metadata_props`."""
        values = {
            "format_version": str(self.format_version),
            "version": self.version,
            "num_classes": str(self.num_classes),
            "categories": json.dumps(self.categories),
            "min_size": str(self.min_size),
            "max_size": str(self.max_size),
            "image_mean": json.dumps(list(self.image_mean)),
            "image_std": json.dumps(list(self.image_std)),
            "size_divisible": str(self.size_divisible),
            "max_image_pixels": str(self.max_image_pixels),
            "input_size": "dynamic"
            if self.input_size is None
            else f"{self.input_size[0]}x{self.input_size[1]}",
            "source": self.source,
            "source_sha256": self.source_sha256 or "",
            "opset": str(self.opset),
            "bn_folded": "true" if self.bn_folded else "false",
            "quantization": self.quantization,
            "config": json.dumps(self.config),
            "operating_point": json.dumps(self.operating_point),
        }
        return {PREFIX + key: value for key, value in {**values, **self.extra}.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str, producer: str = "") -> ExportMetadata:
        """Parse and check the `metadata_props` of the file `source`; `OnnxModelError` says what is wrong."""
        if PREFIX + "format_version" not in props:
            made_by = f" (made by {producer!r})" if producer else ""
            raise OnnxModelError(
                f"{source}: not an instaseg export{made_by}: it has no 'instaseg.format_version' metadata; "
                "export the model with `instaseg export`"
            )
        version = props[PREFIX + "format_version"]
        if version != str(FORMAT_VERSION):
            raise OnnxModelError(
                f"{source}: instaseg export format {version} (written by instaseg "
                f"{props.get(PREFIX + 'version', '?')}), but this instaseg {__version__} reads format "
                f"{FORMAT_VERSION} only: re-export the checkpoint with this version's `instaseg export`"
            )
        try:
            input_size = props[PREFIX + "input_size"]
            known = {PREFIX + f.name for f in fields(cls)}
            metadata = cls(
                num_classes=int(props[PREFIX + "num_classes"]),
                min_size=int(props[PREFIX + "min_size"]),
                max_size=int(props[PREFIX + "max_size"]),
                image_mean=tuple(float(v) for v in json.loads(props[PREFIX + "image_mean"])),
                image_std=tuple(float(v) for v in json.loads(props[PREFIX + "image_std"])),
                size_divisible=int(props[PREFIX + "size_divisible"]),
                max_image_pixels=int(props[PREFIX + "max_image_pixels"]),
                opset=int(props[PREFIX + "opset"]),
                categories=json.loads(props[PREFIX + "categories"]),
                input_size=None
                if input_size == "dynamic"
                else tuple(int(v) for v in input_size.split("x", 1)),
                source=props.get(PREFIX + "source", ""),
                source_sha256=props.get(PREFIX + "source_sha256") or None,
                bn_folded=props.get(PREFIX + "bn_folded") == "true",
                quantization=props.get(PREFIX + "quantization", "none"),
                config=json.loads(props.get(PREFIX + "config", "null")),
                operating_point=json.loads(props.get(PREFIX + "operating_point", "null")),
                version=props.get(PREFIX + "version", ""),
                extra={
                    key[len(PREFIX) :]: value
                    for key, value in props.items()
                    if key.startswith(PREFIX) and key not in known
                },
            )
        except (KeyError, ValueError, TypeError) as error:
            raise OnnxModelError(
                f"{source}: broken instaseg metadata ({type(error).__name__}: {error})"
            ) from None
        if len(metadata.image_mean) != 3 or len(metadata.image_std) != 3 or metadata.num_classes < 2:
            raise OnnxModelError(
                f"{source}: broken instaseg metadata: image_mean / image_std need 3 values and num_classes "
                f"at least 2; got {metadata.image_mean}, {metadata.image_std}, {metadata.num_classes}"
            )
        return metadata


def write_metadata(model_proto: Any, metadata: ExportMetadata) -> None:
    """Replace the `instaseg.*` entries of an `onnx.ModelProto`'s `metadata_props` with `metadata`'s."""
    kept = [(p.key, p.value) for p in model_proto.metadata_props if not p.key.startswith(PREFIX)]
    del model_proto.metadata_props[:]
    for key, value in [*kept, *metadata.to_props().items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str) -> ExportMetadata:
    """The checked metadata of the ONNX file at `path` (raises `OnnxModelError` for a foreign file)."""
    onnx = require_onnx()
    try:
        model_proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError for files that are not ONNX
        raise OnnxModelError(f"{path}: not an ONNX model ({type(error).__name__}: {error})") from None
    props = {p.key: p.value for p in model_proto.metadata_props}
    return ExportMetadata.from_props(props, str(path), model_proto.producer_name)
