"""How closely one backend's `Instances` follow another's (`compare_instances`): the ONNX parity criteria.

Instances are matched greedily in the reference's order (decreasing score) to the unmatched candidate of
highest box IoU (at least `min_box_iou`). Box error is relative per coordinate, `|a - b| / max(|b|, 1)` (a
1-pixel floor, so coordinates near 0 do not blow the ratio up); masks are compared as pasted bitmaps (two
empty masks count as IoU 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instaseg.structures.boxes import box_iou
from instaseg.structures.instances import Instances
from instaseg.structures.masks import mask_iou


@dataclass(frozen=True)
class ParityStats:
    """`reference_count` / `candidate_count` instances, `matched` pairs, the largest relative box error and
    the number of label disagreements over matched pairs, and each matched pair's mask IoU (`(matched,)`)."""

    reference_count: int
    candidate_count: int
    matched: int
    max_box_error: float
    label_mismatches: int
    mask_ious: np.ndarray

    @property
    def min_mask_iou(self) -> float:
        return float(self.mask_ious.min()) if len(self.mask_ious) else 1.0

    def meets(self, box_tolerance: float = 1e-3, min_mask_iou: float = 0.99) -> bool:
        """The issue's criteria: same count, every instance matched, same labels, boxes and masks close."""
        return (
            self.reference_count == self.candidate_count == self.matched
            and self.label_mismatches == 0
            and self.max_box_error <= box_tolerance
            and self.min_mask_iou > min_mask_iou
        )


def compare_instances(reference: Instances, candidate: Instances, min_box_iou: float = 0.5) -> ParityStats:
    """Match `candidate` to `reference` (one image) and measure how they differ (see the module docstring)."""
    if len(reference) == 0 or len(candidate) == 0:
        return ParityStats(len(reference), len(candidate), 0, 0.0, 0, np.zeros(0))
    ious = box_iou(reference.boxes.float(), candidate.boxes.float())
    pairs = []
    taken = torch.zeros(len(candidate), dtype=torch.bool)
    for index in range(len(reference)):
        row = ious[index].masked_fill(taken, -1.0)
        best = int(row.argmax())
        if float(row[best]) >= min_box_iou:
            taken[best] = True
            pairs.append((index, best))
    if not pairs:
        return ParityStats(len(reference), len(candidate), 0, 0.0, 0, np.zeros(0))
    ref_index = torch.tensor([i for i, _ in pairs])
    cand_index = torch.tensor([j for _, j in pairs])
    ref_boxes, cand_boxes = reference.boxes[ref_index].float(), candidate.boxes[cand_index].float()
    box_error = float(((cand_boxes - ref_boxes).abs() / ref_boxes.abs().clamp(min=1.0)).max())
    mismatches = int((reference.labels[ref_index] != candidate.labels[cand_index]).sum())
    mask_ious = np.zeros(0)
    if reference.masks is not None and candidate.masks is not None:
        ref_masks, cand_masks = reference.masks[ref_index], candidate.masks[cand_index]
        ref_rles, cand_rles = ref_masks.rles(), cand_masks.rles()
        mask_ious = np.diag(mask_iou(cand_rles, ref_rles, np.zeros(len(ref_rles), dtype=bool))).copy()
        # two empty masks (tiny boxes where no pixel passes 0.5) agree perfectly; COCO's IoU calls that 0
        both_empty = (ref_masks.area() == 0) & (cand_masks.area() == 0)
        mask_ious[both_empty.cpu().numpy()] = 1.0
    return ParityStats(len(reference), len(candidate), len(pairs), box_error, mismatches, mask_ious)
