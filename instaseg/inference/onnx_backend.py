"""ONNX Runtime backend: `OnnxMaskRCNN` runs an `instaseg export` file behind MaskRCNN's eval-mode interface.

Per image: `prepare_images` (the model's input checks) -> `ImageTransform` (resize, normalise; built from the
file's metadata) -> the graph on ONNX Runtime (padding, backbone ... mask head; see `instaseg.export`) ->
`detections_to_instances` (boxes to original pixels, masks pasted). The same Python code as `MaskRCNN` on both
sides of the graph, so both backends return the same `Instances` fields, `mask_logits` included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from instaseg.export.metadata import INPUT_NAMES, OUTPUT_NAMES, ExportMetadata, OnnxModelError
from instaseg.export.onnx_export import require_onnx
from instaseg.inference.default_model import default_model_path
from instaseg.models.inputs import prepare_images
from instaseg.models.mask_rcnn import detections_to_instances
from instaseg.models.roi_heads import Detections
from instaseg.models.transform import ImageTransform
from instaseg.structures.instances import Instances

BACKENDS = ("torch", "onnx")


class OnnxMaskRCNN(nn.Module):
    """`model(images) -> list[Instances]` like an eval-mode `MaskRCNN`, computed by ONNX Runtime on the CPU.

    `images`: `(3, H, W)` float tensors in [0, 1] (any device; they are read on the CPU). Each image is one
    graph call (the exported graph takes batch size 1). `threads`: ONNX Runtime intra-op threads (default:
    `torch.get_num_threads()`, so both backends follow `torch.set_num_threads` / `OMP_NUM_THREADS`). Raises
    `OnnxModelError` (a `ValueError`) for a file that is not an instaseg export of this format version.
    Attributes: `metadata` (`ExportMetadata`), `categories` (from the metadata, or None), `num_classes`,
    `transform` (the resize, which scale TTA adjusts like MaskRCNN's).
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
        self.categories = self.metadata.categories

    @property
    def num_classes(self) -> int:
        """Number of classes including background (class 0)."""
        return self.metadata.num_classes

    def forward(self, images: list[Tensor]) -> list[Instances]:
        images = prepare_images([image.cpu() for image in images], self.metadata.max_image_pixels)
        return [self._run(image) for image in images]

    def _run(self, image: Tensor) -> Instances:
        original_size = (image.shape[-2], image.shape[-1])
        pixels, resized_size = graph_input(self.transform, image)
        expected = self.metadata.input_size
        if expected is not None and tuple(resized_size) != tuple(expected):
            raise ValueError(
                f"{self.path} was exported for resized images of {expected[0]}x{expected[1]} only (no "
                f"--dynamic); this image resizes to {resized_size[0]}x{resized_size[1]}"
            )
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: pixels})
        detections = Detections(*(torch.from_numpy(output) for output in outputs))
        return detections_to_instances(self.transform, detections, resized_size, original_size)


def transform_for(metadata: ExportMetadata) -> ImageTransform:
    """The `ImageTransform` (resize, normalise) an exported model's graph expects, from its metadata."""
    return ImageTransform(
        metadata.min_size, metadata.max_size, metadata.image_mean, metadata.image_std, metadata.size_divisible
    ).eval()


def graph_input(transform: ImageTransform, image: Tensor) -> tuple[np.ndarray, tuple[int, int]]:
    """One `(3, H, W)` float [0, 1] image -> the graph input `(1, 3, h, w)` float32 array (resized and
    normalised by `transform`, not padded) and its resized size `(h, w)`."""
    batch, _ = transform([image])
    height, width = batch.image_sizes[0]
    return np.ascontiguousarray(batch.tensors[:, :, :height, :width].numpy()), (height, width)


def model_source_for_backend(source: str | Path | None, backend: str | None) -> str | Path | None:
    """What to hand `Predictor` / `load_model` for `source` (None: the bundled default model) on `backend`
    ("torch", "onnx", or None: "onnx" for an `.onnx` file, else "torch"). On "onnx" a checkpoint file is
    exported once to the cache (see `instaseg.export.onnx_model_file`); an `.onnx` file cannot run on
    "torch"."""
    from instaseg.export.onnx_export import onnx_model_file

    if backend not in (None, *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if source is None:
        if backend != "onnx":
            return None
        source = default_model_path()
    is_onnx = Path(source).suffix == ".onnx"
    if backend == "torch" and is_onnx:
        raise ValueError(f"{source} is an ONNX file: it runs on the onnx backend (--backend onnx)")
    if backend == "onnx" and not is_onnx:
        return onnx_model_file(source)
    return source
