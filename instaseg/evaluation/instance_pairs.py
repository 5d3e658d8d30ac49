"""One pass over the pixels of all ground-truth and detected masks: the counts the extra metrics need.

Per chunk of images (`pixels.image_chunks`), with `pixels.pixel_sets` of all masks:
- mask overlaps of every detection with every ground truth of its image (COCO IoU, crowd IoA);
- boundary bands (`pixels.boundary_entries`) of the pairs that can match (IoU >= 0.5, same category,
  non-crowd ground truth) and their overlaps (Boundary AP, mean boundary IoU);
- detections with score >= `min_score` made non-overlapping by decreasing score (`pixels.owners`): their
  claimed areas and overlaps with the non-crowd ground truth (DSB score), the union of their pixels against
  the union of the non-crowd ground truth per image (foreground Dice);
- ground truth made non-overlapping in annotation order (earlier annotations keep shared pixels), and its
  overlaps with the claimed detections (Panoptic Quality of instance sets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instaseg.evaluation.pixels import (
    PixelSets,
    boundary_dilation,
    boundary_entries,
    image_chunks,
    owners,
    pair_counts,
    pixel_sets,
)
from instaseg.evaluation.validation import GroundTruth, Results

BOUNDARY_DILATION_RATIO = 0.02


@dataclass(frozen=True)
class Pairs:
    """Sparse pair counts: `dt` (P,) detection indices, `gt` (P,) annotation indices, `count` (P,) pixels."""

    dt: np.ndarray
    gt: np.ndarray
    count: np.ndarray

    @staticmethod
    def concatenate(parts: list[Pairs]) -> Pairs:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Pairs(empty, empty, empty)
        return Pairs(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("dt", "gt", "count")))


@dataclass(frozen=True)
class InstancePairs:
    """What `collect` counted; detection indices into the results, annotation indices into the ground truth.

    `dt_area` (N,), `gt_area` (G,): mask pixel counts. `overlap`: mask overlaps. `band`: boundary-band
    overlaps of the pairs that can match, `dt_band_area`, `gt_band_area` their bands' pixel counts (0 for
    masks without such a pair). `claimed_area` (N,): pixels each detection keeps after overlap removal (0
    below `min_score`); `claimed`: claimed pixels shared with each non-crowd ground truth. `fg_pred`, `fg_gt`,
    `fg_both` (I,): per image the pixels of the union of claimed detections, of the union of non-crowd
    ground truth, and of both. `gt_claimed_area` (G,): pixels each annotation keeps when the ground truth is
    made non-overlapping in annotation order; `panoptic`: claimed detection pixels shared with those.
    """

    min_score: float
    dt_area: np.ndarray
    gt_area: np.ndarray
    overlap: Pairs
    band: Pairs | None
    dt_band_area: np.ndarray
    gt_band_area: np.ndarray
    claimed_area: np.ndarray
    claimed: Pairs
    fg_pred: np.ndarray
    fg_gt: np.ndarray
    fg_both: np.ndarray
    gt_claimed_area: np.ndarray
    panoptic: Pairs

    def iou(self, pairs: Pairs, gt: GroundTruth) -> np.ndarray:
        """COCO mask IoU of `pairs` (overlaps of whole masks): intersection over union, over the detection's
        area for crowd ground truth."""
        dt_area, gt_area = self.dt_area[pairs.dt], self.gt_area[pairs.gt]
        union = np.where(gt.iscrowd[pairs.gt] == 1, dt_area, dt_area + gt_area - pairs.count)
        return pairs.count / union


def _grouped(image_index: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices sorted by image (stable) and where each image's run starts (num_images + 1)."""
    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(num_images + 1))
    return order, bounds


def collect(gt: GroundTruth, results: Results, min_score: float, boundary: bool = True) -> InstancePairs:
    """Count everything listed in the module docstring for checked segm inputs (see `InstancePairs`)."""
    assert gt.masks is not None and results.masks is not None
    num_images, n, g = gt.image_ids.size, len(results), gt.annotation_ids.size
    dt_order, dt_bounds = _grouped(results.image_index, num_images)
    gt_order, gt_bounds = _grouped(gt.image_index, num_images)
    dt_area = np.zeros(n, dtype=np.int64)
    gt_area = np.zeros(g, dtype=np.int64)
    claimed_area = np.zeros(n, dtype=np.int64)
    gt_claimed_area = np.zeros(g, dtype=np.int64)
    dt_band_area = np.zeros(n, dtype=np.int64)
    gt_band_area = np.zeros(g, dtype=np.int64)
    fg_pred = np.zeros(num_images, dtype=np.int64)
    fg_gt = np.zeros(num_images, dtype=np.int64)
    fg_both = np.zeros(num_images, dtype=np.int64)
    overlaps, bands, claims, panoptics = [], [], [], []
    dilation = boundary_dilation(gt.heights, gt.widths, BOUNDARY_DILATION_RATIO)
    chunks = list(image_chunks(gt.heights, gt.widths))
    scratch = np.full(max(canvas for _, _, canvas in chunks), -1, dtype=np.int32)
    for images, image_offset, canvas in chunks:
        first_image, num_chunk = int(images[0]), images.size
        dt_sel = dt_order[dt_bounds[first_image] : dt_bounds[first_image + num_chunk]]
        gt_sel = gt_order[gt_bounds[first_image] : gt_bounds[first_image + num_chunk]]
        dt_image = results.image_index[dt_sel] - first_image
        gt_image = gt.image_index[gt_sel] - first_image
        dts = pixel_sets(results.masks, dt_sel, image_offset[dt_image])
        gts = pixel_sets(gt.masks, gt_sel, image_offset[gt_image])
        dt_area[dt_sel], gt_area[gt_sel] = dts.area, gts.area

        a, b, count = pair_counts(dts, None, gts, None, scratch, dt_image, gt_image, num_chunk)
        overlaps.append(Pairs(dt_sel[a], gt_sel[b], count))

        if boundary:
            iou = count / (dts.area[a] + gts.area[b] - count)
            can_match = (
                (iou >= 0.5)
                & (gt.iscrowd[gt_sel[b]] == 0)
                & (results.category_ids[dt_sel[a]] == gt.annotation_category_ids[gt_sel[b]])
            )
            dt_do = np.zeros(dt_sel.size, dtype=bool)
            gt_do = np.zeros(gt_sel.size, dtype=bool)
            dt_do[a[can_match]] = True
            gt_do[b[can_match]] = True
            local_dt = PixelSets(dts.key - image_offset[dt_image][dts.mask], dts.mask, dts.area)
            local_gt = PixelSets(gts.key - image_offset[gt_image][gts.mask], gts.mask, gts.area)
            dt_heights = gt.heights[results.image_index[dt_sel]]
            gt_heights = gt.heights[gt.image_index[gt_sel]]
            dt_band = boundary_entries(local_dt, dt_heights, dilation[results.image_index[dt_sel]], dt_do)
            gt_band = boundary_entries(local_gt, gt_heights, dilation[gt.image_index[gt_sel]], gt_do)
            dt_band_area[dt_sel] = np.bincount(dts.mask[dt_band], minlength=dt_sel.size)
            gt_band_area[gt_sel] = np.bincount(gts.mask[gt_band], minlength=gt_sel.size)
            ba, bb, bcount = pair_counts(dts, dt_band, gts, gt_band, scratch, dt_image, gt_image, num_chunk)
            bands.append(Pairs(dt_sel[ba], gt_sel[bb], bcount))

        # Detections made non-overlapping by decreasing score (ties: input order).
        scores = results.scores[dt_sel]
        dt_keep = (scores >= min_score)[dts.mask]
        claimed = owners(dts, -scores, canvas, dt_keep)
        claimed_area[dt_sel] = np.bincount(dts.mask[claimed], minlength=dt_sel.size)
        real = (gt.iscrowd[gt_sel] == 0)[gts.mask]
        # Ground truth made non-overlapping in annotation order, for Panoptic Quality.
        gt_kept = owners(gts, gt_sel.astype(np.int64), canvas)
        gt_claimed_area[gt_sel] = np.bincount(gts.mask[gt_kept], minlength=gt_sel.size)
        # The claimed detections do not overlap: drawn as the one-layer side, once for both counts.
        (b, a, count), (pb, pa, pcount) = pair_counts(
            gts, [real, gt_kept], dts, claimed, scratch, gt_image, dt_image, num_chunk
        )
        claims.append(Pairs(dt_sel[a], gt_sel[b], count))
        panoptics.append(Pairs(dt_sel[pa], gt_sel[pb], pcount))

        # Foreground: the union of the claimed detections against the union of the real ground truth.
        predicted = np.zeros(canvas, dtype=bool)
        predicted[dts.key[claimed]] = True
        annotated = np.zeros(canvas, dtype=bool)
        annotated[gts.key[real]] = True
        fg_pred[images] = np.add.reduceat(predicted, image_offset, dtype=np.int64)
        fg_gt[images] = np.add.reduceat(annotated, image_offset, dtype=np.int64)
        fg_both[images] = np.add.reduceat(predicted & annotated, image_offset, dtype=np.int64)

    return InstancePairs(
        min_score=min_score,
        dt_area=dt_area,
        gt_area=gt_area,
        overlap=Pairs.concatenate(overlaps),
        band=Pairs.concatenate(bands) if boundary else None,
        dt_band_area=dt_band_area,
        gt_band_area=gt_band_area,
        claimed_area=claimed_area,
        claimed=Pairs.concatenate(claims),
        fg_pred=fg_pred,
        fg_gt=fg_gt,
        fg_both=fg_both,
        gt_claimed_area=gt_claimed_area,
        panoptic=Pairs.concatenate(panoptics),
    )
