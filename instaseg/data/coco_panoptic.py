"""COCO panoptic format reader: a JSON file (images, categories, one annotation per image with its
`segments_info`) and a folder of PNG files whose RGB colour encodes each pixel's segment id
(id = R + 256 G + 256^2 B; 0 is VOID, unlabelled).

Evaluation (`instaseg.evaluation.panoptic`) reads ground truth and predictions through this module; a dataset
converter can call `read_panoptic_json` and `read_segment_map` the same way. Every problem raises
`DatasetError` naming the file and the segment: PNG ids missing from `segments_info` (or the reverse),
a segment id listed twice (two segments cannot share pixels), unknown category ids, a PNG whose size differs
from its image's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instaseg.data.records import (
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    bbox_and_area,
)
from instaseg.structures.coco_fields import is_int, iscrowd_problem
from instaseg.structures.masks import encode_rle
from instaseg.structures.panoptic import PanopticSegmentation

__all__ = [
    "PanopticCategory",
    "PanopticFile",
    "PanopticImage",
    "PanopticSegment",
    "read_panoptic_json",
    "read_segment_map",
]


@dataclass(frozen=True)
class PanopticCategory:
    """A class: `isthing` 1 for countable objects (things), 0 for amorphous regions (stuff)."""

    id: int
    name: str
    isthing: bool


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of an image: its id in the PNG, category and crowd flag."""

    id: int
    category_id: int
    iscrowd: int


@dataclass(frozen=True)
class PanopticImage:
    """One image: size and image `file_name` from `images` ("" and 0 x 0 when the file has no `images`), the
    PNG file (`file_name` of the annotation, in the PNG folder)."""

    image_id: int
    height: int
    width: int
    png: Path
    segments: list[PanopticSegment]
    file_name: str = ""


@dataclass(frozen=True)
class PanopticFile:
    """A COCO panoptic JSON file: images (with annotations) by image id, categories by id."""

    path: Path
    images: dict[int, PanopticImage]
    categories: dict[int, PanopticCategory]


def read_panoptic_json(
    path: str | Path,
    png_folder: str | Path | None = None,
    categories: dict[int, PanopticCategory] | None = None,
) -> PanopticFile:
    """Read a COCO panoptic JSON file; PNGs are in `png_folder` (default: the JSON path without `.json`, as
    panopticapi assumes). `categories` overrides the file's own (prediction files may carry none).

    Checks ids, sizes, that each annotation's image exists and that segment ids are unique positive integers
    of known categories; the PNGs are read later, by `read_segment_map`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file", "no such file")
    try:
        with path.open("rb") as stream:
            data = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, "file", f"not readable as JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(path, "file", "not a COCO panoptic file: no 'annotations' list")
    folder = Path(png_folder) if png_folder is not None else path.with_suffix("")
    if categories is None:
        categories = _categories(data.get("categories"), path)
    sizes = _image_sizes(data.get("images"), path)
    images: dict[int, PanopticImage] = {}
    for index, annotation in enumerate(data["annotations"]):
        record = f"annotations[{index}]"
        if not isinstance(annotation, dict) or not is_int(annotation.get("image_id")):
            raise DatasetError(path, record, "needs an integer 'image_id'")
        image_id = annotation["image_id"]
        record = f"annotation of image {image_id}"
        if image_id in images:
            raise DatasetError(path, record, "a second annotation for the same image")
        if sizes is not None and image_id not in sizes:
            raise DatasetError(path, record, f"image id {image_id} is not in 'images'")
        file_name = annotation.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(path, record, "needs the PNG 'file_name'")
        segments = _segments(annotation.get("segments_info"), categories, path, record)
        height, width, image_file = sizes[image_id] if sizes is not None else (0, 0, "")
        images[image_id] = PanopticImage(image_id, height, width, folder / file_name, segments, image_file)
    return PanopticFile(path, images, categories)


def _categories(entries: Any, path: Path) -> dict[int, PanopticCategory]:
    if not isinstance(entries, list):
        raise DatasetError(path, "file", "no 'categories' list (pass the ground truth's categories)")
    categories: dict[int, PanopticCategory] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            raise DatasetError(path, f"categories[{index}]", "a category needs an integer 'id'")
        if entry["id"] in categories:
            raise DatasetError(path, f"category id={entry['id']}", "duplicate category id")
        isthing = entry.get("isthing", 1)
        if isthing not in (0, 1):
            raise DatasetError(
                path, f"category id={entry['id']}", f"'isthing' must be 0 or 1, got {isthing!r}"
            )
        categories[entry["id"]] = PanopticCategory(
            entry["id"], str(entry.get("name", entry["id"])), bool(isthing)
        )
    return categories


def _image_sizes(entries: Any, path: Path) -> dict[int, tuple[int, int, str]] | None:
    """`images` as id -> (height, width, file_name), or None without them (prediction files)."""
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise DatasetError(path, "file", "'images' must be a list")
    sizes: dict[int, tuple[int, int]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            raise DatasetError(path, f"images[{index}]", "an image needs an integer 'id'")
        height, width = entry.get("height"), entry.get("width")
        if not (is_int(height) and is_int(width) and height > 0 and width > 0):
            raise DatasetError(path, f"image id={entry['id']}", "needs positive integer 'height' and 'width'")
        sizes[entry["id"]] = (height, width, str(entry.get("file_name", "")))
    return sizes


def _segments(
    entries: Any, categories: dict[int, PanopticCategory], path: Path, record: str
) -> list[PanopticSegment]:
    if not isinstance(entries, list):
        raise DatasetError(path, record, "needs a 'segments_info' list")
    segments, seen = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or not is_int(entry.get("id")) or entry["id"] <= 0:
            raise DatasetError(path, record, f"segment {entry!r}: needs a positive integer 'id'")
        where = f"{record}, segment {entry['id']}"
        if entry["id"] in seen:
            raise DatasetError(path, where, "listed twice (segments cannot overlap: one id per pixel)")
        seen.add(entry["id"])
        category_id = entry.get("category_id")
        if category_id not in categories:
            raise DatasetError(path, where, f"unknown category_id {category_id!r}")
        problem = iscrowd_problem(entry.get("iscrowd", 0))
        if problem is not None:
            raise DatasetError(path, where, problem)
        segments.append(PanopticSegment(entry["id"], category_id, entry.get("iscrowd", 0)))
    return segments


def read_segment_map(image: PanopticImage, json_path: str | Path = "") -> np.ndarray:
    """(H, W) int32 segment ids of `image`'s PNG (0 = VOID), checked against its `segments_info`: every id
    in the PNG is listed and every listed id is in the PNG, and the PNG has the image's size (when known).
    `json_path` names the JSON in messages."""
    record = f"annotation of image {image.image_id}"
    try:
        with Image.open(image.png) as png:
            rgb = np.asarray(png.convert("RGB"))
    except FileNotFoundError as exc:
        raise DatasetError(image.png, record, "the PNG of this annotation does not exist") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(image.png, record, f"unreadable PNG ({exc})") from exc
    if image.height and rgb.shape[:2] != (image.height, image.width):
        raise DatasetError(
            image.png,
            record,
            f"the PNG is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but image {image.image_id} is "
            f"{image.width}x{image.height}",
        )
    ids = PanopticSegmentation.ids_from_rgb(rgb)
    present = set(np.unique(ids).tolist()) - {0}
    listed = {segment.id for segment in image.segments}
    if present - listed:
        missing = sorted(present - listed)
        raise DatasetError(
            image.png, f"{record}, segment {missing[0]}", f"in the PNG but not in {json_path or 'the JSON'}"
        )
    if listed - present:
        missing = sorted(listed - present)
        raise DatasetError(
            json_path or image.png, f"{record}, segment {missing[0]}", f"in the JSON but not in {image.png}"
        )
    return ids


def read_coco_panoptic(
    path: str | Path,
    png_folder: str | Path | None = None,
    image_root: str | Path | None = None,
) -> Dataset:
    """A COCO panoptic data set as instance records (what `instaseg convert --from coco-panoptic` writes as
    COCO): every segment becomes an annotation with its RLE mask, crowd flag and category, and categories
    keep `isthing` (stuff, `isthing: 0`, is what trains a semantic head). `image_root`: the folder the
    images' `file_name`s are relative to (default: the JSON's folder). Bad PNGs or segments raise
    `DatasetError` naming the file and the segment (`read_panoptic_json`, `read_segment_map`)."""
    panoptic = read_panoptic_json(path, png_folder)
    images = []
    next_id = 1
    for image in sorted(panoptic.images.values(), key=lambda item: item.image_id):
        if not image.file_name:
            raise DatasetError(Path(path), f"image id={image.image_id}", "needs 'images' with a 'file_name'")
        ids = read_segment_map(image, path)
        record = ImageRecord(image.image_id, image.file_name, image.height, image.width)
        for segment in image.segments:
            rle = encode_rle((ids == segment.id)[None])[0]
            bbox, area = bbox_and_area(rle)
            record.annotations.append(
                AnnotationRecord(next_id, segment.category_id, rle, bbox, area, segment.iscrowd)
            )
            next_id += 1
        images.append(record)
    categories = [
        CategoryRecord(category.id, category.name, extra={"isthing": int(category.isthing)})
        for category in sorted(panoptic.categories.values(), key=lambda item: item.id)
    ]
    root = Path(image_root) if image_root is not None else Path(path).parent
    return Dataset(images, categories, root)
