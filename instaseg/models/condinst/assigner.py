"""Dynamic soft-label assignment (RTMDet's), computed only on candidate (object, point) pairs.

Candidates of an object are the points of every level inside its box or within `radius` strides of its
centre (so an object smaller than the stride-4 grid still has its nearest points). For each candidate pair:
cost = soft-label classification cost (BCE of the point's score for the object's class against the IoU of
its predicted box, times the squared gap) + `iou_weight` * -log(IoU) + centre prior 10^(distance / stride -
`center_radius`). Each object takes its k lowest-cost candidates, k = the sum of its 13 best IoUs (at least
1); a point chosen by several objects goes to the cheapest. Pairs instead of an objects x points matrix keep
2,000 objects on 30,000 points at a few hundred thousand pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.structures.boxes import paired_iou

_EPS = 1e-7


@dataclass
class Assignment:
    """Of one image's P points: `gt_index (P,)` int64, the assigned object or -1 (negative); `ious (P,)`
    the IoU of the point's predicted box with its object (0 for negatives), the soft classification label."""

    gt_index: Tensor
    ious: Tensor


def candidate_pairs(
    gt_boxes: Tensor, level_shapes: list[tuple[int, int]], strides: tuple[int, ...], radius: float
) -> tuple[Tensor, Tensor]:
    """`(gt_index (M,), point_index (M,))` int64: every (object, point) pair where the point's cell centre
    lies inside the object's box `gt_boxes (G, 4)` x1y1x2y2, or within `radius` strides of its centre, on
    each level (point indices count over the levels in order, row-major within a level)."""
    device = gt_boxes.device
    gt_all, point_all = [], []
    offset = 0
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    for (height, width), stride in zip(level_shapes, strides, strict=True):
        reach = radius * stride
        low = torch.minimum(gt_boxes[:, :2], centres - reach)
        high = torch.maximum(gt_boxes[:, 2:], centres + reach)
        # cell i has its centre at (i + 0.5) * stride
        first = torch.ceil(low / stride - 0.5).long()
        last = torch.floor(high / stride - 0.5).long()
        first = torch.stack([first[:, 0].clamp(min=0), first[:, 1].clamp(min=0)], dim=1)
        last = torch.stack([last[:, 0].clamp(max=width - 1), last[:, 1].clamp(max=height - 1)], dim=1)
        spans = (last - first + 1).clamp(min=0)
        counts = spans[:, 0] * spans[:, 1]
        gt_index = torch.repeat_interleave(torch.arange(gt_boxes.shape[0], device=device), counts)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(int(counts.sum()), device=device) - starts[gt_index]
        columns = first[gt_index, 0] + local % spans[gt_index, 0]
        rows = first[gt_index, 1] + local // spans[gt_index, 0]
        gt_all.append(gt_index)
        point_all.append(offset + rows * width + columns)
        offset += height * width
    return torch.cat(gt_all), torch.cat(point_all)


def rank_in_groups(groups: Tensor, values: Tensor, num_groups: int, descending: bool = False) -> Tensor:
    """`(M,)` int64: each element's rank (0 = first) by `values` among the elements of its group."""
    order = torch.argsort(values, descending=descending, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.shape[0], device=order.device) - starts[sorted_groups]
    return ranks


@torch.no_grad()
def assign(
    points: Tensor,
    strides: Tensor,
    level_shapes: list[tuple[int, int]],
    level_strides: tuple[int, ...],
    pred_boxes: Tensor,
    cls_logits: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    radius: float,
    center_radius: float,
    topk: int,
    iou_weight: float,
) -> Assignment:
    """Assign one image's points (see the module docstring).

    `points (P, 2)` x, y and `strides (P,)` in pixels; `pred_boxes (P, 4)` x1y1x2y2 and `cls_logits (P, K)`
    (classes 1..K in columns 0..K-1) the current predictions; `gt_boxes (G, 4)`, `gt_labels (G,)` in 1..K.
    """
    count = points.shape[0]
    gt_index = torch.full((count,), -1, dtype=torch.int64, device=points.device)
    ious = torch.zeros(count, device=points.device)
    if gt_boxes.shape[0] == 0:
        return Assignment(gt_index, ious)
    pair_gt, pair_point = candidate_pairs(gt_boxes, level_shapes, level_strides, radius)
    if pair_gt.numel() == 0:
        return Assignment(gt_index, ious)
    num_gt = gt_boxes.shape[0]
    pair_iou = paired_iou(pred_boxes[pair_point], gt_boxes[pair_gt]).clamp(min=0.0)
    logits = cls_logits[pair_point, gt_labels[pair_gt] - 1].float()
    gap = (logits.sigmoid() - pair_iou).abs().pow(2)
    cls_cost = F.binary_cross_entropy_with_logits(logits, pair_iou, reduction="none") * gap
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distance = (points[pair_point] - centres[pair_gt]).norm(dim=1) / strides[pair_point]
    prior = torch.pow(10.0, distance - center_radius)
    cost = cls_cost + iou_weight * -torch.log(pair_iou + _EPS) + prior
    # dynamic k: the sum of each object's `topk` best IoUs, at least 1
    iou_rank = rank_in_groups(pair_gt, pair_iou, num_gt, descending=True)
    top_iou = torch.where(iou_rank < topk, pair_iou, torch.zeros_like(pair_iou))
    dynamic_k = torch.zeros(num_gt, device=points.device).index_add_(0, pair_gt, top_iou).long().clamp(min=1)
    chosen = rank_in_groups(pair_gt, cost, num_gt) < dynamic_k[pair_gt]
    pair_gt, pair_point, pair_iou, cost = pair_gt[chosen], pair_point[chosen], pair_iou[chosen], cost[chosen]
    # a point chosen by several objects goes to its cheapest
    order = torch.argsort(cost, stable=True)
    order = order[torch.argsort(pair_point[order], stable=True)]
    sorted_points = pair_point[order]
    first = torch.ones_like(sorted_points, dtype=torch.bool)
    first[1:] = sorted_points[1:] != sorted_points[:-1]
    winners = order[first]
    gt_index[pair_point[winners]] = pair_gt[winners]
    ious[pair_point[winners]] = pair_iou[winners]
    return Assignment(gt_index, ious)
