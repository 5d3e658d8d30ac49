"""Axis-aligned box arithmetic on torch tensors.

Boxes are `(N, 4)` floating tensors in `x1, y1, x2, y2` order (corners, in pixels) unless a function says
`xywh` (`x, y, width, height`, COCO's `bbox` order). Widths are `x2 - x1`: a box is the continuous region
[x1, x2) x [y1, y2), so the box of pixel columns 3..5 is x1=3, x2=6. All functions work for N = 0, keep the
input's device, and are differentiable where the maths is.
"""

from __future__ import annotations

import torch

# Keeps the paired IoU finite for empty boxes.
_PAIRED_EPS = 1e-7

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes",
    "mask_boxes",
    "paired_giou",
    "paired_iou",
    "remove_small_boxes",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) x1y1x2y2 -> (N,) areas `(x2 - x1) * (y2 - y1)` (negative for inverted boxes, as torchvision)."""
    _check_boxes(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) x1y1x2y2 boxes -> (N, M).

    Pairs whose union is empty (two zero-area boxes) get IoU 0 instead of the 0/0 NaN of a plain formula.
    Integer boxes are computed in float32.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(
        union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter)
    )


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, 4), (N, 4) -> (N,) IoU of `boxes1[i]` and `boxes2[i]`, row by row (`box_iou` builds the N x M
    matrix, which 100,000 assignment pairs cannot afford)."""
    return _paired_iou_and_hull(boxes1, boxes2)[0]


def paired_giou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """`(N,)` generalised IoU (IoU minus the hull's share not covered by the union), in [-1, 1]."""
    iou, union, hull = _paired_iou_and_hull(boxes1, boxes2)
    return iou - (hull - union) / (hull + _PAIRED_EPS)


def _paired_iou_and_hull(
    boxes1: torch.Tensor, boxes2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    union = area1 + area2 - inter
    hull = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).prod(
        dim=1
    )
    return inter / (union + _PAIRED_EPS), union, hull


def clip_boxes(boxes: torch.Tensor, image_size_hw: tuple[int, int]) -> torch.Tensor:
    """Clamp (N, 4) x1y1x2y2 boxes to the image: x into [0, W], y into [0, H]. Returns a new tensor."""
    _check_boxes(boxes, "boxes")
    height, width = image_size_hw
    x = boxes[:, 0::2].clamp(min=0, max=width)
    y = boxes[:, 1::2].clamp(min=0, max=height)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices (K,) int64 of the (N, 4) x1y1x2y2 boxes whose width and height are both >= `min_size`."""
    _check_boxes(boxes, "boxes")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) x1y1x2y2 -> (N, 4) x, y, width, height (COCO `bbox` order)."""
    _check_boxes(boxes, "boxes")
    return torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) x, y, width, height (COCO `bbox` order) -> (N, 4) x1y1x2y2."""
    _check_boxes(boxes, "boxes")
    return torch.cat((boxes[:, :2], boxes[:, :2] + boxes[:, 2:]), dim=1)


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`(N, H, W)` bool -> `(N, 4)` float32 tight boxes x1y1x2y2, x2/y2 exclusive; zeros for empty masks."""
    count, height, width = masks.shape
    if count == 0:
        return torch.zeros(0, 4)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    y1 = torch.where(rows, row_index, height).amin(dim=1)
    y2 = torch.where(rows, row_index, -1).amax(dim=1) + 1
    x1 = torch.where(cols, col_index, width).amin(dim=1)
    x2 = torch.where(cols, col_index, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))
