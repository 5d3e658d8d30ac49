"""Losses of the single-stage model: quality focal loss (classification against IoU soft labels), GIoU for
boxes (`structures.boxes.paired_giou`), Dice + BCE for masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.models.mask_head import project_masks_on_boxes


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Sum over all elements of BCE(logits, targets) * |sigmoid(logits) - targets|^beta (GFL's QFL): soft
    targets in [0, 1] (the IoU at positives, 0 elsewhere) make the score an estimate of localisation
    quality."""
    scale = (logits.sigmoid() - targets).abs().pow(beta)
    return (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * scale).sum()


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over N masks of 1 - Dice between `sigmoid(logits) (N, M, M)` and `targets (N, M, M)` in [0, 1]."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(dim=1)
    denominator = probs.pow(2).sum(dim=1) + targets.pow(2).sum(dim=1)
    return (1 - (numerator + 1.0) / (denominator + 1.0)).mean()


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int, chunk: int = 32) -> Tensor:
    """Ground-truth masks `(G, H, W)` uint8 cropped and resampled into each box: `(N, size, size)` float.

    `boxes (N, 4)` in the masks' pixels, `gt_index (N,)` each box's object. At most `chunk` masks are
    converted to float at once, so 2,000 objects on a large image stay within memory (Mask R-CNN's
    `project_masks_on_boxes` converts them all)."""
    parts = []
    for start in range(0, boxes.shape[0], chunk):
        objects, inverse = torch.unique(gt_index[start : start + chunk], return_inverse=True)
        parts.append(project_masks_on_boxes(gt_masks[objects], boxes[start : start + chunk], inverse, size))
    if not parts:
        return boxes.new_zeros((0, size, size))
    return torch.cat(parts)
