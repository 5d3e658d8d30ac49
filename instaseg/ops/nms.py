"""Non-maximum suppression: greedy (`nms`, `batched_nms`), Soft-NMS and SOLOv2's Matrix NMS.

Boxes are `(N, 4)` x1y1x2y2 floating tensors; IoU is `box_iou` of `instaseg.structures.boxes`. Greedy NMS
visits boxes by decreasing score (equal scores: lower index first) and drops every later box whose IoU with a
kept one is `> iou_threshold`, as torchvision's kernel does: the kept indices are identical to torchvision's.
`nms` and `batched_nms` run the C++ kernels of `instaseg._C` for float32/float64 CPU tensors and the
pure-PyTorch paths (`nms_torch`, `batched_nms_torch`, also the test oracle) otherwise. While `torch.export`
traces a model, `batched_nms` is the opaque operator `instaseg_export::batched_nms` (its output size depends
on the data), which `instaseg.export` translates to ONNX `NonMaxSuppression`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instaseg.ops import _extension
from instaseg.structures.boxes import box_iou

__all__ = ["batched_nms", "batched_nms_torch", "matrix_nms", "nms", "nms_torch", "soft_nms"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
# Boxes per block of the pure-PyTorch greedy NMS: large enough to amortise per-op overhead, small enough that
# the (block, block) IoU matrix and the fixed-point iterations stay cheap (256 measured best on 1k-20k boxes).
_BLOCK = 256


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS. boxes `(N, 4)` x1y1x2y2, scores `(N,)` -> `(K,)` int64 indices of the kept boxes.

    The result is sorted by decreasing score; equal scores are visited in index order (a stable sort), so
    among identical boxes with identical scores the lowest index survives.
    """
    _check_boxes_scores(boxes, scores, "nms")
    threshold = _check_threshold(iou_threshold, "nms")
    if _use_kernel(boxes):
        return torch.ops.instaseg.nms(boxes, scores, threshold)
    return nms_torch(boxes, scores, threshold)


def nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch `nms` (any device and floating dtype); same result, the fallback and the test oracle."""
    _check_boxes_scores(boxes, scores, "nms_torch")
    threshold = _check_threshold(iou_threshold, "nms_torch")
    order = _score_order(scores)
    keep = _greedy_keep_mask(boxes[order], threshold)
    return order[keep]


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_kept: int | None = None
) -> Tensor:
    """NMS within each category: boxes only suppress boxes with the same `idxs` value.

    boxes `(N, 4)` x1y1x2y2, scores `(N,)`, idxs `(N,)` integer category (or image) of each box -> `(K,)`
    int64 kept indices sorted by decreasing score (ties by index), only the first `max_kept` if given. The
    CPU kernel groups boxes by category (in parallel for large inputs); benchmarks/bench_ops_nms.py measured
    it against the coordinate-offset trick and a per-category loop over `nms`: both slower, and the offset
    trick also rounds coordinates. In an exported graph `max_kept` also caps each category's greedy pass
    (the best `max_kept` overall are among the best `max_kept` of their category), which is where ONNX
    Runtime's `NonMaxSuppression` spends its time.
    """
    _check_boxes_scores(boxes, scores, "batched_nms")
    _check_idxs(idxs, boxes, "batched_nms")
    threshold = _check_threshold(iou_threshold, "batched_nms")
    if max_kept is not None and max_kept < 0:
        raise ValueError(f"batched_nms: max_kept must be >= 0 or None, got {max_kept}")
    if torch.compiler.is_exporting():
        return torch.ops.instaseg_export.batched_nms(boxes, scores, idxs, threshold, max_kept)
    if _use_kernel(boxes):
        keep = torch.ops.instaseg.batched_nms(boxes, scores, idxs, threshold)
    else:
        keep = batched_nms_torch(boxes, scores, idxs, threshold)
    return keep[:max_kept]


@torch.library.custom_op("instaseg_export::batched_nms", mutates_args=())
def _batched_nms_op(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_kept: int | None
) -> Tensor:
    """`batched_nms` as one operator for `torch.export` graphs (eager calls run `batched_nms` itself)."""
    return batched_nms(boxes, scores, idxs, iou_threshold, max_kept)


@_batched_nms_op.register_fake
def _batched_nms_op_fake(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_kept: int | None
) -> Tensor:
    # The number of kept boxes is only known at run time: a fresh symbolic size.
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def batched_nms_torch(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch `batched_nms`: `nms_torch` once per category (measured: several times faster than one
    `nms_torch` over category-offset boxes, whose cost grows with all boxes kept across categories)."""
    _check_boxes_scores(boxes, scores, "batched_nms_torch")
    _check_idxs(idxs, boxes, "batched_nms_torch")
    threshold = _check_threshold(iou_threshold, "batched_nms_torch")
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep[members[nms_torch(boxes[members], scores[members], threshold)]] = True
    kept = torch.where(keep)[0]
    return kept[_score_order(scores[kept])]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "gaussian",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): instead of dropping overlapping boxes, lower their scores.

    Repeatedly selects the box with the highest current score (ties: lower index) and rescales every remaining
    box by `exp(-iou**2 / sigma)` (`method="gaussian"`; `iou_threshold` is not used) or by `1 - iou` where
    `iou > iou_threshold` (`method="linear"`). Boxes whose score falls below `score_threshold` are dropped.

    boxes `(N, 4)` x1y1x2y2, scores `(N,)` -> `(keep (K,) int64, updated_scores (K,))`, both in selection
    order (decreasing updated score); `updated_scores[k]` is box `keep[k]`'s score when it was selected.
    One Python iteration per kept box: meant for per-image or per-class lists of up to a few thousand boxes.
    """
    _check_boxes_scores(boxes, scores, "soft_nms")
    threshold = _check_threshold(iou_threshold, "soft_nms")
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft_nms: method must be 'gaussian' or 'linear', got {method!r}")
    if method == "gaussian" and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"soft_nms: sigma must be a positive finite number, got {sigma!r}")
    if torch.isnan(scores).any():
        raise ValueError("soft_nms: scores contain NaN")
    current = scores.clone()
    remaining = torch.arange(boxes.shape[0], device=boxes.device)
    keep: list[Tensor] = []
    kept_scores: list[Tensor] = []
    # One box per iteration: each selection changes the scores that decide the next one (inherently serial).
    while remaining.numel() > 0:
        best = int(torch.argmax(current))
        if current[best] < score_threshold:
            break
        keep.append(remaining[best : best + 1])
        kept_scores.append(current[best : best + 1])
        others = torch.cat((remaining[:best], remaining[best + 1 :]))
        other_scores = torch.cat((current[:best], current[best + 1 :]))
        iou = box_iou(boxes[remaining[best : best + 1]], boxes[others])[0].to(current.dtype)
        if method == "gaussian":
            decay = torch.exp(-(iou * iou) / sigma)
        else:
            decay = torch.where(iou > threshold, 1 - iou, torch.ones_like(iou))
        current = other_scores * decay
        remaining = others
    if not keep:
        return remaining.new_empty(0), current.new_empty(0)
    return torch.cat(keep), torch.cat(kept_scores)


def matrix_nms(
    masks: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    kernel: str = "gaussian",
    sigma: float = 2.0,
) -> Tensor:
    """Matrix NMS (SOLOv2, Wang et al. 2020): decay every mask's score in one parallel step.

    For masks sorted by decreasing score, mask j's score is multiplied by `min over higher-scored i` of
    `f(iou_ij) / f(iou_i_max)`, where `iou_i_max` is how much mask i itself overlaps a mask scored above it (a
    suppressed mask suppresses less). `f(x) = exp(-sigma * x**2)` (`kernel="gaussian"`) or `1 - x` ("linear").
    With `labels`, only masks of the same label interact.

    masks `(N, H, W)` bool (use low-resolution masks: this builds an `(N, H*W)` float matrix), scores `(N,)`,
    labels `(N,)` integer or None -> decayed scores `(N,)` in the input order (never larger than the input).
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3 or masks.dtype != torch.bool:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        dtype = masks.dtype if isinstance(masks, Tensor) else None
        raise ValueError(f"matrix_nms: masks must be a bool (N, H, W) tensor, got {shape} {dtype}")
    _check_scores(scores, masks.shape[0], "matrix_nms")
    if scores.device != masks.device:
        raise ValueError(f"matrix_nms: scores are on {scores.device} but masks are on {masks.device}")
    if labels is not None:
        _check_idxs(labels, masks, "matrix_nms", name="labels")
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"matrix_nms: sigma must be a positive finite number, got {sigma!r}")
    n = masks.shape[0]
    if n == 0:
        return scores.clone()
    order = _score_order(scores)
    # float32 counts pixels exactly up to 2**24 per mask; beyond that use float64.
    dtype = torch.float32 if masks[0].numel() < 2**24 else torch.float64
    flat = masks[order].reshape(n, -1).to(dtype)
    inter = flat @ flat.T
    area = flat.sum(dim=1)
    union = area[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    rank = torch.arange(n, device=masks.device)
    pair = rank[:, None] < rank[None, :]  # pair[i, j]: i is scored above j
    if labels is not None:
        sorted_labels = labels[order]
        pair &= sorted_labels[:, None] == sorted_labels[None, :]
    iou = torch.where(pair, iou, torch.zeros_like(iou))
    compensation = iou.max(dim=0).values[:, None]  # (N, 1): mask i's own largest IoU with a higher mask
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou * iou - compensation * compensation))
    else:
        # A duplicate of a higher mask (compensation 1) divides by ~0, so it suppresses nothing, except masks
        # identical to it (0 / ~0 = 0), which the higher mask has already decayed to 0.
        decay = (1 - iou) / (1 - compensation).clamp(min=torch.finfo(dtype).eps)
    coefficient = decay.min(dim=0).values.to(scores.dtype)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * coefficient
    return decayed


def _greedy_keep_mask(sorted_boxes: Tensor, threshold: float) -> Tensor:
    """Greedy NMS of `(N, 4)` boxes already in visiting order -> `(N,)` bool keep mask.

    Hand-written because no library here offers NMS (torchvision is not usable). Blocks of `_BLOCK` boxes are
    first tested against all boxes kept so far, then resolved inside the block by a fixed-point iteration
    (Cluster-NMS, Zheng et al. 2021): `keep[j] = alive[j] and no kept i < j suppresses j`. Entry j of the
    iterate is final once entries < j are, so it reaches the greedy answer, typically in 1-3 steps.
    """
    n = sorted_boxes.shape[0]
    device = sorted_boxes.device
    strict = _strict_upper(threshold, sorted_boxes.dtype, device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    kept = sorted_boxes[:0]
    for start in range(0, n, _BLOCK):
        block = sorted_boxes[start : start + _BLOCK]
        # `iou >= strict` is `iou > threshold` evaluated in double, as torchvision compares.
        alive = ~(box_iou(block, kept) >= strict).any(dim=1)
        rank = torch.arange(block.shape[0], device=device)
        suppresses = (box_iou(block, block) >= strict) & (rank[:, None] < rank[None, :]) & alive[:, None]
        block_keep = alive
        while True:
            update = alive & ~(suppresses & block_keep[:, None]).any(dim=0)
            if torch.equal(update, block_keep):
                break
            block_keep = update
        keep[start : start + block.shape[0]] = block_keep
        kept = torch.cat((kept, block[block_keep]))
    return keep


def _strict_upper(threshold: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Smallest `dtype` value strictly above `threshold` (a Python double): `x > threshold` <=> `x >= it`.

    torch compares a float32 tensor with a Python float in float32, which differs from torchvision's double
    comparison when the threshold rounds up (e.g. 0.3): this keeps the decisions identical.
    """
    value = torch.tensor(threshold, dtype=dtype, device=device)
    if float(value) <= threshold:
        value = torch.nextafter(value, torch.tensor(math.inf, dtype=dtype, device=device))
    return value


def _score_order(scores: Tensor) -> Tensor:
    return torch.argsort(scores, descending=True, stable=True)


def _use_kernel(boxes: Tensor) -> bool:
    return _extension.HAS_EXTENSION and boxes.device.type == "cpu" and boxes.dtype in _KERNEL_DTYPES


def _check_boxes_scores(boxes: Tensor, scores: Tensor, op: str) -> None:
    is_tensor = isinstance(boxes, Tensor)
    if not is_tensor or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        dtype = boxes.dtype if isinstance(boxes, Tensor) else None
        raise ValueError(f"{op}: boxes must be a floating (N, 4) x1y1x2y2 tensor, got {shape} {dtype}")
    _check_scores(scores, boxes.shape[0], op)
    if scores.device != boxes.device:
        raise ValueError(f"{op}: scores are on {scores.device} but boxes are on {boxes.device}")


def _check_scores(scores: Tensor, n: int, op: str) -> None:
    is_tensor = isinstance(scores, Tensor)
    if not is_tensor or scores.ndim != 1 or scores.shape[0] != n or not scores.is_floating_point():
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        dtype = scores.dtype if isinstance(scores, Tensor) else None
        raise ValueError(f"{op}: scores must be a floating (N,) tensor with N = {n}, got {shape} {dtype}")


def _check_idxs(idxs: Tensor, reference: Tensor, op: str, name: str = "idxs") -> None:
    n = reference.shape[0]
    if not isinstance(idxs, Tensor) or idxs.ndim != 1 or idxs.shape[0] != n or idxs.is_floating_point():
        shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
        raise ValueError(f"{op}: {name} must be an integer (N,) tensor with N = {n}, got {shape}")
    if idxs.device != reference.device:
        raise ValueError(f"{op}: {name} are on {idxs.device} but the other inputs are on {reference.device}")


def _check_threshold(iou_threshold: float, op: str) -> float:
    try:
        threshold = float(iou_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: iou_threshold must be a number, got {iou_threshold!r}") from None
    if math.isnan(threshold):
        raise ValueError(f"{op}: iou_threshold must not be NaN")
    return threshold
