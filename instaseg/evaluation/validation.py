"""Checks on evaluation inputs (COCO ground truth and COCO results) before they reach the COCO matcher.

pycocotools, faster-coco-eval and hotcoco trust their input: an unknown image id, a NaN score or a mask of the
wrong size either crashes deep in compiled code or quietly yields a wrong number. Every check here names the
file and the record; the rules are `instaseg.structures.coco_fields`' (one home for readers and checkers).

Evaluation sets hold 10^5-10^6 records, so the checks run column-wise first (one pass per field, the RLE runs
of all masks decoded together by `instaseg.structures.masks.rle_runs`); only when a column fails does the
record-by-record pass run, to find and name the first bad record. The columns are kept (`GroundTruth`,
`Results`) for the metrics that need them, so no mask is parsed twice.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instaseg.structures.coco_fields import (
    area_problem,
    bbox_problem,
    is_int,
    is_number,
    iscrowd_problem,
    positive_id_problem,
    segmentation_problem,
    segmentation_to_rle,
)
from instaseg.structures.masks import rle_runs

IOU_TYPES = ("segm", "bbox", "boundary")


class EvaluationInputError(ValueError):
    """Ground truth or results that cannot be evaluated; the message names the file and the record."""


class _ColumnFailed(Exception):
    """A column-wise check found something; the record-by-record pass names it."""


@dataclass(frozen=True)
class MaskColumns:
    """N compressed RLE masks of checked input: `counts` (str) of each mask (its size is its image's) and
    their runs: those of mask i are `runs[offsets[i]:offsets[i + 1]]`, background first, column-major."""

    counts: list[str]
    runs: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """A checked COCO ground-truth dataset, column-wise. Images in `dataset['images']` order; annotations in
    `dataset['annotations']` order, `image_index` into the images. `masks` is None for bbox evaluation."""

    dataset: Mapping
    source: str
    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    category_ids: list[int]
    category_names: dict[int, str]
    category_isthing: dict[int, bool]  # the categories' `isthing` (COCO panoptic; absent: 1, a thing)
    annotation_ids: np.ndarray
    image_index: np.ndarray
    annotation_category_ids: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    masks: MaskColumns | None

    def index_of_images(self, image_ids: np.ndarray) -> np.ndarray:
        """Positions in `image_ids` order of the given (known) image ids."""
        order = np.argsort(self.image_ids, kind="stable")
        return order[np.searchsorted(self.image_ids, image_ids, sorter=order)]


@dataclass(frozen=True)
class Results:
    """Checked COCO results, column-wise, plus `records`: the records as the COCO matcher takes them
    (segmentation as compressed RLE; the caller's own dicts when they need no change)."""

    records: list[dict]
    source: str
    image_index: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    masks: MaskColumns | None
    box_area: np.ndarray | None  # (N,) w * h of the records' `bbox`, when they carry one

    def __len__(self) -> int:
        return len(self.records)


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


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise EvaluationInputError(f"iou_type must be one of {IOU_TYPES}; got {iou_type!r}")


def _check_list(container: Mapping, key: str, source: str) -> list:
    value = container.get(key)
    if not isinstance(value, list):
        raise EvaluationInputError(f"{source}: missing the '{key}' list of a COCO dataset")
    return value


def _column(records: list, key: str, default: Any = None) -> list:
    return [record.get(key, default) for record in records]


def _ints(values: list) -> np.ndarray:
    """A column that must hold JSON integers only, as int64."""
    if values and set(map(type, values)) != {int}:
        raise _ColumnFailed
    return np.array(values, dtype=np.int64)


def _finite(values: list, minimum: float | None = None) -> np.ndarray:
    """A column that must hold finite JSON numbers only (>= `minimum` if given), as float64."""
    if values and not set(map(type, values)) <= {int, float}:
        raise _ColumnFailed
    array = np.array(values, dtype=np.float64)
    if not np.isfinite(array).all() or (minimum is not None and (array < minimum).any()):
        raise _ColumnFailed
    return array


def _bboxes(values: list) -> np.ndarray:
    """(N, 4) float64 COCO boxes of a column that must hold valid ones (`bbox_problem`)."""
    if values and (set(map(type, values)) - {list, tuple} or set(map(len, values)) != {4}):
        raise _ColumnFailed
    array = _finite(list(itertools.chain.from_iterable(values))).reshape(-1, 4)
    if (array[:, 2:] < 0).any():
        raise _ColumnFailed
    return array


def _rle_masks(segmentations: list, heights: np.ndarray, widths: np.ndarray) -> MaskColumns:
    """Column-wise check and runs of segmentations that are all compressed RLE of their image's size."""
    if set(map(type, segmentations)) - {dict}:
        raise _ColumnFailed
    try:
        sizes = [segmentation["size"] for segmentation in segmentations]
        counts = [segmentation["counts"] for segmentation in segmentations]
        if set(map(type, sizes)) - {list} or set(map(len, sizes)) - {2} or set(map(type, counts)) - {str}:
            raise _ColumnFailed
        rle_heights = _ints([size[0] for size in sizes])
        rle_widths = _ints([size[1] for size in sizes])
    except (KeyError, TypeError) as exc:
        raise _ColumnFailed from exc
    if (rle_heights != heights).any() or (rle_widths != widths).any():
        raise _ColumnFailed
    runs, offsets, well_formed = rle_runs(counts)
    if not well_formed.all() or (runs.size and runs.min() < 0):
        raise _ColumnFailed
    covered = np.add.reduceat(runs, offsets[:-1]) if runs.size else np.zeros(0, dtype=np.int64)
    if (covered != heights * widths).any():
        raise _ColumnFailed
    return MaskColumns(counts, runs, offsets)


def _converted_masks(segmentations: list[Any], heights: np.ndarray, widths: np.ndarray) -> MaskColumns:
    """Masks of checked segmentations of any COCO form (polygons and uncompressed RLE are converted)."""
    counts = [
        segmentation_to_rle(segmentation, int(height), int(width))["counts"]
        for segmentation, height, width in zip(segmentations, heights, widths, strict=True)
    ]
    runs, offsets, _ = rle_runs(counts)
    return MaskColumns(counts, runs, offsets)


def check_ground_truth(gt: Any, source: str, iou_type: str) -> GroundTruth:
    """`gt` as checked `GroundTruth`; raises `EvaluationInputError` unless it is a COCO instances dataset that
    `iou_type` can evaluate.

    Checks unique integer ids, categories' `isthing` 0 or 1 where given, positive image sizes, references to
    known images and categories, a finite
    non-negative `area`, `iscrowd` 0 or 1, a valid `bbox` (bbox evaluation) or a `segmentation` of the image's
    size (segm and boundary evaluation). Image and annotation ids must be positive: COCO matchers take
    annotation ids <= 0 for "unmatched" (AP 0 or a crash) and fail on negative image ids.
    """
    _check_iou_type(iou_type)
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
    try:
        return _ground_truth_columns(gt, images, annotations, categories, source, iou_type)
    except _ColumnFailed:
        _ground_truth_records(images, annotations, categories, source, iou_type)
    # Every record passed one by one: the columns failed on a container they do not take (a Mapping that is
    # not a dict); plain copies pass.
    images, annotations, categories = ([dict(x) for x in part] for part in (images, annotations, categories))
    plain = {**gt, "images": images, "annotations": annotations, "categories": categories}
    try:
        return _ground_truth_columns(plain, images, annotations, categories, source, iou_type)
    except _ColumnFailed:
        raise EvaluationInputError(f"{source}: cannot be evaluated (unsupported field types)") from None


def _ground_truth_columns(
    gt: Mapping, images: list, annotations: list, categories: list, source: str, iou_type: str
) -> GroundTruth:
    if set(map(type, images)) - {dict} or set(map(type, annotations)) - {dict}:
        raise _ColumnFailed
    if set(map(type, categories)) - {dict}:
        raise _ColumnFailed
    image_ids = _ints(_column(images, "id"))
    heights, widths = _ints(_column(images, "height")), _ints(_column(images, "width"))
    if (image_ids <= 0).any() or np.unique(image_ids).size != image_ids.size:
        raise _ColumnFailed
    if (heights <= 0).any() or (widths <= 0).any():
        raise _ColumnFailed
    category_ids = _ints(_column(categories, "id"))
    if np.unique(category_ids).size != category_ids.size:
        raise _ColumnFailed
    if any(isthing not in (0, 1) for isthing in _column(categories, "isthing", 1)):
        raise _ColumnFailed
    annotation_ids = _ints(_column(annotations, "id"))
    if (annotation_ids <= 0).any() or np.unique(annotation_ids).size != annotation_ids.size:
        raise _ColumnFailed
    annotation_images = _ints(_column(annotations, "image_id"))
    annotation_categories = _ints(_column(annotations, "category_id"))
    if (
        not np.isin(annotation_images, image_ids).all()
        or not np.isin(annotation_categories, category_ids).all()
    ):
        raise _ColumnFailed
    iscrowd = _ints(_column(annotations, "iscrowd", 0))
    if ((iscrowd != 0) & (iscrowd != 1)).any():
        raise _ColumnFailed
    area = _finite(_column(annotations, "area"), minimum=0)
    order = np.argsort(image_ids, kind="stable")
    image_index = order[np.searchsorted(image_ids, annotation_images, sorter=order)]
    masks = None
    if iou_type == "bbox":
        _bboxes(_column(annotations, "bbox"))
    else:
        segmentations = _column(annotations, "segmentation")
        if None in segmentations:
            raise _ColumnFailed
        masks = _rle_masks_or_checked(segmentations, heights[image_index], widths[image_index])
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    isthing = {int(c["id"]): bool(c.get("isthing", 1)) for c in categories}
    return GroundTruth(
        dataset=gt,
        source=source,
        image_ids=image_ids,
        heights=heights,
        widths=widths,
        category_ids=sorted(names),
        category_names=names,
        category_isthing=isthing,
        annotation_ids=annotation_ids,
        image_index=image_index,
        annotation_category_ids=annotation_categories,
        iscrowd=iscrowd,
        area=area,
        masks=masks,
    )


def _rle_masks_or_checked(segmentations: list, heights: np.ndarray, widths: np.ndarray) -> MaskColumns:
    """Masks of segmentations in any form: compressed RLE column-wise; when other forms are present, each of
    those is checked by the rules first (polygons, uncompressed RLE)."""
    try:
        return _rle_masks(segmentations, heights, widths)
    except _ColumnFailed:
        for segmentation, height, width in zip(segmentations, heights, widths, strict=True):
            if segmentation_problem(segmentation, int(height), int(width)) is not None:
                raise
        return _converted_masks(segmentations, heights, widths)


def _ground_truth_records(
    images: list, annotations: list, categories: list, source: str, iou_type: str
) -> None:
    """The record-by-record pass: raises `EvaluationInputError` naming the first bad record."""
    sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(images):
        where = f"{source}: images[{index}]"
        if not isinstance(image, Mapping) or not is_int(image.get("id")):
            raise EvaluationInputError(f"{where}: needs an integer 'id'")
        where = f"{source}: image {image['id']}"
        problem = positive_id_problem(image["id"], "image")
        if problem is not None:
            raise EvaluationInputError(f"{where}: {problem}")
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
        if category.get("isthing", 1) not in (0, 1):
            raise EvaluationInputError(
                f"{source}: category {category['id']}: 'isthing' must be 0 or 1, got {category['isthing']!r}"
            )
        category_ids.add(category["id"])

    annotation_ids: set[int] = set()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, Mapping) or not is_int(annotation.get("id")):
            raise EvaluationInputError(f"{source}: annotations[{index}] needs an integer 'id'")
        where = f"{source}: annotation {annotation['id']}"
        problem = positive_id_problem(annotation["id"], "annotation")
        if problem is not None:
            raise EvaluationInputError(f"{where}: {problem}")
        if annotation["id"] in annotation_ids:
            raise EvaluationInputError(f"{where}: duplicate annotation id")
        annotation_ids.add(annotation["id"])
        image_id = annotation.get("image_id")
        if not is_int(image_id) or image_id not in sizes:
            raise EvaluationInputError(f"{where}: image_id {image_id!r} is not in 'images'")
        category_id = annotation.get("category_id")
        if not is_int(category_id) or category_id not in category_ids:
            raise EvaluationInputError(f"{where}: category_id {category_id!r} is not in 'categories'")
        problem = iscrowd_problem(annotation.get("iscrowd", 0)) or area_problem(annotation.get("area"))
        if problem is not None:
            raise EvaluationInputError(f"{where}: {problem}")
        if iou_type == "bbox":
            if "bbox" not in annotation:
                raise EvaluationInputError(f"{where}: missing 'bbox' (needed for bbox evaluation)")
            problem = bbox_problem(annotation["bbox"])
        else:
            if "segmentation" not in annotation:
                raise EvaluationInputError(
                    f"{where}: missing 'segmentation' (needed for {iou_type} evaluation)"
                )
            problem = segmentation_problem(annotation["segmentation"], *sizes[image_id])
        if problem is not None:
            raise EvaluationInputError(f"{where}: {problem}")


def check_results(
    results: Any, gt: GroundTruth, iou_type: str, source: str, allow_empty: bool = False
) -> Results:
    """Checked COCO `results` against the checked ground truth `gt`, column-wise (see `Results`).

    Each record needs `image_id` and `category_id` known to `gt`, a finite `score`, and `segmentation` (segm,
    boundary: polygons or RLE of the image's size) or `bbox` (bbox: `[x, y, w, h]`). An optional `bbox` is
    kept; it must then be on every record, because COCO's results loader looks at the first record only to
    decide the format (and then takes a detection's `area` from it). Other keys are dropped. An empty list
    raises unless `allow_empty` (a model that detects nothing legitimately scores 0).
    """
    _check_iou_type(iou_type)
    if not isinstance(results, list):
        hint = " (this looks like a COCO dataset, not results)" if isinstance(results, Mapping) else ""
        raise EvaluationInputError(f"{source}: expected a list of COCO result records{hint}")
    if not results and not allow_empty:
        raise EvaluationInputError(f"{source}: holds no detections; refusing to report an AP of 0")
    with_bbox = bool(results) and isinstance(results[0], Mapping) and "bbox" in results[0]
    try:
        return _results_columns(results, gt, iou_type, source, with_bbox)
    except _ColumnFailed:
        records = _results_records(results, gt, iou_type, source, with_bbox)
        return _results_columns(records, gt, iou_type, source, with_bbox)


def _results_columns(results: list, gt: GroundTruth, iou_type: str, source: str, with_bbox: bool) -> Results:
    if results and set(map(type, results)) - {dict}:
        raise _ColumnFailed
    try:
        image_ids = _ints([record["image_id"] for record in results])
        category_ids = _ints([record["category_id"] for record in results])
        scores = _finite([record["score"] for record in results])
        segmentations = [record["segmentation"] for record in results] if iou_type != "bbox" else None
        bboxes = [record["bbox"] for record in results] if iou_type == "bbox" or with_bbox else None
    except KeyError as exc:
        raise _ColumnFailed from exc
    if not np.isin(image_ids, gt.image_ids).all() or not np.isin(category_ids, gt.category_ids).all():
        raise _ColumnFailed
    image_index = gt.index_of_images(image_ids)
    box_area = None
    if bboxes is not None:
        boxes = _bboxes(bboxes)
        box_area = boxes[:, 2] * boxes[:, 3]
    masks = None
    if segmentations is not None:
        masks = _rle_masks(segmentations, gt.heights[image_index], gt.widths[image_index])
    wanted = ("image_id", "category_id", "score")
    wanted += ("segmentation",) * (segmentations is not None) + ("bbox",) * (bboxes is not None)
    records = results
    if results and set(map(len, results)) != {len(wanted)}:  # other keys: copies with the COCO ones only
        records = [{key: record[key] for key in wanted} for record in results]
    return Results(records, source, image_index, category_ids, scores, masks, box_area)


def _results_records(
    results: list, gt: GroundTruth, iou_type: str, source: str, with_bbox: bool
) -> list[dict]:
    """The record-by-record pass: normalised copies, or `EvaluationInputError` naming the first bad record."""
    sizes = {
        int(image_id): (int(h), int(w))
        for image_id, h, w in zip(gt.image_ids, gt.heights, gt.widths, strict=True)
    }
    category_ids = set(gt.category_ids)
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
        if not is_int(image_id) or image_id not in sizes:
            raise EvaluationInputError(f"{where}: image_id {image_id!r} is not in the ground truth")
        if not is_int(category_id) or category_id not in category_ids:
            raise EvaluationInputError(f"{where}: category_id {category_id!r} is not in the ground truth")
        if not is_number(score):
            raise EvaluationInputError(f"{where}: 'score' must be a finite number; got {score!r}")
        out = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if iou_type == "bbox" or with_bbox:
            if "bbox" not in record:
                reason = "needed for bbox evaluation" if iou_type == "bbox" else "record 0 has one"
                raise EvaluationInputError(f"{where}: missing 'bbox' ({reason})")
            problem = bbox_problem(record["bbox"])
            if problem is not None:
                raise EvaluationInputError(f"{where}: {problem}")
            out["bbox"] = [float(v) for v in record["bbox"]]
        if iou_type != "bbox":
            if "segmentation" not in record:
                raise EvaluationInputError(
                    f"{where}: missing 'segmentation' (needed for {iou_type} evaluation)"
                )
            problem = segmentation_problem(record["segmentation"], *sizes[image_id])
            if problem is not None:
                raise EvaluationInputError(f"{where}: {problem}")
            out["segmentation"] = segmentation_to_rle(record["segmentation"], *sizes[image_id])
        normalized.append(out)
    return normalized


def normalize_results(
    results: Any, gt: Mapping, iou_type: str, source: str, allow_empty: bool = False
) -> list[dict]:
    """Validated copies of COCO result records for the COCO matcher (see `check_results`): `image_id`,
    `category_id`, `score` (float), `segmentation` as compressed RLE with `counts` str (segm, boundary) and
    `bbox` when given. `gt` is a COCO dataset dict; it is checked too."""
    checked = check_ground_truth(gt, "ground truth", iou_type)
    columns = check_results(results, checked, iou_type, source, allow_empty)
    normalized = []
    for index, record in enumerate(columns.records):
        out = {"image_id": record["image_id"], "category_id": record["category_id"]}
        out["score"] = float(record["score"])
        if "bbox" in record:
            out["bbox"] = [float(v) for v in record["bbox"]]
        if columns.masks is not None:
            height, width = (
                checked.heights[columns.image_index[index]],
                checked.widths[columns.image_index[index]],
            )
            out["segmentation"] = {"size": [int(height), int(width)], "counts": columns.masks.counts[index]}
        normalized.append(out)
    return normalized
