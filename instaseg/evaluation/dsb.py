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
The pixel counts come from `instance_pairs.collect`, for all images at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from instaseg.evaluation.instance_pairs import InstancePairs, collect
from instaseg.evaluation.validation import GroundTruth, check_ground_truth, check_results

DSB_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class DsbScore:
    """`score`: mean of `per_image` (image id -> that image's DSB score) over every ground-truth image."""

    score: float
    per_image: dict[int, float]
    min_score: float


def _matches_per_image(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, iou: np.ndarray, num_images: int
) -> np.ndarray:
    """(I,) size of the one-to-one matching of the candidate pairs per image: all of them where no object or
    prediction has two candidates, else greedy by decreasing IoU (ties in (object, prediction) order)."""
    matches = np.zeros(num_images, dtype=np.int64)
    if image.size == 0:
        return matches
    doubled = np.zeros(num_images, dtype=bool)
    for index in (gt, pred):
        _, first, counts = np.unique(index, return_index=True, return_counts=True)
        doubled[image[first[counts > 1]]] = True
    simple = ~doubled[image]
    matches += np.bincount(image[simple], minlength=num_images)
    for i in np.flatnonzero(doubled):
        here = np.flatnonzero(image == i)
        here = here[np.lexsort((pred[here], gt[here]))]
        used_gt: set[int] = set()
        used_pred: set[int] = set()
        for k in here[np.argsort(-iou[here], kind="stable")]:
            if int(gt[k]) not in used_gt and int(pred[k]) not in used_pred:
                used_gt.add(int(gt[k]))
                used_pred.add(int(pred[k]))
        matches[i] = len(used_gt)
    return matches


def dsb_image_scores(
    num_gt: np.ndarray,
    num_pred: np.ndarray,
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    iou: np.ndarray,
) -> np.ndarray:
    """(I,) DSB scores from per-image object and (claimed) prediction counts and the IoUs of the pairs
    (`image`, `gt`, `pred`, `iou`, all (P,)) of non-overlapping predictions with objects."""
    per_threshold = []
    for threshold in DSB_IOU_THRESHOLDS:
        above = iou > threshold
        tp = _matches_per_image(image[above], gt[above], pred[above], iou[above], num_gt.size)
        denominator = num_gt + num_pred - tp  # TP + FP + FN
        per_threshold.append(np.divide(tp, denominator, out=np.ones(tp.size), where=denominator > 0))
    return np.mean(per_threshold, axis=0)


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
    owner = np.zeros(shape, dtype=np.int64)  # 1 + index of the prediction owning each pixel, 0 where none
    for index in np.argsort(-scores, kind="stable"):
        owner[np.asarray(pred_masks[index], dtype=bool) & (owner == 0)] = index + 1
    num_preds = len(pred_masks)
    pred_area = np.bincount(owner.ravel(), minlength=num_preds + 1)[1:]
    rows, cols, ious = [], [], []
    for g, mask in enumerate(gt_masks):
        mask = np.asarray(mask, dtype=bool)
        shared = np.bincount(owner[mask], minlength=num_preds + 1)[1:]
        for p in np.flatnonzero(shared):
            rows.append(g)
            cols.append(p)
            ious.append(shared[p] / (mask.sum() + pred_area[p] - shared[p]))
    pairs = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(ious, dtype=np.float64)
    claimed = int(np.count_nonzero(pred_area))
    return float(
        dsb_image_scores(
            np.array([len(gt_masks)]), np.array([claimed]), np.zeros(pairs[0].size, np.int64), *pairs
        )[0]
    )


def dsb_from_pairs(
    gt: GroundTruth, scores: np.ndarray, image_index: np.ndarray, pairs: InstancePairs
) -> DsbScore:
    """The DSB score from the counts of `collect` with claims (`scores`, `image_index`: the detections')."""
    claims = pairs.claims
    if claims is None:
        raise ValueError("the DSB score needs pairs collected with claims=True")
    num_images = gt.image_ids.size
    real = gt.iscrowd == 0
    num_gt = np.bincount(gt.image_index[real], minlength=num_images)
    claimed = (claims.dt_area > 0) & (scores >= claims.min_score)
    num_pred = np.bincount(image_index[claimed], minlength=num_images)
    c = claims.pairs
    iou = c.count / (claims.dt_area[c.dt] + pairs.gt_area[c.gt] - c.count)
    per_image = dsb_image_scores(num_gt, num_pred, gt.image_index[c.gt], c.gt, c.dt, iou)
    return DsbScore(
        score=float(per_image.mean()),
        per_image={int(i): float(s) for i, s in zip(gt.image_ids, per_image, strict=True)},
        min_score=claims.min_score,
    )


def dsb_score(gt: Mapping, results: list[dict], min_score: float = 0.0) -> DsbScore:
    """DSB score of COCO `results` against the COCO dataset `gt`, over every image of `gt` (inputs are
    checked first); detections with a score below `min_score` are left out (the DSB score counts every
    prediction as a claim, so low-score ones cost FPs)."""
    checked = check_ground_truth(gt, "ground truth", "segm")
    columns = check_results(results, checked, "segm", "results", allow_empty=True)
    pairs = collect(checked, columns, boundary=False, claims=True, min_score=min_score)
    return dsb_from_pairs(checked, columns.scores, columns.image_index, pairs)
