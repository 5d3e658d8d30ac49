"""Export a Mask R-CNN's inference path to one ONNX file (`export_onnx`, `export_model`).

The graph (`InferenceGraph`) is the model's own eval-mode code from the padded image to the detections,
traced by `torch.onnx.export(dynamo=True)` (torch.export + onnxscript). Two operators whose output size
depends on the data are opaque while tracing (`instaseg_export::batched_nms`, `instaseg_export::roi_align`,
see `instaseg.ops`) and are translated here to ONNX `NonMaxSuppression` and `RoiAlign`. What stays in Python,
on both sides of the graph: image loading, the resize and normalisation (`ImageTransform`), and mapping boxes
and 28x28 masks back to the original image (`ImageTransform.postprocess`, `paste_masks_in_image`). See
docs/deployment.md for the reasons.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg import __version__
from instaseg.export.condinst_export import export_condinst_onnx
from instaseg.export.sam_onnx import SamExport, export_sam
from instaseg.export.tracing import trace_to_onnx
from instaseg.io.atomic import atomic_write
from instaseg.io.files import file_sha256
from instaseg.models.condinst.model import CondInst
from instaseg.models.default_model import bundled_model_source
from instaseg.models.loading import load_model
from instaseg.models.mask_head import SubpixelMaskPredictor
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.models.model_file import WeightsError
from instaseg.models.norm import fold_frozen_batchnorm
from instaseg.models.onnx_metadata import (
    FORMAT_VERSION,
    ExportError,
    ExportMetadata,
    require_onnx,
    write_metadata,
)
from instaseg.models.promptable import PromptableSam
from instaseg.models.sam.automatic_masks import SamEverythingModel
from instaseg.models.transform import ImageBatch

__all__ = [
    "BACKENDS",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportError",
    "InferenceGraph",
    "export_model",
    "export_onnx",
    "model_source_for_backend",
    "onnx_cache_dir",
    "onnx_model_file",
    "require_onnx",
]

# torch's exporter writes opset 18 natively; 16 is the first with RoiAlign's `output_half_pixel` mode (what
# torchvision's aligned=False computes) and onnx's version converter goes down to it.
DEFAULT_OPSET = 18
MIN_OPSET = 16
MAX_OPSET = 21
# Where a model runs: eager PyTorch, or its exported graph on ONNX Runtime.
BACKENDS = ("torch", "onnx")
_log = logging.getLogger(__name__)


def check_opset(opset: int) -> None:
    """Refuse opsets that lack an operator of the graph, naming the operator."""
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is too low: RoiAlign with coordinate_transformation_mode='output_half_pixel' "
            f"(torchvision's aligned=False pooling of Mask R-CNN) needs opset >= {MIN_OPSET}"
        )
    if opset > MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: instaseg exports opsets {MIN_OPSET}..{MAX_OPSET}")


class InferenceGraph(nn.Module):
    """What goes into the ONNX graph: `forward(image (1, 3, h, w)) -> (boxes, scores, labels, mask_logits)`.

    `image` is one resized, normalised, unpadded image (as `ImageTransform` makes it); it is zero-padded to a
    multiple of `size_divisible` here, exactly like `batch_images`, so that `h, w` stay the resized size
    that boxes are clipped to. Outputs are `MaskRCNN`'s eval-mode detections in resized-image pixels:
    `boxes (N, 4)` x1y1x2y2, `scores (N,)`, `labels (N,)` int64, `mask_logits (N, 28, 28)`. Holds the model's
    own modules, whose RoI poolers must have fixed level scales (`MultiScaleRoIAlign(scales=...)`, as
    `build_model` makes them): inferring scales needs sizes that are symbolic in a traced graph.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model
        self.size_divisible = model.transform.size_divisible
        roi_heads = model.roi_heads
        if roi_heads.box_roi_pool.scales is None or roi_heads.mask_roi_pool.scales is None:
            raise ExportError(
                "the model's RoI poolers infer their level scales from image sizes, which a traced graph "
                "does not know: build them with MultiScaleRoIAlign(..., scales=...)"
            )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2], image.shape[-1]
        padded = F.pad(image, (0, (-width) % self.size_divisible, 0, (-height) % self.size_divisible))
        (detections,) = self.model.detect_batch(ImageBatch(padded, [(height, width)]))
        return detections.boxes, detections.scores, detections.labels, detections.mask_logits


def export_onnx(
    model: MaskRCNN,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    input_size: tuple[int, int] | None = None,
    fold_batchnorm: bool = True,
    categories: Sequence[dict] | None = None,
    source: str = "",
    source_sha256: str | None = None,
) -> ExportMetadata:
    """Write `model`'s inference graph (see `InferenceGraph`) with its metadata to `path` (atomically).

    `dynamic`: any image size (the default); otherwise the graph takes only resized images of `input_size`
    `(h, w)` (default: `min_size` square). `fold_batchnorm` folds frozen batch norm into the convolutions
    before tracing, and the mask predictor is traced as `SubpixelMaskPredictor` (1x1 convs, which static int8
    quantizes); both act on a copy, the model itself is not changed. `categories` (default: the model's),
    the model's operating point, `source` and `source_sha256` are recorded in the metadata. Returns the
    metadata written.
    """
    onnx = require_onnx()
    check_opset(opset)
    if isinstance(model, CondInst):
        return export_condinst_onnx(
            model,
            path,
            opset=opset,
            translation_table=_translation_table(),
            dynamic=dynamic,
            input_size=input_size,
            fold_batchnorm=fold_batchnorm,
            categories=categories,
            source=source,
            source_sha256=source_sha256,
        )
    if not isinstance(model, MaskRCNN):
        raise ExportError(f"only instaseg MaskRCNN models can be exported, got {type(model).__name__}")
    if model.semantic_head is not None:
        raise ExportError(
            "Mask R-CNN with a semantic head (Panoptic FPN) cannot be exported yet: the graph has no stuff "
            "output; export the instance model (num_stuff_classes: 0)"
        )
    categories = model.categories if categories is None else categories
    model = copy.deepcopy(model).eval()
    folded = fold_frozen_batchnorm(model.backbone) if fold_batchnorm else 0
    model.roi_heads.mask_predictor = SubpixelMaskPredictor.from_predictor(model.roi_heads.mask_predictor)
    graph = InferenceGraph(model).eval()
    transform = model.transform
    example_size = input_size or (transform.min_size[-1], transform.min_size[-1])
    model_proto = trace_to_onnx(graph, example_size, dynamic, opset, _translation_table())
    metadata = ExportMetadata(
        num_classes=model.num_classes,
        min_size=int(transform.min_size[-1]),
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
        config=model.config.to_dict() if model.config is not None else None,
    )
    write_metadata(model_proto, metadata)
    onnx.checker.check_model(model_proto)
    with atomic_write(path) as stream:
        stream.write(model_proto.SerializeToString())
    return metadata


def export_model(source: str | Path | None, path: str | Path, **options: Any) -> ExportMetadata | SamExport:
    """Export any PyTorch model source `load_model` accepts (a model file, a torchvision-layout state dict, a
    model name or config; None: the bundled default model) to `path`; the file's categories, operating point
    and sha256 go into the metadata. `options` are `export_onnx`'s. A SAM / MobileSAM checkpoint gives its
    encoder and decoder graphs beside `path` instead (`sam_onnx.export_sam`; only `opset` applies)."""
    source = bundled_model_source(source)
    if Path(source).suffix == ".onnx":
        raise ExportError(
            f"{source} is already an ONNX file; export takes a PyTorch checkpoint or a model name"
        )
    try:
        model = load_model(source)
    except WeightsError as error:  # torch's size-mismatch report spans many lines: make it one
        raise ExportError(
            f"cannot export {source}: its weights do not match its config: {' '.join(str(error).split())}"
        ) from None
    if isinstance(model, SamEverythingModel) and isinstance(model.sam, PromptableSam):
        raise ExportError(
            f"cannot export {source}: instaseg's promptable model has no ONNX graphs (its click and box maps "
            "and its refiner are not in SAM's two graphs); run it in PyTorch"
        )
    if isinstance(model, SamEverythingModel):
        return export_sam(model.sam, path, opset=options.get("opset", DEFAULT_OPSET))
    digest = file_sha256(Path(source)) if Path(source).is_file() else None
    if not isinstance(model, (MaskRCNN, CondInst)):
        raise ExportError(f"cannot export {source}: only Mask R-CNN, CondInst and SAM models export to ONNX")
    return export_onnx(model, path, source=str(source), source_sha256=digest, **options)


def onnx_cache_dir() -> Path:
    """Where checkpoints exported for `--backend onnx` are kept: `$XDG_CACHE_HOME/instaseg/onnx` (default
    `~/.cache/instaseg/onnx`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "instaseg" / "onnx"


def onnx_model_file(source: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX file for a model source: an `.onnx` path itself; a checkpoint (or config) file exported once
    into `onnx_cache_dir()`, named by its sha256, this instaseg version and the opset, and reused while
    those stay the same. Model names have random weights and no file to key a cache on: they are refused."""
    path = Path(source)
    if path.suffix == ".onnx":
        return path
    if not path.is_file():
        raise ExportError(
            f"the ONNX backend needs an .onnx file or a checkpoint file to export; {str(source)!r} is "
            "neither (export a named model with `instaseg export` first)"
        )
    digest = file_sha256(path)
    cached = onnx_cache_dir() / f"{digest[:32]}-v{__version__}-f{FORMAT_VERSION}-opset{opset}.onnx"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _log.info("exporting %s to %s for the ONNX Runtime backend", path, cached)
        export_model(path, cached, opset=opset)
    return cached


def model_source_for_backend(source: str | Path | None, backend: str | None) -> str | Path | None:
    """What to hand `load_model` for `source` (None: the bundled default model) on `backend` ("torch",
    "onnx", or None: "onnx" for an `.onnx` file, else "torch"). On "onnx" a model file is exported once to
    the cache (`onnx_model_file`); an `.onnx` file cannot run on "torch"."""
    if backend not in (None, *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if source is None and backend != "onnx":
        return None
    source = bundled_model_source(source)
    is_onnx = Path(source).suffix == ".onnx"
    if backend == "torch" and is_onnx:
        raise ValueError(f"{source} is an ONNX file: it runs on the onnx backend (--backend onnx)")
    if backend == "onnx" and not is_onnx:
        return onnx_model_file(source)
    return source


def _translation_table() -> dict[Any, Any]:
    """ONNX translations of the opaque operators of `instaseg.ops` (onnxscript functions)."""
    from onnxscript import INT64
    from onnxscript import opset18 as op

    def batched_nms(boxes, scores, idxs, iou_threshold, max_kept):
        # One NonMaxSuppression class per category: row c of the (1, C, N) scores keeps the scores of
        # category c and -inf elsewhere, which the score threshold (the lowest float) drops. With `max_kept`
        # each category's greedy pass stops after that many boxes: the best `max_kept` overall are among them.
        categories = op.Add(op.ReduceMax(op.Concat(idxs, op.Constant(value_ints=[0]), axis=0), keepdims=1), 1)
        category_ids = op.Range(op.Constant(value_int=0), op.Squeeze(categories), op.Constant(value_int=1))
        member = op.Equal(op.Unsqueeze(category_ids, [1]), op.Unsqueeze(idxs, [0]))
        filler = op.Constant(value_float=float("-inf"))
        class_scores = op.Where(member, op.Unsqueeze(scores, [0]), filler)
        per_class = op.Shape(scores) if max_kept is None else op.Constant(value_ints=[max_kept])
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, [0]),
            op.Unsqueeze(class_scores, [0]),
            per_class,
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[-3.4028234663852886e38]),
        )
        kept = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])
        # Order as batched_nms: decreasing score, equal scores by index (TopK keeps lower positions first).
        count = op.Shape(kept)
        ascending, _ = op.TopK(kept, count, largest=0, sorted=1)
        _, order = op.TopK(op.Gather(scores, ascending), count, largest=1, sorted=1)
        ordered = op.Gather(ascending, order)
        return ordered if max_kept is None else op.Slice(ordered, [0], [max_kept], [0])

    def roi_align(input, rois, spatial_scale, out_h, out_w, sampling_ratio, aligned):
        batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1], [1]), [-1]), to=INT64.dtype)
        return op.RoiAlign(
            input,
            op.Slice(rois, [1], [5], [1], [1]),
            batch_indices,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
            mode="avg",
            output_height=out_h,
            output_width=out_w,
            sampling_ratio=sampling_ratio,
            spatial_scale=spatial_scale,
        )

    return {
        torch.ops.instaseg_export.batched_nms.default: batched_nms,
        torch.ops.instaseg_export.roi_align.default: roi_align,
    }
