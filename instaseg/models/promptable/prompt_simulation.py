"""Prompts simulated from ground-truth masks, as SAM trains and as interactive segmentation is scored.

`error_region_click(prediction, truth)`: the click a user makes to correct a mask, at the centre of the
largest error region: the pixel farthest from the boundary of the false-negative or false-positive area
(whichever reaches farther), positive on a missed pixel, negative on a wrong one. With an empty prediction it
is the first click, at the object's centre. Training (`first_prompts`) starts from a random point inside each
object or its jittered box instead, so the model sees clicks anywhere. Coordinates: x (column), y (row) of the
clicked pixel; SAM's prompt encoder moves them to the pixel centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from instaseg.structures.boxes import mask_boxes

# Exact Euclidean distances are square roots of integers, so two different ones (up to a few thousand
# pixels) differ by far more than this, while one distance computed on a crop and on the whole image, or on
# CPUs with other SIMD paths, may differ in its last float32 bits: values this close count as a tie.
_TIE = 1e-3


@dataclass(frozen=True)
class Click:
    """A simulated click at pixel (x, y); `positive`: on a missed object pixel (label 1), else label 0."""

    x: int
    y: int
    positive: bool


def _deepest_pixel(region: np.ndarray) -> tuple[float, int, int]:
    """The pixel of a `(H, W)` bool region farthest from every pixel outside it (the image border counts
    as outside, so a region cut by the border has its centre inside the image) -> (distance, y, x), first in
    row-major order among ties; (0.0, 0, 0) for an empty region.

    The distance transform runs on the region's bounding box plus a one-pixel ring of outside pixels, which
    gives the same distances as the whole image (every pixel beyond the ring is farther than the ring) at a
    fraction of the cost: a nucleus is a few hundred pixels of a 1.4-megapixel image.
    """
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if len(rows) == 0:
        return 0.0, 0, 0
    top, left = rows[0], cols[0]
    crop = region[top : rows[-1] + 1, left : cols[-1] + 1]
    padded = np.pad(crop.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    best = float(distance.max())
    y, x = np.unravel_index(int(np.argmax(distance >= best - _TIE)), distance.shape)
    return best, int(top + y), int(left + x)


def error_region_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The corrective click for a `(H, W)` bool `prediction` of the `(H, W)` bool `truth` mask, or None when
    they are equal. Ties go to the false negatives, then to the first pixel in row-major order."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction has shape {prediction.shape}, truth {truth.shape}")
    best_missed, missed_y, missed_x = _deepest_pixel(truth & ~prediction)
    best_wrong, wrong_y, wrong_x = _deepest_pixel(prediction & ~truth)
    if best_missed == 0 and best_wrong == 0:
        return None
    if best_missed >= best_wrong - _TIE:
        return Click(missed_x, missed_y, True)
    return Click(wrong_x, wrong_y, False)


def random_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniformly drawn pixel of each `(K, H, W)` bool mask (none empty) -> `(K, 2)` float x, y.

    Drawn among each mask's own pixels (`nonzero`, grouped by mask) rather than by `torch.multinomial` over
    all H x W weights, which cost 0.85 s for 64 masks of a 1040 x 1388 image on one core.
    """
    pixels = torch.nonzero(masks)  # (P, 3) mask, y, x in row-major order: each mask's pixels together
    counts = torch.bincount(pixels[:, 0], minlength=len(masks))
    if bool((counts == 0).any()):
        raise ValueError(f"random_points: mask {int(torch.argmin(counts))} is empty")
    draws = torch.rand(len(masks), generator=generator, device=masks.device)
    offsets = torch.minimum((draws * counts).long(), counts - 1)
    chosen = pixels[torch.cumsum(counts, dim=0) - counts + offsets]
    return chosen[:, [2, 1]].float()


def jittered_boxes(
    masks: torch.Tensor, noise: float, max_noise: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Tight boxes of `(K, H, W)` bool masks (none empty), each coordinate moved by Gaussian noise of
    std `noise` x the box side, at most `max_noise` pixels, clipped to the frame -> `(K, 4)` x1y1x2y2."""
    height, width = masks.shape[-2:]
    boxes = mask_boxes(masks).to(masks.device)
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jitter = torch.randn(boxes.shape, generator=generator, device=masks.device) * noise * sides
    boxes = boxes + jitter.clamp(-max_noise, max_noise)
    limits = boxes.new_tensor([width, height, width, height])
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    # Noise may cross the corners; keep x1 <= x2 and y1 <= y2.
    low, high = torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])
    return torch.cat([low, high], dim=1)
