"""Paste fixed-size mask predictions (Mask R-CNN's 28x28 probabilities) into full-image masks.

torchvision's algorithm, so the numbers match its `paste_masks_in_image`: each `M x M` mask gets a
`padding`-pixel border of zeros and its box is enlarged by the same factor `(M + 2 * padding) / M` about its
centre, so the mask's edge falls *inside* the pasted region and bilinear resizing fades it out at the box
border instead of clamping to the outermost row. The enlarged box is truncated to integer pixels
`x0, y0, x1, y1` (inclusive), the padded mask is resized bilinearly (half-pixel centres) to
`(y1 - y0 + 1, x1 - x0 + 1)` and written there, cropped to the image.

Unlike torchvision, which resizes into a zero image per mask and stacks them, only each box's region is
computed and written into one lazily zeroed output (see `_zeros` and benchmarks/bench_ops_paste_masks.py);
`threshold` gives bool masks directly, a quarter of the float output's memory. A C++ kernel was not written:
the resizing itself is a few ms of the total for 100 masks; memory traffic is the rest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks_in_image"]

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bool: np.bool_,
}


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    padding: int = 1,
    threshold: float | None = None,
) -> Tensor:
    """Paste each mask into its box of an `image_size` canvas.

    Args:
        masks: `(N, 1, M, M)` floating mask probabilities (`M x M'` works too: each side scales on its own).
        boxes: `(N, 4)` x1y1x2y2 in image pixels; parts outside the image are cut off.
        image_size: `(H, W)` of the output.
        padding: zero border added around each mask (and the matching box enlargement); 1 as Mask R-CNN.
        threshold: if given, return `mask > threshold` as bool instead of probabilities.

    Returns:
        `(N, 1, H, W)` in `masks`' dtype (0 outside the box), or bool when `threshold` is given.
    """
    _check_arguments(masks, boxes, image_size, padding, threshold)
    height, width = int(image_size[0]), int(image_size[1])
    count = masks.shape[0]
    out_dtype = torch.bool if threshold is not None else masks.dtype
    output = _zeros((count, 1, height, width), out_dtype, masks.device)
    if count == 0:
        return output
    padded = F.pad(masks, (padding, padding, padding, padding))
    box_values = boxes if boxes.is_floating_point() else boxes.float()
    regions = _pasted_regions(box_values, masks.shape[-2:], padding).tolist()
    for index, (x0, y0, x1, y1) in enumerate(regions):
        # The visible part of the (inclusive) region [x0, x1] x [y0, y1]; empty for boxes outside the image.
        left, right = max(x0, 0), min(x1 + 1, width)
        top, bottom = max(y0, 0), min(y1 + 1, height)
        if right <= left or bottom <= top:
            continue
        resized = F.interpolate(
            padded[index : index + 1], size=(y1 - y0 + 1, x1 - x0 + 1), mode="bilinear", align_corners=False
        )[0, 0]
        visible = resized[top - y0 : bottom - y0, left - x0 : right - x0]
        output[index, 0, top:bottom, left:right] = visible if threshold is None else visible > threshold
    return output


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero tensor. On CPU it comes from NumPy, whose `zeros` uses calloc: the OS maps large zeroed
    allocations lazily, so only the pages that pasted regions write are ever touched. torch.zeros writes every
    byte; for 100 masks into 800x1216 that first touch of 389 MB was most of the time (see the benchmark).
    """
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.zeros(shape, dtype=dtype, device=device)


def _pasted_regions(boxes: Tensor, mask_size: torch.Size, padding: int) -> Tensor:
    """`(N, 4)` int64 inclusive pixel regions `x0, y0, x1, y1`: the boxes enlarged for the padded masks.

    Same operations and order as torchvision (half-extents scaled about the centre, then truncated toward zero
    by the int64 cast), so every region lands on the same pixels.
    """
    scale_y = (mask_size[0] + 2 * padding) / mask_size[0]
    scale_x = (mask_size[1] + 2 * padding) / mask_size[1]
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale_x
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale_y
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack(
        (centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1
    ).to(torch.int64)


def _check_arguments(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int, threshold: float | None
) -> None:
    is_tensor = isinstance(masks, Tensor)
    if not is_tensor or masks.ndim != 4 or masks.shape[1] != 1 or not masks.is_floating_point():
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"paste_masks_in_image: masks must be a floating (N, 1, M, M) tensor, got {shape}")
    if masks.shape[-1] == 0 or masks.shape[-2] == 0:
        raise ValueError(f"paste_masks_in_image: masks are empty, {tuple(masks.shape)}")
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"paste_masks_in_image: boxes must be a (N, 4) x1y1x2y2 tensor, got {shape}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("paste_masks_in_image: boxes contain NaN or infinite coordinates")
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"paste_masks_in_image: {masks.shape[0]} masks for {boxes.shape[0]} boxes")
    if len(image_size) != 2 or not all(int(v) == v and v > 0 for v in image_size):
        raise ValueError(f"paste_masks_in_image: image_size must be 2 positive ints, got {image_size!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"paste_masks_in_image: padding must be a non-negative int, got {padding!r}")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"paste_masks_in_image: threshold must be finite or None, got {threshold!r}")
