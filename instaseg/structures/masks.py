"""Instance masks in COCO's three forms: dense bitmaps, run-length encodings (RLE) and polygons.

- Bitmaps: `(N, H, W)` bool, one mask per instance.
- RLE: COCO compressed RLE dicts `{"size": [H, W], "counts": str}`; all RLE work (encode, decode, merge, area,
  IoU, boxes) is done by `pycocotools.mask`, so results are byte-identical to what the COCO tools produce.
  pycocotools hands out `counts` as bytes; here they are `str` on output (JSON-ready) and either on input.
- Polygons: per instance a list of parts, each a flat `[x1, y1, x2, y2, ...]` list in continuous pixel
  coordinates (pixel (col, row) covers [col, col + 1) x [row, row + 1)), the parts of one instance unioned.

Bitmap <-> RLE is lossless. Polygon -> bitmap is COCO's own rasterisation. Bitmap -> polygons is lossy in one
way: a polygon list cannot carry holes, so holes are filled (see `bitmap_to_polygons`).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as coco_mask
from skimage import measure

__all__ = [
    "Masks",
    "bitmap_to_polygons",
    "check_image_size",
    "compressed_run_lengths",
    "decode_rle",
    "encode_rle",
    "mask_iou",
    "merge_rles",
    "normalize_index",
    "polygons_to_rle",
    "rle_area",
    "rle_runs",
    "rle_to_boxes",
    "uncompressed_rle_to_rle",
]

Polygons = list[list[float]]  # the parts of one instance, each a flat [x1, y1, x2, y2, ...] list
Index = int | slice | torch.Tensor | np.ndarray | Sequence[int] | Sequence[bool]


def encode_rle(bitmaps: np.ndarray | torch.Tensor) -> list[dict]:
    """(N, H, W) masks -> N COCO compressed RLEs, identical to `pycocotools.mask.encode` but for str counts.

    `bitmaps` is bool, or an integer type where any nonzero value is foreground (e.g. 0/255 mask PNGs);
    float input is refused because a probability needs a threshold chosen by the caller.
    """
    array = _as_numpy(bitmaps)
    if array.ndim != 3:
        raise ValueError(f"encode_rle expects (N, H, W) masks, got shape {array.shape}")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"encode_rle expects bool or integer masks, got dtype {array.dtype}; threshold first"
        )
    if array.shape[0] == 0:
        return []
    # One call for all N masks: pycocotools wants a Fortran-ordered (H, W, N) uint8 array of 0/1 values.
    stacked = np.asfortranarray((array != 0).transpose(1, 2, 0), dtype=np.uint8)
    return [_from_coco(rle) for rle in coco_mask.encode(stacked)]


def decode_rle(rles: Sequence[dict], image_size: tuple[int, int] | None = None) -> np.ndarray:
    """N RLEs (compressed, str or bytes counts, or uncompressed) -> (N, H, W) bool array.

    `image_size` (H, W) is only needed to shape the result when `rles` is empty; when given, every RLE's
    `size` must equal it.
    """
    coco_rles = _to_coco_list(rles, image_size, "decode_rle")
    if not coco_rles:
        height, width = image_size if image_size is not None else (0, 0)
        return np.zeros((0, height, width), dtype=bool)
    try:
        decoded = _coco_decode(coco_rles)  # (H, W, N) uint8, Fortran order
    except ValueError:
        for i, rle in enumerate(coco_rles):  # error path only: find the broken RLE to name it
            try:
                _coco_decode([rle])
            except ValueError as exc:
                raise ValueError(
                    f"decode_rle: RLE {i}'s counts do not describe a {rle['size']} mask"
                ) from exc
        raise
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).view(bool)


def _coco_decode(coco_rles: list[dict]) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips NumPy 2's `__array__(copy=...)` DeprecationWarning on every call;
        # it concerns pycocotools' internals, not our input, so it is silenced here only.
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco_rles)


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> dict:
    """Rasterise the parts of one instance (flat [x1, y1, x2, y2, ...] lists) into one RLE, COCO's way.

    An empty list gives an empty mask. Each part needs at least 3 points (6 numbers).
    """
    parts = []
    for i, part in enumerate(polygons):
        coords = np.asarray(part, dtype=np.float64)
        if coords.ndim != 1 or coords.size < 6 or coords.size % 2:
            # pycocotools would read a 4-number part as a box [x, y, w, h]: refuse it instead of guessing.
            raise ValueError(
                f"polygon part {i} must be a flat [x1, y1, x2, y2, ...] list of at least 3 points, "
                f"got {coords.size} numbers"
            )
        if not np.isfinite(coords).all():
            raise ValueError(f"polygon part {i} has NaN or infinite coordinates")
        parts.append(coords.tolist())
    height, width = check_image_size((height, width), "polygons_to_rle")
    if not parts:
        return encode_rle(np.zeros((1, height, width), dtype=bool))[0]
    return _from_coco(coco_mask.merge(coco_mask.frPyObjects(parts, height, width)))


def uncompressed_rle_to_rle(rle: dict) -> dict:
    """COCO uncompressed RLE (`counts`: run lengths, column-major) -> compressed RLE with str counts."""
    height, width = _rle_size(rle, "uncompressed RLE")
    counts = rle["counts"]
    if not isinstance(counts, list | tuple) or not all(
        isinstance(c, int | np.integer) and c >= 0 for c in counts
    ):
        raise ValueError("uncompressed RLE 'counts' must be a list of non-negative integers")
    if sum(counts) != height * width:
        raise ValueError(
            f"uncompressed RLE counts sum to {sum(counts)}, not {height}*{width} = {height * width}"
        )
    return _from_coco(coco_mask.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width))


# COCO's compressed RLE writes each 5-bit group plus a continuation bit as one character '0'..'o' (48..111).
RLE_FIRST_CHARACTER, RLE_END_CHARACTER = 48, 112
RLE_BATCH = 20_000


def rle_runs(counts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run lengths of N compressed COCO RLE `counts` strings, decoded together.

    Returns `(runs (R,) int64, offsets (N + 1,) int64, well_formed (N,) bool)`: the runs of string i are
    `runs[offsets[i]:offsets[i + 1]]` (background first, alternating, column-major). A string is not
    well formed when it holds characters outside '0'..'o', ends inside a number or has a number too long for
    64 bits; its runs are then meaningless. Runs are not checked here (negative runs, or runs that do not sum
    to height * width, are the caller's to refuse).

    Written by hand because pycocotools and hotcoco decode counts only into masks and do not check that the
    runs cover the image (a short RLE decodes with an uninitialised or blank tail). The format (pycocotools'
    `rleFrString`): each run is a little-endian sequence of 5-bit groups in characters 48 + value, bit 0x20
    meaning "more groups follow", the last group's bit 0x10 the sign; from the third run on, the value is a
    difference to the run two places back. Vectorised over all strings, as evaluation checks 10^5-10^6 masks,
    in batches of `RLE_BATCH` strings so that the temporary arrays stay small (765,000 masks: 2.9-4.1 s in
    batches of 20,000, 6-16 s in one).
    """
    if len(counts) > RLE_BATCH:
        parts = [_rle_runs(counts[i : i + RLE_BATCH]) for i in range(0, len(counts), RLE_BATCH)]
        sizes = np.array([part[0].size for part in parts], dtype=np.int64)
        shifts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        offsets = np.concatenate(
            [[0]] + [part[1][1:] + shift for part, shift in zip(parts, shifts, strict=True)]
        )
        return (
            np.concatenate([part[0] for part in parts]),
            offsets,
            np.concatenate([part[2] for part in parts]),
        )
    return _rle_runs(counts)


def _rle_runs(counts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num = len(counts)
    if num and set(map(type, counts)) == {str}:
        joined = "".join(counts).encode("utf-8")
        lengths = np.fromiter(map(len, counts), dtype=np.int64, count=num)
        if len(joined) != lengths.sum():  # non-ASCII characters (never valid): count bytes, not characters
            return _rle_runs([c.encode("utf-8") for c in counts])
    else:
        encoded = [c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in counts]
        joined = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=num)
    raw = np.frombuffer(joined, dtype=np.uint8)
    char_end = np.cumsum(lengths)
    char_start = char_end - lengths
    group = raw - np.uint8(RLE_FIRST_CHARACTER)  # wraps around for characters below '0': those are bad anyway
    bad = group >= RLE_END_CHARACTER - RLE_FIRST_CHARACTER
    last = ((group & 0x20) == 0) | bad  # the last group of a number (garbage ends one too)
    nonempty = lengths > 0
    string_last = char_end[nonempty] - 1
    unfinished = np.zeros(raw.size, dtype=bool)
    unfinished[string_last] = ~last[string_last]
    last[string_last] = True  # numbers never straddle two strings
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    digits = ends - starts + 1
    values = (group[starts] & 0x1F).astype(np.int64)
    # Most runs take one character (runs are stored as small differences): only longer numbers loop.
    longer = np.flatnonzero(digits > 1)
    for k in range(1, 13):
        if longer.size == 0:
            break
        values[longer] |= (group[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
        longer = longer[digits[longer] > k + 1]
    long_numbers = digits > 12  # beyond 60 bits: no real run is this long
    negative = np.flatnonzero(group[ends] & 0x10)
    values[negative] -= np.int64(1) << np.minimum(5 * digits[negative], 60)
    flags = bad | unfinished
    flags[ends[long_numbers]] = True
    well_formed = nonempty.copy()
    if raw.size:
        well_formed[nonempty] = ~np.logical_or.reduceat(flags, char_start[nonempty])
    offsets = np.concatenate(([0], np.searchsorted(ends, char_end, side="left")))
    # From the third run on a run is stored as a difference to the run two places back: per string, the
    # odd runs and the even runs from index 2 on are cumulative sums of the stored values. The cumulative
    # sums restart at each string: its first stored value is lowered by the previous string's total.
    per_string = np.diff(offsets)
    string_first = offsets[:-1][per_string > 0]
    odd = np.repeat((offsets[:-1] & 1).astype(bool), per_string) ^ (np.arange(values.size) & 1).astype(bool)
    stored_odd = np.where(odd, values, 0)
    stored_even = values - stored_odd
    stored_even[string_first] = 0  # run 0 starts no chain
    for stored in (stored_odd, stored_even):
        totals = np.add.reduceat(stored, string_first) if string_first.size else string_first
        stored[string_first[1:]] -= totals[:-1]
        np.cumsum(stored, out=stored)
    runs = np.where(odd, stored_odd, stored_even)
    runs[string_first] = values[string_first]
    return runs, offsets, well_formed


def compressed_run_lengths(raw: bytes | str) -> list[int] | None:
    """The run lengths of one compressed COCO RLE `counts` string, or None if it is not well formed (see
    `rle_runs`, which decodes many at once)."""
    runs, _, well_formed = rle_runs([raw])
    return runs.tolist() if well_formed[0] else None


def bitmap_to_polygons(bitmap: np.ndarray | torch.Tensor) -> Polygons:
    """(H, W) mask -> polygons (one part per connected region) that COCO rasterises back to the same pixels.

    Lossy only for holes: polygon lists cannot represent them, so holes come back filled. Vertices sit on
    pixel-edge midpoints; an empty mask gives [].
    """
    array = _as_numpy(bitmap)
    if array.ndim != 2:
        raise ValueError(f"bitmap_to_polygons expects one (H, W) mask, got shape {array.shape}")
    # scikit-image's sub-pixel iso-contour at level 0.5, not OpenCV's findContours: OpenCV traces the centres
    # of boundary pixels, and COCO's rasteriser then loses the boundary ring (mean IoU 0.85 over 200 sampled
    # nuclei masks), while these contours rasterise back exactly (600 of 600 sampled; the tests check this).
    padded = np.pad(array != 0, 1).astype(np.uint8)  # padding closes contours that touch the border
    polygons = []
    for contour in measure.find_contours(padded, 0.5, positive_orientation="high"):
        # Drop collinear points and the repeated closing point. (row, col) in the padded array -> (x, y):
        # minus 1 for the padding, plus 0.5 from pixel centre to COCO's continuous pixel coordinates.
        contour = measure.approximate_polygon(contour, tolerance=1e-6)[:-1]
        x = contour[:, 1] - 0.5
        y = contour[:, 0] - 0.5
        twice_signed_area = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        if twice_signed_area > 0:
            continue  # with y pointing down, region outlines wind negatively; positive ones outline holes
        polygons.append(np.stack((x, y), axis=1).ravel().tolist())
    return polygons


def rle_area(rles: Sequence[dict]) -> np.ndarray:
    """(N,) int64 foreground pixel counts of N RLEs."""
    coco_rles = _to_coco_list(rles, None, "rle_area")
    if not coco_rles:
        return np.zeros(0, dtype=np.int64)
    # pycocotools' `area` sizes its output by a uint8 count and overflows past 255 RLEs (dense nuclei images
    # hold up to 375), so call it in chunks of at most 255.
    chunks = [coco_rles[i : i + 255] for i in range(0, len(coco_rles), 255)]
    return np.concatenate([coco_mask.area(chunk) for chunk in chunks]).astype(np.int64)


def rle_to_boxes(rles: Sequence[dict]) -> np.ndarray:
    """(N, 4) float32 x1y1x2y2 tight boxes of N RLEs, x2/y2 exclusive: pixels [x1, x2) x [y1, y2).

    An empty mask gives (0, 0, 0, 0), as pycocotools does.
    """
    coco_rles = _to_coco_list(rles, None, "rle_to_boxes")
    if not coco_rles:
        return np.zeros((0, 4), dtype=np.float32)
    xywh = coco_mask.toBbox(coco_rles)
    return np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1).astype(np.float32)


def mask_iou(
    dt_rles: Sequence[dict], gt_rles: Sequence[dict], iscrowd: Sequence[bool] | np.ndarray
) -> np.ndarray:
    """(N, M) float64 IoU between N detected and M ground-truth RLEs, computed on the RLEs (no decoding).

    COCO's crowd rule: for a ground truth with `iscrowd[j]` true, the score is intersection / area(detection).
    """
    dts = _to_coco_list(dt_rles, None, "mask_iou detections")
    gts = _to_coco_list(gt_rles, None, "mask_iou ground truths")
    crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    if crowd.size != len(gts):
        raise ValueError(f"mask_iou: iscrowd has {crowd.size} entries for {len(gts)} ground truths")
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)), dtype=np.float64)
    if dts[0]["size"] != gts[0]["size"]:
        raise ValueError(f"mask_iou: detections are {dts[0]['size']} masks, ground truths {gts[0]['size']}")
    return np.asarray(coco_mask.iou(dts, gts, crowd.astype(np.uint8)), dtype=np.float64).reshape(
        len(dts), len(gts)
    )


def merge_rles(rles: Sequence[dict], intersect: bool = False) -> dict:
    """Union (or, with `intersect=True`, intersection) of one or more same-size RLEs -> one RLE."""
    coco_rles = _to_coco_list(rles, None, "merge_rles")
    if not coco_rles:
        raise ValueError("merge_rles needs at least one RLE (the mask size is unknown otherwise)")
    return _from_coco(coco_mask.merge(coco_rles, intersect=int(intersect)))


def normalize_index(index: Index, length: int) -> torch.Tensor:
    """Any supported index into `length` items -> (K,) int64 CPU tensor of positions.

    An int gives one position (so indexing keeps a length-1 collection), negatives count from the end; a
    slice, a bool mask of exactly `length` entries, or integer positions (tensor, array or list) work too.
    """
    if isinstance(index, bool):
        raise TypeError("a bare bool is not an index; use a bool tensor with one entry per instance")
    if isinstance(index, int | np.integer):
        position = int(index)
        if not -length <= position < length:
            raise IndexError(f"index {position} is out of range for {length} instances")
        return torch.tensor([position % length], dtype=torch.int64)
    if isinstance(index, slice):
        return torch.tensor(range(length)[index], dtype=torch.int64)  # range: negative steps work too
    tensor = torch.as_tensor(np.asarray(index) if isinstance(index, list | tuple) else index).to("cpu")
    if tensor.ndim != 1:
        if tensor.ndim == 0 and not tensor.dtype.is_floating_point and tensor.dtype != torch.bool:
            return normalize_index(int(tensor), length)
        raise IndexError(f"index must be one-dimensional, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool:
        if tensor.numel() != length:
            raise IndexError(f"bool index has {tensor.numel()} entries for {length} instances")
        return torch.nonzero(tensor).reshape(-1)
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise IndexError(f"index must hold integers or bools, got {tensor.dtype}")
    tensor = tensor.to(torch.int64)
    if tensor.min() < -length or tensor.max() >= length:
        raise IndexError(f"index values {tensor.tolist()} out of range for {length} instances")
    return tensor % max(length, 1)


class Masks:
    """N instance masks of one image, kept in the form they were given in and converted on request.

    Build with `Masks.from_bitmaps`, `Masks.from_rles` or `Masks.from_polygons`. Conversions are computed on
    each call (nothing is cached, so a large decode is never kept alive by accident). `form` says which form
    is stored: writers keep polygons as polygons and everything else as RLE.
    """

    BITMAPS = "bitmaps"
    RLES = "rles"
    POLYGONS = "polygons"

    def __init__(
        self,
        image_size: tuple[int, int],
        bitmaps: torch.Tensor | None = None,
        rles: list[dict] | None = None,
        polygons: list[Polygons] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Store exactly one form; prefer the `from_*` constructors, which validate and normalise input."""
        if sum(form is not None for form in (bitmaps, rles, polygons)) != 1:
            raise ValueError("Masks needs exactly one of bitmaps, rles or polygons")
        self.image_size = check_image_size(image_size, "Masks")
        self._bitmaps = bitmaps
        self._rles = rles
        self._polygons = polygons
        if bitmaps is not None:
            self.device = bitmaps.device
        else:
            self.device = torch.device(device if device is not None else "cpu")

    @classmethod
    def from_bitmaps(cls, bitmaps: torch.Tensor | np.ndarray) -> Masks:
        """(N, H, W) bool (or 0/1 integer) masks; the image size is taken from the shape."""
        tensor = torch.as_tensor(bitmaps)
        if tensor.ndim != 3:
            raise ValueError(f"Masks.from_bitmaps expects (N, H, W) masks, got shape {tuple(tensor.shape)}")
        if tensor.dtype.is_floating_point:
            raise ValueError("Masks.from_bitmaps expects bool masks; threshold probabilities first")
        return cls(
            (tensor.shape[1], tensor.shape[2]), bitmaps=tensor != 0 if tensor.dtype != torch.bool else tensor
        )

    @classmethod
    def from_rles(cls, rles: Sequence[dict], image_size: tuple[int, int]) -> Masks:
        """COCO RLEs (compressed, str or bytes counts, or uncompressed) of an (H, W) `image_size` image."""
        coco_rles = _to_coco_list(rles, image_size, "Masks.from_rles")
        return cls(image_size, rles=[_from_coco(rle) for rle in coco_rles])

    @classmethod
    def from_polygons(
        cls, polygons: Sequence[Sequence[Sequence[float]]], image_size: tuple[int, int]
    ) -> Masks:
        """Per instance, a list of polygon parts (flat [x1, y1, ...] lists), in an (H, W) image."""
        checked = []
        for i, parts in enumerate(polygons):
            if not isinstance(parts, list | tuple) or any(
                not isinstance(p, list | tuple | np.ndarray) for p in parts
            ):
                raise ValueError(
                    f"polygons of instance {i} must be a list of flat [x1, y1, x2, y2, ...] lists"
                )
            try:
                polygons_to_rle(parts, *image_size)  # validates every part now, not at first use
            except ValueError as exc:
                raise ValueError(f"polygons of instance {i}: {exc}") from exc
            checked.append([[float(v) for v in part] for part in parts])
        return cls(image_size, polygons=checked)

    @property
    def form(self) -> str:
        """Which form is stored: `Masks.BITMAPS`, `Masks.RLES` or `Masks.POLYGONS`."""
        if self._bitmaps is not None:
            return self.BITMAPS
        return self.RLES if self._rles is not None else self.POLYGONS

    def bitmaps(self) -> torch.Tensor:
        """(N, H, W) bool tensor on `self.device`."""
        if self._bitmaps is not None:
            return self._bitmaps
        return torch.from_numpy(decode_rle(self.rles(), self.image_size)).to(self.device)

    def rles(self) -> list[dict]:
        """N COCO compressed RLEs with str counts."""
        if self._rles is not None:
            return [dict(rle) for rle in self._rles]
        if self._bitmaps is not None:
            return encode_rle(self._bitmaps)
        return [polygons_to_rle(parts, *self.image_size) for parts in self._polygons]

    def polygons(self) -> list[Polygons]:
        """Per instance, its polygon parts (exact if stored as polygons, else traced; holes filled)."""
        if self._polygons is not None:
            return [[list(part) for part in parts] for parts in self._polygons]
        return [bitmap_to_polygons(bitmap) for bitmap in decode_rle(self.rles(), self.image_size)]

    def area(self) -> torch.Tensor:
        """(N,) int64 pixel counts on `self.device` (for polygons: of their COCO rasterisation)."""
        if self._bitmaps is not None:
            return self._bitmaps.sum(dim=(1, 2), dtype=torch.int64)
        return torch.from_numpy(rle_area(self.rles())).to(self.device)

    def boxes(self) -> torch.Tensor:
        """(N, 4) float32 x1y1x2y2 tight boxes on `self.device`, x2/y2 exclusive; zeros for empty masks."""
        return torch.from_numpy(rle_to_boxes(self.rles())).to(self.device)

    def __len__(self) -> int:
        if self._bitmaps is not None:
            return self._bitmaps.shape[0]
        return len(self._rles if self._rles is not None else self._polygons)

    def __getitem__(self, index: Index) -> Masks:
        """A new Masks with the selected instances (an int selects one and keeps the N dimension)."""
        positions = normalize_index(index, len(self))
        if self._bitmaps is not None:
            return Masks(self.image_size, bitmaps=self._bitmaps[positions.to(self._bitmaps.device)])
        chosen = positions.tolist()
        if self._rles is not None:
            return Masks(self.image_size, rles=[self._rles[i] for i in chosen], device=self.device)
        return Masks(self.image_size, polygons=[self._polygons[i] for i in chosen], device=self.device)

    @staticmethod
    def cat(masks_list: Sequence[Masks]) -> Masks:
        """Concatenate Masks of one image size; keeps their shared form, or uses RLE when forms differ."""
        if not masks_list:
            raise ValueError("Masks.cat needs at least one Masks")
        first = masks_list[0]
        for i, masks in enumerate(masks_list):
            if not isinstance(masks, Masks):
                raise TypeError(f"Masks.cat: element {i} is a {type(masks).__name__}, not Masks")
            if masks.image_size != first.image_size:
                raise ValueError(
                    f"Masks.cat: element {i} has image size {masks.image_size}, element 0 {first.image_size}"
                )
        forms = {masks.form for masks in masks_list}
        if forms == {Masks.BITMAPS}:
            return Masks(
                first.image_size, bitmaps=torch.cat([m.bitmaps().to(first.device) for m in masks_list])
            )
        if forms == {Masks.POLYGONS}:
            return Masks(
                first.image_size, polygons=[p for m in masks_list for p in m._polygons], device=first.device
            )
        return Masks(first.image_size, rles=[r for m in masks_list for r in m.rles()], device=first.device)

    def to(self, device: torch.device | str) -> Masks:
        """Masks whose tensors (bitmaps, and what `bitmaps()`/`area()`/`boxes()` return) live on `device`."""
        if self._bitmaps is not None:
            return Masks(self.image_size, bitmaps=self._bitmaps.to(device))
        return Masks(self.image_size, rles=self._rles, polygons=self._polygons, device=device)

    def __repr__(self) -> str:
        return f"Masks(num={len(self)}, image_size={self.image_size}, form={self.form}, device={self.device})"


def _as_numpy(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        return masks.detach().cpu().numpy()
    return np.asarray(masks)


def check_image_size(size: Sequence[int], where: str) -> tuple[int, int]:
    """Validate an (H, W) image size of two positive integers (Python, NumPy or torch ints, not floats)."""
    try:
        height, width = (operator.index(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: image size must be two integers (H, W), got {size!r}") from exc
    if height <= 0 or width <= 0 or any(isinstance(v, bool) for v in size):
        raise ValueError(f"{where}: image size must be two positive integers (H, W), got {size!r}")
    return height, width


def _rle_size(rle: dict, where: str) -> tuple[int, int]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where} must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    return check_image_size(rle["size"], where)


def _to_coco_list(rles: Sequence[dict], image_size: tuple[int, int] | None, where: str) -> list[dict]:
    """Validate RLEs and convert them to what pycocotools takes: compressed, bytes counts, one shared size."""
    if isinstance(rles, dict):
        raise ValueError(f"{where} expects a list of RLE dicts, got a single dict")
    expected = None if image_size is None else check_image_size(image_size, where)
    converted = []
    for i, rle in enumerate(rles):
        size = _rle_size(rle, f"{where}: RLE {i}")
        if expected is None:
            expected = size
        elif size != expected:
            raise ValueError(f"{where}: RLE {i} has size {list(size)}, expected {list(expected)}")
        counts = rle["counts"]
        if isinstance(counts, list | tuple):
            try:
                converted.append(_to_coco(uncompressed_rle_to_rle(rle)))
            except ValueError as exc:
                raise ValueError(f"{where}: RLE {i}: {exc}") from exc
        elif isinstance(counts, str | bytes):
            converted.append(
                {"size": list(size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            )
        else:
            raise ValueError(
                f"{where}: RLE {i} 'counts' must be str, bytes or a list, got {type(counts).__name__}"
            )
    return converted


def _to_coco(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _from_coco(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
