"""Instance masks as small crops (the mask's tight box and its bitmap) for per-instance editing.

Post-processing and tile merging touch one instance at a time; holding each mask as the crop around its
pixels keeps memory proportional to the objects, not to N x image size (a 10k x 10k tiled image with 500
objects would need 50 GB as dense bitmaps). `masks_from_crops` turns crops back into `Masks`: dense bitmaps
when asked for (small images), otherwise COCO RLE encoded one instance at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instaseg.structures.masks import Masks, decode_rle, encode_rle, rle_to_boxes

# Results up to this many pixels x instances are returned as dense (N, H, W) bitmaps, larger ones as RLE.
DENSE_MASK_LIMIT = 256 * 1024 * 1024


@dataclass
class MaskCrop:
    """One instance mask: `bitmap` (h, w) bool whose top-left pixel is image pixel (`y0`, `x0`)."""

    y0: int
    x0: int
    bitmap: np.ndarray

    @property
    def area(self) -> int:
        return int(self.bitmap.sum())

    def tightened(self) -> MaskCrop:
        """The same mask cropped to the rows and columns that hold foreground (a 0 x 0 crop when empty)."""
        rows = np.flatnonzero(self.bitmap.any(axis=1))
        cols = np.flatnonzero(self.bitmap.any(axis=0))
        if rows.size == 0:
            return MaskCrop(self.y0, self.x0, np.zeros((0, 0), dtype=bool))
        return MaskCrop(
            self.y0 + int(rows[0]),
            self.x0 + int(cols[0]),
            self.bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
        )

    def window(self) -> tuple[slice, slice]:
        """Slices of the image that this crop covers."""
        return slice(self.y0, self.y0 + self.bitmap.shape[0]), slice(self.x0, self.x0 + self.bitmap.shape[1])

    def bounds(self) -> tuple[int, int, int, int]:
        """The covered image region as `(y0, x0, y1, x1)`, end exclusive."""
        return self.y0, self.x0, self.y0 + self.bitmap.shape[0], self.x0 + self.bitmap.shape[1]

    def region(self, bounds: tuple[int, int, int, int]) -> np.ndarray:
        """The bitmap inside image region `(y0, x0, y1, x1)`, which must lie within `self.bounds()`."""
        y0, x0, y1, x1 = bounds
        return self.bitmap[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0]


def crop_bitmap(bitmap: np.ndarray) -> MaskCrop:
    """(H, W) bool image-sized mask -> its tight crop."""
    return MaskCrop(0, 0, np.asarray(bitmap, dtype=bool)).tightened()


def crops_from_masks(masks: Masks) -> list[MaskCrop]:
    """Tight crops of every mask; RLE and polygon masks are decoded one instance at a time."""
    if masks.form == Masks.BITMAPS:
        return [crop_bitmap(bitmap) for bitmap in masks.bitmaps().cpu().numpy()]
    rles = masks.rles()
    crops = []
    for rle, (x1, y1, x2, y2) in zip(rles, rle_to_boxes(rles).astype(int).tolist(), strict=True):
        # A copy, not a view: a view keeps the whole decoded image-size bitmap alive with each crop.
        crops.append(MaskCrop(y1, x1, decode_rle([rle])[0, y1:y2, x1:x2].copy()))
    return crops


def masks_from_crops(
    crops: list[MaskCrop],
    image_size: tuple[int, int],
    dense: bool | None = None,
    device: torch.device | str = "cpu",
) -> Masks:
    """Crops -> `Masks` of an (H, W) image: (N, H, W) bitmaps if `dense`, else RLEs encoded one by one.

    `dense=None` chooses bitmaps when N x H x W is at most `DENSE_MASK_LIMIT`.
    """
    height, width = image_size
    if dense is None:
        dense = len(crops) * height * width <= DENSE_MASK_LIMIT
    if dense:
        bitmaps = np.zeros((len(crops), height, width), dtype=bool)
        for bitmap, crop in zip(bitmaps, crops, strict=True):
            bitmap[crop.window()] = crop.bitmap
        return Masks.from_bitmaps(torch.from_numpy(bitmaps).to(device))
    canvas = np.zeros((1, height, width), dtype=bool)  # reused: only the crop's window is set and cleared
    rles = []
    for crop in crops:
        rows, cols = crop.window()
        canvas[0, rows, cols] = crop.bitmap
        rles.append(encode_rle(canvas)[0])
        canvas[0, rows, cols] = False
    return Masks.from_rles(rles, image_size).to(device)
