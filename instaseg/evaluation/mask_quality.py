"""How good masks are once an object is found: IoU, Dice and boundary IoU of matched pairs; foreground Dice.

Definitions (also in docs/evaluation.md):
- Matched pairs: detection/ground-truth pairs that the COCO matcher pairs at mask IoU >= 0.5 (area "all", the
  report's `max_dets` cap), see `coco_eval.match_detections`; pairs with crowd annotations are left out.
- Mean IoU: mean mask IoU over matched pairs. Mean Dice: mean over matched pairs of 2|A∩B| / (|A| + |B|),
  which for one pair equals 2 IoU / (1 + IoU).
- Mean boundary IoU (Cheng et al. 2021): mean over matched pairs of the IoU of the two masks' inner boundary
  bands, each band `BOUNDARY_DILATION_RATIO` (2%) of the image diagonal wide (`pixels.boundary_runs`).
- Foreground Dice: per image, Dice of the union of all predicted masks (score >= `min_score`) with the union
  of all ground-truth masks (crowd regions left out), averaged over images; 1.0 where both are empty.

Everything is counted in one pass over the masks' pixels (`instance_pairs.collect`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from instaseg.evaluation.coco_eval import Match, boundary_ious
from instaseg.evaluation.instance_pairs import BOUNDARY_DILATION_RATIO, InstancePairs, collect
from instaseg.evaluation.pixels import Line, boundary_dilation, boundary_runs, foreground_runs, pair_counts
from instaseg.evaluation.validation import GroundTruth, MaskColumns, check_ground_truth, check_results
from instaseg.structures.masks import rle_runs

__all__ = ["BOUNDARY_DILATION_RATIO", "MaskQuality", "boundary_iou", "foreground_dice", "mask_quality"]


@dataclass(frozen=True)
class MaskQuality:
    """Means over `num_matched` matched pairs (None when nothing matched) and the mean foreground Dice of the
    detections with score >= `min_score` (both None when not counted, see `quality_of`)."""

    num_matched: int
    mean_iou: float | None
    mean_dice: float | None
    mean_boundary_iou: float | None
    foreground_dice: float | None
    min_score: float | None


def boundary_iou(dt_rle: dict, gt_rle: dict, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> float:
    """Boundary IoU of two compressed RLE masks of one image size (Cheng et al. 2021)."""
    height, width = (int(v) for v in gt_rle["size"])
    runs, offsets, _ = rle_runs([dt_rle["counts"], gt_rle["counts"]])
    masks = MaskColumns([], runs, offsets)
    dilation = boundary_dilation(np.array([height]), np.array([width]), dilation_ratio)
    zero = np.zeros(1, dtype=np.int64)
    bands = [
        boundary_runs(foreground_runs(masks, np.array([k]), zero), np.array([height]), dilation)
        for k in (0, 1)
    ]
    line = Line(height * width)
    dt, gt = line.cut(bands, zero)
    _, _, shared = pair_counts(dt, None, gt, None, zero, zero, 1)
    union = int(bands[0].area.sum() + bands[1].area.sum() - shared.sum())
    return float(shared.sum() / union) if union else 0.0


def foreground_dices(pairs: InstancePairs) -> np.ndarray:
    """(I,) per image Dice of the union of claimed detections with the union of non-crowd ground truth (from
    the counts of `collect` with claims)."""
    claims = pairs.claims
    if claims is None:
        raise ValueError("foreground Dice needs pairs collected with claims=True")
    total = claims.fg_pred + claims.fg_gt
    return np.divide(2.0 * claims.fg_both, total, out=np.ones(total.size), where=total > 0)


def quality_of(
    gt: GroundTruth, pairs: InstancePairs, dt: np.ndarray, gt_index: np.ndarray, iou: np.ndarray
) -> MaskQuality:
    """Mask quality from the counts of `collect` (with bands) and the COCO matches at mask IoU 0.5 (detection
    indices, annotation indices, IoUs; pairs with crowd regions are left out here); the foreground Dice only
    when the counts have claims."""
    real = gt.iscrowd[gt_index] == 0
    dt, gt_index, iou = dt[real], gt_index[real], iou[real]
    num = int(dt.size)
    boundary = boundary_ious(pairs, dt, gt_index)
    return MaskQuality(
        num_matched=num,
        mean_iou=float(iou.mean()) if num else None,
        mean_dice=float(np.mean(2 * iou / (1 + iou))) if num else None,
        mean_boundary_iou=float(boundary.mean()) if num else None,
        foreground_dice=float(foreground_dices(pairs).mean()) if pairs.claims is not None else None,
        min_score=pairs.claims.min_score if pairs.claims is not None else None,
    )


def _collected(gt: Mapping, results: list[dict], min_score: float) -> tuple[GroundTruth, InstancePairs]:
    checked = check_ground_truth(gt, "ground truth", "segm")
    columns = check_results(results, checked, "segm", "results", allow_empty=True)
    return checked, collect(checked, columns, boundary=True, claims=True, min_score=min_score)


def foreground_dice(gt: Mapping, results: list[dict], min_score: float = 0.0) -> float:
    """Mean over the images of `gt` of the Dice between the union of predictions and the union of objects."""
    _, pairs = _collected(gt, results, min_score)
    return float(foreground_dices(pairs).mean())


def mask_quality(
    gt: Mapping, results: list[dict], matches: list[Match], min_score: float = 0.0
) -> MaskQuality:
    """Mask quality of segm `results` against `gt` (both checked here), given the COCO `matches` at mask IoU
    0.5 (`match_detections`)."""
    checked, pairs = _collected(gt, results, min_score)
    index_of_id = {int(annotation_id): k for k, annotation_id in enumerate(checked.annotation_ids)}
    dt = np.array([m.result_index for m in matches], dtype=np.int64)
    gt_index = np.array([index_of_id[m.gt_id] for m in matches], dtype=np.int64)
    return quality_of(checked, pairs, dt, gt_index, np.array([m.iou for m in matches], dtype=np.float64))
