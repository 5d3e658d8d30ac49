"""Training-time assignment: match anchors / proposals to ground-truth boxes, sample a balanced subset."""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1  # background
BETWEEN_THRESHOLDS = -2  # ignored


class Matcher:
    """Assigns each prediction (column of an IoU matrix) the ground truth (row) it overlaps most.

    `matcher(iou (G, P)) -> (P,) int64`: the matched ground-truth index where IoU >= `high_threshold`,
    `BELOW_LOW_THRESHOLD` (-1) where IoU < `low_threshold`, `BETWEEN_THRESHOLDS` (-2) in between. With
    `allow_low_quality_matches`, every ground truth also keeps the predictions it overlaps best (ties
    included), even below the thresholds, so that no object is left without a positive (the RPN's rule).
    """

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} must not exceed high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.numel() == 0:
            raise ValueError(
                f"cannot match an empty IoU matrix of shape {tuple(iou.shape)}: "
                "images without ground truth are handled by the caller"
            )
        best_iou, matches = iou.max(dim=0)
        best_matches = matches.clone()
        matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1).values
            _, predictions = torch.where(iou == best_per_gt[:, None])
            matches[predictions] = best_matches[predictions]
        return matches


class BalancedSampler:
    """Samples up to `batch_size_per_image` examples per image, at most `positive_fraction` of them positive.

    `sampler(labels: list[(P_i,)]) -> (positive masks, negative masks)`, each a list of `(P_i,)` bool tensors.
    In `labels`, values >= 1 are positives, 0 negatives, -1 ignored. Negatives fill whatever positives leave.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        positive_masks, negative_masks = [], []
        for labels_per_image in labels:
            positive = torch.where(labels_per_image >= 1)[0]
            negative = torch.where(labels_per_image == 0)[0]
            num_positive = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_negative = min(negative.numel(), self.batch_size_per_image - num_positive)
            chosen_positive = positive[
                torch.randperm(positive.numel(), device=positive.device)[:num_positive]
            ]
            chosen_negative = negative[
                torch.randperm(negative.numel(), device=negative.device)[:num_negative]
            ]
            positive_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            negative_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            positive_mask[chosen_positive] = True
            negative_mask[chosen_negative] = True
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks
