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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from instaseg.io.images import IMAGE_SUFFIXES, load_image, read_image_size
from instaseg.structures.boxes import xywh_to_xyxy
from instaseg.structures.coco_fields import (
    POLYGON_TOLERANCE_PX,
    is_int,
    is_number,
    polygon_problem,
    rle_problem,
    segmentation_to_rle,
)
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, compressed_run_lengths, rle_area, rle_to_boxes

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


def bbox_and_area(rle: dict[str, Any]) -> tuple[tuple[float, float, float, float], int]:
    """COCO `bbox` (x, y, w, h: the pixel extent, x2 / y2 exclusive) and `area` (pixel count) of one RLE."""
    x1, y1, x2, y2 = rle_to_boxes([rle])[0].tolist()
    return (x1, y1, x2 - x1, y2 - y1), int(rle_area([rle])[0])


def image_record_to_instances(image: ImageRecord) -> Instances:
    """The annotations of `image` as `Instances` for training or evaluation.

    boxes (N, 4) float32 x1y1x2y2 in image pixels (from `bbox`), labels (N,) int64 dataset category ids,
    masks (always present, also for N = 0: polygons when every annotation has polygons, else RLE), fields
    `iscrowd` (N,) int64 and `area` (N,) float64. The records were checked by their reader, so nothing is
    checked again here.
    """
    size = (image.height, image.width)
    annotations = image.annotations
    segmentations = [a.segmentation for a in annotations]
    if annotations and all(isinstance(segmentation, list) for segmentation in segmentations):
        masks = Masks(size, polygons=[[list(map(float, part)) for part in s] for s in segmentations])
    else:
        masks = Masks(size, rles=[segmentation_to_rle(s, *size) for s in segmentations])
    boxes = torch.tensor([list(a.bbox) for a in annotations], dtype=torch.float32).reshape(-1, 4)
    return Instances(
        size,
        xywh_to_xyxy(boxes),
        torch.tensor([a.category_id for a in annotations], dtype=torch.int64),
        masks=masks,
        iscrowd=torch.tensor([a.iscrowd for a in annotations], dtype=torch.int64),
        area=torch.tensor([float(a.area) for a in annotations], dtype=torch.float64),
    )
