"""Checks and converts what callers hand to the model, so bad input fails at the door with a clear message.

Images: a list of `(3, H, W)` tensors, float in [0, 1] (uint8 in [0, 255] is divided by 255). Converted, not
rejected: `(H, W)` and `(1, H, W)` grayscale (replicated to 3 channels), `(2, H, W)` grayscale + alpha and
`(4, H, W)` RGBA (alpha dropped). Rejected with `ModelInputError`: other channel counts, channels-last arrays,
empty images, images over `max_image_pixels`, NaN / inf pixels.

Training targets: one `Instances` per image, in that image's pixels, labels already mapped to the model's
contiguous classes 1..num_classes-1. Rejected: non-finite or empty boxes, out-of-range labels, missing masks,
masks whose size differs from the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from instaseg.structures.instances import Instances

# 64 Mpixel: a 8192 x 8192 image, 768 MiB as float32 RGB before the resize brings it down to ~1 Mpixel.
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class ModelInputError(ValueError):
    """An image or target passed to the model is unusable; the message names the item and the problem."""


@dataclass
class Target:
    """Ground truth of one image inside the model: `boxes (N, 4) float32 x1y1x2y2` and `masks (N, H, W) uint8`
    in the (resized) image's pixels, `labels (N,) int64` in 1..num_classes-1."""

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None


def prepare_image(image: Tensor, index: int, max_image_pixels: int) -> Tensor:
    """Return image `index` as a `(3, H, W)` float32 tensor in [0, 1], or raise `ModelInputError`."""
    if not isinstance(image, Tensor):
        raise ModelInputError(
            f"image {index} is a {type(image).__name__}, expected a torch.Tensor (3, H, W); "
            "convert arrays and files with instaseg.io.load_image and instaseg.io.to_tensor"
        )
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3:
        raise ModelInputError(f"image {index} has shape {tuple(image.shape)}, expected (3, H, W)")
    channels, height, width = image.shape
    if channels not in (1, 2, 3, 4):
        hint = " (channels-last? permute to (C, H, W))" if width in (1, 3, 4) else ""
        raise ModelInputError(
            f"image {index} has {channels} channels in shape {tuple(image.shape)}, expected (3, H, W){hint}"
        )
    if height == 0 or width == 0:
        raise ModelInputError(f"image {index} is empty: shape {tuple(image.shape)}")
    if height * width > max_image_pixels:
        raise ModelInputError(
            f"image {index} is {height}x{width} = {height * width} pixels, over the limit of "
            f"{max_image_pixels} (max_image_pixels); downscale or tile it"
        )
    if image.dtype == torch.uint8:
        image = image.float() / 255
    elif image.is_floating_point():
        image = image.float()
    else:
        raise ModelInputError(f"image {index} has dtype {image.dtype}, expected float in [0, 1] or uint8")
    if not bool(torch.isfinite(image).all()):
        raise ModelInputError(f"image {index} contains NaN or infinite values")
    if channels in (1, 2):
        image = image[:1].expand(3, height, width)
    elif channels == 4:
        image = image[:3]
    return image


def prepare_images(images: list[Tensor], max_image_pixels: int) -> list[Tensor]:
    """Check and convert a list of images (see the module docstring); raises `ModelInputError`."""
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise ModelInputError(f"images must be a list of (3, H, W) tensors, got {type(images).__name__}")
    if len(images) == 0:
        raise ModelInputError("images is an empty list")
    return [prepare_image(image, index, max_image_pixels) for index, image in enumerate(images)]


def prepare_target(
    target: Instances, image: Tensor, index: int, num_classes: int, need_masks: bool
) -> Target:
    """Check target `index` against its `(3, H, W)` image and convert it to a `Target`."""
    if not isinstance(target, Instances):
        raise ModelInputError(f"target {index} is a {type(target).__name__}, expected Instances")
    image_size = (image.shape[-2], image.shape[-1])
    if tuple(target.image_size) != image_size:
        raise ModelInputError(
            f"target {index} has image_size {tuple(target.image_size)} but its image is "
            f"{image_size[0]}x{image_size[1]}"
        )
    boxes = target.boxes.to(device=image.device, dtype=torch.float32)
    labels = target.labels.to(device=image.device, dtype=torch.int64)
    if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
        raise ModelInputError(
            f"target {index}: boxes must be (N, 4) and labels (N,), got "
            f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
        )
    if not bool(torch.isfinite(boxes).all()):
        bad = torch.where(~torch.isfinite(boxes).all(dim=1))[0].tolist()
        raise ModelInputError(f"target {index}: boxes {bad[:10]} contain NaN or infinite coordinates")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(degenerate.any()):
        bad = torch.where(degenerate)[0].tolist()
        raise ModelInputError(
            f"target {index}: boxes {bad[:10]} have zero or negative width or height, e.g. "
            f"{boxes[bad[0]].tolist()}"
        )
    if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
        raise ModelInputError(
            f"target {index}: labels must be model classes 1..{num_classes - 1} (0 is "
            f"background), got values {sorted(set(labels.tolist()))[:10]}"
        )
    masks = None
    if need_masks:
        if target.masks is None:
            raise ModelInputError(f"target {index} has no masks; Mask R-CNN training needs one mask per box")
        if tuple(target.masks.image_size) != image_size:
            raise ModelInputError(
                f"target {index}: masks are {tuple(target.masks.image_size)} but the image is "
                f"{image_size[0]}x{image_size[1]}"
            )
        masks = target.masks.bitmaps().to(device=image.device, dtype=torch.uint8)
        if masks.shape != (boxes.shape[0], *image_size):
            raise ModelInputError(
                f"target {index}: masks have shape {tuple(masks.shape)}, expected "
                f"({boxes.shape[0]}, {image_size[0]}, {image_size[1]}) (one per box)"
            )
    return Target(boxes, labels, masks)


def prepare_targets(
    targets: list[Instances], images: list[Tensor], num_classes: int, need_masks: bool
) -> list[Target]:
    """Check one `Instances` per image and convert them to `Target`s; raises `ModelInputError`."""
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        count = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ModelInputError(
            f"training needs one target (Instances) per image: {len(images)} images, targets: {count}"
        )
    return [
        prepare_target(target, image, index, num_classes, need_masks)
        for index, (target, image) in enumerate(zip(targets, images, strict=True))
    ]
