"""Reader for semantic label maps: class-index PNGs, where each pixel holds the category id of its class.

    ROOT/images/<name>.png           the image (any suffix in IMAGE_SUFFIXES)
    ROOT/labels/<name>.png           its class map: one channel, each pixel a category id or the ignore index

The folder names and a suffix of the map's stem are parameters. Pixels equal to `ignore_index` (default 0)
are void: no annotation covers them. The categories come from a file (a JSON list of COCO categories, or a
COCO file's `categories`) or from a list of names (ids 1, 2, ... in order). A stuff category (`isthing: 0`,
the default: a semantic map does not separate objects) gives one annotation per image: all its pixels, as
COCO panoptic stores stuff; a thing category (`isthing: 1` in the file) gives one annotation per 8-connected
region. Annotations are never crowd regions. Image ids are 1, 2, ... over the sorted image names (skipped
images keep their number).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from instaseg.data.label_maps import read_paired_maps
from instaseg.data.records import (
    CategoryRecord,
    Dataset,
    DatasetError,
    ProblemLog,
    read_one_channel_png,
    size_problem,
)

__all__ = ["read_categories_file", "read_class_map", "read_semantic_label_maps"]


def read_semantic_label_maps(
    root: str | Path,
    *,
    categories: str | Path | None = None,
    category_names: Sequence[str] | None = None,
    ignore_index: int = 0,
    images_dir: str = "images",
    masks_dir: str = "labels",
    mask_suffix: str = "",
    strict: bool = False,
    decode_images: bool = True,
) -> Dataset:
    """Read images and their class maps under `root` into a `Dataset` (see the module docstring).

    Exactly one of `categories` (a JSON file) and `category_names` (ids 1..K) gives the classes; every
    category keeps `isthing` in `extra`. A bad image or class map (unreadable, another size than its image,
    a value that is neither a category id nor `ignore_index`) skips the image (listed in
    `Dataset.skipped`), or raises `DatasetError` naming the file when `strict`; so does a class map without
    an image. Bad categories or a missing folder always raise `DatasetError`.
    """
    root = Path(root)
    records = _categories(categories, category_names, ignore_index)
    isthing = {category.id: bool(category.extra["isthing"]) for category in records}
    log = ProblemLog(strict)
    images = read_paired_maps(
        root,
        images_dir,
        masks_dir,
        mask_suffix,
        "class map",
        lambda path, height, width: read_class_map(path, height, width, set(isthing), ignore_index),
        lambda class_map: _segments(class_map, ignore_index, isthing),
        log,
        decode_images,
    )
    return Dataset(images, records, root, log.reports)


def _segments(
    class_map: np.ndarray, ignore_index: int, isthing: dict[int, bool]
) -> list[tuple[int, np.ndarray]]:
    """(category id, (H, W) bool mask) of each annotation of one class map, by category id: a stuff class's
    whole region, or each 8-connected region of a thing class (in OpenCV's label order)."""
    segments = []
    for category_id in np.unique(class_map).tolist():
        if category_id == ignore_index:
            continue
        region = class_map == category_id
        if not isthing[category_id]:
            segments.append((category_id, region))
            continue
        count, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
        segments.extend((category_id, labels == k) for k in range(1, count))
    return segments


def read_class_map(
    path: Path, height: int, width: int, category_ids: set[int], ignore_index: int
) -> tuple[np.ndarray | None, str | None]:
    """The (H, W) integer class map at `path`, or None and why it cannot be used: it must have one channel of
    integers (modes L, P, I;16, I; a palette map's values are its palette indices), the image's size, and
    only values that are category ids or `ignore_index`."""
    array, problem, mode = read_one_channel_png(path, "class map", "class indices need one channel")
    if problem is not None:
        return None, problem
    if not np.issubdtype(array.dtype, np.integer):
        return None, f"class map holds {array.dtype} values (mode {mode}); class indices must be integers"
    if (problem := size_problem(array, height, width, "class map")) is not None:
        return None, problem
    unknown = sorted(set(np.unique(array).tolist()) - category_ids - {ignore_index})
    if unknown:
        return None, (
            f"class map holds value(s) {_listed(unknown)} with no category (category ids "
            f"{_listed(sorted(category_ids))}; ignore index {ignore_index})"
        )
    return array, None


def _listed(values: list[int]) -> str:
    return ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")


def _categories(
    path: str | Path | None, names: Sequence[str] | None, ignore_index: int
) -> list[CategoryRecord]:
    """The categories from exactly one of the file `path` and the list `names` (ids 1..K, stuff), checked:
    no category may have the ignore index as its id."""
    if (path is None) == (names is None):
        raise DatasetError(
            path or "semantic label maps",
            "categories",
            "give exactly one of a categories file and a list of category names",
        )
    if names is not None:
        if not names or any(not name.strip() for name in names):
            raise DatasetError(
                "semantic label maps", "categories", f"category names must be non-empty: {names!r}"
            )
        records = [CategoryRecord(k, name.strip(), extra={"isthing": 0}) for k, name in enumerate(names, 1)]
    else:
        records = read_categories_file(path)
    source = path if path is not None else "semantic label maps"
    for category in records:
        if category.id == ignore_index:
            raise DatasetError(
                source,
                f"category id={category.id}",
                f"is the ignore index {ignore_index}: its pixels would be void (choose another ignore index)",
            )
    return records


def read_categories_file(path: str | Path) -> list[CategoryRecord]:
    """Categories from a JSON file: a list of COCO categories (`id`, `name`, optional `isthing`, absent: 0,
    stuff), or an object with such a `categories` list (a COCO file). Raises `DatasetError` naming the file
    and the entry for a file that does not parse, ids that are not unique non-negative integers, a missing
    name, or `isthing` other than 0 and 1."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(path, "categories file", "no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, "categories file", f"not a readable JSON file ({exc})") from exc
    entries = content.get("categories") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DatasetError(
            path, "categories file", "needs a non-empty list of categories (or a 'categories' list)"
        )
    records: list[CategoryRecord] = []
    seen: set[int] = set()
    for index, entry in enumerate(entries):
        where = f"categories[{index}]"
        if not isinstance(entry, dict):
            raise DatasetError(path, where, f"expected an object with 'id' and 'name', got {entry!r}")
        category_id, name, isthing = entry.get("id"), entry.get("name"), entry.get("isthing", 0)
        if type(category_id) is not int or category_id < 0:
            raise DatasetError(path, where, f"'id' must be a non-negative integer, got {category_id!r}")
        if category_id in seen:
            raise DatasetError(path, where, f"duplicate category id {category_id}")
        if not isinstance(name, str) or not name:
            raise DatasetError(path, where, f"needs a non-empty 'name', got {name!r}")
        if isthing not in (0, 1):
            raise DatasetError(path, where, f"'isthing' must be 0 or 1, got {isthing!r}")
        seen.add(category_id)
        extra = {key: value for key, value in entry.items() if key not in ("id", "name", "supercategory")}
        records.append(
            CategoryRecord(
                category_id, name, str(entry.get("supercategory", "")), {**extra, "isthing": int(isthing)}
            )
        )
    return records
