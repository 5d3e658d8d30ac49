"""ONNX Runtime backend: `OnnxMaskRCNN` runs an `instaseg export` file as a `SegmentationModel`.

Per image: `prepare_images` (the model's input checks) -> `ImageTransform` (resize, normalise; built from the
file's metadata) -> the graph on ONNX Runtime (padding, then `MaskRCNN.detect_batch` as traced: backbone ...
mask head; see `instaseg.export`) -> `detections_to_instances` (boxes to original pixels, masks pasted). The
same Python code as `MaskRCNN` on both sides of the graph, so both backends return the same `Instances`
fields, `mask_logits` included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from instaseg.models.inputs import prepare_images
from instaseg.models.mask_rcnn import detections_to_instances, mask_rcnn_summary
from instaseg.models.model_file import check_categories
from instaseg.models.onnx_metadata import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExportMetadata,
    OnnxModelError,
    require_onnx,
)
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions, OperatingPoint
from instaseg.models.roi_heads import Detections
from instaseg.models.transform import ImageTransform
from instaseg.ops import batched_nms
from instaseg.structures.instances import Instances


class OnnxMaskRCNN(nn.Module):
    """A `SegmentationModel`: `detect(images, options)` like an eval-mode `MaskRCNN`, computed by ONNX
    Runtime on the CPU.

    `images`: `(3, H, W)` float tensors in [0, 1] (any device; they are read on the CPU). Each image is one
    graph call (the exported graph takes batch size 1). `threads`: ONNX Runtime intra-op threads (default:
    `torch.get_num_threads()`, so both backends follow `torch.set_num_threads` / `OMP_NUM_THREADS`). Raises
    `OnnxModelError` (a `ValueError`) for a file that is not an instaseg export of this format version.
    Attributes: `metadata` (`ExportMetadata`), `categories` and `operating_point` (from the metadata, or
    None), `num_classes`, `transform` (the resize).

    The graph's score threshold, NMS IoU and detection limit were fixed when it was exported (the model
    config's); `DetectOptions` can only make them stricter (a higher score threshold, a lower IoU, fewer
    detections), applied to the graph's outputs; a looser one raises `ValueError` naming the option.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        require_onnx()
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ONNX Runtime raises its own exception types for unreadable files
            raise OnnxModelError(f"{self.path}: ONNX Runtime cannot load it ({error})") from None
        meta = self.session.get_modelmeta()
        self.metadata = ExportMetadata.from_props(
            meta.custom_metadata_map, str(self.path), meta.producer_name
        )
        inputs = tuple(node.name for node in self.session.get_inputs())
        outputs = tuple(node.name for node in self.session.get_outputs())
        if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
            raise OnnxModelError(
                f"{self.path}: graph inputs {list(inputs)} and outputs {list(outputs)}, expected "
                f"{list(INPUT_NAMES)} and {list(OUTPUT_NAMES)}"
            )
        self.transform = transform_for(self.metadata)
        self.categories = check_categories(self.metadata.categories, str(self.path))
        point = self.metadata.operating_point
        self.operating_point = OperatingPoint.from_dict(point, str(self.path)) if point else None
        config = self.metadata.config or {}
        # The graph's own limits (MaskRCNNConfig's defaults for a file exported without a config).
        self.exported_limits = {
            "score_threshold": float(config.get("box_score_thresh", 0.05)),
            "iou_threshold": float(config.get("box_nms_thresh", 0.5)),
            "max_detections": int(config.get("box_detections_per_img", 100)),
        }

    @property
    def num_classes(self) -> int:
        """Number of classes including background (class 0)."""
        return self.metadata.num_classes

    def summary(self) -> dict[str, object]:
        """Family, backbone, classes and input sizes (from the metadata), and the runtime, for listings."""
        return {
            **mask_rcnn_summary(self.metadata.config, self.num_classes),
            "runtime": "onnxruntime",
            "quantization": self.metadata.quantization,
        }

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> tuple[int, int]:
        """The padded size of the resized image (each image is its own graph call, so any key would do)."""
        return self.transform.padded_size(image_size, options.input_scale)

    def forward(self, images: list[Tensor]) -> list[Instances]:
        return self.detect(images)

    def detect(
        self, images: Sequence[Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """`(3, H, W)` [0, 1] images -> one `Instances` each, in original pixels (see the class docstring)."""
        self._check_options(options)
        images = prepare_images([image.cpu() for image in images], self.metadata.max_image_pixels)
        return [self._run(image, options) for image in images]

    def _check_options(self, options: DetectOptions) -> None:
        limits = self.exported_limits
        looser = [
            f"{name}={value} (the graph keeps {limits[name]})"
            for name, value, is_looser in (
                ("score_threshold", options.score_threshold, lambda v: v < limits["score_threshold"]),
                ("iou_threshold", options.iou_threshold, lambda v: v > limits["iou_threshold"]),
                ("max_detections", options.max_detections, lambda v: v > limits["max_detections"]),
            )
            if value is not None and is_looser(value)
        ]
        if looser:
            raise ValueError(
                f"{self.path}: the exported graph cannot loosen its own limits: {', '.join(looser)}; "
                "re-export the model with those settings in its config"
            )

    def _run(self, image: Tensor, options: DetectOptions) -> Instances:
        original_size = (image.shape[-2], image.shape[-1])
        pixels, resized_size = graph_input(self.transform, image, options.input_scale)
        expected = self.metadata.input_size
        if expected is not None and tuple(resized_size) != tuple(expected):
            raise ValueError(
                f"{self.path} was exported for resized images of {expected[0]}x{expected[1]} only (no "
                f"--dynamic); this image resizes to {resized_size[0]}x{resized_size[1]}"
            )
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: pixels})
        detections = _stricter(Detections(*(torch.from_numpy(output) for output in outputs)), options)
        return detections_to_instances(self.transform, detections, resized_size, original_size)


def _stricter(detections: Detections, options: DetectOptions) -> Detections:
    """The graph's detections (by decreasing score) with `options`' stricter limits applied."""
    keep = torch.arange(detections.scores.shape[0])
    if options.score_threshold is not None:
        keep = keep[detections.scores[keep] > options.score_threshold]
    if options.iou_threshold is not None:
        boxes, scores, labels = detections.boxes[keep], detections.scores[keep], detections.labels[keep]
        keep = keep[batched_nms(boxes, scores, labels, options.iou_threshold)]
    if options.max_detections is not None:
        keep = keep[: options.max_detections]
    return Detections(
        detections.boxes[keep], detections.scores[keep], detections.labels[keep], detections.mask_logits[keep]
    )


def transform_for(metadata: ExportMetadata) -> ImageTransform:
    """The `ImageTransform` (resize, normalise) an exported model's graph expects, from its metadata."""
    return ImageTransform(
        metadata.min_size, metadata.max_size, metadata.image_mean, metadata.image_std, metadata.size_divisible
    ).eval()


def graph_input(
    transform: ImageTransform, image: Tensor, scale: float = 1.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """One `(3, H, W)` float [0, 1] image -> the graph input `(1, 3, h, w)` float32 array (resized and
    normalised by `transform` at `scale`, not padded) and its resized size `(h, w)`."""
    batch, _ = transform([image], scale=scale)
    height, width = batch.image_sizes[0]
    return np.ascontiguousarray(batch.tensors[:, :, :height, :width].numpy()), (height, width)
