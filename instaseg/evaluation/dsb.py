"""The 2018 Data Science Bowl score: per image the mean over IoU thresholds of TP / (TP + FP + FN), then
the mean over images.

Hand-written because no installed library implements it. Definition (Caicedo et al. 2019, the Kaggle metric):
1. Predictions are made non-overlapping by descending score: each pixel belongs to the highest-scoring
   prediction that claims it. A prediction left with no pixel claimed nothing and is removed.
2. At each threshold t in 0.5, 0.55, ..., 0.95 a prediction and a ground-truth object match when IoU > t
   (strictly), one to one. With disjoint predictions and t >= 0.5 each object has at most one candidate; only
   overlapping ground truth (a pixel or two in a few DSB images) can give a prediction two, resolved greedily
   by decreasing IoU.
3. TP = matches, FP = unmatched predictions, FN = unmatched objects; the image score is the mean over t of
   TP / (TP + FP + FN). An image with neither objects nor predictions scores 1.

The score is class-agnostic (the DSB task has one class) and crowd annotations are not counted as objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from instaseg.data.coco_fields import segmentation_to_rle
from instaseg.structures.masks import decode_rle

DSB_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class DsbScore:
    """`score`: mean of `per_image` (image id -> that image's DSB score) over every ground-truth image."""

    score: float
    per_image: dict[int, float]
    min_score: float


def _owner_map(
    pred_masks: Sequence[np.ndarray], pred_scores: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) int32: 1 + index of the prediction owning each pixel (the highest score), 0 where none does."""
    owner = np.zeros(shape, dtype=np.int32)
    for index in np.argsort(-pred_scores, kind="stable"):
        mask = np.asarray(pred_masks[index], dtype=bool)
        owner[mask & (owner == 0)] = index + 1
    return owner


def _count_one_to_one(candidates: np.ndarray, iou: np.ndarray) -> int:
    """Size of the greedy (decreasing IoU) one-to-one matching among `candidates` (G, P) bool pairs."""
    rows, cols = np.nonzero(candidates)
    if rows.size == len(np.unique(rows)) and cols.size == len(np.unique(cols)):
        return int(rows.size)
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    for k in np.argsort(-iou[rows, cols], kind="stable"):
        if rows[k] not in used_rows and cols[k] not in used_cols:
            used_rows.add(int(rows[k]))
            used_cols.add(int(cols[k]))
    return len(used_rows)


def dsb_image_score(
    gt_masks: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    pred_scores: Sequence[float] | np.ndarray,
) -> float:
    """DSB score of one image. `gt_masks`, `pred_masks`: sequences of (H, W) bool masks (or (N, H, W) arrays)
    of one image size; `pred_scores`: one score per prediction (higher wins contested pixels)."""
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(pred_masks):
        raise ValueError(f"got {len(pred_masks)} predicted masks but {len(scores)} scores")
    if len(gt_masks) == 0 and len(pred_masks) == 0:
        return 1.0
    shape = np.shape(gt_masks[0]) if len(gt_masks) else np.shape(pred_masks[0])
    for name, masks in (("ground-truth", gt_masks), ("predicted", pred_masks)):
        for index, mask in enumerate(masks):
            if np.shape(mask) != shape:
                raise ValueError(f"{name} mask {index} has shape {np.shape(mask)}; expected {shape}")

    owner = _owner_map(pred_masks, scores, shape)
    num_preds = len(pred_masks)
    pred_area = np.bincount(owner.ravel(), minlength=num_preds + 1)[1:]
    claimed = pred_area > 0
    intersection = np.zeros((len(gt_masks), num_preds), dtype=np.int64)
    gt_area = np.zeros(len(gt_masks), dtype=np.int64)
    for g, mask in enumerate(gt_masks):
        mask = np.asarray(mask, dtype=bool)
        gt_area[g] = mask.sum()
        intersection[g] = np.bincount(owner[mask], minlength=num_preds + 1)[1:]
    intersection, pred_area = intersection[:, claimed], pred_area[claimed]
    union = gt_area[:, None] + pred_area[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)

    num_gt, num_pred = iou.shape
    per_threshold = []
    for threshold in DSB_IOU_THRESHOLDS:
        tp = _count_one_to_one(iou > threshold, iou)
        denominator = num_gt + num_pred - tp  # TP + FP + FN
        per_threshold.append(tp / denominator if denominator else 1.0)
    return float(np.mean(per_threshold))


def _decode(segmentation: object, size: tuple[int, int], where: str) -> np.ndarray:
    return decode_rle([segmentation_to_rle(segmentation, *size)])[0]


def dsb_score(gt: Mapping, results: list[dict], min_score: float = 0.0) -> DsbScore:
    """DSB score of COCO `results` against the COCO dataset `gt`, over every image of `gt`.

    Inputs must be validated first (`check_ground_truth`, `normalize_results`); detections with a score below
    `min_score` are left out (the DSB score counts every prediction as a claim, so low-score ones cost FPs).
    """
    gt_by_image: dict[int, list[dict]] = {image["id"]: [] for image in gt["images"]}
    for annotation in gt["annotations"]:
        if not annotation.get("iscrowd", 0):
            gt_by_image[annotation["image_id"]].append(annotation)
    preds_by_image: dict[int, list[dict]] = {image_id: [] for image_id in gt_by_image}
    for record in results:
        if record["score"] >= min_score:
            preds_by_image[record["image_id"]].append(record)

    per_image = {}
    for image in gt["images"]:
        size = (image["height"], image["width"])
        gt_masks = [
            _decode(a["segmentation"], size, f"annotation {a['id']}") for a in gt_by_image[image["id"]]
        ]
        preds = preds_by_image[image["id"]]
        pred_masks = [_decode(p["segmentation"], size, f"result for image {image['id']}") for p in preds]
        scores = np.array([p["score"] for p in preds], dtype=np.float64)
        per_image[image["id"]] = dsb_image_score(gt_masks, pred_masks, scores)
    return DsbScore(score=float(np.mean(list(per_image.values()))), per_image=per_image, min_score=min_score)
