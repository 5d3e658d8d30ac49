"""Tiled inference for large images: overlapping tiles, batched through the model, merged into one result.

An object that crosses a tile border is seen by both tiles: each sees the part inside it, and both see the
same part inside the overlap band. Two detections from different tiles are the same object when their masks
agree inside the band the two tiles share (IoU measured only there, where both tiles saw everything); they
are merged into one instance whose mask is the union of the parts, so a border-crossing object comes out
whole, not as two halves. Merging is transitive (an object spanning four tiles merges all four parts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import MaskCrop, crops_from_masks, masks_from_crops

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1): rows [y0, y1) and columns [x0, x1) of the image


@dataclass(frozen=True)
class TilingOptions:
    """When and how to tile.

    tile_size: side of the square tiles in image pixels (default 1024).
    overlap: pixels shared by neighbouring tiles (default 256); make it larger than the objects, so each
        object lies whole inside at least one tile.
    min_image_side: tile only images whose height or width exceeds this (default 2048); smaller images go
        through the model whole.
    merge_iou: mask IoU inside the shared band above which two tiles' detections are one object (default 0.5).
    batch_size: tiles per model call (default 4).
    """

    tile_size: int = 1024
    overlap: int = 256
    min_image_side: int = 2048
    merge_iou: float = 0.5
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.tile_size < 32:
            raise ValueError(f"TilingOptions.tile_size must be >= 32 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"TilingOptions.overlap must lie in [0, tile_size), got {self.overlap}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"TilingOptions.merge_iou must lie in (0, 1], got {self.merge_iou}")
        if self.batch_size < 1:
            raise ValueError(f"TilingOptions.batch_size must be >= 1, got {self.batch_size}")

    def applies_to(self, image_size: tuple[int, int]) -> bool:
        return max(image_size) > self.min_image_side


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering [0, length): steps of `tile - overlap`, the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def tile_windows(image_size: tuple[int, int], tile_size: int, overlap: int) -> list[Window]:
    """Row-major tile windows `(y0, x0, y1, x1)` covering an (H, W) image (clipped to a smaller image)."""
    height, width = image_size
    return [
        (y0, x0, min(y0 + tile_size, height), min(x0 + tile_size, width))
        for y0 in tile_starts(height, tile_size, overlap)
        for x0 in tile_starts(width, tile_size, overlap)
    ]


def predict_tiled(
    run: Callable[[list[torch.Tensor]], list[Instances]], image: torch.Tensor, options: TilingOptions
) -> Instances:
    """Run `run` (batch of (3, h, w) images -> one Instances each) on the tiles of `image` (3, H, W)."""
    image_size = (int(image.shape[-2]), int(image.shape[-1]))
    windows = tile_windows(image_size, options.tile_size, options.overlap)
    per_tile: list[Instances] = []
    for first in range(0, len(windows), options.batch_size):
        batch = windows[first : first + options.batch_size]
        per_tile.extend(run([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in batch]))
    return merge_tiles(per_tile, windows, image_size, options.merge_iou)


@dataclass
class _Part:
    tile: int
    label: int
    score: float
    box: np.ndarray  # (4,) x1y1x2y2 in image pixels
    crop: MaskCrop  # in image pixels


def merge_tiles(
    tiles: list[Instances], windows: list[Window], image_size: tuple[int, int], merge_iou: float
) -> Instances:
    """Merge per-tile predictions (each in its tile's pixels) into one Instances of the (H, W) image.

    Detections of the same label from two overlapping tiles are joined when their mask IoU inside the two
    tiles' shared window is >= `merge_iou`. A merged instance gets the union of the masks, the union of the
    boxes and the highest score. Every tile needs scores and masks; extra fields (e.g. `mask_logits`, which
    describe one tile's box) are not carried over. The result is sorted by decreasing score.
    """
    if len(tiles) != len(windows):
        raise ValueError(f"merge_tiles: {len(tiles)} tile results for {len(windows)} windows")
    parts = []
    for index, (tile, (y0, x0, y1, x1)) in enumerate(zip(tiles, windows, strict=True)):
        if tile.image_size != (y1 - y0, x1 - x0):
            raise ValueError(
                f"merge_tiles: tile {index} result is {tile.image_size}, window is {(y1 - y0, x1 - x0)}"
            )
        if tile.scores is None or tile.masks is None:
            raise ValueError(f"merge_tiles: tile {index} result needs scores and masks")
        offset = np.array([x0, y0, x0, y0], dtype=np.float32)
        boxes = tile.boxes.detach().cpu().float().numpy() + offset
        for label, score, box, crop in zip(
            tile.labels.tolist(), tile.scores.tolist(), boxes, crops_from_masks(tile.masks), strict=True
        ):
            parts.append(_Part(index, label, score, box, MaskCrop(crop.y0 + y0, crop.x0 + x0, crop.bitmap)))

    groups = _group_parts(parts, windows, merge_iou)
    merged = [_merge_group([parts[i] for i in group]) for group in groups]
    merged.sort(key=lambda part: -part.score)
    count = len(merged)
    return Instances(
        image_size,
        torch.from_numpy(np.stack([p.box for p in merged]) if count else np.zeros((0, 4), np.float32)),
        torch.tensor([p.label for p in merged], dtype=torch.int64),
        torch.tensor([p.score for p in merged], dtype=torch.float32),
        masks_from_crops([p.crop for p in merged], image_size),
    )


def _group_parts(parts: list[_Part], windows: list[Window], merge_iou: float) -> list[list[int]]:
    """Union-find over pairs of parts from overlapping tiles that agree inside their shared window."""
    parent = list(range(len(parts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_tile: dict[int, list[int]] = {}
    for i, part in enumerate(parts):
        by_tile.setdefault(part.tile, []).append(i)
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            shared = _intersection(windows[a], windows[b])
            if shared is None:
                continue
            # Only parts with pixels inside the shared window can match; IoU counts pixels there only.
            in_a = [(i, area) for i in by_tile.get(a, []) if (area := _area_inside(parts[i].crop, shared))]
            in_b = [(j, area) for j in by_tile.get(b, []) if (area := _area_inside(parts[j].crop, shared))]
            for i, area_i in in_a:
                for j, area_j in in_b:
                    if parts[i].label != parts[j].label:
                        continue
                    meet = _intersection(parts[i].crop.bounds(), parts[j].crop.bounds(), shared)
                    if meet is None:
                        continue
                    inter = int((parts[i].crop.region(meet) & parts[j].crop.region(meet)).sum())
                    if inter / (area_i + area_j - inter) >= merge_iou:
                        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(parts)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _intersection(*regions: Window) -> Window | None:
    y0, x0 = max(r[0] for r in regions), max(r[1] for r in regions)
    y1, x1 = min(r[2] for r in regions), min(r[3] for r in regions)
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _area_inside(crop: MaskCrop, window: Window) -> int:
    meet = _intersection(crop.bounds(), window)
    return 0 if meet is None else int(crop.region(meet).sum())


def _merge_group(group: list[_Part]) -> _Part:
    """One part from a group: union of masks and boxes, the best score (and label, shared by all)."""
    best = max(group, key=lambda part: part.score)
    if len(group) == 1:
        return best
    boxes = np.stack([part.box for part in group])
    box = np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)]).astype(np.float32)
    y0 = min(part.crop.y0 for part in group)
    x0 = min(part.crop.x0 for part in group)
    y1 = max(part.crop.y0 + part.crop.bitmap.shape[0] for part in group)
    x1 = max(part.crop.x0 + part.crop.bitmap.shape[1] for part in group)
    union = MaskCrop(y0, x0, np.zeros((y1 - y0, x1 - x0), dtype=bool))
    for part in group:
        union.region(part.crop.bounds())[...] |= part.crop.bitmap
    return _Part(best.tile, best.label, best.score, box, union.tightened())
