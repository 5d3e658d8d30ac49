"""The classical watershed baseline: splits touching nuclei, handles both polarities, sane on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.baselines import segment_nuclei
from instaseg.data.coco import write_coco
from instaseg.data.mask_folders import read_mask_folders
from instaseg.evaluation import evaluate_coco
from instaseg.models.default_model import held_out_samples_path
from instaseg.structures.masks import decode_rle

SHAPE = (96, 128)
# Two touching disks (centres 18 px apart, radius 11: they overlap by 4 px), one apart, and a 2x2 speck.
DISKS = [((40, 40), 11), ((40, 58), 11), ((70, 100), 9)]


def _disk(center: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def _scene(nuclei: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.empty((*SHAPE, 3), dtype=np.float64)
    image[:] = background
    for center, radius in DISKS:
        image[_disk(center, radius)] = nuclei
    image[10:12, 10:12] = nuclei  # a speck, smaller than min_area
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _best_ious(masks: np.ndarray) -> list[float]:
    """For each disk, the best IoU with any predicted mask."""
    best = []
    for center, radius in DISKS:
        disk = _disk(center, radius)
        ious = [(disk & m).sum() / (disk | m).sum() for m in masks]
        best.append(max(ious))
    return best


@pytest.mark.parametrize(
    ("nuclei", "background"),
    [
        ((220, 220, 220), (20, 20, 20)),  # fluorescence: bright nuclei on dark
        ((20, 20, 20), (230, 230, 230)),  # dark nuclei on bright
        ((90, 40, 140), (235, 190, 215)),  # H&E-like colours: purple nuclei on pink
    ],
)
def test_touching_nuclei_are_split_in_either_polarity(nuclei: tuple, background: tuple) -> None:
    instances = segment_nuclei(_scene(nuclei, background))
    assert len(instances) == 3  # two touching disks split, the lone disk found, the speck dropped
    masks = instances.masks.bitmaps().numpy()
    assert min(_best_ious(masks)) > 0.8
    assert torch.equal(instances.labels, torch.ones(3, dtype=torch.int64))
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])
    assert torch.all((instances.scores > 0) & (instances.scores < 1))
    # Boxes are the masks' pixel extents (x2, y2 exclusive).
    for box, mask in zip(instances.boxes.tolist(), masks, strict=True):
        rows, cols = np.nonzero(mask)
        assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_blank_image_gives_no_instances() -> None:
    instances = segment_nuclei(np.full((32, 48, 3), 77, dtype=np.uint8))
    assert len(instances) == 0
    assert instances.image_size == (32, 48) and instances.boxes.shape == (0, 4)


def test_real_bundled_samples_are_segmented_sensibly(tmp_path: Path) -> None:
    dataset = read_mask_folders(held_out_samples_path(), category_name="nucleus", strict=True)
    write_coco(dataset, tmp_path / "gt.json")
    results = []
    for image in dataset.images:
        instances = segment_nuclei(dataset.image_path(image))
        results.extend(instances.to_coco_results(image.id))
        assert instances.image_size == (image.height, image.width)
    gt = json.loads((tmp_path / "gt.json").read_text())
    metrics = evaluate_coco(gt, results, "segm", max_dets=500)
    # A classical baseline: far from perfect, far from nothing (measured 0.46 AP50 on these three images).
    assert 0.3 < metrics.stats["AP50"] < 0.9
    assert 0.5 * len(gt["annotations"]) < len(results) < 2 * len(gt["annotations"])
    # Instances of one image do not overlap (each pixel belongs to one watershed basin).
    first = [r["segmentation"] for r in results if r["image_id"] == gt["images"][0]["id"]]
    assert decode_rle(first).sum(axis=0).max() == 1
