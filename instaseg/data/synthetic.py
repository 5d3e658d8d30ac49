"""A tiny synthetic instance-segmentation dataset: coloured ellipses and rectangles on a noisy background.

For smoke tests and examples, where real data would be too slow or absent: two categories ("ellipse" id 1,
"rectangle" id 2), instances that may overlap (later ones drawn on top, earlier masks lose the covered
pixels), and optionally images without any instance (valid negatives). Written as PNG images plus a COCO JSON
by `instaseg.data.coco.write_coco`; everything is drawn from one seed, so the same call gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instaseg.data.coco import write_coco
from instaseg.data.records import AnnotationRecord, CategoryRecord, Dataset, ImageRecord, bbox_and_area
from instaseg.structures.masks import encode_rle

CATEGORIES = (CategoryRecord(1, "ellipse"), CategoryRecord(2, "rectangle"))
# With `stuff=True`: the background is split into two amorphous regions, COCO panoptic's "stuff".
STUFF_CATEGORIES = (
    CategoryRecord(3, "sky", extra={"isthing": 0}),
    CategoryRecord(4, "ground", extra={"isthing": 0}),
)


def make_synthetic_dataset(
    root: str | Path,
    num_images: int = 8,
    *,
    size_range: tuple[int, int] = (64, 128),
    max_instances: int = 4,
    num_negatives: int = 0,
    seed: int = 0,
    json_name: str = "annotations.json",
    stuff: bool = False,
) -> Path:
    """Write `num_images` images (the last `num_negatives` without instances) under `root / "images"` and
    their COCO JSON at `root / json_name`; returns the JSON path. Image sides are drawn from `size_range`
    (pixels). `stuff`: also split each background into a "sky" region above a random row and "ground"
    below it (tinted blue and green), annotated as stuff categories (`isthing: 0`) that cover every pixel
    no instance covers; the things' categories then say `isthing: 1`."""
    if num_images < 1 or not 0 <= num_negatives <= num_images:
        raise ValueError(
            f"need num_images >= 1 and 0 <= num_negatives <= num_images; got {num_images}, {num_negatives}"
        )
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    next_annotation_id = 1
    for index in range(num_images):
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        count = 0 if index >= num_images - num_negatives else int(rng.integers(1, max_instances + 1))
        pixels, masks, labels = _draw_image(rng, height, width, count)
        if stuff:
            regions = _stuff_regions(rng, pixels, masks)
            masks, labels = masks + regions, labels + [c.id for c in STUFF_CATEGORIES]
        file_name = f"images/{index:04d}.png"
        Image.fromarray(pixels).save(root / file_name)
        record = ImageRecord(index + 1, file_name, height, width)
        for mask, label in zip(masks, labels, strict=True):
            if not mask.any():  # fully covered by later instances
                continue
            rle = encode_rle(mask[None])[0]
            bbox, area = bbox_and_area(rle)
            record.annotations.append(AnnotationRecord(next_annotation_id, label, rle, bbox, area))
            next_annotation_id += 1
        images.append(record)
    json_path = root / json_name
    categories = (
        [CategoryRecord(c.id, c.name, extra={"isthing": 1}) for c in CATEGORIES] + list(STUFF_CATEGORIES)
        if stuff
        else list(CATEGORIES)
    )
    write_coco(Dataset(images, categories, root), json_path)
    return json_path


def _draw_image(
    rng: np.random.Generator, height: int, width: int, count: int
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(H, W, 3) uint8 pixels, per-instance (H, W) bool masks (overlaps resolved) and category ids."""
    pixels = rng.normal(60, 12, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
    masks: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(count):
        canvas = np.zeros((height, width), dtype=np.uint8)
        centre = (
            int(rng.integers(width // 8, width - width // 8)),
            int(rng.integers(height // 8, height - height // 8)),
        )
        half_w = int(rng.integers(max(width // 12, 3), max(width // 4, 4)))
        half_h = int(rng.integers(max(height // 12, 3), max(height // 4, 4)))
        label = int(rng.integers(1, 3))
        if label == 1:
            cv2.ellipse(canvas, centre, (half_w, half_h), float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        else:
            cv2.rectangle(
                canvas,
                (centre[0] - half_w, centre[1] - half_h),
                (centre[0] + half_w, centre[1] + half_h),
                1,
                thickness=-1,
            )
        mask = canvas.astype(bool)
        base = (220, 90, 70) if label == 1 else (70, 110, 220)  # warm ellipses, cool rectangles
        pixels[mask] = np.clip(np.array(base) + rng.integers(-30, 31, size=3), 0, 255).astype(np.uint8)
        for earlier in masks:
            earlier &= ~mask
        masks.append(mask)
        labels.append(label)
    return pixels, masks, labels


def _stuff_regions(rng: np.random.Generator, pixels: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    """Split the background of `pixels` at a random row into sky (above, tinted blue) and ground (below,
    tinted green), in place; returns the two stuff masks (the background pixels of each part)."""
    height, width = pixels.shape[:2]
    split = int(rng.integers(max(1, height * 3 // 10), max(2, height * 7 // 10)))
    background = ~np.logical_or.reduce(masks) if masks else np.ones((height, width), dtype=bool)
    above = np.zeros((height, width), dtype=bool)
    above[:split] = True
    sky, ground = background & above, background & ~above
    pixels[sky] = np.clip(pixels[sky].astype(int) + (0, 20, 90), 0, 255).astype(np.uint8)
    pixels[ground] = np.clip(pixels[ground].astype(int) + (10, 80, 0), 0, 255).astype(np.uint8)
    return [sky, ground]
