"""Mask-folder (DSB layout) reader: hand-made masks with known areas and boxes, bad masks, real nuclei."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.coco import read_coco, write_coco
from instaseg.data.mask_folders import read_mask_folders
from instaseg.data.records import DatasetError
from instaseg.structures.masks import decode_rle


def _sample(root: Path, name: str, size_hw: tuple[int, int], masks: dict[str, np.ndarray]) -> Path:
    folder = root / name
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rgba = np.full((*size_hw, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.random.default_rng(len(name)).integers(0, 256, (*size_hw, 3), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "images" / f"{name}.png")
    for mask_name, mask in masks.items():
        Image.fromarray(mask).save(folder / "masks" / f"{mask_name}.png")
    return folder


def _box_mask(size_hw: tuple[int, int], rows: slice, cols: slice, value: int = 255) -> np.ndarray:
    mask = np.zeros(size_hw, dtype=np.uint8)
    mask[rows, cols] = value
    return mask


@pytest.fixture()
def dsb_like(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    _sample(
        root,
        "alpha",
        (20, 30),
        {
            "m1": _box_mask((20, 30), slice(2, 6), slice(3, 10)),  # 4 x 7 = 28 px at x 3, y 2
            "m2": _box_mask((20, 30), slice(10, 20), slice(25, 30), value=1),  # 0/1 mask, touches corner
        },
    )
    _sample(root, "beta", (16, 16), {"only": _box_mask((16, 16), slice(0, 1), slice(0, 16))})
    return root


def test_known_areas_and_boxes(dsb_like: Path) -> None:
    dataset = read_mask_folders(dsb_like, category_name="nucleus")
    assert dataset.skipped == []
    assert [(c.id, c.name) for c in dataset.categories] == [(1, "nucleus")]
    alpha, beta = dataset.images
    assert (alpha.id, alpha.file_name, alpha.height, alpha.width) == (1, "alpha/images/alpha.png", 20, 30)
    assert (beta.id, beta.height, beta.width) == (2, 16, 16)
    assert [(a.id, a.area, a.bbox, a.category_id) for a in alpha.annotations] == [
        (1, 28, (3.0, 2.0, 7.0, 4.0), 1),
        (2, 50, (25.0, 10.0, 5.0, 10.0), 1),
    ]
    assert [(a.id, a.area, a.bbox) for a in beta.annotations] == [(3, 16, (0.0, 0.0, 16.0, 1.0))]
    decoded = decode_rle([a.segmentation for a in alpha.annotations])
    assert np.array_equal(decoded[0], _box_mask((20, 30), slice(2, 6), slice(3, 10)) > 0)
    assert np.array_equal(decoded[1], _box_mask((20, 30), slice(10, 20), slice(25, 30)) > 0)
    assert all(isinstance(a.segmentation["counts"], str) for a in alpha.annotations)


def test_workers_give_the_same_dataset(dsb_like: Path) -> None:
    assert read_mask_folders(dsb_like, workers=2) == read_mask_folders(dsb_like)


def test_strict_mode_with_workers_raises_the_first_problem(dsb_like: Path) -> None:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(dsb_like / "beta" / "masks" / "blank.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(dsb_like / "alpha" / "masks" / "blank.png")
    with pytest.raises(DatasetError, match="image 'alpha', mask 'blank': empty mask"):
        read_mask_folders(dsb_like, strict=True, workers=2)
    assert len(read_mask_folders(dsb_like, workers=2).skipped) == 2


def test_overlapping_masks_are_kept(tmp_path: Path) -> None:
    a = _box_mask((10, 10), slice(0, 5), slice(0, 5))
    b = _box_mask((10, 10), slice(4, 9), slice(4, 9))  # shares pixel (4, 4) with a
    dataset = read_mask_folders(_sample(tmp_path, "overlap", (10, 10), {"a": a, "b": b}).parent)
    assert dataset.skipped == [] and [x.area for x in dataset.images[0].annotations] == [25, 25]


def test_empty_masks_folder_is_an_image_without_objects(tmp_path: Path) -> None:
    dataset = read_mask_folders(_sample(tmp_path, "blank", (8, 8), {}).parent)
    assert dataset.skipped == [] and dataset.images[0].annotations == []


# (how to damage the "alpha" sample, the file the report must name, the record, a fragment of the reason)
def _bad_mask(name: str, mask: np.ndarray):
    return lambda root: Image.fromarray(mask).save(root / "alpha" / "masks" / f"{name}.png")


BAD_MASKS = {
    "empty": (_bad_mask("m3", np.zeros((20, 30), np.uint8)), "empty mask: no foreground pixel"),
    "non-binary": (
        _bad_mask("m3", np.array([[0, 128, 255] * 10] * 20, dtype=np.uint8)),
        "non-binary mask: 3 distinct values (0, 128, 255)",
    ),
    "wrong size": (
        _bad_mask("m3", np.full((20, 31), 255, np.uint8)),
        "mask is 31x20 (WxH) but its image is 30x20",
    ),
    "colour": (_bad_mask("m3", np.full((20, 30, 3), 255, np.uint8)), "mask has 3 channels (mode RGB)"),
    "not a PNG": (
        lambda root: (root / "alpha" / "masks" / "m3.png").write_text("garbage"),
        "unreadable mask PNG",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_bad_masks(dsb_like: Path, case: str) -> None:
    damage, reason = BAD_MASKS[case]
    damage(dsb_like)
    mask_path = dsb_like / "alpha" / "masks" / "m3.png"
    with pytest.raises(DatasetError) as info:
        read_mask_folders(dsb_like, strict=True)
    assert str(mask_path) in str(info.value) and "image 'alpha', mask 'm3'" in str(info.value)
    assert reason in str(info.value)
    dataset = read_mask_folders(dsb_like)
    assert len(dataset.skipped) == 1
    report = dataset.skipped[0]
    assert (report.path, report.record) == (str(mask_path), "image 'alpha', mask 'm3'")
    assert reason in report.reason
    assert [len(image.annotations) for image in dataset.images] == [2, 1]  # the other masks stay


def test_mask_files_other_than_png_are_reported_and_upper_case_png_is_read(dsb_like: Path) -> None:
    masks = dsb_like / "alpha" / "masks"
    Image.fromarray(_box_mask((20, 30), slice(12, 15), slice(2, 4))).save(masks / "upper.PNG", format="PNG")
    Image.fromarray(_box_mask((20, 30), slice(0, 2), slice(0, 2))).save(masks / "other.tif")
    (masks / ".DS_Store").write_bytes(b"finder metadata")  # hidden files are not masks
    dataset = read_mask_folders(dsb_like)
    assert [len(image.annotations) for image in dataset.images] == [3, 1]
    assert [(r.path, r.record) for r in dataset.skipped] == [
        (str(masks / "other.tif"), "image 'alpha', mask 'other.tif'")
    ]
    assert "not a .png file" in dataset.skipped[0].reason


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.unlink(), "no such file"),
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (_truncate, "truncated"),
    ],
    ids=["missing", "zero-byte", "truncated"],
)
def test_bad_images_skip_the_whole_sample(dsb_like: Path, damage, reason: str) -> None:
    image_path = dsb_like / "alpha" / "images" / "alpha.png"
    damage(image_path)
    with pytest.raises(DatasetError) as info:
        read_mask_folders(dsb_like, strict=True)
    assert str(image_path) in str(info.value) and "image 'alpha'" in str(info.value)
    assert reason in str(info.value)
    dataset = read_mask_folders(dsb_like)
    assert [(image.id, image.file_name) for image in dataset.images] == [(2, "beta/images/beta.png")]
    assert [(r.path, r.record) for r in dataset.skipped] == [(str(image_path), "image 'alpha'")]
    assert "the image and its masks are skipped" in dataset.skipped[0].reason


def test_missing_masks_folder_is_reported(dsb_like: Path) -> None:
    for mask in (dsb_like / "beta" / "masks").iterdir():
        mask.unlink()
    (dsb_like / "beta" / "masks").rmdir()
    dataset = read_mask_folders(dsb_like)
    assert [image.id for image in dataset.images] == [1]
    assert dataset.skipped[0].path == str(dsb_like / "beta" / "masks")
    with pytest.raises(DatasetError, match="no masks/ folder"):
        read_mask_folders(dsb_like, strict=True)


def test_unusable_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        read_mask_folders(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no sample folders"):
        read_mask_folders(tmp_path)


def _link_dsb(dsb_root: Path, ids: list[str], target: Path) -> Path:
    target.mkdir()
    for image_id in ids:
        (target / image_id).symlink_to(dsb_root / image_id, target_is_directory=True)
    return target


def test_real_nuclei(dsb_root: Path, dsb_image_ids: list[str], tmp_path: Path) -> None:
    root = _link_dsb(dsb_root, dsb_image_ids, tmp_path / "dsb")
    dataset = read_mask_folders(root, category_name="nucleus")
    assert dataset.skipped == []
    assert [image.file_name for image in dataset.images] == [f"{i}/images/{i}.png" for i in dsb_image_ids]
    for image, image_id in zip(dataset.images, dsb_image_ids, strict=True):
        mask_files = sorted((dsb_root / image_id / "masks").glob("*.png"))
        assert len(image.annotations) == len(mask_files)
        decoded = decode_rle([a.segmentation for a in image.annotations])
        for annotation, bitmap, mask_file in zip(image.annotations, decoded, mask_files, strict=True):
            expected = np.asarray(Image.open(mask_file)) > 0
            assert np.array_equal(bitmap, expected)
            rows, cols = np.nonzero(expected)
            assert annotation.area == rows.size
            assert annotation.bbox == (
                cols.min(),
                rows.min(),
                cols.max() + 1 - cols.min(),
                rows.max() + 1 - rows.min(),
            )
    ids = [a.id for image in dataset.images for a in image.annotations]
    assert ids == list(range(1, len(ids) + 1))
    out = tmp_path / "dsb.json"
    write_coco(dataset, out)
    again = read_coco(out)  # also checks that every image is found beside the JSON, with the same size
    assert again.skipped == []
    assert [i.annotations for i in again.images] == [i.annotations for i in dataset.images]
    assert [again.image_path(i) for i in again.images] == [dataset.image_path(i) for i in dataset.images]
