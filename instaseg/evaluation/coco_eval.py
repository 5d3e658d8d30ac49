"""COCO AP/AR with one detection cap (`max_dets`) used consistently by every number.

Mask AP (segm) and Boundary AP are COCO's matching and accumulation (`matching`, pycocotools' rules written
out) on the exact pixel overlaps that `instance_pairs.collect` counts from the masks' runs: the overlaps
are counted once and shared with every other segm metric of the report, and this is faster than a second
pass over the masks by a COCO library (hotcoco's mask AP alone took longer than all the counting and
matching here). Tests check every accumulated array against pycocotools to 1e-9 and Boundary AP against
faster-coco-eval. Box AP (bbox) comes from hotcoco (a Rust port of pycocotools' COCOeval, the same arrays
to floating-point rounding). The twelve numbers are read from the accumulated arrays here instead of
pycocotools' `summarize()`, which hard-codes `maxDets=100` for the first AP and prints -1 for any other cap.
Dense scenes (a nuclei image holds up to 375 objects) need a cap above COCO's default of 100.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import hotcoco
import numpy as np

from instaseg.evaluation.instance_pairs import InstancePairs, collect
from instaseg.evaluation.matching import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    Detections,
    GroundTruths,
    accumulate,
    match,
)
from instaseg.evaluation.validation import (
    EvaluationInputError,
    GroundTruth,
    Results,
    check_ground_truth,
    check_results,
)

STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR_max", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


@dataclass(frozen=True)
class CocoMetrics:
    """Accumulated COCO results for one IoU type.

    `stats` maps `STAT_NAMES` to values; AR_max and every AP/area-range number use `max_dets` detections per
    image; -1 means undefined (no ground truth in that area range), as in COCO. Arrays as in COCOeval:
    `precision (T, R, K, A, M)` and `scores (T, R, K, A, M)`, `recall (T, K, A, M)` with T IoU thresholds
    0.5:0.05:0.95, R recall thresholds 0:0.01:1, K categories (`category_ids` order), A area ranges
    (all, small, medium, large), M detection caps `max_dets_list`.
    """

    iou_type: str
    max_dets: int
    stats: dict[str, float]
    per_class: list[dict]
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: list[int]
    max_dets_list: list[int]


@dataclass(frozen=True)
class Match:
    """A detection matched to a ground-truth annotation: `result_index` into the results list, `gt_id` the
    annotation id, `iou` their IoU under the evaluated IoU type."""

    result_index: int
    gt_id: int
    iou: float


def check_max_dets(max_dets: int) -> None:
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 10:
        raise EvaluationInputError(
            f"max_dets must be an integer of at least 10 (COCO also reports AR at 1 and 10); got {max_dets!r}"
        )


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def summarize(
    precision: np.ndarray,
    recall: np.ndarray,
    iou_thresholds: np.ndarray,
    max_dets_list: list[int],
    max_dets: int,
) -> dict[str, float]:
    """The twelve COCO summary numbers from accumulated arrays, all at `max_dets` except AR1 and AR10.

    Area index order is (all, small, medium, large) as in COCOeval's default parameters.
    """
    m = max_dets_list.index(max_dets)
    t50 = int(np.flatnonzero(np.isclose(iou_thresholds, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(iou_thresholds, 0.75))[0])
    return {
        "AP": _mean_defined(precision[:, :, :, 0, m]),
        "AP50": _mean_defined(precision[t50, :, :, 0, m]),
        "AP75": _mean_defined(precision[t75, :, :, 0, m]),
        "AP_small": _mean_defined(precision[:, :, :, 1, m]),
        "AP_medium": _mean_defined(precision[:, :, :, 2, m]),
        "AP_large": _mean_defined(precision[:, :, :, 3, m]),
        "AR1": _mean_defined(recall[:, :, 0, max_dets_list.index(1)]),
        "AR10": _mean_defined(recall[:, :, 0, max_dets_list.index(10)]),
        "AR_max": _mean_defined(recall[:, :, 0, m]),
        "AR_small": _mean_defined(recall[:, :, 1, m]),
        "AR_medium": _mean_defined(recall[:, :, 2, m]),
        "AR_large": _mean_defined(recall[:, :, 3, m]),
    }


def _per_class(
    gt: GroundTruth, results: Results, precision: np.ndarray, iou_thresholds: np.ndarray, m: int
) -> list[dict]:
    category_ids = np.asarray(gt.category_ids, dtype=np.int64)
    real = gt.iscrowd == 0
    num_gt = np.searchsorted(category_ids, gt.annotation_category_ids[real])
    num_gt = np.bincount(num_gt, minlength=len(category_ids))
    num_dets = np.bincount(np.searchsorted(category_ids, results.category_ids), minlength=len(category_ids))
    t50 = int(np.flatnonzero(np.isclose(iou_thresholds, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(iou_thresholds, 0.75))[0])
    rows = []
    for k, category_id in enumerate(gt.category_ids):
        rows.append(
            {
                "category_id": category_id,
                "name": gt.category_names[category_id],
                "num_gt": int(num_gt[k]),
                "num_detections": int(num_dets[k]),
                "AP": _mean_defined(precision[:, :, k, 0, m]),
                "AP50": _mean_defined(precision[t50, :, k, 0, m]),
                "AP75": _mean_defined(precision[t75, :, k, 0, m]),
            }
        )
    return rows


def evaluate_coco(
    gt: Mapping,
    results: list,
    iou_type: str = "segm",
    max_dets: int = 100,
    *,
    allow_empty_results: bool = False,
    gt_source: str = "ground truth",
    results_source: str = "results",
) -> CocoMetrics:
    """COCO evaluation of `results` (COCO result records) against `gt` (a COCO instances dataset dict).

    `iou_type` is "segm", "bbox" or "boundary" (Boundary AP of Cheng et al. 2021 as faster-coco-eval computes
    it: a pair's IoU is min(mask IoU, boundary IoU), boundary band 2% of the image diagonal). Every number
    uses at most `max_dets` detections per image (highest scores first). Inputs are validated first (see
    `instaseg.evaluation.validation`); `*_source` name the inputs in error messages.
    """
    check_max_dets(max_dets)
    with ThreadPoolExecutor(max_workers=1) as pool:
        early = start_hotcoco(pool, gt, results, iou_type, max_dets)
        checked = check_ground_truth(gt, gt_source, iou_type)
        columns = check_results(results, checked, iou_type, results_source, allow_empty_results)
        return coco_metrics(checked, columns, iou_type, max_dets, early=early)


def _hotcoco_eval(
    gt: Mapping, records: list, iou_type: str, max_dets_list: list[int]
) -> tuple[dict, list, list]:
    coco_gt = hotcoco.COCO(gt)
    evaluator = hotcoco.COCOeval(coco_gt, coco_gt.load_res(records), iou_type)
    evaluator.params.max_dets = max_dets_list
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator.eval, evaluator.params.iou_thrs, evaluator.params.rec_thrs


def start_hotcoco(
    pool: Executor, gt: Any, results: Any, iou_type: str, max_dets: int
) -> EarlyEvaluation | None:
    """hotcoco's box AP of the unchecked inputs (bbox only: masks are matched here), started in `pool` while
    they are checked (it releases the GIL while matching, so the checks run beside it). Safe because hotcoco
    is memory-safe Rust: bad input gives an exception or a wrong number there, and `coco_metrics` uses the
    result only when the checks passed and the records went to hotcoco unchanged."""
    if iou_type != "bbox" or not isinstance(gt, Mapping) or not isinstance(results, list):
        return None
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 10:
        return None
    future = pool.submit(_hotcoco_eval, gt, results, iou_type, [1, 10, max_dets])
    return EarlyEvaluation(gt, results, iou_type, max_dets, future)


@dataclass(frozen=True)
class EarlyEvaluation:
    """A hotcoco evaluation started on inputs before they were checked (`start_hotcoco`)."""

    gt: Mapping
    results: list
    iou_type: str
    max_dets: int
    future: Future

    def usable_for(self, gt: GroundTruth, results: Results, iou_type: str, max_dets: int) -> bool:
        return (
            self.gt is gt.dataset
            and self.results is results.records
            and (self.iou_type, self.max_dets) == (iou_type, max_dets)
        )


def coco_metrics(
    gt: GroundTruth,
    results: Results,
    iou_type: str,
    max_dets: int,
    pairs: InstancePairs | None = None,
    early: EarlyEvaluation | None = None,
) -> CocoMetrics:
    """COCO evaluation of checked inputs (`check_ground_truth`, `check_results`); see `evaluate_coco`.
    Mask and Boundary AP use `pairs` (`instance_pairs.collect`, with bands for Boundary AP) when given; box
    AP takes the result of `early` when it ran on exactly these inputs."""
    check_max_dets(max_dets)
    max_dets_list = [1, 10, max_dets]
    if iou_type in ("segm", "boundary"):
        boundary = iou_type == "boundary"
        if pairs is None:
            pairs = collect(gt, results, boundary=boundary, claims=False)
        detections, ground_truths = matching_inputs(gt, results, pairs)
        dt, gt_index, iou = candidate_ious(gt, results, pairs, boundary=boundary)
        matching = match(detections, ground_truths, dt, gt_index, iou, max_dets)
        summed = accumulate(detections, ground_truths, matching, len(gt.category_ids), max_dets_list)
        accumulated = {"precision": summed.precision, "recall": summed.recall, "scores": summed.scores}
        iou_thresholds, recall_thresholds = IOU_THRESHOLDS, RECALL_THRESHOLDS
    else:
        if early is not None and early.usable_for(gt, results, iou_type, max_dets):
            accumulated, iou_thresholds, recall_thresholds = early.future.result()
        else:
            accumulated, iou_thresholds, recall_thresholds = _hotcoco_eval(
                gt.dataset, results.records, iou_type, max_dets_list
            )
        iou_thresholds = np.asarray(iou_thresholds)
        recall_thresholds = np.asarray(recall_thresholds)
    precision = np.asarray(accumulated["precision"], dtype=np.float64)
    recall = np.asarray(accumulated["recall"], dtype=np.float64)
    m = max_dets_list.index(max_dets)
    return CocoMetrics(
        iou_type=iou_type,
        max_dets=max_dets,
        stats=summarize(precision, recall, iou_thresholds, max_dets_list, max_dets),
        per_class=_per_class(gt, results, precision, iou_thresholds, m),
        precision=precision,
        recall=recall,
        scores=np.asarray(accumulated["scores"], dtype=np.float64),
        iou_thresholds=iou_thresholds,
        recall_thresholds=recall_thresholds,
        category_ids=list(gt.category_ids),
        max_dets_list=max_dets_list,
    )


def matching_inputs(
    gt: GroundTruth, results: Results, pairs: InstancePairs
) -> tuple[Detections, GroundTruths]:
    """The matcher's view of checked inputs: images ranked by id (COCO's accumulation order), categories as
    indices into `gt.category_ids`, detection areas as COCO's results loader sets them (the box area when
    the results carry boxes, else the mask area)."""
    image_rank = np.empty(gt.image_ids.size, dtype=np.int64)
    image_rank[np.argsort(gt.image_ids, kind="stable")] = np.arange(gt.image_ids.size)
    categories = np.asarray(gt.category_ids, dtype=np.int64)
    area = results.box_area if results.box_area is not None else pairs.dt_area.astype(np.float64)
    detections = Detections(
        image=image_rank[results.image_index],
        category=np.searchsorted(categories, results.category_ids),
        score=results.scores,
        area=area,
    )
    ground_truths = GroundTruths(
        image=image_rank[gt.image_index],
        category=np.searchsorted(categories, gt.annotation_category_ids),
        area=gt.area,
        iscrowd=gt.iscrowd == 1,
    )
    return detections, ground_truths


def candidate_ious(
    gt: GroundTruth, results: Results, pairs: InstancePairs, boundary: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detection, annotation, IoU) of the same-category pairs with mask IoU >= 0.5 (COCO's IoA for crowd
    regions); with `boundary`, a non-crowd pair's IoU is min(mask IoU, boundary IoU) (Boundary AP)."""
    overlap = pairs.overlap
    same = results.category_ids[overlap.dt] == gt.annotation_category_ids[overlap.gt]
    iou = pairs.iou(overlap, gt)
    keep = same & (iou >= 0.5)
    dt, gt_index, iou = overlap.dt[keep], overlap.gt[keep], iou[keep]
    if boundary:
        iou = np.where(gt.iscrowd[gt_index] == 1, iou, np.minimum(iou, boundary_ious(pairs, dt, gt_index)))
    return dt, gt_index, iou


def boundary_ious(pairs: InstancePairs, dt: np.ndarray, gt_index: np.ndarray) -> np.ndarray:
    """Boundary IoU of the given pairs (which must be pairs that can match; see `instance_pairs.collect`,
    which must have counted the bands)."""
    if pairs.bands is None:
        raise ValueError("boundary IoUs need pairs collected with boundary=True")
    band = pairs.bands.pairs
    num_gt = pairs.gt_area.size
    codes = band.dt * num_gt + band.gt
    order = np.argsort(codes)
    wanted = dt * num_gt + gt_index
    position = np.clip(np.searchsorted(codes, wanted, sorter=order), 0, max(codes.size - 1, 0))
    shared = np.zeros(dt.size, dtype=np.int64)
    if codes.size:
        found = codes[order[position]] == wanted
        shared[found] = band.count[order[position[found]]]
    union = pairs.bands.dt_area[dt] + pairs.bands.gt_area[gt_index] - shared
    return np.divide(shared, union, out=np.zeros(dt.size), where=union > 0)


def matched_pairs(
    gt: GroundTruth, results: Results, pairs: InstancePairs, max_dets: int, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs that COCO's matcher makes at mask IoU `iou_threshold`, area range "all", `max_dets` per image
    (crowd regions included; see `match_detections`): (detection indices, annotation indices, IoUs)."""
    detections, ground_truths = matching_inputs(gt, results, pairs)
    dt, gt_index, iou = candidate_ious(gt, results, pairs)
    matching = match(
        detections, ground_truths, dt, gt_index, iou, max_dets, np.array([iou_threshold]), ((0.0, 1e10),)
    )
    taken = matching.matched_gt[0][0]
    result_index = np.flatnonzero(taken >= 0)
    num_gt = gt.annotation_ids.size
    codes = dt * num_gt + gt_index
    order = np.argsort(codes)
    wanted = result_index * num_gt + taken[result_index]
    return result_index, taken[result_index], iou[order[np.searchsorted(codes, wanted, sorter=order)]]


def match_detections(
    gt: Mapping, results: list[dict], iou_type: str = "segm", max_dets: int = 100, iou_threshold: float = 0.5
) -> list[Match]:
    """Detection/ground-truth pairs that the COCO matcher pairs at `iou_threshold` (area range "all").

    COCO's greedy rule: detections in decreasing score order (the top `max_dets` per image and category)
    each take the unmatched ground truth of the same category with the highest IoU >= `iou_threshold`; a
    crowd annotation can take several detections. Pairs with crowd annotations are included (see `gt_id`).
    Only `iou_type` "segm" (mask IoU) is supported; inputs are checked first.
    """
    check_max_dets(max_dets)
    if iou_type != "segm":
        raise EvaluationInputError(f"match_detections supports iou_type 'segm' only; got {iou_type!r}")
    checked = check_ground_truth(gt, "ground truth", iou_type)
    columns = check_results(results, checked, iou_type, "results", allow_empty=True)
    pairs = collect(checked, columns, boundary=False, claims=False)
    result_index, gt_index, iou = matched_pairs(checked, columns, pairs, max_dets, iou_threshold)
    ids = checked.annotation_ids[gt_index]
    return [
        Match(result_index=r, gt_id=g, iou=v)
        for r, g, v in zip(result_index.tolist(), ids.tolist(), iou.tolist(), strict=True)
    ]
