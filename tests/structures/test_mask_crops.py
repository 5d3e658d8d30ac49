"""Mask crops of RLE masks own their memory (a view would keep each full-size decoded bitmap alive)."""

import torch

from instaseg.structures.mask_crops import crops_from_masks
from instaseg.structures.masks import Masks


def test_rle_crops_are_small_arrays_of_their_own() -> None:
    bitmaps = torch.zeros(3, 500, 400, dtype=torch.bool)
    bitmaps[0, 10:30, 20:25] = True
    bitmaps[1, 200:202, 0:400] = True
    bitmaps[2, 499, 399] = True
    crops = crops_from_masks(Masks.from_rles(Masks.from_bitmaps(bitmaps).rles(), (500, 400)))
    assert [crop.bitmap.shape for crop in crops] == [(20, 5), (2, 400), (1, 1)]
    assert all(crop.bitmap.base is None and crop.bitmap.all() for crop in crops)
