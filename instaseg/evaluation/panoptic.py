"""Panoptic Quality (Kirillov et al. 2019): PQ = SQ x RQ per class, and their means over All / Things / Stuff.

The rules are panopticapi's (`pq_compute`):
- a predicted and a ground-truth segment match when they have the same category, the ground truth is not a
  crowd region, and IoU > 0.5 (strictly); the union leaves out the predicted pixels that lie on VOID
  (unlabelled ground truth). With non-overlapping segments a match is unique;
- per class: TP matches, FN unmatched non-crowd ground truth, FP unmatched predictions, except a prediction
  more than half of whose pixels lie on VOID or on crowd regions of its own class;
- PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2), SQ = sum of IoUs / TP (0 without TP),
  RQ = TP / (TP + FP / 2 + FN / 2); a class with no TP, FP or FN is left out of the means;
- All / Things / Stuff: means over the classes counted; None when no class counts.
One difference: panopticapi keeps one crowd region per class and image (the last listed); here the pixels
of all crowd regions of the class count, which is the same for COCO files (one crowd segment per class).

Two inputs: COCO panoptic files (`evaluate_panoptic_files`: PNG + JSON for ground truth and predictions,
read by `instaseg.data.coco_panoptic`), and instance predictions against instance ground truth
(`instance_panoptic_quality`, from `instance_pairs.collect`): predictions made non-overlapping by descending
score, ground truth by annotation order (an earlier annotation keeps shared pixels), Things and Stuff by the
categories' `isthing` (stuff regions are instances of their class like any other), no VOID (background
pixels are known background: a prediction there is a false positive). That is how nuclei segmentation
reports PQ (HoVer-Net).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instaseg.data.coco_panoptic import PanopticCategory, read_panoptic_json, read_segment_map
from instaseg.data.records import DatasetError
from instaseg.evaluation.instance_pairs import InstancePairs
from instaseg.evaluation.validation import EvaluationInputError, GroundTruth, Results

GROUPS = ("All", "Things", "Stuff")


@dataclass(frozen=True)
class Segments:
    """Segments of many images: `image` (S,), `category` (S,) category ids, `area` (S,) pixels, and for
    ground truth `iscrowd` (S,) bool."""

    image: np.ndarray
    category: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray | None = None


@dataclass(frozen=True)
class PanopticQuality:
    """`groups`: {"All" | "Things" | "Stuff": {"PQ", "SQ", "RQ", "n"}} (values None where n = 0);
    `per_class`: one dict per category that counted (category_id, name, isthing, PQ, SQ, RQ, TP, FP, FN)."""

    groups: dict[str, dict]
    per_class: list[dict]


def panoptic_quality(
    gt: Segments,
    pred: Segments,
    pair_gt: np.ndarray,
    pair_pred: np.ndarray,
    pair_count: np.ndarray,
    pred_void: np.ndarray,
    categories: dict[int, PanopticCategory],
) -> PanopticQuality:
    """PQ from segment areas and the overlaps of (`pair_gt`, `pair_pred`) (pixels shared, same image);
    `pred_void` (P,): each prediction's pixels on VOID. See the module docstring for the rules."""
    assert gt.iscrowd is not None
    same = gt.category[pair_gt] == pred.category[pair_pred]
    real = ~gt.iscrowd[pair_gt]
    union = pred.area[pair_pred] + gt.area[pair_gt] - pair_count - pred_void[pair_pred]
    iou = np.divide(pair_count, union, out=np.zeros(pair_count.size), where=union > 0)
    tp = same & real & (iou > 0.5)
    gt_matched = np.zeros(gt.area.size, dtype=bool)
    pred_matched = np.zeros(pred.area.size, dtype=bool)
    gt_matched[pair_gt[tp]] = True
    pred_matched[pair_pred[tp]] = True
    on_crowd = np.bincount(
        pair_pred[same & ~real], weights=pair_count[same & ~real], minlength=pred.area.size
    )
    ignored = (pred_void + on_crowd) / np.maximum(pred.area, 1) > 0.5
    ids = np.array(sorted(categories), dtype=np.int64)

    def per_category(category: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(np.searchsorted(ids, category), weights=weights, minlength=ids.size)

    iou_sum = per_category(gt.category[pair_gt[tp]], iou[tp])
    tps = per_category(gt.category[pair_gt[tp]])
    fns = per_category(gt.category[~gt_matched & ~gt.iscrowd])
    fps = per_category(pred.category[~pred_matched & ~ignored])
    rows = []
    for k, category_id in enumerate(ids.tolist()):
        tp_k, fp_k, fn_k = int(tps[k]), int(fps[k]), int(fns[k])
        if tp_k + fp_k + fn_k == 0:
            continue
        denominator = tp_k + 0.5 * fp_k + 0.5 * fn_k
        category = categories[category_id]
        rows.append(
            {
                "category_id": category_id,
                "name": category.name,
                "isthing": category.isthing,
                "PQ": float(iou_sum[k] / denominator),
                "SQ": float(iou_sum[k] / tp_k) if tp_k else 0.0,
                "RQ": tp_k / denominator,
                "TP": tp_k,
                "FP": fp_k,
                "FN": fn_k,
            }
        )
    groups = {}
    for group in GROUPS:
        chosen = [r for r in rows if group == "All" or r["isthing"] == (group == "Things")]
        n = len(chosen)
        groups[group] = {
            name: (float(np.mean([r[name] for r in chosen])) if n else None) for name in ("PQ", "SQ", "RQ")
        }
        groups[group]["n"] = n
    return PanopticQuality(groups, rows)


def instance_panoptic_quality(gt: GroundTruth, results: Results, pairs: InstancePairs) -> PanopticQuality:
    """PQ of instance predictions against instance ground truth, from the counts of `instance_pairs.collect`
    with claims (predictions with score >= their `min_score`); no VOID (see the module docstring). Things
    and Stuff are the ground truth's categories by their `isthing` (absent: a thing)."""
    claims = pairs.claims
    if claims is None:
        raise ValueError("Panoptic Quality needs pairs collected with claims=True")
    kept_gt = np.flatnonzero(claims.gt_area > 0)
    kept_pred = np.flatnonzero((claims.dt_area > 0) & (results.scores >= claims.min_score))
    gt_position = np.full(pairs.gt_area.size, -1, dtype=np.int64)
    gt_position[kept_gt] = np.arange(kept_gt.size)
    pred_position = np.full(pairs.dt_area.size, -1, dtype=np.int64)
    pred_position[kept_pred] = np.arange(kept_pred.size)
    overlap = claims.panoptic
    categories = {
        c: PanopticCategory(c, gt.category_names[c], gt.category_isthing[c]) for c in gt.category_ids
    }
    return panoptic_quality(
        Segments(
            gt.image_index[kept_gt],
            gt.annotation_category_ids[kept_gt],
            claims.gt_area[kept_gt],
            gt.iscrowd[kept_gt] == 1,
        ),
        Segments(results.image_index[kept_pred], results.category_ids[kept_pred], claims.dt_area[kept_pred]),
        gt_position[overlap.gt],
        pred_position[overlap.dt],
        overlap.count,
        np.zeros(kept_pred.size),
        categories,
    )


def evaluate_panoptic_files(
    gt_json: str | Path,
    pred_json: str | Path,
    gt_folder: str | Path | None = None,
    pred_folder: str | Path | None = None,
) -> PanopticQuality:
    """PQ of COCO panoptic predictions (`pred_json` + PNGs in `pred_folder`) against COCO panoptic ground
    truth (`gt_json` + PNGs in `gt_folder`); folders default to the JSON path without `.json`. Every ground-
    truth image needs a prediction; categories are the ground truth's. Bad input raises
    `EvaluationInputError` naming the file and the segment."""
    try:
        gt_file = read_panoptic_json(gt_json, gt_folder)
        pred_file = read_panoptic_json(pred_json, pred_folder, categories=gt_file.categories)
    except DatasetError as exc:
        raise EvaluationInputError(str(exc)) from exc
    gt_parts: list[tuple[np.ndarray, ...]] = []
    pred_parts: list[tuple[np.ndarray, ...]] = []
    pairs: list[tuple[np.ndarray, ...]] = []
    voids: list[np.ndarray] = []
    num_gt = num_pred = 0
    for image_number, (image_id, gt_image) in enumerate(sorted(gt_file.images.items())):
        pred_image = pred_file.images.get(image_id)
        if pred_image is None:
            raise EvaluationInputError(
                f"{pred_file.path}: no annotation for image {image_id} of {gt_file.path}"
            )
        pred_image = type(pred_image)(
            image_id, gt_image.height, gt_image.width, pred_image.png, pred_image.segments
        )
        try:
            gt_ids = read_segment_map(gt_image, gt_file.path)
            pred_ids = read_segment_map(pred_image, pred_file.path)
        except DatasetError as exc:
            raise EvaluationInputError(str(exc)) from exc
        if gt_ids.shape != pred_ids.shape:
            raise EvaluationInputError(
                f"{pred_image.png}: annotation of image {image_id}: the PNG is {pred_ids.shape[1]}x"
                f"{pred_ids.shape[0]} (WxH) but the ground truth's is {gt_ids.shape[1]}x{gt_ids.shape[0]}"
            )
        gt_segment_ids = np.array([0] + [s.id for s in gt_image.segments], dtype=np.int64)
        pred_segment_ids = np.array([0] + [s.id for s in pred_image.segments], dtype=np.int64)
        gt_index = _positions(gt_ids, gt_segment_ids)
        pred_index = _positions(pred_ids, pred_segment_ids)
        ng, npred = gt_segment_ids.size, pred_segment_ids.size
        joint = np.bincount((gt_index * npred + pred_index).ravel(), minlength=ng * npred).reshape(ng, npred)
        gt_parts.append(
            (
                np.full(ng - 1, image_number),
                np.array([s.category_id for s in gt_image.segments], dtype=np.int64),
                joint[1:].sum(axis=1),
                np.array([s.iscrowd == 1 for s in gt_image.segments], dtype=bool),
            )
        )
        pred_parts.append(
            (
                np.full(npred - 1, image_number),
                np.array([s.category_id for s in pred_image.segments], dtype=np.int64),
                joint[:, 1:].sum(axis=0),
            )
        )
        g, p = np.nonzero(joint[1:, 1:])
        pairs.append((g + num_gt, p + num_pred, joint[1:, 1:][g, p]))
        voids.append(joint[0, 1:])
        num_gt += ng - 1
        num_pred += npred - 1
    gt_columns = [np.concatenate([part[i] for part in gt_parts]) for i in range(4)]
    pred_columns = [np.concatenate([part[i] for part in pred_parts]) for i in range(3)]
    pair_columns = [np.concatenate([part[i] for part in pairs]) for i in range(3)]
    return panoptic_quality(
        Segments(*gt_columns[:3], iscrowd=gt_columns[3]),
        Segments(*pred_columns),
        *pair_columns,
        np.concatenate(voids).astype(np.float64),
        gt_file.categories,
    )


def _positions(ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """(H, W) index into `segment_ids` (sorted or not; 0 first) of each pixel's id."""
    order = np.argsort(segment_ids)
    return order[np.searchsorted(segment_ids, ids, sorter=order)]


def panoptic_section(quality: PanopticQuality) -> dict:
    """The JSON report section."""
    return {"groups": quality.groups, "per_class": quality.per_class}
