"""One pass over the runs of all ground-truth and detected masks: the pixel counts every segm metric needs.

Per chunk of images (`pixels.image_chunks`), with `pixels.foreground_runs` of all masks cut into pieces of
the chunk's line (`pixels.Line.cut`):
- mask overlaps of every detection with every ground truth of its image: the IoUs of COCO mask AP (crowd
  regions: IoA) and of every metric built on COCO's matches;
and, when asked for:
- boundary bands (`pixels.boundary_runs`) of the masks of the pairs that can match (IoU >= 0.5, same
  category, non-crowd ground truth) and their overlaps (Boundary AP, mean boundary IoU);
- detections with score >= `min_score` made non-overlapping by decreasing score (`pixels.owners`): their
  claimed areas and overlaps with the non-crowd ground truth (DSB score), the union of their pixels against
  the union of the non-crowd ground truth per image (foreground Dice);
- ground truth made non-overlapping in annotation order (earlier annotations keep shared pixels), and its
  overlaps with the claimed detections (Panoptic Quality of instance sets).
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from instaseg.evaluation.pixels import (
    Line,
    Pieces,
    Runs,
    boundary_dilation,
    boundary_runs,
    covered_area,
    foreground_runs,
    image_chunks,
    owners,
    pair_counts,
)
from instaseg.evaluation.validation import GroundTruth, Results

BOUNDARY_DILATION_RATIO = 0.02
# Threads that count chunks of images at once (the machines this runs on have two cores).
COUNT_THREADS = 2


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
class Bands:
    """Boundary bands (`pixels.boundary_runs`) of the masks of the pairs that can match (IoU >= 0.5, same
    category, non-crowd ground truth): `pairs` their overlaps, `dt_area` (N,), `gt_area` (G,) the bands' pixel
    counts (0 for masks without such a pair)."""

    pairs: Pairs
    dt_area: np.ndarray
    gt_area: np.ndarray


@dataclass(frozen=True)
class Claims:
    """Detections with score >= `min_score` made non-overlapping by decreasing score (ties: input order), and
    the ground truth made non-overlapping in annotation order (earlier annotations keep shared pixels).

    `dt_area` (N,): pixels each detection keeps (0 below `min_score`); `pairs`: its kept pixels shared with
    each non-crowd ground truth. `gt_area` (G,): pixels each annotation keeps; `panoptic`: kept detection
    pixels shared with those. `fg_pred`, `fg_gt`, `fg_both` (I,): per image the pixels of the union of kept
    detections, of the union of non-crowd ground truth, and of both.
    """

    min_score: float
    dt_area: np.ndarray
    pairs: Pairs
    gt_area: np.ndarray
    panoptic: Pairs
    fg_pred: np.ndarray
    fg_gt: np.ndarray
    fg_both: np.ndarray


@dataclass(frozen=True)
class InstancePairs:
    """What `collect` counted; detection indices into the results, annotation indices into the ground truth.

    `dt_area` (N,), `gt_area` (G,): mask pixel counts. `overlap`: mask overlaps of every detection with every
    ground truth of its image that it touches. `bands`, `claims`: when asked for (else None).
    """

    dt_area: np.ndarray
    gt_area: np.ndarray
    overlap: Pairs
    bands: Bands | None
    claims: Claims | None

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


@dataclass(frozen=True)
class _Chunk:
    """One chunk of images: `images` (I,) their indices, `offset` (I,) where each starts on the chunk's line
    of `size` pixels, `dt`, `gt` the indices of their detections and annotations (by image, stable)."""

    images: np.ndarray
    offset: np.ndarray
    size: int
    dt: np.ndarray
    gt: np.ndarray


def collect(
    gt: GroundTruth,
    results: Results,
    *,
    boundary: bool,
    claims: bool,
    min_score: float = 0.0,
    threads: int = COUNT_THREADS,
) -> InstancePairs:
    """Count, for checked segm inputs, the mask overlaps and, with `boundary`, the bands and, with `claims`,
    the claims at `min_score` (see the module docstring and `InstancePairs`). The chunks of images are spread
    over `threads` threads (the counting is NumPy and OpenCV calls that release the GIL)."""
    assert gt.masks is not None and results.masks is not None
    num_images = gt.image_ids.size
    dt_order, dt_bounds = _grouped(results.image_index, num_images)
    gt_order, gt_bounds = _grouped(gt.image_index, num_images)
    chunks = [
        _Chunk(
            images,
            offset,
            size,
            dt_order[dt_bounds[images[0]] : dt_bounds[images[-1] + 1]],
            gt_order[gt_bounds[images[0]] : gt_bounds[images[-1] + 1]],
        )
        for images, offset, size in image_chunks(gt.heights, gt.widths)
    ]
    lines: queue.SimpleQueue[Line] = queue.SimpleQueue()
    for _ in range(min(threads, len(chunks))):
        lines.put(Line(max(c.size for c in chunks)))
    dilation = boundary_dilation(gt.heights, gt.widths, BOUNDARY_DILATION_RATIO)

    def count(chunk: _Chunk) -> InstancePairs:
        line = lines.get()
        try:
            return _count_chunk(gt, results, line, chunk, dilation if boundary else None, min_score, claims)
        finally:
            lines.put(line)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(count, chunks))
    return _assembled(chunks, parts, len(results), gt.annotation_ids.size, num_images, min_score)


# The per-image counts of `Claims`, in its field order.
_FOREGROUND = ("fg_pred", "fg_gt", "fg_both")


def _assembled(
    chunks: list[_Chunk], parts: list[InstancePairs], n: int, g: int, num_images: int, min_score: float
) -> InstancePairs:
    """The counts of all chunks: the per-chunk arrays of `parts` (indexed like the chunk's `dt`, `gt`,
    `images`) put in place, the pairs (already in global indices) concatenated in chunk order. Every part
    counted the same things (bands, claims or not)."""
    dt = np.concatenate([c.dt for c in chunks])
    gt = np.concatenate([c.gt for c in chunks])
    images = np.concatenate([c.images for c in chunks])

    def placed(values: list[np.ndarray], where: np.ndarray, size: int) -> np.ndarray:
        out = np.zeros(size, dtype=np.int64)
        out[where] = np.concatenate(values)
        return out

    bands = claims = None
    chunk_bands = [p.bands for p in parts if p.bands is not None]
    if chunk_bands:
        bands = Bands(
            Pairs.concatenate([b.pairs for b in chunk_bands]),
            placed([b.dt_area for b in chunk_bands], dt, n),
            placed([b.gt_area for b in chunk_bands], gt, g),
        )
    chunk_claims = [p.claims for p in parts if p.claims is not None]
    if chunk_claims:
        claims = Claims(
            min_score,
            placed([c.dt_area for c in chunk_claims], dt, n),
            Pairs.concatenate([c.pairs for c in chunk_claims]),
            placed([c.gt_area for c in chunk_claims], gt, g),
            Pairs.concatenate([c.panoptic for c in chunk_claims]),
            *(placed([getattr(c, name) for c in chunk_claims], images, num_images) for name in _FOREGROUND),
        )
    return InstancePairs(
        placed([p.dt_area for p in parts], dt, n),
        placed([p.gt_area for p in parts], gt, g),
        Pairs.concatenate([p.overlap for p in parts]),
        bands,
        claims,
    )


def _count_chunk(
    gt: GroundTruth,
    results: Results,
    line: Line,
    chunk: _Chunk,
    dilation: np.ndarray | None,
    min_score: float,
    claims: bool,
) -> InstancePairs:
    """The counts of one chunk, bands when `dilation` (per image) is given, claims when `claims`: per-mask and
    per-image arrays indexed like `chunk.dt`, `chunk.gt`, `chunk.images`; pairs in global indices."""
    assert gt.masks is not None and results.masks is not None
    dt_sel, gt_sel, num_chunk = chunk.dt, chunk.gt, chunk.images.size
    dt_image = results.image_index[dt_sel] - int(chunk.images[0])
    gt_image = gt.image_index[gt_sel] - int(chunk.images[0])
    dt_runs = foreground_runs(results.masks, dt_sel, chunk.offset[dt_image])
    gt_runs = foreground_runs(gt.masks, gt_sel, chunk.offset[gt_image])
    dts, gts = line.cut([dt_runs, gt_runs], chunk.offset)
    a, b, count = pair_counts(dts, None, gts, None, dt_image, gt_image, num_chunk)
    bands = None
    if dilation is not None:
        iou = count / (dt_runs.area[a] + gt_runs.area[b] - count)
        can_match = (
            (iou >= 0.5)
            & (gt.iscrowd[gt_sel[b]] == 0)
            & (results.category_ids[dt_sel[a]] == gt.annotation_category_ids[gt_sel[b]])
        )
        bands = _chunk_bands(gt, results, line, chunk, dilation, dt_runs, gt_runs, a[can_match], b[can_match])
    return InstancePairs(
        dt_runs.area,
        gt_runs.area,
        Pairs(dt_sel[a], gt_sel[b], count),
        bands,
        _chunk_claims(gt, results, line, chunk, dts, gts, min_score) if claims else None,
    )


def _chunk_bands(
    gt: GroundTruth,
    results: Results,
    line: Line,
    chunk: _Chunk,
    dilation: np.ndarray,
    dt_runs: Runs,
    gt_runs: Runs,
    dt_matchable: np.ndarray,
    gt_matchable: np.ndarray,
) -> Bands:
    """Bands of the chunk's masks that are in a pair that can match (`dt_matchable`, `gt_matchable`: chunk-
    local mask indices) and their overlaps."""
    dt_sel, gt_sel, num_chunk = chunk.dt, chunk.gt, chunk.images.size
    dt_do = np.zeros(dt_sel.size, dtype=bool)
    gt_do = np.zeros(gt_sel.size, dtype=bool)
    dt_do[dt_matchable] = True
    gt_do[gt_matchable] = True
    dt_image_index, gt_image_index = results.image_index[dt_sel], gt.image_index[gt_sel]
    dt_offset = chunk.offset[dt_image_index - int(chunk.images[0])]
    gt_offset = chunk.offset[gt_image_index - int(chunk.images[0])]
    dt_band = boundary_runs(
        dt_runs.shifted(-dt_offset), gt.heights[dt_image_index], dilation[dt_image_index], dt_do
    )
    gt_band = boundary_runs(
        gt_runs.shifted(-gt_offset), gt.heights[gt_image_index], dilation[gt_image_index], gt_do
    )
    dts, gts = line.cut([dt_band.shifted(dt_offset), gt_band.shifted(gt_offset)], chunk.offset)
    dt_image = dt_image_index - int(chunk.images[0])
    gt_image = gt_image_index - int(chunk.images[0])
    a, b, count = pair_counts(dts, None, gts, None, dt_image, gt_image, num_chunk)
    return Bands(Pairs(dt_sel[a], gt_sel[b], count), dt_band.area, gt_band.area)


def _chunk_claims(
    gt: GroundTruth, results: Results, line: Line, chunk: _Chunk, dts: Pieces, gts: Pieces, min_score: float
) -> Claims:
    """The claims of the chunk's masks (`dts`, `gts`: their pieces); see `Claims`."""
    dt_sel, gt_sel, num_chunk = chunk.dt, chunk.gt, chunk.images.size
    dt_image = results.image_index[dt_sel] - int(chunk.images[0])
    gt_image = gt.image_index[gt_sel] - int(chunk.images[0])
    scores = results.scores[dt_sel]
    claimed = owners(dts, -scores, (scores >= min_score)[dts.mask])
    claimed_area = _summed(dts, claimed, dt_sel.size)
    real = (gt.iscrowd[gt_sel] == 0)[gts.mask]
    gt_kept = owners(gts, gt_sel.astype(np.int64))
    # The claimed detections do not overlap: drawn as the one-layer side, once for both counts.
    (b, a, count), (pb, pa, pcount) = pair_counts(
        gts, [real, gt_kept], dts, claimed, gt_image, dt_image, num_chunk
    )
    predicted = np.zeros(dts.length.size, dtype=bool)
    predicted[dts.piece[claimed]] = True
    return Claims(
        min_score,
        claimed_area,
        Pairs(dt_sel[a], gt_sel[b], count),
        _summed(gts, gt_kept, gt_sel.size),
        Pairs(dt_sel[pa], gt_sel[pb], pcount),
        np.bincount(dt_image, weights=claimed_area, minlength=num_chunk).astype(np.int64),
        covered_area(gts, real),
        covered_area(gts, real & predicted[gts.piece]),
    )


def _summed(pieces: Pieces, entries: np.ndarray, num_masks: int) -> np.ndarray:
    """(M,) per mask the pixels of its entries where `entries` (E,) holds."""
    lengths = pieces.length[pieces.piece[entries]]
    return np.bincount(pieces.mask[entries], weights=lengths, minlength=num_masks).astype(np.int64)
