"""The one record type every dataset format reads into, and the skip / strict policy for bad input.

Coordinates are image pixels: the image spans [0, W] x [0, H] and pixel (row r, column c) covers
[c, c + 1) x [r, r + 1). A segmentation is either COCO compressed RLE (`{"size": [H, W], "counts": str}`) or
polygons (`[[x1, y1, x2, y2, ...], ...]`, all parts of one instance). Boxes are COCO `bbox` order
`(x, y, width, height)`; for masks read from files the box is the pixel extent (x2, y2 exclusive) and the area
is the number of mask pixels.

Readers never drop anything silently: every record they cannot use is reported through a `ProblemLog`,
which either raises `DatasetError` at once (`strict=True`) or keeps a `SkipReport` for `Dataset.skipped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from instaseg.io.images import IMAGE_SUFFIXES, load_image, read_image_size
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, polygons_to_rle, rle_area, rle_to_boxes, uncompressed_rle_to_rle

__all__ = [
    "IMAGE_SUFFIXES",
    "POLYGON_TOLERANCE_PX",
    "AnnotationRecord",
    "CategoryRecord",
    "Dataset",
    "DatasetError",
    "ImageRecord",
    "ProblemLog",
    "SkipReport",
    "bbox_and_area",
    "check_image",
    "compressed_run_lengths",
    "image_record_to_instances",
    "is_int",
    "is_number",
    "polygon_problem",
    "rle_problem",
    "segmentation_to_rle",
]

# A polygon vertex may lie at most this far outside the image ([-1, W + 1] x [-1, H + 1]): annotation tools
# often overshoot the border by a fraction of a pixel. Such vertices are kept as they are (rasterising clips
# them); anything farther out means the polygon belongs to another image size and is reported.
POLYGON_TOLERANCE_PX = 1.0

# File name endings that folder readers take for images (compared in lower case); other files are not images.
# COCO's compressed RLE writes each 5-bit group plus a continuation bit as one character '0'..'o' (48..111).
# pycocotools parses any string without checking, and garbage gives run lengths that change from run to run.
_RLE_CHARACTERS = bytes(range(48, 112))

Segmentation = dict[str, Any] | list[list[float]]


@dataclass
class AnnotationRecord:
    """One object instance. `segmentation` is compressed RLE (counts as str) or polygons in image pixels."""

    id: int
    category_id: int
    segmentation: Segmentation
    bbox: tuple[float, float, float, float]  # x, y, width, height in image pixels
    area: float
    iscrowd: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # other COCO keys, written back unchanged


@dataclass
class ImageRecord:
    """One image and its annotations. `file_name` is relative to `Dataset.root` (forward slashes)."""

    id: int
    file_name: str
    height: int
    width: int
    annotations: list[AnnotationRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CategoryRecord:
    """A class of objects; `id` is the dataset's category id (COCO `category_id`, 1-based by convention)."""

    id: int
    name: str
    supercategory: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkipReport:
    """A record a reader could not use: the file it came from, which record, and why."""

    path: str
    record: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.record}: {self.reason}"


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and the record. Raised in strict mode, or when a whole
    source is unusable (a missing folder, a JSON file that does not parse)."""

    def __init__(self, path: str | Path, record: str, reason: str) -> None:
        self.report = SkipReport(str(path), record, reason)
        super().__init__(str(self.report))


@dataclass
class Dataset:
    """Images (with their annotations) and categories of one dataset, plus what the reader skipped.

    `root` is the folder that image `file_name`s are relative to; `extra` holds other top-level COCO keys
    (`info`, `licenses`, ...), written back unchanged.
    """

    images: list[ImageRecord]
    categories: list[CategoryRecord]
    root: Path
    skipped: list[SkipReport] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def image_path(self, image: ImageRecord) -> Path:
        return self.root / image.file_name

    @property
    def num_annotations(self) -> int:
        return sum(len(image.annotations) for image in self.images)

    def instances_per_category(self) -> dict[str, int]:
        """Category name -> number of annotations, in category order (categories with none included)."""
        counts = {category.id: 0 for category in self.categories}
        for image in self.images:
            for annotation in image.annotations:
                counts[annotation.category_id] += 1
        return {category.name: counts[category.id] for category in self.categories}


class ProblemLog:
    """Where readers send what they cannot use: raises `DatasetError` at the first problem when `strict`,
    otherwise keeps a `SkipReport` for each one."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.reports: list[SkipReport] = []

    def report(self, path: str | Path, record: str, reason: str) -> None:
        self.add(SkipReport(str(path), record, reason))

    def add(self, report: SkipReport) -> None:
        if self.strict:
            raise DatasetError(report.path, report.record, report.reason)
        self.reports.append(report)


def check_image(path: Path, decode: bool) -> tuple[int, int]:
    """(H, W) of the image at `path` from its header; with `decode`, also decode it all so that a truncated
    or corrupt file is caught here rather than during training. Raises `ImageReadError` naming the file."""
    size = read_image_size(path)
    if decode:
        load_image(path)
    return size


def read_one_channel_png(
    path: Path, noun: str, channel_rule: str
) -> tuple[np.ndarray | None, str | None, str]:
    """Decode the one-channel PNG at `path`: (array, None, mode), or (None, why not, mode) naming it `noun`.

    `channel_rule` ends the message for an image with several channels (what the format needs instead).
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"unreadable {noun} PNG ({exc})", ""
    if array.ndim != 2:
        return None, f"{noun} has {array.shape[-1]} channels (mode {mode}); {channel_rule}", mode
    return array, None, mode


def size_problem(array: np.ndarray, height: int, width: int, noun: str) -> str | None:
    """Why the (H, W) `array` does not fit an image of `height` x `width`, or None."""
    if array.shape == (height, width):
        return None
    return f"{noun} is {array.shape[1]}x{array.shape[0]} (WxH) but its image is {width}x{height}"


def polygon_problem(polygons: Any, height: int, width: int) -> str | None:
    """Why `polygons` is not a usable instance outline for a (height, width) image, or None if it is.

    A usable outline is a non-empty list of polygons, each a flat list of finite numbers `x1, y1, x2, y2, ...`
    with at least 3 points, every vertex within `POLYGON_TOLERANCE_PX` of the image.
    """
    if not isinstance(polygons, list) or not polygons:
        return "segmentation must be a non-empty list of polygons"
    tol = POLYGON_TOLERANCE_PX
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or any(
            isinstance(v, bool) or not isinstance(v, int | float) for v in polygon
        ):
            return f"polygon {index} must be a flat list of numbers [x1, y1, x2, y2, ...]"
        if len(polygon) % 2:
            return f"polygon {index} has an odd number of coordinates ({len(polygon)})"
        if len(polygon) < 6:
            return f"polygon {index} has {len(polygon) // 2} point(s); a polygon needs at least 3"
        if not all(math.isfinite(v) for v in polygon):
            return f"polygon {index} has a NaN or infinite coordinate"
        xs, ys = polygon[0::2], polygon[1::2]
        if not (-tol <= min(xs) and max(xs) <= width + tol and -tol <= min(ys) and max(ys) <= height + tol):
            return (
                f"polygon {index} spans x [{min(xs):g}, {max(xs):g}], y [{min(ys):g}, {max(ys):g}]: "
                f"outside the {width}x{height} image by more than {tol:g} px"
            )
    return None


def rle_problem(rle: Any, height: int, width: int) -> str | None:
    """Why `rle` is not a COCO RLE (compressed or uncompressed) of a (height, width) image, or None."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "RLE segmentation must be a dict with 'size' and 'counts'"
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [height, width]:
        return f"RLE size {size[0]}x{size[1]} (HxW) differs from the image's {height}x{width}"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts):
            return "uncompressed RLE 'counts' must be non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, not height * width = {height * width}"
        return None
    if not isinstance(counts, str | bytes) or not counts:
        return "RLE 'counts' must be a non-empty string (compressed) or a list of integers (uncompressed)"
    raw = counts.encode("utf-8") if isinstance(counts, str) else counts
    if raw.translate(None, _RLE_CHARACTERS):
        return (
            f"compressed RLE 'counts' do not describe a {height}x{width} mask (characters outside '0'..'o')"
        )
    runs = compressed_run_lengths(raw)
    if runs is None or any(run < 0 for run in runs):
        return f"compressed RLE 'counts' do not describe a {height}x{width} mask (malformed runs)"
    if sum(runs) != height * width:
        return f"compressed RLE runs sum to {sum(runs)} pixels, not height * width = {height * width}"
    return None


def compressed_run_lengths(raw: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE `counts` string, or None if it ends inside a number.

    Written by hand because pycocotools decodes such a string only into a mask, and does not check that its
    runs cover the image: short ones leave the mask's tail uninitialised, and faster-coco-eval's IoU loops on
    them. The format (pycocotools' `rleFrString`): each run is a little-endian sequence of 5-bit groups in
    characters 48 + value, bit 0x20 meaning "more groups follow", the last group's bit 0x10 the sign; from
    the third run on, the value is a difference to the run two places back.
    """
    runs: list[int] = []
    position = 0
    while position < len(raw):
        value, shift, more = 0, 0, True
        while more:
            if position == len(raw):
                return None
            group = raw[position] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def segmentation_to_rle(segmentation: Segmentation, height: int, width: int) -> dict[str, Any]:
    """A valid segmentation (polygons, compressed or uncompressed RLE) as compressed RLE, `counts` as str."""
    if isinstance(segmentation, list):
        return polygons_to_rle(segmentation, height, width)
    if isinstance(segmentation["counts"], list):
        return uncompressed_rle_to_rle(segmentation)
    counts = segmentation["counts"]
    return {
        "size": list(segmentation["size"]),
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }


def bbox_and_area(rle: dict[str, Any]) -> tuple[tuple[float, float, float, float], int]:
    """COCO `bbox` (x, y, w, h: the pixel extent, x2 / y2 exclusive) and `area` (pixel count) of one RLE."""
    x1, y1, x2, y2 = rle_to_boxes([rle])[0].tolist()
    return (x1, y1, x2 - x1, y2 - y1), int(rle_area([rle])[0])


def image_record_to_instances(image: ImageRecord) -> Instances:
    """The annotations of `image` as `Instances` for training or evaluation (via `Instances.from_coco`).

    boxes (N, 4) float32 x1y1x2y2 in image pixels (from `bbox`), labels (N,) int64 dataset category ids,
    masks (always present, also for N = 0), fields `iscrowd` (N,) int64 and `area` (N,) float64.
    """
    size = (image.height, image.width)
    if not image.annotations:
        return Instances(
            size,
            torch.zeros((0, 4), dtype=torch.float32),
            torch.zeros(0, dtype=torch.int64),
            masks=Masks.from_rles([], size),
            iscrowd=torch.zeros(0, dtype=torch.int64),
            area=torch.zeros(0, dtype=torch.float64),
        )
    annotations = [
        {
            "id": a.id,
            "category_id": a.category_id,
            "segmentation": a.segmentation,
            "bbox": list(a.bbox),
            "area": a.area,
            "iscrowd": a.iscrowd,
        }
        for a in image.annotations
    ]
    return Instances.from_coco(annotations, size)


def is_int(value: Any) -> bool:
    """True for a JSON integer (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite JSON number (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
