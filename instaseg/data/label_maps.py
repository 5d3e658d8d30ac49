"""Reader for label-map PNGs, where each pixel holds the id of the instance it belongs to (Penn-Fudan layout).

    ROOT/PNGImages/<name>.png          the image (any suffix in IMAGE_SUFFIXES)
    ROOT/PedMasks/<name>_mask.png      its label map: 0 = background, k > 0 = pixels of instance k

The folder names and the suffix are parameters. Each distinct nonzero value is one instance of the single
category; a label map with no nonzero pixel is an image without objects. Image ids are 1, 2, ... over the
sorted image names (skipped images keep their number).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

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
    read_one_channel_png,
    size_problem,
)
from instaseg.io.images import ImageReadError
from instaseg.structures.masks import encode_rle

__all__ = ["read_label_map", "read_label_maps", "read_paired_maps"]


def read_label_maps(
    root: str | Path,
    *,
    images_dir: str = "PNGImages",
    masks_dir: str = "PedMasks",
    mask_suffix: str = "_mask",
    category_name: str = "object",
    strict: bool = False,
    decode_images: bool = True,
) -> Dataset:
    """Read images and their label maps under `root` into a `Dataset` with one category (id 1).

    Image sizes come from the headers; with `decode_images` each image is also decoded in full so a truncated
    file is found. A bad image or label map skips the image (listed in `Dataset.skipped`), or raises
    `DatasetError` when `strict`; so does a label map without an image.
    """
    root = Path(root)
    log = ProblemLog(strict)
    images = read_paired_maps(
        root, images_dir, masks_dir, mask_suffix, "label map", read_label_map, _instances, log, decode_images
    )
    return Dataset(images, [CategoryRecord(1, category_name)], root, log.reports)


def _instances(label_map: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(category 1, (H, W) bool mask) of each instance id of a label map, by id."""
    return [(1, label_map == instance_id) for instance_id in np.unique(label_map) if instance_id != 0]


def read_paired_maps(
    root: Path,
    images_dir: str,
    masks_dir: str,
    mask_suffix: str,
    noun: str,
    read_map: Callable[[Path, int, int], tuple[np.ndarray | None, str | None]],
    segments: Callable[[np.ndarray], Iterable[tuple[int, np.ndarray]]],
    log: ProblemLog,
    decode_images: bool,
) -> list[ImageRecord]:
    """The images of `root / images_dir` with their maps `root / masks_dir / <stem><mask_suffix>.png` as
    records (image ids 1, 2, ... over the sorted names; `noun` names a map in messages).
    `read_map(path, H, W)` gives the (H, W) map or None and why not (the image is skipped); `segments(map)`
    its annotations as (category id, (H, W) bool mask). A bad image, a missing map and a map without an
    image go to `log`."""
    image_folder, map_folder = root / images_dir, root / masks_dir
    for folder in (image_folder, map_folder):
        if not folder.is_dir():
            raise DatasetError(folder, "dataset layout", "no such folder")
    image_paths = sorted(
        p for p in image_folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not image_paths:
        raise DatasetError(image_folder, "dataset layout", f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    used_maps = set()
    next_annotation_id = 1
    for image_id, image_path in enumerate(image_paths, start=1):
        map_path = map_folder / f"{image_path.stem}{mask_suffix}.png"
        used_maps.add(map_path.name)
        record = f"image '{image_path.name}'"
        try:
            height, width = check_image(image_path, decode_images)
        except ImageReadError as exc:
            log.report(image_path, record, f"{exc.reason}; the image is skipped")
            continue
        if not map_path.is_file():
            log.report(map_path, record, f"no {noun} for this image; the image is skipped")
            continue
        array, problem = read_map(map_path, height, width)
        if array is None:
            log.report(map_path, record, f"{problem}; the image is skipped")
            continue
        annotations = []
        for category_id, mask in segments(array):
            rle = encode_rle(mask[None])[0]
            bbox, area = bbox_and_area(rle)
            annotations.append(AnnotationRecord(next_annotation_id, category_id, rle, bbox, area))
            next_annotation_id += 1
        file_name = image_path.relative_to(root).as_posix()
        images.append(ImageRecord(image_id, file_name, height, width, annotations))
    for map_path in sorted(map_folder.glob(f"*{mask_suffix}.png")):
        if map_path.name not in used_maps:
            log.report(map_path, noun, f"no image in {images_dir}/ for this {noun}")
    return images


def read_label_map(path: Path, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    """The (H, W) integer label map at `path`, or None and why it cannot be used.

    A usable label map has one channel of non-negative integers (modes L, P, I;16, I; a palette map's values
    are its palette indices) and the image's size.
    """
    array, problem, mode = read_one_channel_png(path, "label map", "instance ids need one channel")
    if problem is not None:
        return None, problem
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        return None, f"label map holds {array.dtype} values (mode {mode}); instance ids must be integers"
    if (problem := size_problem(array, height, width, "label map")) is not None:
        return None, problem
    if array.size and array.min() < 0:
        return None, f"label map holds negative values (min {array.min()}); instance ids must be >= 0"
    return array, None
