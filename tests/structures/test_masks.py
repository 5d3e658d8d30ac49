"""Masks in three forms: byte-identity with pycocotools, round trips on random and real masks, hand cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from scipy import ndimage

from instaseg.structures import (
    Masks,
    bitmap_to_polygons,
    decode_rle,
    encode_rle,
    mask_iou,
    merge_rles,
    polygons_to_rle,
    rle_area,
    rle_to_boxes,
    uncompressed_rle_to_rle,
)
from instaseg.structures.masks import normalize_index


def _random_masks(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, height, width)) < rng.uniform(0.1, 0.9, size=(count, 1, 1))


def _real_masks(dsb_root: Path, image_id: str) -> np.ndarray:
    paths = sorted((dsb_root / image_id / "masks").glob("*.png"))
    return np.stack([np.array(Image.open(path)) > 0 for path in paths])


def _box_by_hand(bitmap: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(bitmap)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


@pytest.mark.parametrize(("count", "height", "width"), [(1, 1, 1), (3, 7, 5), (5, 33, 64), (2, 100, 3)])
def test_encode_is_byte_identical_to_pycocotools(count: int, height: int, width: int) -> None:
    bitmaps = _random_masks(count, height, width, seed=height)
    reference = coco_mask.encode(np.asfortranarray(bitmaps.transpose(1, 2, 0).astype(np.uint8)))
    rles = encode_rle(bitmaps)
    assert len(rles) == count
    for ours, theirs in zip(rles, reference, strict=True):
        assert isinstance(ours["counts"], str)
        assert ours["counts"].encode("ascii") == theirs["counts"]
        assert ours["size"] == [height, width] == list(theirs["size"])
    np.testing.assert_array_equal(decode_rle(rles), bitmaps)


def test_encode_accepts_torch_and_0_255_integers_and_refuses_floats() -> None:
    bitmaps = _random_masks(2, 9, 11)
    expected = encode_rle(bitmaps)
    assert encode_rle(torch.from_numpy(bitmaps)) == expected
    assert encode_rle(bitmaps.astype(np.uint8) * 255) == expected
    with pytest.raises(ValueError, match="threshold"):
        encode_rle(bitmaps.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        encode_rle(bitmaps[0])


def test_decode_accepts_bytes_and_uncompressed_counts() -> None:
    bitmaps = _random_masks(2, 6, 4)
    as_bytes = [dict(rle, counts=rle["counts"].encode()) for rle in encode_rle(bitmaps)]
    np.testing.assert_array_equal(decode_rle(as_bytes), bitmaps)
    # Uncompressed: column-major runs starting with background. Column 0 = rows 1..2 set in a 3x2 mask.
    uncompressed = {"size": [3, 2], "counts": [1, 2, 3]}
    np.testing.assert_array_equal(
        decode_rle([uncompressed])[0], [[False, False], [True, False], [True, False]]
    )
    assert decode_rle([uncompressed_rle_to_rle(uncompressed)]).sum() == 2


def test_decode_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="list of RLE dicts"):
        decode_rle({"size": [2, 2], "counts": "04"})
    with pytest.raises(ValueError, match="RLE 1 has size"):
        decode_rle(encode_rle(np.zeros((1, 2, 2), bool)) + encode_rle(np.zeros((1, 3, 2), bool)))
    good = encode_rle(np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match=r"RLE 1's counts do not describe a \[4, 4\] mask"):
        decode_rle([*good, {"size": [4, 4], "counts": "zzzzzzzz1"}])
    with pytest.raises(ValueError, match="'size' and 'counts'"):
        decode_rle([{"counts": "04"}])
    with pytest.raises(ValueError, match="sum to 5"):
        uncompressed_rle_to_rle({"size": [2, 2], "counts": [1, 4]})


def test_area_and_boxes_hand_computed() -> None:
    bitmap = np.zeros((1, 8, 10), dtype=bool)
    bitmap[0, 2:5, 3:7] = True  # rows 2..4, columns 3..6
    rles = encode_rle(bitmap)
    assert rle_area(rles).tolist() == [12]
    assert rle_area(rles).dtype == np.int64
    boxes = rle_to_boxes(rles)
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[3.0, 2.0, 7.0, 5.0]]  # x2, y2 exclusive
    assert rle_to_boxes(encode_rle(np.zeros((1, 4, 4), bool))).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_polygon_square_rasterises_to_known_pixels() -> None:
    rle = polygons_to_rle([[2.0, 3.0, 6.0, 3.0, 6.0, 7.0, 2.0, 7.0]], height=10, width=9)
    expected = np.zeros((10, 9), dtype=bool)
    expected[3:7, 2:6] = True  # the square [2, 6) x [3, 7) covers 4 x 4 pixels
    np.testing.assert_array_equal(decode_rle([rle])[0], expected)
    assert rle_area([rle]).tolist() == [16]
    assert rle["size"] == [10, 9] and isinstance(rle["counts"], str)


def test_polygon_parts_are_merged_into_one_instance() -> None:
    left = [0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]
    right = [4.0, 0.0, 6.0, 0.0, 6.0, 3.0, 4.0, 3.0]
    rle = polygons_to_rle([left, right], 5, 8)
    assert rle_area([rle]).tolist() == [4 + 6]
    assert rle_area([polygons_to_rle([], 5, 8)]).tolist() == [0]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ([0, 0, 2, 0], "at least 3 points"),
        ([0, 0, 2, 0, 2], "at least 3 points"),
        ([0, 0, 1, 1, np.nan, 2], "NaN"),
    ],
)
def test_bad_polygons_are_refused(part: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        polygons_to_rle([part], 5, 5)


def test_bitmap_to_polygons_hand_cases() -> None:
    assert bitmap_to_polygons(np.zeros((4, 4), bool)) == []
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    (diamond,) = bitmap_to_polygons(single)
    assert sorted(zip(diamond[0::2], diamond[1::2], strict=True)) == [
        (1.0, 1.5),
        (1.5, 1.0),
        (1.5, 2.0),
        (2.0, 1.5),
    ]
    two_regions = np.zeros((6, 6), bool)
    two_regions[0:2, 0:2] = True
    two_regions[4:6, 3:6] = True  # touches the border: contours must still close
    assert len(bitmap_to_polygons(two_regions)) == 2
    np.testing.assert_array_equal(
        decode_rle([polygons_to_rle(bitmap_to_polygons(two_regions), 6, 6)])[0], two_regions
    )


def test_bitmap_to_polygons_fills_holes_and_loses_nothing_else() -> None:
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    filled = decode_rle([polygons_to_rle(bitmap_to_polygons(ring), 7, 7)])[0]
    assert filled[3, 3] and filled.sum() == 25
    for seed, bitmap in enumerate(_random_masks(40, 23, 17)):
        polygons = bitmap_to_polygons(torch.from_numpy(bitmap) if seed % 2 else bitmap)
        back = decode_rle([polygons_to_rle(polygons, 23, 17)])[0]
        # Exactly the mask with its holes (background not 8-connected to the border) filled.
        np.testing.assert_array_equal(back, ndimage.binary_fill_holes(bitmap, structure=np.ones((3, 3))))


def test_real_masks_round_trip_through_every_form(dsb_root: Path, dsb_image_ids: list[str]) -> None:
    for image_id in dsb_image_ids:
        bitmaps = _real_masks(dsb_root, image_id)
        reference = coco_mask.encode(np.asfortranarray(bitmaps.transpose(1, 2, 0).astype(np.uint8)))
        rles = encode_rle(bitmaps)
        assert [rle["counts"].encode() for rle in rles] == [rle["counts"] for rle in reference]
        np.testing.assert_array_equal(decode_rle(rles), bitmaps)
        assert rle_area(rles).tolist() == bitmaps.sum(axis=(1, 2)).tolist()
        assert rle_to_boxes(rles).tolist() == [_box_by_hand(bitmap) for bitmap in bitmaps]
        # Nuclei have no holes, so tracing and rasterising again gives the very same pixels.
        for bitmap in bitmaps:
            polygons = bitmap_to_polygons(bitmap)
            np.testing.assert_array_equal(decode_rle([polygons_to_rle(polygons, *bitmap.shape)])[0], bitmap)


def test_mask_iou_hand_values_and_crowd_rule() -> None:
    dt = np.zeros((1, 4, 4), bool)
    dt[0, 0:2, 0:2] = True  # area 4
    gt = np.zeros((2, 4, 4), bool)
    gt[0, 0:2, 1:3] = True  # overlaps dt in 2 pixels, area 4
    gt[1, 0:4, 0:4] = True  # contains dt entirely, area 16
    dts, gts = encode_rle(dt), encode_rle(gt)
    np.testing.assert_allclose(mask_iou(dts, gts, [False, False]), [[2 / 6, 4 / 16]])
    # A crowd ground truth scores intersection / area(detection).
    np.testing.assert_allclose(mask_iou(dts, gts, [True, True]), [[2 / 4, 4 / 4]])


def test_mask_iou_matches_decoded_brute_force() -> None:
    dt, gt = _random_masks(4, 12, 9, seed=1), _random_masks(3, 12, 9, seed=2)
    iou = mask_iou(encode_rle(dt), encode_rle(gt), np.zeros(3, bool))
    expected = [[(a & b).sum() / (a | b).sum() for b in gt] for a in dt]
    np.testing.assert_allclose(iou, expected)


def test_mask_iou_empty_and_mismatched_inputs() -> None:
    gts = encode_rle(_random_masks(3, 5, 5))
    assert mask_iou([], gts, [0, 0, 0]).shape == (0, 3)
    assert mask_iou(gts, [], []).shape == (3, 0)
    with pytest.raises(ValueError, match="iscrowd has 2 entries"):
        mask_iou(gts, gts, [0, 0])
    with pytest.raises(ValueError, match="ground truths"):
        mask_iou(gts, encode_rle(_random_masks(1, 5, 6)), [0])


def test_merge_union_and_intersection() -> None:
    bitmaps = _random_masks(3, 10, 8)
    rles = encode_rle(bitmaps)
    np.testing.assert_array_equal(decode_rle([merge_rles(rles)])[0], bitmaps.any(axis=0))
    np.testing.assert_array_equal(decode_rle([merge_rles(rles, intersect=True)])[0], bitmaps.all(axis=0))
    with pytest.raises(ValueError, match="at least one"):
        merge_rles([])


def test_empty_inputs_give_shaped_outputs() -> None:
    assert encode_rle(np.zeros((0, 5, 6), bool)) == []
    assert decode_rle([], (5, 6)).shape == (0, 5, 6)
    assert rle_area([]).shape == (0,)
    assert rle_to_boxes([]).shape == (0, 4)
    masks = Masks.from_bitmaps(torch.zeros(0, 5, 6, dtype=torch.bool))
    assert len(masks) == 0 and masks.image_size == (5, 6)
    assert masks.rles() == [] and masks.polygons() == []
    assert masks.area().shape == (0,) and masks.boxes().shape == (0, 4)
    from_rles = Masks.from_rles([], (5, 6))
    assert from_rles.bitmaps().shape == (0, 5, 6) and from_rles.boxes().shape == (0, 4)
    assert len(Masks.from_polygons([], (5, 6))[torch.zeros(0, dtype=torch.bool)]) == 0


def test_masks_forms_agree() -> None:
    polygons = [[[1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]], [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0]], []]
    from_polygons = Masks.from_polygons(polygons, (6, 7))
    assert from_polygons.form == Masks.POLYGONS
    bitmaps = from_polygons.bitmaps()
    assert bitmaps.dtype == torch.bool and bitmaps.shape == (3, 6, 7)
    assert from_polygons.area().tolist() == [6, int(bitmaps[1].sum()), 0]
    assert from_polygons.boxes()[0].tolist() == [1.0, 1.0, 4.0, 3.0]
    assert from_polygons.polygons() == polygons

    from_bitmaps = Masks.from_bitmaps(bitmaps)
    from_rles = Masks.from_rles(from_polygons.rles(), (6, 7))
    assert from_bitmaps.rles() == from_rles.rles() == from_polygons.rles()
    assert torch.equal(from_rles.bitmaps(), bitmaps)
    assert torch.equal(from_bitmaps.area(), from_rles.area())
    assert torch.equal(from_bitmaps.boxes(), from_rles.boxes())
    traced = Masks.from_polygons(from_bitmaps.polygons(), (6, 7))
    assert torch.equal(traced.bitmaps(), bitmaps)


def test_masks_indexing_variants() -> None:
    bitmaps = torch.from_numpy(_random_masks(5, 4, 6))
    for masks in (Masks.from_bitmaps(bitmaps), Masks.from_rles(encode_rle(bitmaps), (4, 6))):
        assert torch.equal(masks[1].bitmaps(), bitmaps[1:2])
        assert torch.equal(masks[-1].bitmaps(), bitmaps[4:5])
        assert torch.equal(masks[1:4:2].bitmaps(), bitmaps[[1, 3]])
        assert torch.equal(
            masks[torch.tensor([True, False, False, True, True])].bitmaps(), bitmaps[[0, 3, 4]]
        )
        assert torch.equal(masks[torch.tensor([4, 0])].bitmaps(), bitmaps[[4, 0]])
        assert torch.equal(masks[[2, 2]].bitmaps(), bitmaps[[2, 2]])
        assert masks[[]].bitmaps().shape == (0, 4, 6)


def test_normalize_index_errors() -> None:
    with pytest.raises(IndexError, match="out of range"):
        normalize_index(5, 5)
    with pytest.raises(IndexError, match="bool index has 2 entries"):
        normalize_index(torch.tensor([True, False]), 5)
    with pytest.raises(IndexError, match="out of range"):
        normalize_index([0, 7], 5)
    with pytest.raises(IndexError, match="integers or bools"):
        normalize_index(torch.tensor([0.5]), 5)
    assert normalize_index(np.int64(-2), 5).tolist() == [3]


def test_masks_cat_keeps_form_or_falls_back_to_rle() -> None:
    bitmaps = torch.from_numpy(_random_masks(3, 5, 5))
    polygons = Masks.from_polygons([[[0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0]]], (5, 5))
    both_polygons = Masks.cat([polygons, polygons])
    assert both_polygons.form == Masks.POLYGONS and len(both_polygons) == 2
    bitmap_cat = Masks.cat([Masks.from_bitmaps(bitmaps[:1]), Masks.from_bitmaps(bitmaps[1:])])
    assert bitmap_cat.form == Masks.BITMAPS and torch.equal(bitmap_cat.bitmaps(), bitmaps)
    mixed = Masks.cat([Masks.from_bitmaps(bitmaps), polygons])
    assert mixed.form == Masks.RLES and len(mixed) == 4
    assert torch.equal(mixed.bitmaps()[:3], bitmaps)
    assert torch.equal(mixed.bitmaps()[3], polygons.bitmaps()[0])
    with pytest.raises(ValueError, match="image size"):
        Masks.cat([polygons, Masks.from_bitmaps(torch.zeros(1, 5, 6, dtype=torch.bool))])
    with pytest.raises(ValueError, match="at least one"):
        Masks.cat([])


def test_masks_to_device_and_validation() -> None:
    masks = Masks.from_rles(encode_rle(_random_masks(2, 3, 3)), (3, 3)).to("cpu")
    assert masks.device == torch.device("cpu") and masks.bitmaps().device.type == "cpu"
    if torch.cuda.is_available():
        on_gpu = masks.to("cuda")
        assert on_gpu.bitmaps().is_cuda and on_gpu.area().is_cuda and on_gpu.boxes().is_cuda
    with pytest.raises(ValueError, match="threshold"):
        Masks.from_bitmaps(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="expected \\[3, 4\\]"):
        Masks.from_rles(encode_rle(_random_masks(1, 3, 3)), (3, 4))
    with pytest.raises(ValueError, match="instance 1"):
        Masks.from_polygons([[[0, 0, 1, 0, 1, 1]], [[0, 0, 1, 1]]], (3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        Masks((3, 3))


def test_rle_area_handles_more_than_255_masks():
    """pycocotools' area() overflows past 255 RLEs; dense nuclei images hold up to 375 objects."""
    bitmaps = np.zeros((300, 8, 8), dtype=bool)
    for i in range(300):
        bitmaps[i, : 1 + i % 8, :2] = True
    areas = rle_area(encode_rle(bitmaps))
    np.testing.assert_array_equal(areas, bitmaps.reshape(300, -1).sum(1))
