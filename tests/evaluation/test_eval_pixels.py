"""The pixel counts behind every segm metric (counted from RLE runs, never decoded) equal the same counts made
on decoded bitmaps; mask AP from them equals pycocotools' COCOeval where matching is hardest."""

from __future__ import annotations

import contextlib
import copy
import io

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instaseg.evaluation import STAT_NAMES, evaluate_coco
from instaseg.evaluation.instance_pairs import BOUNDARY_DILATION_RATIO, Pairs, collect
from instaseg.evaluation.pixels import boundary_dilation
from instaseg.evaluation.validation import check_ground_truth, check_results
from instaseg.structures.masks import encode_rle

# Sizes with 1-pixel sides, odd shapes, and one of 260x260 (band width 7, chunks of several images).
SIZES = [(1, 9), (9, 1), (6, 7), (31, 40), (64, 64), (260, 260), (3, 3), (50, 17)]


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Masks of every kind the runs must handle: whole images (one run over every column), corner blocks,
    noise (runs of every length), boxes with holes, empty masks."""
    mask = np.zeros((height, width), dtype=bool)
    kind = rng.integers(0, 5)
    if kind == 0:
        mask[:] = True
    elif kind == 1:
        mask[rng.integers(0, height) :, rng.integers(0, width) :] = True
    elif kind == 2:
        mask = rng.random((height, width)) < rng.uniform(0.1, 0.6)
    elif kind == 3:
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y : y + rng.integers(1, 40), x : x + rng.integers(1, 40)] = True
        mask[y + 2 : y + 4, x + 2 : x + 4] = False
    return mask


def _dataset(seed: int) -> tuple[dict, list[dict], dict[int, np.ndarray], list[np.ndarray]]:
    """COCO ground truth and results on images of `SIZES`, with crowd regions, two categories, and detections
    that copy, shift and thin ground-truth masks (pairs that can match) besides random ones."""
    rng = np.random.default_rng(seed)
    images, annotations, results, gt_masks, dt_masks = [], [], [], {}, []
    for number, (height, width) in enumerate(SIZES * 2, start=1):
        image_id = 5 * number  # ids in another order than the positions
        images.append({"id": image_id, "height": height, "width": width})
        here = []
        for _ in range(rng.integers(0, 9)):
            mask = _random_mask(rng, height, width)
            annotation_id = 1000 - len(annotations)
            gt_masks[annotation_id] = mask
            here.append(mask)
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 3)),
                    "segmentation": encode_rle(mask[None])[0],
                    "area": float(mask.sum()),
                    "iscrowd": int(rng.random() < 0.15),
                }
            )
        for _ in range(rng.integers(0, 14)):
            if here and rng.random() < 0.7:
                mask = np.roll(here[rng.integers(0, len(here))], tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
                mask = mask & (rng.random((height, width)) < rng.uniform(0.7, 1.0))
            else:
                mask = _random_mask(rng, height, width)
            dt_masks.append(mask)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 3)),
                    "segmentation": encode_rle(mask[None])[0],
                    "score": float(np.round(rng.random(), 1)),  # ties
                }
            )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    return gt, results, gt_masks, dt_masks


def _as_dict(pairs: Pairs) -> dict[tuple[int, int], int]:
    return {(int(d), int(g)): int(c) for d, g, c in zip(pairs.dt, pairs.gt, pairs.count, strict=True)}


def _band(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary IoU's reference band: the mask minus its erosion (OpenCV, outside the image is outside)."""
    kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), dtype=np.uint8)
    eroded = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & (eroded == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_counts_from_runs_equal_counts_on_bitmaps(seed: int, threads: int) -> None:
    gt, results, gt_masks, dt_masks = _dataset(seed)
    checked = check_ground_truth(gt, "gt", "segm")
    columns = check_results(results, checked, "segm", "results")
    min_score = 0.3
    pairs = collect(checked, columns, boundary=True, claims=True, min_score=min_score, threads=threads)
    assert pairs.bands is not None and pairs.claims is not None
    dilation = boundary_dilation(checked.heights, checked.widths, BOUNDARY_DILATION_RATIO)
    gts = [gt_masks[int(i)] for i in checked.annotation_ids]
    gt_image = checked.image_index
    dt_image = columns.image_index

    overlap, claimed, panoptic = {}, {}, {}
    bands_dt = {d: _band(m, dilation[dt_image[d]]) for d, m in enumerate(dt_masks)}
    bands_gt = {g: _band(m, dilation[gt_image[g]]) for g, m in enumerate(gts)}
    dt_kept_area = np.zeros(len(dt_masks), dtype=np.int64)
    gt_kept_area = np.zeros(len(gts), dtype=np.int64)
    fg = np.zeros((3, checked.image_ids.size), dtype=np.int64)
    for k in range(checked.image_ids.size):
        shape = (int(checked.heights[k]), int(checked.widths[k]))
        dts = [d for d in range(len(dt_masks)) if dt_image[d] == k]
        gs = [g for g in range(len(gts)) if gt_image[g] == k]
        # Detections made non-overlapping by decreasing score (ties: input order), ground truth by order.
        free = np.ones(shape, dtype=bool)
        kept_dt = {}
        for d in sorted(dts, key=lambda d: (-columns.scores[d], d)):
            if columns.scores[d] >= min_score:
                kept_dt[d] = dt_masks[d] & free
                free &= ~dt_masks[d]
                dt_kept_area[d] = kept_dt[d].sum()
        free = np.ones(shape, dtype=bool)
        kept_gt = {}
        for g in gs:
            kept_gt[g] = gts[g] & free
            free &= ~gts[g]
            gt_kept_area[g] = kept_gt[g].sum()
        real = [g for g in gs if checked.iscrowd[g] == 0]
        predicted = np.any([kept_dt[d] for d in kept_dt], axis=0) if kept_dt else np.zeros(shape, bool)
        annotated = np.any([gts[g] for g in real], axis=0) if real else np.zeros(shape, bool)
        fg[:, k] = predicted.sum(), annotated.sum(), (predicted & annotated).sum()
        for d in dts:
            for g in gs:
                shared = int((dt_masks[d] & gts[g]).sum())
                if shared:
                    overlap[d, g] = shared
                if d in kept_dt and g in real and (kept_dt[d] & gts[g]).any():
                    claimed[d, g] = int((kept_dt[d] & gts[g]).sum())
                if d in kept_dt and (kept_dt[d] & kept_gt[g]).any():
                    panoptic[d, g] = int((kept_dt[d] & kept_gt[g]).sum())

    np.testing.assert_array_equal(pairs.dt_area, [m.sum() for m in dt_masks])
    np.testing.assert_array_equal(pairs.gt_area, [m.sum() for m in gts])
    assert _as_dict(pairs.overlap) == overlap
    # Bands are counted for the masks of the pairs that can match, and they are exactly OpenCV's.
    can_match = [
        (d, g)
        for (d, g), shared in overlap.items()
        if shared / (dt_masks[d].sum() + gts[g].sum() - shared) >= 0.5
        and checked.iscrowd[g] == 0
        and columns.category_ids[d] == checked.annotation_category_ids[g]
    ]
    assert len(can_match) > 5
    banded_dt, banded_gt = {d for d, _ in can_match}, {g for _, g in can_match}
    np.testing.assert_array_equal(
        pairs.bands.dt_area, [bands_dt[d].sum() if d in banded_dt else 0 for d in range(len(dt_masks))]
    )
    np.testing.assert_array_equal(
        pairs.bands.gt_area, [bands_gt[g].sum() if g in banded_gt else 0 for g in range(len(gts))]
    )
    band = {
        (d, g): int((bands_dt[d] & bands_gt[g]).sum())
        for d in banded_dt
        for g in banded_gt
        if dt_image[d] == gt_image[g] and (bands_dt[d] & bands_gt[g]).any()
    }
    assert _as_dict(pairs.bands.pairs) == band
    np.testing.assert_array_equal(pairs.claims.dt_area, dt_kept_area)
    np.testing.assert_array_equal(pairs.claims.gt_area, gt_kept_area)
    assert _as_dict(pairs.claims.pairs) == claimed
    assert _as_dict(pairs.claims.panoptic) == panoptic
    np.testing.assert_array_equal(
        np.stack([pairs.claims.fg_pred, pairs.claims.fg_gt, pairs.claims.fg_both]), fg
    )


def _duplicates_everywhere(seed: int) -> tuple[dict, list[dict]]:
    """Ground truth that overlaps itself, crowd regions over objects, and per object several detections at
    different IoUs and scores: most matches go through pycocotools' greedy loop, in every area range."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 13):
        height, width = 120, 130
        images.append({"id": image_id, "height": height, "width": width})
        objects = []
        for _ in range(rng.integers(3, 9)):
            mask = np.zeros((height, width), dtype=bool)
            y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
            side = rng.choice([4, 12, 40, 70])  # small, medium and large objects
            mask[y : y + side, x : x + side] = True
            objects.append(mask)
        if rng.random() < 0.6:
            objects.append(objects[0] | objects[1])  # a crowd region over two objects
        for k, mask in enumerate(objects):
            crowd = int(k == len(objects) - 1 and len(objects) > 1 and rng.random() < 0.6)
            rle = encode_rle(mask[None])[0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "iscrowd": crowd,
                }
            )
            for _ in range(rng.integers(1, 5)):
                shifted = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "segmentation": encode_rle(shifted[None])[0],
                        "score": float(np.round(rng.random(), 1)),
                    }
                )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    return gt, results


@pytest.mark.parametrize("max_dets", [10, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_mask_ap_equals_pycocotools_where_matches_conflict(seed: int, max_dets: int) -> None:
    gt, results = _duplicates_everywhere(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        reference = PyCOCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
        reference.params.maxDets = [1, 10, max_dets]
        reference.evaluate()
        reference.accumulate()
    ours = evaluate_coco(gt, results, "segm", max_dets)
    for name in ("precision", "recall", "scores"):
        np.testing.assert_allclose(getattr(ours, name), reference.eval[name], rtol=0, atol=1e-9)
    assert set(ours.stats) == set(STAT_NAMES) and 0 < ours.stats["AP"] < 1
    # The data do what they are for: some detection has two candidates at IoU >= 0.5.
    checked = check_ground_truth(gt, "gt", "segm")
    pairs = collect(checked, check_results(results, checked, "segm", "r"), boundary=False, claims=False)
    union = pairs.dt_area[pairs.overlap.dt] + pairs.gt_area[pairs.overlap.gt] - pairs.overlap.count
    candidates = pairs.overlap.dt[pairs.overlap.count / union >= 0.5]
    assert np.bincount(candidates).max() > 1
