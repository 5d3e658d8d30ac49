"""COCO instances JSON: reader (polygons, compressed and uncompressed RLE, iscrowd) and atomic writer.

Image `file_name`s are relative to an image root, by default the JSON file's own folder; the writer rewrites
them relative to the folder of the file it writes, so a written JSON always finds its images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from instaseg.data.records import (
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    ProblemLog,
    bbox_and_area,
    check_image,
)
from instaseg.io.atomic import atomic_write
from instaseg.io.images import ImageReadError
from instaseg.structures.coco_fields import (
    area_problem,
    bbox_problem,
    is_int,
    iscrowd_problem,
    segmentation_problem,
    segmentation_to_rle,
)

__all__ = ["read_coco", "write_coco"]

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
_CATEGORY_KEYS = ("id", "name", "supercategory")


def read_coco(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    strict: bool = False,
    check_images: bool = True,
    decode_images: bool = True,
) -> Dataset:
    """Read a COCO instances JSON file into a `Dataset`.

    `image_root` is the folder `file_name`s are relative to (default: the JSON's folder). With `check_images`,
    every image file must exist with the height and width the JSON gives (read from its header); with
    `decode_images` as well, it is decoded in full so a truncated file is found. Uncompressed RLE becomes
    compressed RLE; polygons stay polygons. A missing `bbox` or `area` is computed from the mask.
    Bad records are skipped and listed in `Dataset.skipped`, or raise `DatasetError` at once when `strict`.
    """
    path = Path(path)
    data = _load_json(path)
    log = ProblemLog(strict)
    root = Path(image_root) if image_root is not None else path.parent
    categories = _read_categories(data["categories"], path, log)
    images, skipped_image_ids = _read_images(data["images"], path, root, log, check_images, decode_images)
    _read_annotations(data["annotations"], path, images, {c.id for c in categories}, skipped_image_ids, log)
    extra = {key: value for key, value in data.items() if key not in ("images", "annotations", "categories")}
    return Dataset(list(images.values()), categories, root, log.reports, extra)


def write_coco(dataset: Dataset, path: str | Path, image_root: str | Path | None = None) -> None:
    """Write `dataset` as COCO instances JSON at `path`, atomically (a temporary file, then `os.replace`).

    Relative `file_name`s are rewritten relative to `image_root` (default: the folder of `path`); RLE `counts`
    are written as str. Raises `ValueError` for a dataset that would make an invalid file (duplicate ids,
    annotations of unknown categories).
    """
    path = Path(path)
    _check_writable(dataset, path)
    image_root = Path(image_root) if image_root is not None else path.parent
    images, annotations = [], []
    for image in dataset.images:
        images.append(
            {
                "id": image.id,
                "file_name": _relative_file_name(dataset.root, image.file_name, image_root),
                "height": image.height,
                "width": image.width,
                **image.extra,
            }
        )
        for annotation in image.annotations:
            annotations.append(
                {
                    "id": annotation.id,
                    "image_id": image.id,
                    "category_id": annotation.category_id,
                    "segmentation": _json_segmentation(annotation.segmentation),
                    "area": annotation.area,
                    "bbox": list(annotation.bbox),
                    "iscrowd": annotation.iscrowd,
                    **annotation.extra,
                }
            )
    categories = [
        {"id": c.id, "name": c.name, "supercategory": c.supercategory, **c.extra} for c in dataset.categories
    ]
    payload = {**dataset.extra, "images": images, "annotations": annotations, "categories": categories}
    _write_json_atomic(payload, path)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(path, "file", "no such file")
    try:
        with path.open("rb") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, "file", f"not readable as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "file", "a COCO file holds a JSON object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(path, "file", f"not a COCO instances file: no '{key}' list")
    return data


def _read_categories(entries: list[Any], path: Path, log: ProblemLog) -> list[CategoryRecord]:
    categories: dict[int, CategoryRecord] = {}
    for index, entry in enumerate(entries):
        record = _describe("category", entry, index)
        if (
            not isinstance(entry, dict)
            or not is_int(entry.get("id"))
            or not isinstance(entry.get("name"), str)
        ):
            log.report(path, record, "a category needs an integer 'id' and a string 'name'")
            continue
        if entry["id"] in categories:
            log.report(path, record, f"duplicate category id {entry['id']}")
            continue
        extra = {key: value for key, value in entry.items() if key not in _CATEGORY_KEYS}
        categories[entry["id"]] = CategoryRecord(
            entry["id"], entry["name"], entry.get("supercategory", ""), extra
        )
    return list(categories.values())


def _read_images(
    entries: list[Any], path: Path, root: Path, log: ProblemLog, check_images: bool, decode_images: bool
) -> tuple[dict[int, ImageRecord], set[int]]:
    """Valid images by id, and the ids of images that were skipped (their annotations are reported too)."""
    images: dict[int, ImageRecord] = {}
    skipped: set[int] = set()
    for index, entry in enumerate(entries):
        record = _describe("image", entry, index)
        problem = _image_entry_problem(entry, images)
        if problem is None and check_images:
            problem = _image_file_problem(
                root / entry["file_name"], entry["height"], entry["width"], decode_images
            )
        if problem is not None:
            log.report(path, record, f"{problem}; the image is skipped")
            if isinstance(entry, dict) and is_int(entry.get("id")) and entry["id"] not in images:
                skipped.add(entry["id"])
            continue
        extra = {key: value for key, value in entry.items() if key not in _IMAGE_KEYS}
        images[entry["id"]] = ImageRecord(
            entry["id"], entry["file_name"], entry["height"], entry["width"], [], extra
        )
    return images, skipped


def _image_entry_problem(entry: Any, images: dict[int, ImageRecord]) -> str | None:
    if not isinstance(entry, dict) or not is_int(entry.get("id")):
        return "an image needs an integer 'id'"
    if entry["id"] in images:
        return f"duplicate image id {entry['id']}"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        return "an image needs a non-empty string 'file_name'"
    if not all(is_int(entry.get(key)) and entry[key] > 0 for key in ("height", "width")):
        return "an image needs positive integer 'height' and 'width'"
    return None


def _image_file_problem(image_path: Path, height: int, width: int, decode: bool) -> str | None:
    try:
        file_size = check_image(image_path, decode)
    except ImageReadError as exc:
        return str(exc)
    if file_size != (height, width):
        return f"{image_path} is {file_size[0]}x{file_size[1]} (HxW) but the JSON says {height}x{width}"
    return None


def _read_annotations(
    entries: list[Any],
    path: Path,
    images: dict[int, ImageRecord],
    category_ids: set[int],
    skipped_image_ids: set[int],
    log: ProblemLog,
) -> None:
    """Validate each annotation and append it to its image's `annotations`."""
    seen_ids: set[int] = set()
    for index, entry in enumerate(entries):
        record = _describe("annotation", entry, index)
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            log.report(path, record, "an annotation needs an integer 'id'")
            continue
        if entry["id"] in seen_ids:
            log.report(path, record, f"duplicate annotation id {entry['id']}")
            continue
        seen_ids.add(entry["id"])
        image_id = entry.get("image_id")
        image = images.get(image_id) if is_int(image_id) else None
        if image is None:
            if is_int(image_id) and image_id in skipped_image_ids:
                log.report(path, record, f"its image id {image_id} was skipped")
            else:
                log.report(path, record, f"points at missing image id {image_id!r}")
            continue
        annotation = _annotation(entry, image, category_ids)
        if isinstance(annotation, str):
            log.report(path, record, annotation)
            continue
        image.annotations.append(annotation)


def _annotation(entry: dict[str, Any], image: ImageRecord, category_ids: set[int]) -> AnnotationRecord | str:
    """The annotation record of a COCO entry on `image`, or why it cannot be used."""
    category_id = entry.get("category_id")
    if not is_int(category_id) or category_id not in category_ids:
        return f"points at missing category id {category_id!r}"
    iscrowd = entry.get("iscrowd", 0)
    segmentation = entry.get("segmentation")
    problem = iscrowd_problem(iscrowd) or segmentation_problem(segmentation, image.height, image.width)
    if problem is not None:
        return problem
    rle = segmentation_to_rle(segmentation, image.height, image.width)
    measured_bbox, measured_area = bbox_and_area(rle)
    if measured_area == 0:
        return "the segmentation covers no pixel"
    bbox = entry.get("bbox", measured_bbox)
    area = entry.get("area", measured_area)
    problem = bbox_problem(bbox) or area_problem(area)
    if problem is not None:
        return problem
    extra = {key: value for key, value in entry.items() if key not in _ANNOTATION_KEYS}
    return AnnotationRecord(
        id=entry["id"],
        category_id=category_id,
        segmentation=segmentation if isinstance(segmentation, list) else rle,
        bbox=tuple(bbox),
        area=area,
        iscrowd=iscrowd,
        extra=extra,
    )


def _check_writable(dataset: Dataset, path: Path) -> None:
    image_ids: set[int] = set()
    annotation_ids: set[int] = set()
    category_ids = {category.id for category in dataset.categories}
    if len(category_ids) != len(dataset.categories):
        raise DatasetError(path, "categories", "duplicate category ids; refusing to write")
    for image in dataset.images:
        if image.id in image_ids:
            raise DatasetError(path, f"image id={image.id}", "duplicate image id; refusing to write")
        image_ids.add(image.id)
        for annotation in image.annotations:
            record = f"annotation id={annotation.id}"
            if annotation.id in annotation_ids:
                raise DatasetError(path, record, "duplicate annotation id; refusing to write")
            if annotation.category_id not in category_ids:
                raise DatasetError(
                    path, record, f"unknown category id {annotation.category_id}; refusing to write"
                )
            annotation_ids.add(annotation.id)


def _relative_file_name(root: Path, file_name: str, image_root: Path) -> str:
    if Path(file_name).is_absolute():
        return file_name
    absolute = os.path.abspath(root / file_name)  # abspath, not resolve: keep symlinked folders as they are
    # The folder the name is relative to, though, is resolved: the `..` steps of the name are taken from the
    # real folder, so a JSON written into a symlinked folder (runs/ on another disk) still finds its images.
    return Path(os.path.relpath(absolute, os.path.realpath(image_root))).as_posix()


def _json_segmentation(segmentation: Any) -> Any:
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), bytes):
        return {**segmentation, "counts": segmentation["counts"].decode("ascii")}
    return segmentation


def _write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write JSON to a temporary file next to `path`, then rename it over `path`: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as file:
        json.dump(payload, file, separators=(",", ":"))


def _describe(kind: str, entry: Any, index: int) -> str:
    """How a report names a JSON entry: by id when it has one, always with its position in the list."""
    if isinstance(entry, dict) and "id" in entry:
        return f"{kind} id={entry['id']!r} (index {index})"
    return f"{kind} at index {index}"
