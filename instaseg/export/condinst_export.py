"""Export a CondInst's whole inference path to one ONNX file: body, PAFPN, dense head, score filter, top-k,
batched NMS (`NonMaxSuppression`), the dynamic mask heads on RoIAligned mask features (`RoiAlign`, batched
matrix products), so the graph's outputs are final detections with their box-relative mask logits.

The contract is `instaseg.models.onnx_metadata`'s (format 1): input `image (1, 3, h, w)` (normalised, scaled
down only as `NoUpscaleTransform` does, not padded), outputs `boxes`, `scores`, `labels`, `mask_logits (N,
28, 28)`; the metadata's extra entry `family` = "condinst" tells `instaseg.models.load_model` to run it with
`OnnxCondInst`. `export_onnx` (instaseg.export.onnx_export) dispatches here for CondInst models.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.export.tracing import trace_to_onnx
from instaseg.io.atomic import atomic_write
from instaseg.models.condinst.model import CondInst
from instaseg.models.norm import fold_frozen_batchnorm
from instaseg.models.onnx_metadata import (
    ExportMetadata,
    require_onnx,
    write_metadata,
)

FAMILY = "condinst"
# Weights static int8 quantization leaves float: the body, as for Mask R-CNN (quantize.STATIC_FLOAT_WEIGHTS).
STATIC_FLOAT_WEIGHTS = ("model.body.",)


class CondInstGraph(nn.Module):
    """What goes into the ONNX graph: `forward(image (1, 3, h, w)) -> (boxes (N, 4), scores (N,), labels
    (N,) int64, mask_logits (N, M, M))`, detections in pixels of the (scaled) image; the image is zero-padded
    to a multiple of `size_divisible` here, exactly like `batch_images`."""

    def __init__(self, model: CondInst) -> None:
        super().__init__()
        self.model = model
        self.size_divisible = model.transform.size_divisible

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2], image.shape[-1]
        padded = F.pad(image, (0, (-width) % self.size_divisible, 0, (-height) % self.size_divisible))
        (detections,) = self.model.detect_batch(padded, [(height, width)])
        return detections.boxes, detections.scores, detections.labels, detections.mask_logits


def export_condinst_onnx(
    model: CondInst,
    path: str | Path,
    *,
    opset: int,
    translation_table: dict[Any, Any],
    dynamic: bool = True,
    input_size: tuple[int, int] | None = None,
    fold_batchnorm: bool = True,
    categories: Sequence[dict] | None = None,
    source: str = "",
    source_sha256: str | None = None,
) -> ExportMetadata:
    """Write `model`'s inference graph (`CondInstGraph`) with its metadata to `path` atomically.

    `translation_table`: the ONNX translations of instaseg's opaque operators (NMS, RoIAlign), from
    `instaseg.export.onnx_export`. `dynamic`: any image size; else only images of `input_size (h, w)` (default
    256 x 256). `fold_batchnorm` folds the body's frozen batch norm into its convolutions (on a copy; ONNX
    Runtime fuses the neck's and head's batch norms itself). Returns the metadata written.
    """
    onnx = require_onnx()
    categories = model.categories if categories is None else categories
    model = copy.deepcopy(model).eval()
    folded = fold_frozen_batchnorm(model.body) if fold_batchnorm else 0
    graph = CondInstGraph(model).eval()
    example_size = input_size or (256, 256)
    model_proto = trace_to_onnx(graph, example_size, dynamic, opset, translation_table)
    transform = model.transform
    metadata = ExportMetadata(
        num_classes=model.num_classes,
        min_size=int(transform.max_size),
        max_size=int(transform.max_size),
        image_mean=tuple(float(v) for v in transform.image_mean.flatten()),
        image_std=tuple(float(v) for v in transform.image_std.flatten()),
        size_divisible=int(transform.size_divisible),
        max_image_pixels=int(model.max_image_pixels),
        opset=opset,
        categories=[dict(c) for c in categories] if categories is not None else None,
        operating_point=model.operating_point.to_dict() if model.operating_point else None,
        input_size=None if dynamic else tuple(example_size),
        source=source,
        source_sha256=source_sha256,
        bn_folded=folded > 0,
        config=model.config.to_dict(),
        extra={"family": FAMILY},
    )
    write_metadata(model_proto, metadata)
    onnx.checker.check_model(model_proto)
    with atomic_write(path) as stream:
        stream.write(model_proto.SerializeToString())
    return metadata
