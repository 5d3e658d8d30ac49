"""Label Studio: tasks with pre-annotations (brush RLE or polygon results) out, its JSON export back in.

Label Studio's image results are in its own units: polygon `points` are `[x, y]` in percent of the image's
width and height (0-100, continuous, as COCO polygons scaled by 100 / W and 100 / H), and a brush result's
`value.rle` is its "brush RLE": the `(H, W, 4)` RGBA mask layer, row-major, run-length packed (see
`encode_brush_rle`). instaseg writes a mask as the value 255 on all four channels (as Label Studio's own
converter does) and reads any pixel whose alpha is non-zero as part of the mask, so brush round trips are
lossless. Polygon round trips keep every vertex to within float rounding (1e-9 px); masks come back as the
same pixels except holes, which polygons cannot carry (`instaseg.structures.masks.bitmap_to_polygons`), and
an instance of several separate parts becomes one polygon region per part (Label Studio has no multi-part
polygon).

Images are named in tasks as Label Studio's local-files URLs, `/data/local-files/?d=<path>`, with the path
relative to the folder Label Studio serves (its `LOCAL_FILES_DOCUMENT_ROOT`); the reader maps them back to
files under `image_root`. Other URLs (uploads, http) are matched by their last path part, without the
8-character prefix Label Studio gives uploaded files when no file has the full name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np

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
from instaseg.structures.coco_fields import is_int, polygon_problem
from instaseg.structures.masks import Masks, encode_rle

__all__ = [
    "LOCAL_FILES_PREFIX",
    "RESULT_TYPES",
    "decode_brush_rle",
    "encode_brush_rle",
    "label_config",
    "read_label_studio",
    "tasks_from_dataset",
    "write_label_studio_tasks",
]

LOCAL_FILES_PREFIX = "/data/local-files/?d="
# The result types that carry instance masks; any other type in an annotation is refused (see the reader).
RESULT_TYPES = ("brushlabels", "polygonlabels")
# Brush RLE header: a 32-bit value count, a 5-bit word size - 1 and four 4-bit run-length field sizes - 1.
_WORD_BITS = 8
_RUN_FIELD_BITS = (3, 4, 8, 16)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")

# The brush codec is written here by hand (numpy only): its one maintained implementation ships inside
# label-studio-sdk, which pins opencv-python-headless < 4.13, pyjwt, requests-mock and nltk and pulls pandas,
# lxml and some twenty more packages; label-studio-converter (last release 2024) pulls pandas and nltk; and
# label-studio-brush-rle-rs is a single-author 0.1 binary wheel without a licence. The format is thi.ng's
# rle-pack, which Label Studio's editor uses; tests check it against an encoding made by label-studio-sdk.


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> Label Studio brush RLE bytes (a list of ints 0..255) of its (H, W, 4) RGBA layer,
    every channel 255 inside the mask and 0 outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_brush_rle expects one (H, W) mask, got shape {mask.shape}")
    flat = (mask != 0).ravel()
    count = flat.size * 4
    bits = [f"{count:032b}", f"{_WORD_BITS - 1:05b}", *(f"{size - 1:04b}" for size in _RUN_FIELD_BITS)]
    if flat.size:
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate(([0], changes))
        lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4  # four channels per pixel
        longest = 1 << _RUN_FIELD_BITS[-1]
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            word = f"{255 if flat[start] else 0:08b}"
            while length > 0:  # one repeat chunk per at most 2^16 equal values
                chunk = min(length, longest)
                field = next(i for i, size in enumerate(_RUN_FIELD_BITS) if chunk <= 1 << size)
                bits.append(f"1{field:02b}{chunk - 1:0{_RUN_FIELD_BITS[field]}b}{word}")
                length -= chunk
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode("ascii"), dtype=np.uint8) - ord("0")).tolist()


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE of an image of `height` x `width` -> (H, W) bool mask (alpha channel > 0).

    Raises `ValueError` when `rle` is not a list of bytes, is cut short, or holds another number of values
    than H * W * 4 (a brush drawn on another image size).
    """
    if not isinstance(rle, list | tuple) or not all(is_int(v) and 0 <= v <= 255 for v in rle):
        raise ValueError("brush 'rle' must be a list of integers 0..255")
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    reader = _BitReader(bits)
    count = reader.read(32)
    if count != height * width * 4:
        raise ValueError(
            f"brush holds {count} values, but a {width}x{height} (WxH) RGBA image has {height * width * 4}"
        )
    word_bits = reader.read(5) + 1
    field_bits = [reader.read(4) + 1 for _ in range(4)]
    values = np.zeros(count, dtype=np.uint32)
    position = 0
    while position < count:
        repeat = reader.read(1)
        end = position + 1 + reader.read(field_bits[reader.read(2)])
        if end > count:
            raise ValueError(f"brush run ends at value {end}, past the {count} values the header states")
        if repeat:
            values[position:end] = reader.read(word_bits)
        else:
            values[position:end] = reader.read_words(end - position, word_bits)
        position = end
    return values.reshape(height, width, 4)[:, :, 3] > 0


class _BitReader:
    """Big-endian reads of unsigned fields from a bit array (what brush RLE streams are made of)."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.position = 0

    def read(self, size: int) -> int:
        return int(self.read_words(1, size)[0])

    def read_words(self, count: int, size: int) -> np.ndarray:
        end = self.position + count * size
        if end > self.bits.size:
            raise ValueError("brush 'rle' ends in the middle of a run")
        words = self.bits[self.position : end].reshape(count, size).astype(np.uint64)
        self.position = end
        return words @ (np.uint64(1) << np.arange(size - 1, -1, -1, dtype=np.uint64))


def label_config(categories: Sequence[CategoryRecord], form: str = "brush") -> str:
    """The labelling-interface XML of a Label Studio project that shows these tasks: an `image` and a
    `BrushLabels` (form "brush") or `PolygonLabels` (form "polygon") tag named `label` with the categories."""
    tag = _result_tag(form)
    labels = "".join(f'\n    <Label value="{_xml_attribute(c.name)}"/>' for c in categories)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <{tag} name="label" toName="image">{labels}\n  </{tag}>\n</View>\n'
    )


def tasks_from_dataset(
    dataset: Dataset,
    *,
    form: str = "brush",
    document_root: str | Path | None = None,
    model_version: str = "instaseg",
) -> list[dict[str, Any]]:
    """One Label Studio task per image of `dataset`, its annotations as a prediction (pre-annotations).

    `form`: "brush" (lossless brush RLE) or "polygon" (one region per polygon part). Each task's image is
    `LOCAL_FILES_PREFIX` + its path relative to `document_root` (default `dataset.root`). An annotation's
    `extra["score"]`, when present, becomes its region's score; the prediction's score is their mean.
    """
    tag = _result_tag(form)
    root = Path(document_root) if document_root is not None else dataset.root
    names = {category.id: category.name for category in dataset.categories}
    tasks = []
    for image in dataset.images:
        size = (image.height, image.width)
        results, scores = [], []
        for annotation in image.annotations:
            masks = Masks.from_rles([_as_rle(annotation.segmentation, size)], size)
            if form == "brush":
                values = [{"format": "rle", "rle": encode_brush_rle(masks.bitmaps()[0].numpy())}]
            else:
                values = [
                    {"points": _percent_points(part, image.width, image.height), "closed": True}
                    for part in masks.polygons()[0]
                ]
            score = annotation.extra.get("score")
            if score is not None:
                scores.append(float(score))
            for number, value in enumerate(values):
                result = {
                    "id": f"{image.id}-{annotation.id}" + (f"-{number}" if number else ""),
                    "type": tag.lower(),
                    "from_name": "label",
                    "to_name": "image",
                    "original_width": image.width,
                    "original_height": image.height,
                    "image_rotation": 0,
                    "value": {**value, tag.lower(): [names[annotation.category_id]]},
                }
                if score is not None:
                    result["score"] = float(score)
                results.append(result)
        prediction: dict[str, Any] = {"model_version": model_version, "result": results}
        if scores:
            prediction["score"] = float(np.mean(scores))
        url = LOCAL_FILES_PREFIX + quote(_relative_to(dataset.image_path(image), root).as_posix())
        tasks.append({"data": {"image": url}, "predictions": [prediction]})
    return tasks


def write_label_studio_tasks(tasks: list[dict[str, Any]], path: str | Path) -> None:
    """Write tasks as the JSON list Label Studio imports, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as stream:
        json.dump(tasks, stream, separators=(",", ":"))


def read_label_studio(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    strict: bool = False,
    decode_images: bool = True,
    image_key: str = "image",
) -> Dataset:
    """Read a Label Studio JSON export (a list of tasks with `annotations`) into a `Dataset`.

    Each task needs exactly one annotation that was not cancelled; its `brushlabels` and `polygonlabels`
    results become the image's instances (one label each). `image_root` (default: the JSON's folder) is the
    folder the tasks' image paths are relative to. Category ids are 1..K over the label names in sorted order.
    A task that cannot be used whole (no or several annotations, a result of another type, a brush of another
    size than its image, a missing image) is skipped with its reason, so no image is kept with some of its
    objects missing; an empty brush or polygon skips only that object. With `strict` the first problem raises
    `DatasetError` naming the file, task and result. Image ids are the task ids.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    tasks = _load_tasks(path)
    log = ProblemLog(strict)
    names = sorted(
        {
            name
            for task in tasks
            if isinstance(task, dict)
            for annotation in task.get("annotations") or []
            if isinstance(annotation, dict)
            for result in annotation.get("result") or []
            if isinstance(result, dict) and isinstance(result.get("value"), dict)
            for key in RESULT_TYPES
            for name in result["value"].get(key) or []
            if isinstance(name, str)
        }
    )
    category_ids = {name: index + 1 for index, name in enumerate(names)}
    images: list[ImageRecord] = []
    seen_ids: set[int] = set()
    next_annotation_id = 1
    for index, task in enumerate(tasks):
        where = _task_name(task, index)
        try:
            image, next_annotation_id = _read_task(
                task, index, root, category_ids, next_annotation_id, decode_images, image_key, log, path
            )
        except _TaskProblem as problem:
            log.report(path, where + problem.where, problem.reason)
            continue
        if image.id in seen_ids:
            log.report(path, where, f"duplicate task id {image.id}")
            continue
        seen_ids.add(image.id)
        images.append(image)
    categories = [CategoryRecord(category_ids[name], name) for name in names]
    return Dataset(images, categories, root, log.reports)


class _TaskProblem(Exception):
    """Why a task cannot be used; `where` adds the result to the task's name ("" for the task itself)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


def _read_task(
    task: Any,
    index: int,
    root: Path,
    category_ids: dict[str, int],
    next_annotation_id: int,
    decode_images: bool,
    image_key: str,
    log: ProblemLog,
    path: Path,
) -> tuple[ImageRecord, int]:
    if not isinstance(task, dict):
        raise _TaskProblem(f"a task must be a JSON object, got {type(task).__name__}")
    data = task.get("data")
    if not isinstance(data, dict) or not isinstance(data.get(image_key), str):
        raise _TaskProblem(f"no image: the task's 'data' has no '{image_key}' string")
    image_path, file_name = _image_file(data[image_key], root)
    try:
        height, width = check_image(image_path, decode_images)
    except (ImageReadError, OSError) as exc:
        raise _TaskProblem(f"image {data[image_key]!r} -> {image_path}: {exc}") from None
    annotations = [
        a for a in task.get("annotations") or [] if not (isinstance(a, dict) and a.get("was_cancelled"))
    ]
    if len(annotations) != 1:
        ids = [a.get("id") if isinstance(a, dict) else None for a in annotations]
        raise _TaskProblem(
            "no annotation (predictions alone are not ground truth)"
            if not annotations
            else f"{len(annotations)} annotations (ids {ids}); keep one per task in Label Studio"
        )
    results = annotations[0].get("result") if isinstance(annotations[0], dict) else None
    if not isinstance(results, list):
        raise _TaskProblem("the annotation has no 'result' list")
    task_id = task.get("id", index + 1)
    if not is_int(task_id) or task_id <= 0:
        raise _TaskProblem(f"task id must be a positive integer, got {task_id!r}")
    image = ImageRecord(task_id, file_name, height, width)
    for number, result in enumerate(results):
        where = f", result {result.get('id', f'#{number}') if isinstance(result, dict) else f'#{number}'}"
        segmentation, name = _result_segmentation(result, height, width, where)
        if segmentation is None:
            log.report(path, _task_name(task, index) + where, "empty brush or polygon; object skipped")
            continue
        rle = _as_rle(segmentation, (height, width))
        bbox, area = bbox_and_area(rle)
        if area == 0:
            log.report(path, _task_name(task, index) + where, "the region covers no pixel; object skipped")
            continue
        image.annotations.append(
            AnnotationRecord(next_annotation_id, category_ids[name], segmentation, bbox, area)
        )
        next_annotation_id += 1
    return image, next_annotation_id


def _result_segmentation(result: Any, height: int, width: int, where: str) -> tuple[Any, str]:
    """(segmentation, label name) of one result; (None, name) for an empty one; `_TaskProblem` if unusable."""
    if not isinstance(result, dict):
        raise _TaskProblem(f"a result must be a JSON object, got {type(result).__name__}", where)
    kind = result.get("type")
    if kind not in RESULT_TYPES:
        raise _TaskProblem(
            f"result type {kind!r} is not supported (instance masks come as {', '.join(RESULT_TYPES)}); "
            "the task is skipped so that none of its objects goes missing",
            where,
        )
    value = result.get("value")
    if not isinstance(value, dict):
        raise _TaskProblem("the result has no 'value' object", where)
    labels = value.get(kind)
    if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)):
        raise _TaskProblem(f"'{kind}' must hold exactly one label name, got {labels!r}", where)
    size = (result.get("original_height"), result.get("original_width"))
    if size != (height, width):
        raise _TaskProblem(
            f"drawn on a {size[1]}x{size[0]} (WxH) image, but the image file is {width}x{height}", where
        )
    if result.get("image_rotation", 0) not in (0, None):
        raise _TaskProblem(f"image_rotation {result['image_rotation']!r} is not supported (only 0)", where)
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise _TaskProblem(f"brush format {value.get('format')!r} without 'rle' is not supported", where)
        try:
            mask = decode_brush_rle(value["rle"], height, width)
        except ValueError as exc:
            raise _TaskProblem(str(exc), where) from None
        return (encode_rle(mask[None])[0] if mask.any() else None), labels[0]
    points = value.get("points")
    if not (
        isinstance(points, list)
        and all(isinstance(p, list | tuple) and len(p) == 2 for p in points)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for p in points for v in p)
    ):
        raise _TaskProblem("polygon 'points' must be a list of [x, y] pairs in percent", where)
    if not points:
        return None, labels[0]
    polygon = [[float(x) * width / 100.0, float(y) * height / 100.0] for x, y in points]
    segmentation = [[v for point in polygon for v in point]]
    problem = polygon_problem(segmentation, height, width)
    if problem is not None:
        raise _TaskProblem(problem, where)
    return segmentation, labels[0]


def _load_tasks(path: Path) -> list[Any]:
    if not path.is_file():
        raise DatasetError(path, "file", "no such file")
    try:
        with path.open("rb") as stream:
            tasks = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, "file", f"not readable as JSON ({exc})") from exc
    if not isinstance(tasks, list):
        raise DatasetError(
            path,
            "file",
            "a Label Studio JSON export holds a list of tasks (export as 'JSON', not 'JSON-MIN')",
        )
    return tasks


def _image_file(url: str, root: Path) -> tuple[Path, str]:
    """The image file a task's image URL names, and its `file_name` relative to `root`."""
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d") if parsed.path.rstrip("/").endswith("/data/local-files") else None
    if local:
        name = Path(local[0])
    elif parsed.scheme or url.startswith("/data/"):
        name = Path(unquote(parsed.path).rsplit("/", 1)[-1])
        if not (root / name).exists() and _UPLOAD_PREFIX.match(name.name):
            name = Path(_UPLOAD_PREFIX.sub("", name.name))
    else:
        name = Path(url)
    return (name if name.is_absolute() else root / name), name.as_posix()


def _task_name(task: Any, index: int) -> str:
    if isinstance(task, dict) and "id" in task:
        return f"task id={task['id']!r} (index {index})"
    return f"task at index {index}"


def _result_tag(form: str) -> str:
    if form not in ("brush", "polygon"):
        raise ValueError(f"Label Studio form must be 'brush' or 'polygon', got {form!r}")
    return "BrushLabels" if form == "brush" else "PolygonLabels"


def _as_rle(segmentation: Any, size: tuple[int, int]) -> dict[str, Any]:
    if isinstance(segmentation, list):
        return Masks.from_polygons([segmentation], size).rles()[0]
    return Masks.from_rles([segmentation], size).rles()[0]


def _percent_points(part: list[float], width: int, height: int) -> list[list[float]]:
    return [[x * 100.0 / width, y * 100.0 / height] for x, y in zip(part[0::2], part[1::2], strict=True)]


def _relative_to(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(
            f"image {path} is not inside the Label Studio document root {root}; choose a root above it"
        ) from None


def _xml_attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
