"""COCO matching and accumulation (pycocotools' `evaluateImg` + `accumulate`) for IoUs given as sparse pairs.

Mask AP, Boundary AP and the matched-mask metrics run COCO's matcher on the IoUs that
`instance_pairs.collect` counts, which no COCO library takes from outside: hotcoco computes its own IoUs only
(and has no boundary IoU), and faster-coco-eval's matcher accepts them only through a Python call per image
and category (measured: as slow as hotcoco's whole mask-AP evaluation). So the rules are written out here,
vectorised over all images.
Tests check that, given mask IoUs, every accumulated array equals pycocotools' to 1e-9.

The rules (pycocotools):
- per image and category, detections in decreasing score (stable), at most `max_dets`; ground truth with
  `ignore` (crowd, or area outside the area range) sorted last;
- at each IoU threshold t, each detection in turn takes the unmatched ground truth with the highest IoU
  >= min(t, 1 - 1e-10) (later ground truth wins ties); a crowd region may take several detections; once a
  detection holds a non-ignored ground truth it does not move to an ignored one;
- a detection matched to an ignored ground truth, or unmatched with an area outside the range, is ignored;
- precision at recall thresholds 0:0.01:1 is the interpolated (monotone) precision of all detections of the
  category in decreasing score, over every image; -1 where the category has no non-ignored ground truth.

Only pairs with IoU >= 0.5 can ever match (every threshold is >= 0.5), so only those are passed. Where every
detection and every non-crowd ground truth of a connected part of the pair graph has at most one such pair,
matching is a comparison per pair; the other parts run the greedy loop above, one detection of every part at
a time, at all thresholds at once (`_greedy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))


@dataclass(frozen=True)
class Detections:
    """N detections: `image` (N,) image positions (images in ascending id order give the accumulation order:
    pass the rank of each image's id), `category` (N,) indices 0..K-1, `score` (N,), `area` (N,) (what COCO's
    results loader sets: the box area when results carry boxes, else the mask area)."""

    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    area: np.ndarray


@dataclass(frozen=True)
class GroundTruths:
    """G ground-truth annotations: `image`, `category` as for `Detections`, `area` (G,) (the annotation's
    `area` field), `iscrowd` (G,) bool."""

    image: np.ndarray
    category: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray


@dataclass(frozen=True)
class Matching:
    """For each area range a and threshold t: `matched_gt[a]` (T, N) index of the ground truth each detection
    took (-1: none), `ignored[a]` (T, N) bool; `kept` (N,) bool: among the top `max_dets` of its image and
    category; `rank` (N,) position in its image and category by decreasing score."""

    matched_gt: list[np.ndarray]
    ignored: list[np.ndarray]
    kept: np.ndarray
    rank: np.ndarray


def _ranks(detections: Detections) -> np.ndarray:
    """Position of each detection in its (image, category) group by decreasing score, ties in input order."""
    n = detections.score.size
    order = np.lexsort((np.arange(n), -detections.score, detections.category, detections.image))
    group = np.stack((detections.image[order], detections.category[order]), axis=1)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any(group[1:] != group[:-1], axis=1)
    starts = np.flatnonzero(new_group)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
    return rank


def match(
    detections: Detections,
    ground_truths: GroundTruths,
    pair_dt: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
    max_dets: int,
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
    area_ranges: tuple[tuple[float, float], ...] = AREA_RANGES,
) -> Matching:
    """COCO matching of `detections` to `ground_truths` given the IoUs of the pairs (`pair_dt`, `pair_gt`,
    `pair_iou`) of one image and category with IoU >= min(iou_thresholds); see the module docstring."""
    n = detections.score.size
    rank = _ranks(detections)
    kept = rank < max_dets
    thresholds = np.minimum(iou_thresholds, 1 - 1e-10)
    usable = kept[pair_dt] & (pair_iou >= thresholds.min())
    pair_dt, pair_gt, pair_iou = pair_dt[usable], pair_gt[usable], pair_iou[usable]
    crowd = ground_truths.iscrowd
    # Connected parts of the pair graph (detections and ground truth as nodes) where some detection or
    # non-crowd ground truth has two candidate pairs need the greedy loop; matching never crosses parts.
    per_dt = np.bincount(pair_dt, minlength=n)
    per_gt = np.bincount(pair_gt[~crowd[pair_gt]], minlength=crowd.size)
    conflict = (per_dt[pair_dt] > 1) | ((per_gt[pair_gt] > 1) & ~crowd[pair_gt])
    conflicted = np.zeros(pair_dt.size, dtype=bool)
    part = np.zeros(n, dtype=np.int64)
    if conflict.any():
        nodes = n + crowd.size
        graph = coo_matrix((np.ones(pair_dt.size), (pair_dt, n + pair_gt)), shape=(nodes, nodes))
        _, part = connected_components(graph, directed=False)
        conflicted = np.isin(part[pair_dt], part[pair_dt[conflict]])
    matched_gt, ignored = [], []
    for low, high in area_ranges:
        gt_ignore = crowd | (ground_truths.area < low) | (ground_truths.area > high)
        dt_outside = (detections.area < low) | (detections.area > high)
        matched = np.full((thresholds.size, n), -1, dtype=np.int64)
        simple = ~conflicted
        hit = pair_iou[simple][None, :] >= thresholds[:, None]  # (T, P)
        t_index, p_index = np.nonzero(hit)
        matched[t_index, pair_dt[simple][p_index]] = pair_gt[simple][p_index]
        _greedy(
            pair_dt[conflicted],
            pair_gt[conflicted],
            pair_iou[conflicted],
            part,
            rank,
            crowd,
            gt_ignore,
            thresholds,
            matched,
        )
        is_matched = matched >= 0
        dt_ignored = np.where(is_matched, gt_ignore[np.maximum(matched, 0)], dt_outside[None, :])
        matched_gt.append(matched)
        ignored.append(dt_ignored)
    return Matching(matched_gt, ignored, kept, rank)


def _greedy(
    pair_dt: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
    part: np.ndarray,
    rank: np.ndarray,
    crowd: np.ndarray,
    gt_ignore: np.ndarray,
    thresholds: np.ndarray,
    matched: np.ndarray,
) -> None:
    """pycocotools' greedy loop for the pairs of conflicted parts (`part`: the part of each detection);
    writes into `matched` (T, N).

    Parts are independent, so the loop runs over steps: at step j the j-th detection (by score) of every
    part, at every threshold at once. A detection takes, among its candidates that are free (or crowd) and
    have IoU >= the threshold, the one pycocotools' scan ends on: a non-ignored one if any, the highest IoU,
    on ties the last in ground-truth order.
    """
    if pair_dt.size == 0:
        return
    detections = np.unique(pair_dt)
    by_part = np.lexsort((rank[detections], part[detections]))
    new_part = np.ones(detections.size, dtype=bool)
    new_part[1:] = part[detections[by_part]][1:] != part[detections[by_part]][:-1]
    part_start = np.flatnonzero(new_part)
    step_of = np.empty(detections.size, dtype=np.int64)
    step_of[by_part] = np.arange(detections.size) - np.repeat(
        part_start, np.diff(np.append(part_start, detections.size))
    )
    step = step_of[np.searchsorted(detections, pair_dt)]
    # Per step, each detection's candidates in increasing (non-ignored, IoU, ground-truth index) order: the
    # chosen one is the last that is usable.
    order = np.lexsort((pair_gt, pair_iou, ~gt_ignore[pair_gt], pair_dt, step))
    bounds = np.searchsorted(step[order], np.arange(int(step.max()) + 2))
    taken = np.zeros((thresholds.size, crowd.size), dtype=bool)
    for j in range(bounds.size - 1):
        here = order[bounds[j] : bounds[j + 1]]
        d, g = pair_dt[here], pair_gt[here]
        first = np.flatnonzero(np.append(True, d[1:] != d[:-1]))
        usable = (pair_iou[here][None, :] >= thresholds[:, None]) & (crowd[g][None, :] | ~taken[:, g])
        last = np.maximum.reduceat(np.where(usable, np.arange(here.size), -1), first, axis=1)
        t_index, k = np.nonzero(last >= 0)
        chosen = g[last[t_index, k]]
        matched[t_index, d[first[k]]] = chosen
        taken[t_index, chosen] = True


@dataclass(frozen=True)
class Accumulated:
    """COCOeval's `eval` arrays: precision and scores (T, R, K, A, M), recall (T, K, A, M)."""

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


def accumulate(
    detections: Detections,
    ground_truths: GroundTruths,
    matching: Matching,
    num_categories: int,
    max_dets_list: list[int],
    recall_thresholds: np.ndarray = RECALL_THRESHOLDS,
) -> Accumulated:
    """pycocotools' `accumulate` over the matching of every image (see the module docstring)."""
    num_t = matching.matched_gt[0].shape[0]
    num_a, num_m, num_r = len(matching.matched_gt), len(max_dets_list), recall_thresholds.size
    precision = -np.ones((num_t, num_r, num_categories, num_a, num_m))
    recall = -np.ones((num_t, num_categories, num_a, num_m))
    scores = -np.ones((num_t, num_r, num_categories, num_a, num_m))
    crowd = ground_truths.iscrowd
    # pycocotools concatenates images in ascending id order, each in decreasing score, then sorts stably.
    order = np.lexsort((matching.rank, detections.image, -detections.score))
    for k in range(num_categories):
        in_category = order[detections.category[order] == k]
        gt_in_category = ground_truths.category == k
        has_images = in_category.size > 0 or gt_in_category.any()
        if not has_images:
            continue
        for a, (low, high) in enumerate(AREA_RANGES[:num_a]):
            area = ground_truths.area[gt_in_category]
            npig = int(np.count_nonzero(~(crowd[gt_in_category] | (area < low) | (area > high))))
            if npig == 0:
                continue
            for m, max_det in enumerate(max_dets_list):
                dets = in_category[matching.rank[in_category] < max_det]
                ignored = matching.ignored[a][:, dets]
                hits = matching.matched_gt[a][:, dets] >= 0
                tp = np.cumsum(hits & ~ignored, axis=1, dtype=np.float64)
                fp = np.cumsum(~hits & ~ignored, axis=1, dtype=np.float64)
                sorted_scores = detections.score[dets]
                nd = dets.size
                recall[:, k, a, m] = tp[:, -1] / npig if nd else 0
                if nd == 0:
                    precision[:, :, k, a, m] = 0
                    scores[:, :, k, a, m] = 0
                    continue
                rc = tp / npig
                pr = np.flip(np.maximum.accumulate(np.flip(tp / (fp + tp + np.spacing(1)), 1), axis=1), 1)
                for t in range(num_t):
                    # pycocotools fills the recall thresholds in order and stops at the first one not reached.
                    index = np.searchsorted(rc[t], recall_thresholds, side="left")
                    reached = index < nd
                    q = np.zeros(num_r)
                    ss = np.zeros(num_r)
                    q[reached] = pr[t, index[reached]]
                    ss[reached] = sorted_scores[index[reached]]
                    precision[t, :, k, a, m] = q
                    scores[t, :, k, a, m] = ss
    return Accumulated(precision, recall, scores)
