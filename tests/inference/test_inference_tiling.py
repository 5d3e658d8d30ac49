"""Tiled inference: tile layout, and objects crossing tile borders coming out whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.inference.predictor import Predictor
from instaseg.inference.tiling import TilingOptions, merge_tiles, tile_starts, tile_windows
from instaseg.io.images import to_tensor
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks


def test_tile_starts_cover_the_length_with_the_last_tile_flush():
    assert tile_starts(100, 128, 32) == [0]
    assert tile_starts(600, 256, 64) == [0, 192, 344]
    for length, tile, overlap in [(1000, 256, 64), (257, 256, 0), (4096, 1024, 256)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tile_windows_are_row_major_and_clipped():
    windows = tile_windows((300, 600), 256, 64)
    assert windows[0] == (0, 0, 256, 256)
    assert windows[-1] == (44, 344, 300, 600)
    assert len(windows) == 2 * 3
    assert tile_windows((100, 80), 256, 64) == [(0, 0, 100, 80)]


def test_options_are_validated():
    with pytest.raises(ValueError, match="overlap must lie in"):
        TilingOptions(tile_size=256, overlap=256)
    with pytest.raises(ValueError, match="merge_iou"):
        TilingOptions(merge_iou=0.0)
    assert TilingOptions(min_image_side=500).applies_to((400, 501))
    assert not TilingOptions(min_image_side=500).applies_to((500, 500))


# Tiles of 256 with overlap 64 on a 600 x 600 image start at 0, 192 and 344: borders at 256 and 192 / 344.
TILING = TilingOptions(tile_size=256, overlap=64, min_image_side=300, batch_size=3)
DISCS = [
    (100.0, 250.0, 20.0),  # crosses the right border of the first tile column (x = 256)
    (240.0, 100.0, 25.0),  # crosses a row border
    (255.0, 255.0, 30.0),  # in the corner shared by four tiles
    (520.0, 520.0, 15.0),  # inside one tile only
    (100.0, 330.0, 8.0),  # small, inside the overlap band of two tiles (seen whole by both)
]


def test_objects_crossing_tile_borders_come_out_whole(make_segmenter, make_disc_image):
    image = make_disc_image(600, 600, DISCS)
    model = make_segmenter()
    tiled = Predictor(model, tiling=TILING).predict(image)
    assert model.calls == [3, 3, 3]  # nine tiles, batched three at a time
    untiled = Predictor(make_segmenter(), tiling=None).predict(image)
    assert len(untiled) == len(DISCS)
    assert len(tiled) == len(DISCS)
    # Each tiled mask is one whole disc: it matches the untiled prediction of that disc almost exactly
    # (the pasted 28x28 masks of a part differ from those of the whole by a pixel here and there).
    tiled_masks = tiled.masks.bitmaps().numpy()
    untiled_masks = untiled.masks.bitmaps().numpy()
    for mask in tiled_masks:
        ious = [(mask & other).sum() / (mask | other).sum() for other in untiled_masks]
        assert max(ious) > 0.95
    # The merged box is the union of the parts' boxes: the whole object's box.
    assert sorted(tiled.boxes.tolist()) == sorted(untiled.boxes.tolist())
    truth = [make_disc_image(600, 600, [disc])[:, :, 0] > 0 for disc in DISCS]
    for disc_mask in truth:
        best = max((mask & disc_mask).sum() / (mask | disc_mask).sum() for mask in tiled_masks)
        assert best > 0.9


def test_small_images_are_not_tiled(make_segmenter, make_disc_image):
    model = make_segmenter()
    Predictor(model, tiling=TilingOptions(min_image_side=1000)).predict(make_disc_image(300, 400, DISCS[:1]))
    assert model.calls == [1]


def tile_result(
    size: tuple[int, int], bitmaps: list[np.ndarray], scores: list[float], labels: list[int]
) -> Instances:
    masks = Masks.from_bitmaps(
        torch.from_numpy(np.stack(bitmaps)) if bitmaps else torch.zeros((0, *size), dtype=bool)
    )
    return Instances(
        size, masks.boxes(), torch.tensor(labels, dtype=torch.int64), torch.tensor(scores), masks
    )


def test_merge_unions_parts_that_agree_in_the_shared_band():
    # Two tiles side by side: columns [0, 60) and [40, 100) of a 30 x 100 image, sharing columns 40..59.
    windows = [(0, 0, 30, 60), (0, 40, 30, 100)]
    left = np.zeros((30, 60), dtype=bool)
    left[5:15, 30:60] = True  # an object spanning columns 30..74, cut at the left tile's edge
    right = np.zeros((30, 60), dtype=bool)
    right[5:15, 0:35] = True  # the same object from the right tile: columns 40..74
    other_label = np.zeros((30, 60), dtype=bool)
    other_label[5:15, 0:35] = True
    elsewhere = np.zeros((30, 60), dtype=bool)
    elsewhere[20:25, 50:58] = True  # only the right tile sees something at rows 20..24, columns 90..97
    merged = merge_tiles(
        [
            tile_result((30, 60), [left], [0.7], [1]),
            tile_result((30, 60), [right, other_label, elsewhere], [0.9, 0.8, 0.6], [1, 2, 1]),
        ],
        windows,
        (30, 100),
        merge_iou=0.5,
    )
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    expected = np.zeros((30, 100), dtype=bool)
    expected[5:15, 30:75] = True
    assert np.array_equal(merged.masks.bitmaps()[0].numpy(), expected)
    assert merged.boxes[0].tolist() == [30.0, 5.0, 75.0, 15.0]
    assert merged.labels.tolist() == [1, 2, 1]  # the label-2 part is not merged with the label-1 object


def test_parts_that_disagree_in_the_band_stay_apart():
    windows = [(0, 0, 30, 60), (0, 40, 30, 100)]
    left = np.zeros((30, 60), dtype=bool)
    left[0:10, 40:60] = True  # rows 0..9 of the band
    right = np.zeros((30, 60), dtype=bool)
    right[8:20, 0:20] = True  # rows 8..19 of the band: IoU 2 / 20 inside it
    merged = merge_tiles(
        [tile_result((30, 60), [left], [0.7], [1]), tile_result((30, 60), [right], [0.9], [1])],
        windows,
        (30, 100),
        0.5,
    )
    assert len(merged) == 2


def test_merge_checks_its_inputs():
    with pytest.raises(ValueError, match="2 tile results for 1 windows"):
        merge_tiles([tile_result((10, 10), [], [], [])] * 2, [(0, 0, 10, 10)], (10, 10), 0.5)
    with pytest.raises(ValueError, match="tile 0 result is"):
        merge_tiles([tile_result((10, 12), [], [], [])], [(0, 0, 10, 10)], (10, 10), 0.5)


def test_large_results_are_stored_as_rle(make_segmenter, make_disc_image, monkeypatch):
    import instaseg.structures.mask_crops as mask_crops

    monkeypatch.setattr(mask_crops, "DENSE_MASK_LIMIT", 0)  # as if the image were huge
    image = make_disc_image(600, 600, DISCS)
    tiled = Predictor(make_segmenter(), tiling=TILING).predict(image)
    assert tiled.masks.form == Masks.RLES
    assert len(tiled) == len(DISCS)
    assert to_tensor(image).shape[-2:] == tiled.masks.bitmaps().shape[-2:]
