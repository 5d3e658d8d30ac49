"""Reader for folders with one binary mask PNG per object (the 2018 Data Science Bowl layout).

    ROOT/<id>/images/<id>.png     the image
    ROOT/<id>/masks/*.png         one binary mask per object, the image's size

Every sub-folder of ROOT (hidden ones aside) is one sample; image ids are 1, 2, ... over the sorted folder
names, counting skipped folders too, so an image keeps its id when another one is skipped. An existing but
empty `masks/` folder is an image without objects; a missing one is reported. Masks are stored as compressed
RLE, one category. Masks may overlap (COCO allows it); they are kept as they are.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from instaseg.data.records import (
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    ProblemLog,
    SkipReport,
    bbox_and_area,
    check_image,
    read_one_channel_png,
    size_problem,
)
from instaseg.io.images import ImageReadError
from instaseg.structures.masks import encode_rle

__all__ = ["read_binary_mask", "read_mask_folders"]

# What a worker sends back for one readable image: (H, W, [(mask RLE, bbox xywh, area), ...]).
_Sample = tuple[int, int, list[tuple[dict[str, Any], tuple[float, float, float, float], int]]]


def read_mask_folders(
    root: str | Path,
    *,
    category_name: str = "object",
    strict: bool = False,
    decode_images: bool = True,
    workers: int = 1,
) -> Dataset:
    """Read a DSB-layout folder into a `Dataset` with one category (`category_name`, id 1).

    Image sizes come from the headers; with `decode_images` each image is also decoded in full so a truncated
    file is found. `workers` > 1 reads samples in that many processes (mask PNG decoding dominates the time).
    Bad images or masks are skipped and listed in `Dataset.skipped`, or raise `DatasetError` when `strict`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root", "no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(root, "dataset root", "no sample folders (<id>/images/<id>.png) in it")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    log = ProblemLog(strict)
    jobs = [(folder, decode_images) for folder in folders]
    if workers == 1:
        images = _collect(folders, map(_read_sample, jobs), log)
    else:
        # Pool's context manager terminates the workers, so a strict-mode error does not wait for the rest.
        with multiprocessing.Pool(workers) as pool:
            images = _collect(folders, pool.imap(_read_sample, jobs, chunksize=4), log)
    return Dataset(images, [CategoryRecord(1, category_name)], root, log.reports)


def read_binary_mask(path: Path, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    """The (H, W) mask PNG at `path` as a bool array, or None and why it cannot be used.

    A usable mask has one channel, the image's size, and no values but 0 and one foreground value (1, 255 or
    any other); all-zero masks and masks with more values are refused.
    """
    array, problem, _ = read_one_channel_png(path, "mask", "a mask PNG must have one channel")
    if problem is not None:
        return None, problem
    if (problem := size_problem(array, height, width, "mask")) is not None:
        return None, problem
    peak = array.max()
    if peak == 0:
        return None, "empty mask: no foreground pixel"
    foreground = array != 0
    if np.count_nonzero(foreground) != np.count_nonzero(array == peak):
        values = np.unique(array)
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        return (
            None,
            f"non-binary mask: {values.size} distinct values ({shown}); expected 0 and one other value",
        )
    return foreground, None


def _read_sample(
    job: tuple[Path, bool],
) -> tuple[_Sample | None, list[SkipReport]]:
    """Decode and check one sample folder: (the sample, or None if the image is skipped; skip reports).

    Runs in worker processes, so it reports instead of raising; the caller applies the strict policy.
    """
    folder, decode = job
    record = f"image '{folder.name}'"
    image_path = folder / "images" / f"{folder.name}.png"
    try:
        height, width = check_image(image_path, decode)
    except ImageReadError as exc:
        return None, [
            SkipReport(str(image_path), record, f"{exc.reason}; the image and its masks are skipped")
        ]
    masks_dir = folder / "masks"
    if not masks_dir.is_dir():
        reason = (
            "no masks/ folder; the image is skipped (an image without objects has an empty masks/ folder)"
        )
        return None, [SkipReport(str(masks_dir), record, reason)]
    masks, reports = [], []
    for mask_path in sorted(path for path in masks_dir.iterdir() if not path.name.startswith(".")):
        if mask_path.suffix.lower() != ".png":
            reason = "not a .png file (the layout has one PNG mask per object); skipped"
            reports.append(SkipReport(str(mask_path), f"{record}, mask '{mask_path.name}'", reason))
            continue
        mask, problem = read_binary_mask(mask_path, height, width)
        if mask is None:
            reports.append(SkipReport(str(mask_path), f"{record}, mask '{mask_path.stem}'", problem))
            continue
        # pycocotools encodes column by column. Handing encode_rle a column-major view (cv2.transpose is a
        # cache-blocked transpose, unlike NumPy's strided copy) turns its own conversion into a sequential
        # copy; the RLEs are the same.
        column_major = cv2.transpose(mask.view(np.uint8)).T
        rle = encode_rle(column_major[None])[0]
        masks.append((rle, *bbox_and_area(rle)))
    return (height, width, masks), reports


def _collect(
    folders: list[Path], results: Iterable[tuple[_Sample | None, list[SkipReport]]], log: ProblemLog
) -> list[ImageRecord]:
    """Turn per-sample results (in folder order) into image records with dataset-wide annotation ids."""
    images = []
    next_annotation_id = 1
    for image_id, (folder, (sample, reports)) in enumerate(zip(folders, results, strict=True), start=1):
        for report in reports:
            log.add(report)
        if sample is None:
            continue
        height, width, masks = sample
        annotations = [
            AnnotationRecord(next_annotation_id + i, 1, rle, bbox, area)
            for i, (rle, bbox, area) in enumerate(masks)
        ]
        next_annotation_id += len(annotations)
        file_name = f"{folder.name}/images/{folder.name}.png"
        images.append(ImageRecord(image_id, file_name, height, width, annotations))
    return images
