"""Input transform: normalise, resize (short side to `min_size`, long side at most `max_size`), pad, batch;
and the way back: boxes and masks from the resized image to the original image.

Coordinates: boxes are `(N, 4) x1y1x2y2` in pixels of the image they refer to; the resize is a pure scale, so
mapping between original and resized pixels multiplies x by `W_new / W_old` and y by `H_new / H_old`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.inputs import Target
from instaseg.models.protocol import MASK_THRESHOLD
from instaseg.ops import paste_masks_in_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageBatch:
    """Images resized and zero-padded to one `(B, 3, H_pad, W_pad)` tensor (H_pad, W_pad multiples of 32).

    `image_sizes[i]` is image i's `(H, W)` after resizing, before padding: its valid, top-left region.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_image(image: Tensor, min_size: float, max_size: float) -> Tensor:
    """Bilinear resize of `(C, H, W)`: short side to `min_size` unless the long side would pass `max_size`.

    The scale is computed in float32 and the output size is `floor(side * scale)`, exactly as torchvision
    does, so that its checkpoints see the same pixels; unlike torchvision, a side never shrinks below one
    pixel (a 1 x 2000 strip becomes 1 x 1000, not an error).
    """
    size = resized_size((image.shape[-2], image.shape[-1]), min_size, max_size)
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resized_size(size: tuple[int, int], min_size: float, max_size: float) -> tuple[int, int]:
    """`(H, W)` of an image of `size (H, W)` after `resize_image`."""
    sides = torch.tensor(size, dtype=torch.float32)
    scale = torch.minimum(min_size / sides.min(), max_size / sides.max()).item()
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale `(N, 4) x1y1x2y2` boxes from an image of `original_size (H, W)` to one of `new_size (H, W)`."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(
        original_size[0], dtype=torch.float32
    )
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(
        original_size[1], dtype=torch.float32
    )
    ratios = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device)
    return boxes * ratios


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def batch_images(images: list[Tensor], size_divisible: int = 32) -> Tensor:
    """Zero-pad `(C, H_i, W_i)` images (bottom / right) to one size divisible by `size_divisible`."""
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    height, width = _round_up(height, size_divisible), _round_up(width, size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch


class ImageTransform(nn.Module):
    """`forward(images, targets) -> (ImageBatch, resized targets)`; `postprocess` maps detections back.

    `min_size` may be a tuple: training then picks one of them per image at random (multi-scale training);
    inference always uses the last. Images are `(3, H, W)` float in [0, 1] (see `inputs.prepare_images`).
    `scale` (inference only) multiplies both resize limits, for scale test-time augmentation.
    """

    def __init__(
        self,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, (tuple, list)) else (min_size,)
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.register_buffer("image_mean", torch.tensor(image_mean).reshape(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).reshape(3, 1, 1), persistent=False)

    def padded_size(self, size: tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
        """The `(H, W)` batch tensor an image of `size (H, W)` gets in eval mode when it is batched alone.

        Images with equal padded sizes can share a batch without changing each other's results; images of
        other sizes pad each other (zeros the network sees at their borders)."""
        min_size, max_size = self.resize_limits(scale)
        height, width = resized_size(size, min_size, max_size)
        return _round_up(height, self.size_divisible), _round_up(width, self.size_divisible)

    def resize_limits(self, scale: float = 1.0) -> tuple[float, float]:
        """The eval-mode `(short side, long side limit)` of the resize, each times `scale` (rounded)."""
        if scale == 1.0:
            return float(self.min_size[-1]), float(self.max_size)
        return float(round(self.min_size[-1] * scale)), float(round(self.max_size * scale))

    def _target_size(self) -> float:
        if self.training and len(self.min_size) > 1:
            return float(self.min_size[int(torch.randint(len(self.min_size), (1,)).item())])
        return float(self.min_size[-1])

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None, scale: float = 1.0
    ) -> tuple[ImageBatch, list[Target] | None]:
        if scale != 1.0 and self.training:
            raise ValueError("ImageTransform: a resize scale is for inference (scale TTA), not for training")
        resized_images = []
        resized_targets = [] if targets is not None else None
        for index, image in enumerate(images):
            original_size = (image.shape[-2], image.shape[-1])
            normalised = (image - self.image_mean) / self.image_std
            if self.training:
                resized = resize_image(normalised, self._target_size(), float(self.max_size))
            else:
                resized = resize_image(normalised, *self.resize_limits(scale))
            resized_images.append(resized)
            if targets is not None:
                resized_targets.append(
                    resize_target(targets[index], original_size, tuple(resized.shape[-2:]))
                )
        image_sizes = [(image.shape[-2], image.shape[-1]) for image in resized_images]
        return ImageBatch(batch_images(resized_images, self.size_divisible), image_sizes), resized_targets

    def postprocess(
        self,
        boxes: Tensor,
        mask_probs: Tensor | None,
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor | None]:
        """Boxes `(N, 4)` and 28x28 mask probabilities `(N, 1, 28, 28)` of one image -> original pixels.

        Returns original-pixel boxes `(N, 4) x1y1x2y2` and bool masks `(N, H, W)`: probability >
        `MASK_THRESHOLD`.
        """
        boxes = resize_boxes(boxes, resized_size, original_size)
        if mask_probs is None:
            return boxes, None
        pasted = paste_masks_in_image(mask_probs, boxes, original_size, threshold=MASK_THRESHOLD)
        return boxes, pasted[:, 0]


def resize_target(target: Target, original_size: tuple[int, int], new_size: tuple[int, int]) -> Target:
    """Scale a target's boxes and nearest-resize its `(N, H, W)` masks to `new_size (H, W)`."""
    masks = target.masks
    if masks is not None:
        # uint8 in, uint8 out: a quarter of the memory of resizing float masks (hundreds of nuclei per image)
        masks = F.interpolate(masks[:, None], size=new_size, mode="nearest")[:, 0]
    return Target(resize_boxes(target.boxes, original_size, new_size), target.labels, masks)
