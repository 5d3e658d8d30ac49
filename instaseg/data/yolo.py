"""Reader for YOLO segmentation labels: one polygon per line, coordinates normalised to [0, 1].

    ROOT/images/<rel>.<ext>     images, in any sub-folders (e.g. images/train/a.jpg)
    ROOT/labels/<rel>.txt       one line per object: `class x1 y1 x2 y2 ...` (x by width, y by height)
    ROOT/classes.txt            class names, one per line (line k = class k), or
    ROOT/data.yaml              `names: [a, b]` or `names: {0: a, 1: b}`

YOLO class k becomes category id k + 1 (COCO ids start at 1). An image without a label file, or with an empty
one, has no objects (YOLO's convention for background images). Polygons are stored in image pixels.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from instaseg.data.records import (
    IMAGE_SUFFIXES,
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    ProblemLog,
    bbox_and_area,
    check_image,
    polygon_problem,
)
from instaseg.io.images import ImageReadError
from instaseg.structures.masks import polygons_to_rle

__all__ = ["read_class_names", "read_yolo"]


def read_yolo(
    root: str | Path,
    *,
    images_dir: str = "images",
    labels_dir: str = "labels",
    strict: bool = False,
    decode_images: bool = True,
) -> Dataset:
    """Read a YOLO segmentation dataset under `root` into a `Dataset`.

    Image sizes come from the headers (needed to turn normalised coordinates into pixels); with
    `decode_images` each image is also decoded in full. A bad line skips that annotation, an unreadable
    image or label file skips the image; each is listed in `Dataset.skipped`, or raises `DatasetError` when
    `strict`. Label files without an image are reported too.
    """
    root = Path(root)
    names = read_class_names(root)
    image_folder, label_folder = root / images_dir, root / labels_dir
    if not image_folder.is_dir():
        raise DatasetError(image_folder, "dataset layout", "no such folder")
    image_paths = sorted(
        p for p in image_folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not image_paths:
        raise DatasetError(image_folder, "dataset layout", f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    log = ProblemLog(strict)
    images = []
    used_labels = set()
    next_annotation_id = 1
    for image_id, image_path in enumerate(image_paths, start=1):
        relative = image_path.relative_to(image_folder)
        label_path = label_folder / relative.with_suffix(".txt")
        used_labels.add(label_path)
        record = f"image '{relative.as_posix()}'"
        try:
            height, width = check_image(image_path, decode_images)
        except ImageReadError as exc:
            log.report(image_path, record, f"{exc.reason}; the image is skipped")
            continue
        try:
            lines = label_path.read_text(encoding="utf-8-sig").splitlines() if label_path.is_file() else []
        except (OSError, UnicodeDecodeError) as exc:
            log.report(label_path, record, f"unreadable label file ({exc}); the image is skipped")
            continue
        annotations = []
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            annotation = _annotation(line, next_annotation_id, len(names), height, width)
            if isinstance(annotation, str):
                log.report(label_path, f"{record}, line {line_number}", annotation)
                continue
            annotations.append(annotation)
            next_annotation_id += 1
        file_name = image_path.relative_to(root).as_posix()
        images.append(ImageRecord(image_id, file_name, height, width, annotations))
    if label_folder.is_dir():
        for label_path in sorted(label_folder.rglob("*.txt")):
            if label_path not in used_labels:
                log.report(label_path, "label file", f"no image in {images_dir}/ for this label file")
    categories = [CategoryRecord(index + 1, name) for index, name in enumerate(names)]
    return Dataset(images, categories, root, log.reports)


def read_class_names(root: str | Path) -> list[str]:
    """Class names in YOLO class order, from `root/classes.txt` or the `names` of `root/data.yaml`.

    Raises `DatasetError` when neither file exists, when a file is malformed, or when both exist and disagree.
    """
    root = Path(root)
    classes_txt, data_yaml = root / "classes.txt", root / "data.yaml"
    found = {}
    if classes_txt.is_file():
        found[classes_txt] = _names_from_txt(classes_txt)
    if data_yaml.is_file():
        found[data_yaml] = _names_from_yaml(data_yaml)
    if not found:
        raise DatasetError(root, "class names", "no classes.txt or data.yaml with 'names' in this folder")
    if len(found) == 2 and found[classes_txt] != found[data_yaml]:
        raise DatasetError(
            classes_txt, "class names", f"differ from the 'names' in {data_yaml}: {found[data_yaml]}"
        )
    return next(iter(found.values()))


def _names_from_txt(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, "class names", f"unreadable ({exc})") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for number, name in enumerate(names, start=1):
        if not name:
            raise DatasetError(path, f"line {number}", "empty class name (line k names class k - 1)")
    if not names:
        raise DatasetError(path, "class names", "the file lists no class")
    return names


def _names_from_yaml(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(path, "names", f"not readable as YAML ({exc})") from exc
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(path, "names", f"keys must be the class indices 0..{len(names) - 1}")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(path, "names", "must be a non-empty list (or index -> name map) of class names")
    return names


def _annotation(
    line: str, annotation_id: int, num_classes: int, height: int, width: int
) -> AnnotationRecord | str:
    """The annotation of one label line, or why it cannot be used."""
    tokens = line.split()
    try:
        class_index = int(tokens[0])
    except ValueError:
        return f"class {tokens[0]!r} is not an integer"
    if not 0 <= class_index < num_classes:
        return f"class {class_index} is not among the {num_classes} class names (0..{num_classes - 1})"
    try:
        values = [float(token) for token in tokens[1:]]
    except ValueError as exc:
        return f"coordinates must be numbers ({exc})"
    polygon = [value * (width if index % 2 == 0 else height) for index, value in enumerate(values)]
    problem = polygon_problem([polygon], height, width)
    if problem is not None:
        return problem
    bbox, area = bbox_and_area(polygons_to_rle([polygon], height, width))
    if area == 0:
        return "the polygon covers no pixel"
    return AnnotationRecord(annotation_id, class_index + 1, [polygon], bbox, area)
