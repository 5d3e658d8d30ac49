"""SAM's input geometry: resize the longest side to 1024, scale prompts alike, undo it for masks.

Coordinates: pixel corners, x then y, as everywhere in instaseg; SAM's prompt encoder adds the +0.5 to reach
pixel centres itself. The image is resized with Pillow's bilinear filter on uint8 (what the official
`ResizeLongestSide.apply_image` does through torchvision's PIL path), so embeddings match the official ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

TARGET_LENGTH = 1024


def resized_shape(height: int, width: int, target: int = TARGET_LENGTH) -> tuple[int, int]:
    """(H, W) with the longest side scaled to `target`, each side rounded half up (520x696 -> 765x1024)."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_rgb_array(image: torch.Tensor) -> np.ndarray:
    """A library image `(3, H, W)` float in [0, 1] -> `(H, W, 3)` uint8 RGB, SAM's input (an image that came
    from uint8 pixels gets them back exactly)."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def resize_image(image: np.ndarray, target: int = TARGET_LENGTH) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB -> `(h, w, 3)` uint8 with `(h, w) = resized_shape(H, W)` (Pillow bilinear)."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], target)
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def scale_coords(
    coords: torch.Tensor, original_size: tuple[int, int], target: int = TARGET_LENGTH
) -> torch.Tensor:
    """`(..., 2)` (x, y) in original pixels -> the same points in the resized frame (float32).

    The scale factors are computed in float64, as the official predictor does with NumPy.
    """
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, target)
    scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float64, device=coords.device)
    return (coords.to(torch.float64) * scale).to(torch.float32)


def scale_boxes(
    boxes: torch.Tensor, original_size: tuple[int, int], target: int = TARGET_LENGTH
) -> torch.Tensor:
    """`(N, 4)` x1y1x2y2 in original pixels -> the resized frame (float32)."""
    return scale_coords(boxes.reshape(-1, 2, 2), original_size, target).reshape(-1, 4)


def unscale_coords(
    xy: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """`scale_coords` / `scale_boxes` undone: `(..., 2)` points or `(..., 4)` x1y1x2y2 boxes in the resized
    `input_size` `(h, w)` frame -> original pixels."""
    (height, width), (new_h, new_w) = original_size, input_size
    scale = xy.new_tensor([width / new_w, height / new_h])
    return xy * (scale.repeat(2) if xy.shape[-1] == 4 else scale)


def postprocess_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int = TARGET_LENGTH,
) -> torch.Tensor:
    """Mask logits `(B, C, 256, 256)` -> `(B, C, H, W)` logits in original pixels, in two bilinear steps.

    As the official model: first to the padded `image_size` square, then the padding (bottom/right of the
    resized `input_size`) is cut off and the rest resized to `original_size`, both `align_corners=False`.
    The padded part of the first step is never computed: the low-res rows and columns that the kept part
    reads (one beyond it, for the interpolation) are upsampled by the same factor, which gives the same
    values bit for bit (each output pixel reads the same two source pixels with the same weights).
    """
    factor = image_size // low_res.shape[-1]
    rows = min(low_res.shape[-2], math.ceil(input_size[0] / factor) + 1)
    cols = min(low_res.shape[-1], math.ceil(input_size[1] / factor) + 1)
    kept = low_res[..., :rows, :cols]
    masks = F.interpolate(kept, (rows * factor, cols * factor), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
