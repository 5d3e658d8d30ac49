"""How good masks are once an object is found: IoU, Dice and boundary IoU of matched pairs; foreground Dice.

Definitions (also in docs/evaluation.md):
- Matched pairs: detection/ground-truth pairs that the COCO matcher pairs at mask IoU >= 0.5 (area "all", the
  report's `max_dets` cap), see `coco_eval.match_detections`; pairs with crowd annotations are left out.
- Mean IoU: mean mask IoU over matched pairs. Mean Dice: mean over matched pairs of 2|A∩B| / (|A| + |B|),
  which for one pair equals 2 IoU / (1 + IoU).
- Mean boundary IoU (Cheng et al. 2021): mean over matched pairs of the IoU of the two masks' inner boundary
  bands, each band `dilation_ratio` (2%) of the image diagonal wide; bands from faster-coco-eval.
- Foreground Dice: per image, Dice of the union of all predicted masks (score >= `min_score`) with the union
  of all ground-truth masks (crowd regions left out), averaged over images; 1.0 where both are empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from faster_coco_eval.core.mask import rleToBoundary

from instaseg.data.coco_fields import segmentation_to_rle
from instaseg.evaluation.coco_eval import Match
from instaseg.structures.masks import mask_iou, merge_rles, rle_area

BOUNDARY_DILATION_RATIO = 0.02


@dataclass(frozen=True)
class MaskQuality:
    """Means over `num_matched` matched pairs (None when nothing matched) and the mean foreground Dice."""

    num_matched: int
    mean_iou: float | None
    mean_dice: float | None
    mean_boundary_iou: float | None
    foreground_dice: float
    min_score: float


def boundary_iou(dt_rle: dict, gt_rle: dict, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> float:
    """Boundary IoU of two compressed RLE masks of one image size (Cheng et al. 2021)."""
    dt_band = rleToBoundary(dt_rle, dilation_ratio)
    gt_band = rleToBoundary(gt_rle, dilation_ratio)
    return float(mask_iou([dt_band], [gt_band], [0])[0, 0])


def _dice(a: dict | None, b: dict | None) -> float:
    area_a = int(rle_area([a])[0]) if a is not None else 0
    area_b = int(rle_area([b])[0]) if b is not None else 0
    if area_a + area_b == 0:
        return 1.0
    if a is None or b is None:
        return 0.0
    inter = int(rle_area([merge_rles([a, b], intersect=True)])[0])
    return 2.0 * inter / (area_a + area_b)


def foreground_dice(gt: Mapping, results: list[dict], min_score: float = 0.0) -> float:
    """Mean over the images of `gt` of the Dice between the union of predictions and the union of objects."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    gt_rles: dict[int, list[dict]] = {image_id: [] for image_id in sizes}
    for annotation in gt["annotations"]:
        if not annotation.get("iscrowd", 0):
            size = sizes[annotation["image_id"]]
            gt_rles[annotation["image_id"]].append(segmentation_to_rle(annotation["segmentation"], *size))
    pred_rles: dict[int, list[dict]] = {image_id: [] for image_id in sizes}
    for record in results:
        if record["score"] >= min_score:
            pred_rles[record["image_id"]].append(record["segmentation"])
    dices = []
    for image_id in sizes:
        gt_union = merge_rles(gt_rles[image_id]) if gt_rles[image_id] else None
        pred_union = merge_rles(pred_rles[image_id]) if pred_rles[image_id] else None
        dices.append(_dice(pred_union, gt_union))
    return float(np.mean(dices))


def mask_quality(
    gt: Mapping, results: list[dict], matches: list[Match], min_score: float = 0.0
) -> MaskQuality:
    """Mask quality of normalised segm `results` against `gt`, given the COCO `matches` at mask IoU 0.5."""
    annotations = {annotation["id"]: annotation for annotation in gt["annotations"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    ious, boundary_ious = [], []
    for match in matches:
        annotation = annotations[match.gt_id]
        if annotation.get("iscrowd", 0):
            continue
        size = sizes[annotation["image_id"]]
        gt_rle = segmentation_to_rle(annotation["segmentation"], *size)
        ious.append(match.iou)
        boundary_ious.append(boundary_iou(results[match.result_index]["segmentation"], gt_rle))
    iou = np.asarray(ious, dtype=np.float64)
    return MaskQuality(
        num_matched=len(ious),
        mean_iou=float(iou.mean()) if ious else None,
        mean_dice=float(np.mean(2 * iou / (1 + iou))) if ious else None,
        mean_boundary_iou=float(np.mean(boundary_ious)) if ious else None,
        foreground_dice=foreground_dice(gt, results, min_score),
        min_score=min_score,
    )
