"""Checks on evaluation inputs (COCO ground truth and COCO results) before they reach the COCO matcher.

pycocotools and faster-coco-eval trust their input: an unknown image id, a NaN score or a mask of the wrong
size either crashes deep in C++ or quietly yields a wrong number. Every check here names the file and the
record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instaseg.data import records
from instaseg.data.records import is_int, is_number, polygon_problem, rle_problem

IOU_TYPES = ("segm", "bbox", "boundary")


class EvaluationInputError(ValueError):
    """Ground truth or results that cannot be evaluated; the message names the file and the record."""


def read_json(path: str | Path, what: str) -> Any:
    """Parse the JSON file `path` (`what` says which input it is, for messages)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationInputError(f"{path}: not a valid JSON {what} file ({exc})") from exc


def _check_bbox(bbox: Any, where: str) -> list[float]:
    if not (isinstance(bbox, Sequence) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise EvaluationInputError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h]; got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise EvaluationInputError(f"{where}: 'bbox' has a negative width or height: {list(bbox)}")
    return [float(v) for v in bbox]


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """One instance's COCO segmentation (polygons, compressed or uncompressed RLE) as compressed RLE.

    Returns `{"size": [height, width], "counts": str}`. Raises `EvaluationInputError` naming `where` when the
    segmentation is malformed or its size differs from the image's `(height, width)`; the checks and the
    conversion are the data package's (`instaseg.data.records`).
    """
    if isinstance(segmentation, list):
        problem = polygon_problem(segmentation, height, width)
    else:
        problem = rle_problem(segmentation, height, width)
    if problem is not None:
        raise EvaluationInputError(f"{where}: {problem}")
    return records.segmentation_to_rle(segmentation, height, width)


def _check_list(container: Mapping, key: str, source: str) -> list:
    value = container.get(key)
    if not isinstance(value, list):
        raise EvaluationInputError(f"{source}: missing the '{key}' list of a COCO dataset")
    return value


def check_ground_truth(gt: Any, source: str, iou_type: str) -> None:
    """Raise `EvaluationInputError` unless `gt` is a COCO instances dataset that `iou_type` can evaluate.

    Checks unique integer ids, positive image sizes, references to known images and categories, a finite
    non-negative `area`, a valid `bbox` (bbox evaluation) or a `segmentation` of the image's size (segm and
    boundary evaluation).
    Annotation and image ids must be positive: the COCO matcher (faster-coco-eval) takes annotation ids <= 0
    for "unmatched" (AP 0 or a crash) and fails on negative image ids.
    """
    if iou_type not in IOU_TYPES:
        raise EvaluationInputError(f"iou_type must be one of {IOU_TYPES}; got {iou_type!r}")
    if not isinstance(gt, Mapping):
        hint = " (this looks like a results file)" if isinstance(gt, list) else ""
        raise EvaluationInputError(
            f"{source}: expected a COCO dataset object with 'images', 'annotations' and 'categories'{hint}"
        )
    images = _check_list(gt, "images", source)
    annotations = _check_list(gt, "annotations", source)
    categories = _check_list(gt, "categories", source)
    if not images:
        raise EvaluationInputError(f"{source}: holds no images; nothing to evaluate")
    if not annotations:
        raise EvaluationInputError(f"{source}: holds no annotations; every AP would be undefined")

    sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(images):
        where = f"{source}: images[{index}]"
        if not isinstance(image, Mapping) or not is_int(image.get("id")):
            raise EvaluationInputError(f"{where}: needs an integer 'id'")
        where = f"{source}: image {image['id']}"
        if image["id"] <= 0:
            raise EvaluationInputError(f"{where}: image ids must be positive (the COCO matcher needs them)")
        if image["id"] in sizes:
            raise EvaluationInputError(f"{where}: duplicate image id")
        height, width = image.get("height"), image.get("width")
        if not (is_int(height) and is_int(width) and height > 0 and width > 0):
            raise EvaluationInputError(f"{where}: needs positive integer 'height' and 'width'")
        sizes[image["id"]] = (height, width)

    category_ids: set[int] = set()
    for index, category in enumerate(categories):
        if not isinstance(category, Mapping) or not is_int(category.get("id")):
            raise EvaluationInputError(f"{source}: categories[{index}] needs an integer 'id'")
        if category["id"] in category_ids:
            raise EvaluationInputError(f"{source}: category {category['id']}: duplicate category id")
        category_ids.add(category["id"])

    annotation_ids: set[int] = set()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, Mapping) or not is_int(annotation.get("id")):
            raise EvaluationInputError(f"{source}: annotations[{index}] needs an integer 'id'")
        where = f"{source}: annotation {annotation['id']}"
        if annotation["id"] <= 0:
            raise EvaluationInputError(
                f"{where}: annotation ids must be positive (the COCO matcher takes ids <= 0 for 'unmatched')"
            )
        if annotation["id"] in annotation_ids:
            raise EvaluationInputError(f"{where}: duplicate annotation id")
        annotation_ids.add(annotation["id"])
        if annotation.get("image_id") not in sizes:
            raise EvaluationInputError(f"{where}: image_id {annotation.get('image_id')!r} is not in 'images'")
        if annotation.get("category_id") not in category_ids:
            raise EvaluationInputError(
                f"{where}: category_id {annotation.get('category_id')!r} is not in 'categories'"
            )
        if annotation.get("iscrowd", 0) not in (0, 1):
            raise EvaluationInputError(
                f"{where}: 'iscrowd' must be 0 or 1; got {annotation.get('iscrowd')!r}"
            )
        area = annotation.get("area")
        if not (is_number(area) and area >= 0):
            raise EvaluationInputError(f"{where}: needs a finite, non-negative 'area'; got {area!r}")
        if iou_type == "bbox":
            if "bbox" not in annotation:
                raise EvaluationInputError(f"{where}: missing 'bbox' (needed for bbox evaluation)")
            _check_bbox(annotation["bbox"], where)
        else:
            if "segmentation" not in annotation:
                raise EvaluationInputError(
                    f"{where}: missing 'segmentation' (needed for {iou_type} evaluation)"
                )
            segmentation_to_rle(annotation["segmentation"], *sizes[annotation["image_id"]], where)


def normalize_results(
    results: Any, gt: Mapping, iou_type: str, source: str, allow_empty: bool = False
) -> list[dict]:
    """Validated copies of COCO result records for the COCO matcher; `gt` must pass `check_ground_truth`.

    Each record needs `image_id` and `category_id` known to `gt`, a finite `score`, and `segmentation` (segm,
    boundary: polygons or RLE of the image's size, returned as compressed RLE with `counts` str) or `bbox`
    (bbox: `[x, y, w, h]`). An optional `bbox` is kept; it must then be on every record, because COCO's
    results loader looks at the first record only to decide the format. Other keys are dropped. An empty
    list raises unless `allow_empty` (a model that detects nothing legitimately scores 0).
    """
    if not isinstance(results, list):
        hint = " (this looks like a COCO dataset, not results)" if isinstance(results, Mapping) else ""
        raise EvaluationInputError(f"{source}: expected a list of COCO result records{hint}")
    if not results and not allow_empty:
        raise EvaluationInputError(f"{source}: holds no detections; refusing to report an AP of 0")
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    with_bbox = bool(results) and isinstance(results[0], Mapping) and "bbox" in results[0]

    normalized = []
    for index, record in enumerate(results):
        where = f"{source}: record {index}"
        if not isinstance(record, Mapping):
            raise EvaluationInputError(f"{where}: expected an object, got {type(record).__name__}")
        for key in ("image_id", "category_id", "score"):
            if key not in record:
                raise EvaluationInputError(f"{where}: missing '{key}'")
        image_id, category_id, score = record["image_id"], record["category_id"], record["score"]
        where = f"{where} (image_id {image_id!r})"
        if image_id not in sizes:
            raise EvaluationInputError(f"{where}: image_id {image_id!r} is not in the ground truth")
        if category_id not in category_ids:
            raise EvaluationInputError(f"{where}: category_id {category_id!r} is not in the ground truth")
        if not is_number(score):
            raise EvaluationInputError(f"{where}: 'score' must be a finite number; got {score!r}")
        out = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if iou_type == "bbox" or with_bbox:
            if "bbox" not in record:
                reason = "needed for bbox evaluation" if iou_type == "bbox" else "record 0 has one"
                raise EvaluationInputError(f"{where}: missing 'bbox' ({reason})")
            out["bbox"] = _check_bbox(record["bbox"], where)
        if iou_type != "bbox":
            if "segmentation" not in record:
                raise EvaluationInputError(
                    f"{where}: missing 'segmentation' (needed for {iou_type} evaluation)"
                )
            out["segmentation"] = segmentation_to_rle(record["segmentation"], *sizes[image_id], where)
        normalized.append(out)
    return normalized
