"""Label-map (Penn-Fudan layout) reader: instance ids per pixel, known areas, bad input, real nuclei."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.label_maps import read_label_maps
from instaseg.data.mask_folders import read_mask_folders
from instaseg.data.records import DatasetError
from instaseg.structures.masks import decode_rle


def _image(path: Path, size_hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size_hw, 3), dtype=np.uint8)).save(path)


def _label_map(size_hw: tuple[int, int], boxes: dict[int, tuple[slice, slice]]) -> np.ndarray:
    label_map = np.zeros(size_hw, dtype=np.uint8)
    for instance_id, (rows, cols) in boxes.items():
        label_map[rows, cols] = instance_id
    return label_map


@pytest.fixture()
def penn_fudan_like(tmp_path: Path) -> Path:
    root = tmp_path / "PennFudanPed"
    _image(root / "PNGImages" / "FudanPed00001.png", (12, 20))
    palette = Image.fromarray(
        _label_map((12, 20), {1: (slice(0, 4), slice(0, 5)), 2: (slice(6, 12), slice(15, 20))})
    )
    palette.putpalette(
        [0, 0, 0, 255, 0, 0, 0, 255, 0]
    )  # Penn-Fudan's masks are palette images: values are indices
    assert palette.mode == "P"
    (root / "PedMasks").mkdir()
    palette.save(root / "PedMasks" / "FudanPed00001_mask.png")
    _image(root / "PNGImages" / "PennPed00002.jpg", (9, 9))
    sixteen_bit = np.zeros((9, 9), dtype=np.uint16)
    sixteen_bit[2:5, 3:4] = 700  # an id that does not fit 8 bits
    Image.fromarray(sixteen_bit).save(root / "PedMasks" / "PennPed00002_mask.png")
    _image(root / "PNGImages" / "PennPed00003.png", (5, 5))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "PedMasks" / "PennPed00003_mask.png")
    return root


def test_known_areas_and_boxes(penn_fudan_like: Path) -> None:
    dataset = read_label_maps(penn_fudan_like, category_name="person")
    assert dataset.skipped == []
    assert [(c.id, c.name) for c in dataset.categories] == [(1, "person")]
    first, second, third = dataset.images
    assert (first.file_name, first.height, first.width) == ("PNGImages/FudanPed00001.png", 12, 20)
    assert [(a.id, a.area, a.bbox) for a in first.annotations] == [
        (1, 20, (0.0, 0.0, 5.0, 4.0)),
        (2, 30, (15.0, 6.0, 5.0, 6.0)),
    ]
    assert [(a.id, a.area, a.bbox) for a in second.annotations] == [(3, 3, (3.0, 2.0, 1.0, 3.0))]
    assert third.annotations == []  # an all-background label map: an image without objects
    decoded = decode_rle([first.annotations[1].segmentation])[0]
    assert np.array_equal(decoded, _label_map((12, 20), {1: (slice(6, 12), slice(15, 20))}) > 0)


def test_folder_names_are_parameters(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", (6, 6))
    (tmp_path / "lab").mkdir()
    Image.fromarray(_label_map((6, 6), {3: (slice(1, 3), slice(1, 3))})).save(tmp_path / "lab" / "a.png")
    dataset = read_label_maps(tmp_path, images_dir="img", masks_dir="lab", mask_suffix="")
    assert [a.area for a in dataset.images[0].annotations] == [4]


def _save(path_in_root: str, array: np.ndarray):
    return lambda root: Image.fromarray(array).save(root / path_in_root)


# (damage, the file the report names, the image record, a fragment of the reason)
BAD_INPUT = {
    "missing label map": (
        lambda root: (root / "PedMasks" / "FudanPed00001_mask.png").unlink(),
        "PedMasks/FudanPed00001_mask.png",
        "no label map for this image",
    ),
    "label map of another size": (
        _save("PedMasks/FudanPed00001_mask.png", np.zeros((12, 21), np.uint8)),
        "PedMasks/FudanPed00001_mask.png",
        "label map is 21x12 (WxH) but its image is 20x12",
    ),
    "colour label map": (
        _save("PedMasks/FudanPed00001_mask.png", np.zeros((12, 20, 3), np.uint8)),
        "PedMasks/FudanPed00001_mask.png",
        "label map has 3 channels (mode RGB)",
    ),
    "truncated image": (
        lambda root: (root / "PNGImages" / "FudanPed00001.png").write_bytes(
            (root / "PNGImages" / "FudanPed00001.png").read_bytes()[:300]
        ),
        "PNGImages/FudanPed00001.png",
        "truncated",
    ),
    "not an image": (
        lambda root: (root / "PNGImages" / "FudanPed00001.png").write_text("text"),
        "PNGImages/FudanPed00001.png",
        "not an image",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_skips_the_image(penn_fudan_like: Path, case: str) -> None:
    damage, relative_path, reason = BAD_INPUT[case]
    damage(penn_fudan_like)
    with pytest.raises(DatasetError) as info:
        read_label_maps(penn_fudan_like, strict=True)
    message = str(info.value)
    assert str(penn_fudan_like / relative_path) in message and "image 'FudanPed00001.png'" in message
    assert reason in message
    dataset = read_label_maps(penn_fudan_like)
    assert [image.id for image in dataset.images] == [2, 3]  # ids stay those of the sorted file list
    assert [(r.path, r.record) for r in dataset.skipped] == [
        (str(penn_fudan_like / relative_path), "image 'FudanPed00001.png'")
    ]
    assert reason in dataset.skipped[0].reason


def test_label_map_without_image_is_reported(penn_fudan_like: Path) -> None:
    orphan = penn_fudan_like / "PedMasks" / "Lost_mask.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(orphan)
    dataset = read_label_maps(penn_fudan_like)
    assert len(dataset.images) == 3
    assert [(r.path, r.record) for r in dataset.skipped] == [(str(orphan), "label map")]
    with pytest.raises(DatasetError, match="no image in PNGImages/"):
        read_label_maps(penn_fudan_like, strict=True)


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder") as info:
        read_label_maps(tmp_path)
    assert str(tmp_path / "PNGImages") in str(info.value)


def test_real_nuclei_agree_with_the_mask_folder_reader(
    dsb_root: Path, dsb_image_ids: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "nuclei"
    used = 0
    for image_id in dsb_image_ids:
        masks = [np.asarray(Image.open(p)) > 0 for p in sorted((dsb_root / image_id / "masks").glob("*.png"))]
        if np.stack(masks).sum(axis=0).max() > 1:
            continue  # overlapping masks cannot be one label map
        label_map = np.zeros(masks[0].shape, dtype=np.uint16)
        for k, mask in enumerate(masks, start=1):
            label_map[mask] = k
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        (root / "images" / f"{image_id}.png").symlink_to(dsb_root / image_id / "images" / f"{image_id}.png")
        Image.fromarray(label_map).save(root / "labels" / f"{image_id}.png")
        (tmp_path / "folders").mkdir(exist_ok=True)
        (tmp_path / "folders" / image_id).symlink_to(dsb_root / image_id, target_is_directory=True)
        used += 1
    assert used >= 3
    from_label_maps = read_label_maps(root, images_dir="images", masks_dir="labels", mask_suffix="")
    from_folders = read_mask_folders(tmp_path / "folders")
    assert from_label_maps.skipped == []
    assert [i.annotations for i in from_label_maps.images] == [i.annotations for i in from_folders.images]
