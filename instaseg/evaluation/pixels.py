"""Pixel counts of many masks at once, straight from their RLE runs: the counts every extra metric is made of.

The extra metrics of the report (matched-mask IoU and Dice, Boundary AP, boundary IoU, foreground Dice, the
DSB score, Panoptic Quality) all reduce to counting pixels that two masks share. Done mask by mask (decode,
then compare bitmaps) they cost 35x COCO AP itself on dense images, and even one entry per foreground pixel
is ten times more data than the masks' runs. So masks stay runs:

- a mask is the set of its foreground runs, intervals of `key = image_offset + column * H + row` (COCO's
  column-major order) on one line that holds a chunk's images side by side, so masks of different images
  never meet (`foreground_runs`);
- all runs of a chunk are cut at every run end in the chunk (`cut`): between two consecutive ends lies a
  piece, and each run covers a contiguous range of pieces, so a mask is a set of pieces and every count is
  a sum of piece lengths;
- intersections between two sets of masks (`pair_counts`) look up one set's labels at the other's pieces,
  one "layer" of the first set at a time (a piece covered by k masks of the set needs k layers), and sum
  the lengths of the pairs with one weighted `bincount` over per-image dense pair indices;
- "non-overlapping by priority" (`owners`) keeps, at each piece, the mask of lowest rank (`np.minimum.at`);
- boundary bands (`boundary_runs`) are the one step that needs bitmaps: each mask's bounding-box crop is
  drawn from its runs, eroded by OpenCV and read back as runs.

Written by hand because no installed library counts intersections of many RLE masks in bulk: pycocotools and
hotcoco compute IoU matrices but not the overlap-removed masks, bands or unions the metrics need.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from instaseg.evaluation.validation import MaskColumns

# Images per chunk are chosen so that a chunk's line holds at most this many pixels: the tables of a line
# (`Line`, 5 bytes per pixel) then stay a few MB.
CANVAS_PIXELS = 1 << 21
# Crops of one erosion are padded to a multiple of this many pixels across (fewer, larger OpenCV calls).
CROP_ALIGN = 8


@dataclass(frozen=True)
class Runs:
    """Foreground runs of a selection of M masks: run r covers keys `start[r]` .. `end[r] - 1` of mask
    `mask[r]` (an index into the selection); `area` (M,) int64 pixel counts."""

    start: np.ndarray
    end: np.ndarray
    mask: np.ndarray
    area: np.ndarray

    def shifted(self, offset: np.ndarray) -> Runs:
        """The runs moved by `offset` (M,), one per mask: image-local keys to a chunk's line and back."""
        shift = offset[self.mask]
        return Runs(self.start + shift, self.end + shift, self.mask, self.area)


@dataclass(frozen=True)
class Pieces:
    """A set of masks as pieces of its chunk's line (`Line.cut`): entry e is piece `piece[e]` of mask
    `mask[e]`; `length` (P,) the pixels of each piece of the line, `image_first` (I + 1,) the first piece of
    each image of the chunk (and P): the pieces of image i that masks cover are image_first[i] ..
    image_first[i + 1] - 1."""

    piece: np.ndarray
    mask: np.ndarray
    length: np.ndarray
    image_first: np.ndarray


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions `starts[i] + 0 .. lengths[i] - 1` for every i, concatenated, and the i of each position."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(lengths.size), lengths)
    positions = np.arange(total, dtype=np.int64) - np.repeat(
        _exclusive_cumsum(lengths)[:-1] - starts, lengths
    )
    return positions, owner


def foreground_runs(masks: MaskColumns, selection: np.ndarray, canvas_offset: np.ndarray) -> Runs:
    """The foreground runs of masks `selection` (indices into `masks`), each shifted by `canvas_offset` (one
    per selected mask: where its image starts on the line). Runs of length 0 are left out."""
    selection = np.asarray(selection, dtype=np.int64)
    first, count = masks.offsets[selection], masks.offsets[selection + 1] - masks.offsets[selection]
    run_index, run_mask = expand_ranges(first, count)
    runs = masks.runs[run_index]
    ends = np.cumsum(runs)
    # Run j of a mask ends where its runs 0..j ends: a cumulative sum that restarts at each mask.
    mask_start = _exclusive_cumsum(count)[:-1]
    before = np.concatenate(([0], ends))[mask_start]
    ends -= np.repeat(before, count)
    foreground = ((np.arange(runs.size) - np.repeat(mask_start, count)) & 1).astype(bool) & (runs > 0)
    mask = run_mask[foreground]
    end = ends[foreground] + canvas_offset[mask]
    length = runs[foreground]
    area = np.bincount(mask, weights=length, minlength=selection.size).astype(np.int64)
    return Runs(end - length, end, mask, area)


class Line:
    """Scratch tables for one chunk's line of `size` pixels, reused from chunk to chunk (one per thread):
    which positions are run ends, and the piece index of each."""

    def __init__(self, size: int) -> None:
        self.marks = np.zeros(size + 1, dtype=bool)
        self.index = np.zeros(size + 1, dtype=np.int32)

    def cut(self, run_sets: list[Runs], image_offset: np.ndarray) -> list[Pieces]:
        """The pieces of every set, all runs cut at every run end of all sets (see the module docstring);
        `image_offset` (I,): where each image of the chunk starts on the line."""
        for runs in run_sets:
            self.marks[runs.start] = True
            self.marks[runs.end] = True
        bounds = np.flatnonzero(self.marks)
        self.marks[bounds] = False
        self.index[bounds] = np.arange(bounds.size, dtype=np.int32)
        length = np.diff(bounds)
        image_first = np.minimum(
            np.searchsorted(bounds, np.append(image_offset, self.marks.size)), length.size
        )
        out = []
        for runs in run_sets:
            first = self.index[runs.start]
            piece, run = expand_ranges(first, self.index[runs.end] - first)
            out.append(Pieces(piece, runs.mask[run], length, image_first))
        return out


def owners(pieces: Pieces, rank: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """(E,) bool: which entries of `pieces` belong to the mask that owns their piece, the one of lowest
    `rank` (M,) among the masks covering it (ties keep the lower mask index). With `keep` (E,) bool, only
    those entries take part (the others are never owners)."""
    order = np.lexsort((np.arange(rank.size), rank))
    priority = np.empty(rank.size, dtype=np.int32)
    priority[order] = np.arange(rank.size, dtype=np.int32)
    owner = np.full(pieces.length.size, rank.size, dtype=np.int32)
    entry_priority = priority[pieces.mask]
    if keep is None:
        np.minimum.at(owner, pieces.piece, entry_priority)
        return owner[pieces.piece] == entry_priority
    np.minimum.at(owner, pieces.piece[keep], entry_priority[keep])
    return keep & (owner[pieces.piece] == entry_priority)


def _layers(pieces: np.ndarray, labels: np.ndarray, num_pieces: int) -> Iterator[np.ndarray]:
    """Piece -> label tables (int32, -1 where no label) that together hold every (piece, label) entry once."""
    table = np.full(num_pieces, -1, dtype=np.int32)
    remaining = np.arange(pieces.size)
    while remaining.size:
        layer_pieces = pieces[remaining]
        table[layer_pieces] = labels[remaining]
        placed = table[layer_pieces] == labels[remaining]
        yield table
        table[layer_pieces] = -1
        remaining = remaining[~placed]


def pair_counts(
    a: Pieces,
    a_keep: np.ndarray | list[np.ndarray] | None,
    b: Pieces,
    b_keep: np.ndarray | None,
    a_image: np.ndarray,
    b_image: np.ndarray,
    num_images: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared pixels of every mask of `a` with every mask of `b` of the same image (`a_image`, `b_image`: the
    image of each mask, 0 .. num_images - 1), counting only entries where `a_keep` / `b_keep` (E,) hold.
    `a` and `b` are pieces of one `Line.cut`. `b` is drawn into piece -> mask tables, one layer per depth of
    overlap: pass the set with less overlap (ideally none) as `b`.

    Returns `(a_index, b_index, count)` for the pairs that share at least one pixel, ordered by image, then
    `a_index`, then `b_index`; with a list of `a_keep` masks, a list of such triples, one per mask, from one
    drawing of `b`.
    """
    keeps = a_keep if isinstance(a_keep, list) else [a_keep]
    if any(keep is None for keep in keeps):
        a_entries = np.arange(a.piece.size)
    else:
        a_entries = np.flatnonzero(np.logical_or.reduce(keeps))
    a_piece, a_mask = a.piece[a_entries], a.mask[a_entries]
    b_piece, b_mask = (b.piece, b.mask) if b_keep is None else (b.piece[b_keep], b.mask[b_keep])
    # Dense per-image pair indices: image i's pairs occupy na_i * nb_i slots.
    na = np.bincount(a_image, minlength=num_images)
    nb = np.bincount(b_image, minlength=num_images)
    a_first = _exclusive_cumsum(na)[:-1]
    b_first = _exclusive_cumsum(nb)[:-1]
    b_local = (np.arange(b_image.size) - b_first[b_image]).astype(np.int32)
    slot_start = _exclusive_cumsum(na * nb)
    # Each a-entry's slot base: its image's first slot + its mask's row of nb slots.
    a_base = slot_start[a_image] + (np.arange(a_image.size) - a_first[a_image]) * nb[a_image]
    entry_base = a_base[a_mask]
    codes, found_entries = [], []
    looking = np.arange(a_piece.size)  # a piece empty in one layer is empty in every later one
    for layer in _layers(b_piece, b_local[b_mask], a.length.size):
        hit = layer[a_piece[looking]]
        found = hit >= 0
        looking = looking[found]
        codes.append(entry_base[looking] + hit[found])
        found_entries.append(a_entries[looking])
    all_codes = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    all_entries = np.concatenate(found_entries) if found_entries else np.zeros(0, np.int64)
    all_lengths = a.length[a.piece[all_entries]]
    out = []
    for keep in keeps:
        chosen = slice(None) if keep is None else keep[all_entries]
        counts = np.bincount(all_codes[chosen], weights=all_lengths[chosen], minlength=slot_start[-1])
        slots = np.flatnonzero(counts)
        image = np.searchsorted(slot_start, slots, side="right") - 1
        local = slots - slot_start[image]
        out.append(
            (
                a_first[image] + local // nb[image],
                b_first[image] + local % nb[image],
                counts[slots].astype(np.int64),
            )
        )
    return out if isinstance(a_keep, list) else out[0]


def covered_area(pieces: Pieces, entries: np.ndarray) -> np.ndarray:
    """(I,) per image the pixels of the union of the given entries' pieces (`entries` (E,) bool)."""
    covered = np.zeros(pieces.length.size, dtype=np.int64)
    covered[pieces.piece[entries]] = pieces.length[pieces.piece[entries]]
    return np.diff(_exclusive_cumsum(covered)[pieces.image_first])


def image_chunks(heights: np.ndarray, widths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Chunks of consecutive images: (image indices, line offset of each, line size)."""
    pixels = heights.astype(np.int64) * widths.astype(np.int64)
    start = 0
    while start < pixels.size:
        stop = start + 1
        total = int(pixels[start])
        while stop < pixels.size and total + pixels[stop] <= CANVAS_PIXELS:
            total += int(pixels[stop])
            stop += 1
        images = np.arange(start, stop)
        yield images, _exclusive_cumsum(pixels[start:stop])[:-1], total
        start = stop


def boundary_dilation(height: np.ndarray, width: np.ndarray, ratio: float) -> np.ndarray:
    """Band width in pixels of Boundary IoU (Cheng et al. 2021) per image size: `ratio` of the image diagonal,
    rounded (half to even, as Python's `round`), at least 1."""
    diagonal = np.sqrt(height.astype(np.float64) ** 2 + width.astype(np.float64) ** 2)
    return np.maximum(np.round(ratio * diagonal).astype(np.int64), 1)


@dataclass(frozen=True)
class _ColumnRuns:
    """Runs split at column ends: piece p is rows `row0[p]` .. `row1[p] - 1` of column `column[p]` of mask
    `mask[p]`, ordered by mask, then column."""

    column: np.ndarray
    row0: np.ndarray
    row1: np.ndarray
    mask: np.ndarray


def _column_runs(runs: Runs, height: np.ndarray) -> _ColumnRuns:
    """`runs` (image-local keys, ordered by mask then key) cut at every column end; `height` (M,) per mask."""
    h = height[runs.mask]
    first = runs.start // h
    columns, run = expand_ranges(first, (runs.end - 1) // h - first + 1)
    h = h[run]
    top = columns * h
    row0 = np.maximum(runs.start[run], top) - top
    row1 = np.minimum(runs.end[run], top + h) - top
    return _ColumnRuns(columns, row0, row1, runs.mask[run])


def boundary_runs(
    runs: Runs, height: np.ndarray, dilation: np.ndarray, selected: np.ndarray | None = None
) -> Runs:
    """The inner boundary bands of the masks of `runs`: mask pixels within Chebyshev distance `dilation[m]`
    of a pixel outside the mask (the image outside counts as outside), i.e. the mask minus its erosion by a
    (2d + 1)^2 square, as Boundary IoU's reference code computes it (with OpenCV).

    `runs` must hold image-local keys (no line offset), ordered by mask then key (as `foreground_runs` gives
    them); `height` (M,): the height of each mask's image. Only masks where `selected` (M,) holds are done
    (the others get an empty band). Masks are eroded on their bounding-box crops, transposed (a column of
    the mask is a row of the crop, so runs draw as row segments; a square's erosion is the same either way).
    """
    num = runs.area.size
    if selected is not None:
        chosen = selected[runs.mask]
        runs = Runs(runs.start[chosen], runs.end[chosen], runs.mask[chosen], runs.area)
    empty = np.zeros(0, dtype=np.int64)
    if runs.start.size == 0:
        return Runs(empty, empty, empty, np.zeros(num, dtype=np.int64))
    pieces = _column_runs(runs, height)
    counts = np.bincount(pieces.mask, minlength=num)
    present = counts > 0
    starts = _exclusive_cumsum(counts)[:-1]
    col0 = np.zeros(num, dtype=np.int64)
    row0 = np.zeros(num, dtype=np.int64)
    crop_cols = np.zeros(num, dtype=np.int64)
    crop_rows = np.zeros(num, dtype=np.int64)
    col0[present] = pieces.column[starts[present]]
    crop_cols[present] = pieces.column[starts[present] + counts[present] - 1] - col0[present] + 1
    row0[present] = np.minimum.reduceat(pieces.row0, starts[present])
    crop_rows[present] = np.maximum.reduceat(pieces.row1, starts[present]) - row0[present]
    # Crops of one dilation and width (their mask's rows, plus one empty column so that band runs end within
    # a row; rounded up to CROP_ALIGN) are stacked into one tall image, one above the other with an empty row
    # between them (outside a crop is outside its mask), and eroded at once.
    width = -(-(crop_rows + 1) // CROP_ALIGN) * CROP_ALIGN
    order = np.lexsort((width, dilation))
    order = order[present[order]]
    keys = np.stack((dilation[order], width[order]), axis=1)
    bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    parts = [
        _bucket_band(pieces, members, starts, counts, col0, row0, crop_cols, width, height, dilation)
        for members in np.split(order, bounds)
    ]
    start = np.concatenate([part[0] for part in parts])
    end = np.concatenate([part[1] for part in parts])
    mask = np.concatenate([part[2] for part in parts])
    area = np.bincount(mask, weights=end - start, minlength=num).astype(np.int64)
    return Runs(start, end, mask, area)


def _bucket_band(
    pieces: _ColumnRuns,
    members: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    col0: np.ndarray,
    row0: np.ndarray,
    crop_cols: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    dilation: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band runs (start, end, mask) of the masks `members`, which share a dilation and a crop width."""
    d, w = int(dilation[members[0]]), int(width[members[0]])
    top = _exclusive_cumsum(crop_cols[members] + 1)
    index, slot = expand_ranges(starts[members], counts[members])
    m = members[slot]
    row_start = (top[slot] + pieces.column[index] - col0[m]) * w
    ends = np.empty(2 * index.size + 1, dtype=np.int64)
    ends[0:-1:2] = row_start + pieces.row0[index] - row0[m]
    ends[1:-1:2] = row_start + pieces.row1[index] - row0[m]
    ends[-1] = top[-1] * w
    values = np.zeros(ends.size, dtype=np.uint8)
    values[1::2] = 1
    tall = np.repeat(values, np.diff(ends, prepend=0)).reshape(-1, w)
    kernel = np.ones((2 * d + 1, 2 * d + 1), dtype=np.uint8)
    eroded = cv2.erode(tall, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band = (tall > eroded).ravel().view(np.int8)
    change = np.diff(band, prepend=np.int8(0))  # every row ends outside its crop: runs never wrap
    first, last = np.flatnonzero(change == 1), np.flatnonzero(change == -1)
    row = first // w
    slot = np.searchsorted(top, row, side="right") - 1
    m = members[slot]
    key = (col0[m] + row - top[slot]) * height[m] + row0[m] + first - row * w
    return key, key + (last - first), m
