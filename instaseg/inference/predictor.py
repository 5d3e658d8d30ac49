"""`Predictor`: images in (paths, arrays, PIL images), `Instances` out, all inference options in one place.

For each image: `load_image` (EXIF orientation, grayscale / RGBA / 16-bit conversion: see
`instaseg.io.images`) -> `(3, H, W)` float tensor -> the model, through test-time augmentation (`tta`) and,
for images with a side longer than `tiling.min_image_side`, through overlapping tiles -> `postprocess` ->
labels mapped from model classes 1..K to the dataset's category ids. Results are on the CPU, boxes and
masks in original-image pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instaseg.inference.postprocess import PostprocessOptions, binarize_masks, postprocess
from instaseg.inference.tiling import TilingOptions, predict_tiled
from instaseg.inference.tta import TTAOptions, predict_tta
from instaseg.io.images import load_image, to_tensor
from instaseg.models.loading import ModelSource, load_model
from instaseg.models.model_file import check_categories
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, SegmentationModel
from instaseg.structures.instances import Instances

ImageInput = str | Path | np.ndarray | Image.Image
# Tiling is on by default: only images with a side over 2048 pixels are tiled.
DEFAULT_TILING = TilingOptions()


class Predictor:
    """Run a model on images and return post-processed `Instances` with dataset category ids.

    `model_or_checkpoint`: anything `instaseg.models.load_model` takes: None (the bundled nuclei model), a
    `SegmentationModel` object, a model file or training checkpoint, an exported `.onnx` file, a
    torchvision-layout Mask R-CNN state dict (COCO category ids and names), a model name or config file
    (random weights: for tests and timing).

    `categories` (`[{"id", "name"}]` in model class order: class k is `categories[k - 1]`) overrides what the
    model file says; without any, labels stay model classes 1..K and have no names. Thresholds that
    `postprocess` leaves None come from the model's operating point; `postprocess_options` holds the ones in
    use.
    """

    def __init__(
        self,
        model_or_checkpoint: ModelSource = None,
        device: str | torch.device = "cpu",
        postprocess: PostprocessOptions | None = None,
        tiling: TilingOptions | None = DEFAULT_TILING,
        tta: TTAOptions | None = None,
        categories: Sequence[Mapping] | None = None,
        batch_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Predictor batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for, but torch has no usable CUDA device")
        model = load_model(model_or_checkpoint)
        self.model: SegmentationModel = model.to(self.device).eval()
        self.postprocess_options = (postprocess or PostprocessOptions()).resolved(model.operating_point)
        self.tiling = tiling
        self.tta = tta
        self.batch_size = batch_size
        given = categories if categories is not None else model.categories
        self.categories = check_categories(given, "categories") or []
        num_classes = self.model.num_classes
        if self.categories and len(self.categories) != num_classes - 1:
            raise ValueError(
                f"{len(self.categories)} categories given for a model with {num_classes - 1} classes "
                "(plus background)"
            )

    @property
    def class_names(self) -> dict[int, str]:
        """Category id -> name for the labels this predictor outputs (empty when the model has no names)."""
        return {category["id"]: category["name"] for category in self.categories}

    def predict(self, image: ImageInput) -> Instances:
        """One image (a file path, an (H, W, 3) uint8 RGB array, or a PIL image) -> its `Instances`."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[Instances]:
        """Several images -> one `Instances` each; images that are not tiled share model calls (batches)."""
        tensors = [to_tensor(load_image(image)) for image in images]
        return self.predict_tensors(tensors)

    def predict_tensors(self, tensors: Sequence[torch.Tensor]) -> list[Instances]:
        """(3, H, W) float [0, 1] tensors (as `instaseg.io.to_tensor` makes them) -> one `Instances` each."""
        results: list[Instances | None] = [None] * len(tensors)
        whole = []
        for index, tensor in enumerate(tensors):
            size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
            if self.tiling is not None and self.tiling.applies_to(size):
                results[index] = predict_tiled(self._run_tiles, tensor, self.tiling)
            else:
                whole.append(index)
        for batch in self._batches(whole, tensors):
            for index, output in zip(batch, self._run([tensors[i] for i in batch]), strict=True):
                results[index] = output
        return [self._finish(instances) for instances in results]

    def _batches(self, indices: list[int], tensors: Sequence[torch.Tensor]) -> list[list[int]]:
        """`indices` in batches of up to `batch_size` images that pad to the same size in the model's
        transform, so that an image's detections do not depend on what it is batched with."""
        groups: dict[object, list[int]] = {}
        for index in indices:
            size = (int(tensors[index].shape[-2]), int(tensors[index].shape[-1]))
            groups.setdefault(self.model.batch_key(size, DEFAULT_DETECT_OPTIONS), []).append(index)
        return [
            group[first : first + self.batch_size]
            for group in groups.values()
            for first in range(0, len(group), self.batch_size)
        ]

    def _run(self, tensors: list[torch.Tensor]) -> list[Instances]:
        """The model (or its TTA views) on a batch; CPU Instances with `mask_logits` unless fused by TTA."""
        tensors = [tensor.to(self.device) for tensor in tensors]
        if self.tta is not None:
            outputs = predict_tta(self.model, tensors, self.tta, self.postprocess_options.mask_threshold)
        else:
            with torch.inference_mode():
                outputs = self.model.detect(tensors)
        return [output.to("cpu") for output in outputs]

    def _run_tiles(self, tiles: list[torch.Tensor]) -> list[Instances]:
        # Tile merging unions binary masks, so each tile's masks are binarised at the requested threshold.
        threshold = self.postprocess_options.mask_threshold
        return [binarize_masks(instances, threshold) for instances in self._run(tiles)]

    def _finish(self, instances: Instances) -> Instances:
        instances = postprocess(instances, self.postprocess_options)
        if self.categories:
            ids = torch.tensor([0] + [category["id"] for category in self.categories], dtype=torch.int64)
            if len(instances) and int(instances.labels.max()) >= len(ids):
                raise ValueError(
                    f"the model predicted class {int(instances.labels.max())}, but only "
                    f"{len(self.categories)} categories are known"
                )
            instances = instances.replace(labels=ids[instances.labels])
        return instances
