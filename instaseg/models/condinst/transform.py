"""Input transform of the single-stage model: normalise, scale down only (never up), pad, batch.

Dense small objects lose pixels when an image is shrunk and gain nothing but cost when it is enlarged, so an
image keeps its size unless its long side exceeds `max_size` (then it is scaled down to it). Scale TTA's
`scale` multiplies that factor. The way back (boxes and box-relative mask logits to the original image) is
`ImageTransform.postprocess`, shared with Mask R-CNN.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from instaseg.models.inputs import Target
from instaseg.models.transform import ImageBatch, ImageTransform, _round_up, batch_images, resize_target


def scaled_size(size: tuple[int, int], max_size: float, scale: float = 1.0) -> tuple[int, int]:
    """`(H, W)` of an image of `size (H, W)` after `NoUpscaleTransform` at TTA `scale`."""
    factor = scale * min(1.0, max_size / max(size))
    if factor == 1.0:
        return size
    return max(1, math.floor(size[0] * factor)), max(1, math.floor(size[1] * factor))


class NoUpscaleTransform(ImageTransform):
    """`forward(images, targets, scale) -> (ImageBatch, resized targets)`: `(3, H, W)` float [0, 1] images,
    normalised with `image_mean` / `image_std`, scaled by `min(1, max_size / long side) * scale`, zero-padded
    bottom / right to multiples of `size_divisible` (the pyramid's largest stride, 32)."""

    def __init__(
        self,
        max_size: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        size_divisible: int = 32,
    ) -> None:
        super().__init__(max_size, max_size, image_mean, image_std, size_divisible)

    def padded_size(self, size: tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
        """The `(H, W)` of the batch tensor an image of `size (H, W)` gets alone; equal sizes batch safely."""
        height, width = scaled_size(size, self.max_size, scale)
        return _round_up(height, self.size_divisible), _round_up(width, self.size_divisible)

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None, scale: float = 1.0
    ) -> tuple[ImageBatch, list[Target] | None]:
        if scale != 1.0 and self.training:
            raise ValueError("NoUpscaleTransform: a resize scale is for inference (scale TTA), not training")
        resized_images = []
        resized_targets = [] if targets is not None else None
        for index, image in enumerate(images):
            original_size = (image.shape[-2], image.shape[-1])
            size = scaled_size(original_size, self.max_size, scale)
            normalised = (image - self.image_mean) / self.image_std
            if size != original_size:
                normalised = F.interpolate(normalised[None], size=size, mode="bilinear", align_corners=False)[
                    0
                ]
                if targets is not None:
                    resized_targets.append(resize_target(targets[index], original_size, size))
            elif targets is not None:
                resized_targets.append(targets[index])
            resized_images.append(normalised)
        image_sizes = [(image.shape[-2], image.shape[-1]) for image in resized_images]
        return ImageBatch(batch_images(resized_images, self.size_divisible), image_sizes), resized_targets
