"""YOLO segmentation reader: normalised polygons, class names, bad lines, and real nuclei outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.records import DatasetError
from instaseg.data.yolo import read_class_names, read_yolo
from instaseg.structures.masks import bitmap_to_polygons, decode_rle, polygons_to_rle


def _image(path: Path, size_hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (*size_hw, 3), dtype=np.uint8)).save(path)


def _labels(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# On the 10 x 20 (H x W) image: x 0.1..0.4 -> 2..8 px, y 0.2..0.6 -> 2..6 px: a 6 x 4 rectangle.
RECTANGLE = "0.1 0.2 0.4 0.2 0.4 0.6 0.1 0.6"


@pytest.fixture()
def yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.png", (10, 20))
    _labels(root / "labels" / "train" / "a.txt", [f"0 {RECTANGLE}", "", "1 0 0 0.5 0 0.5 0.5"])
    _image(root / "images" / "val" / "b.jpg", (8, 8))  # no label file: a background image
    (root / "classes.txt").write_text("cell\nblob\n\n")
    return root


def test_reads_polygons_in_pixels(yolo_root: Path) -> None:
    dataset = read_yolo(yolo_root)
    assert dataset.skipped == []
    assert [(c.id, c.name) for c in dataset.categories] == [(1, "cell"), (2, "blob")]
    a, b = dataset.images
    assert (a.id, a.file_name, a.height, a.width) == (1, "images/train/a.png", 10, 20)
    assert (b.id, b.file_name, b.annotations) == (2, "images/val/b.jpg", [])
    rectangle, triangle = a.annotations
    assert rectangle.segmentation == [[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]]
    assert (rectangle.id, rectangle.category_id, rectangle.area, rectangle.bbox) == (
        1,
        1,
        24,
        (2.0, 2.0, 6.0, 4.0),
    )
    assert (triangle.id, triangle.category_id) == (2, 2)
    assert triangle.segmentation == [[0.0, 0.0, 10.0, 0.0, 10.0, 5.0]]


def test_files_saved_with_a_byte_order_mark_read_like_plain_utf8(yolo_root: Path) -> None:
    plain = read_yolo(yolo_root)
    for path in [yolo_root / "classes.txt", yolo_root / "labels" / "train" / "a.txt"]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows Notepad saves UTF-8
    marked = read_yolo(yolo_root)
    assert marked.skipped == []
    assert [c.name for c in marked.categories] == ["cell", "blob"]
    assert marked.images[0].annotations == plain.images[0].annotations


def test_class_names_from_data_yaml(yolo_root: Path) -> None:
    (yolo_root / "classes.txt").unlink()
    (yolo_root / "data.yaml").write_text("path: .\nnames:\n  0: cell\n  1: blob\n")
    assert read_class_names(yolo_root) == ["cell", "blob"]
    (yolo_root / "data.yaml").write_text("names: [cell, blob]\n")
    assert [c.name for c in read_yolo(yolo_root).categories] == ["cell", "blob"]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({}, "no classes.txt or data.yaml"),
        ({"classes.txt": "cell\n\nblob\n"}, "line 2: empty class name"),
        ({"data.yaml": "names: {0: cell, 2: blob}\n"}, "keys must be the class indices 0..1"),
        ({"data.yaml": "names: [\n"}, "not readable as YAML"),
        ({"classes.txt": "cell\n", "data.yaml": "names: [cell, blob]\n"}, "differ from the 'names'"),
    ],
)
def test_bad_class_names(tmp_path: Path, files: dict[str, str], reason: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError) as info:
        read_class_names(tmp_path)
    assert reason in str(info.value) and str(tmp_path) in str(info.value)


BAD_LINES = {
    "two points": ("0 0.1 0.1 0.5 0.5", "polygon 0 has 2 point(s); a polygon needs at least 3"),
    "odd coordinates": ("0 0.1 0.1 0.5 0.5 0.3", "odd number of coordinates"),
    "class out of range": (f"2 {RECTANGLE}", "class 2 is not among the 2 class names"),
    "class not an integer": (f"cell {RECTANGLE}", "class 'cell' is not an integer"),
    "coordinate not a number": ("0 0.1 0.2 x 0.2 0.4 0.6", "coordinates must be numbers"),
    "beyond the tolerance": ("0 0.1 0.2 1.06 0.2 0.4 0.6", "outside the 20x10 image by more than 1 px"),
    "no area": ("0 0.1 0.2 0.2 0.2 0.3 0.2", "covers no pixel"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_lines(yolo_root: Path, case: str) -> None:
    line, reason = BAD_LINES[case]
    label_file = yolo_root / "labels" / "train" / "a.txt"
    _labels(label_file, [f"0 {RECTANGLE}", line])
    with pytest.raises(DatasetError) as info:
        read_yolo(yolo_root, strict=True)
    assert f"{label_file}: image 'train/a.png', line 2: " in str(info.value)
    assert reason in str(info.value)
    dataset = read_yolo(yolo_root)
    assert [(r.path, r.record) for r in dataset.skipped] == [(str(label_file), "image 'train/a.png', line 2")]
    assert reason in dataset.skipped[0].reason
    assert [a.bbox for a in dataset.images[0].annotations] == [(2.0, 2.0, 6.0, 4.0)]  # line 1 is kept


def test_sub_pixel_overshoot_is_accepted(yolo_root: Path) -> None:
    # x from -0.8 to 20.8 px and y to 10.9 px on the 20 x 10 image: within the 1 px tolerance.
    _labels(yolo_root / "labels" / "train" / "a.txt", ["0 -0.04 0.2 1.04 0.2 1.04 1.09 -0.04 1.09"])
    dataset = read_yolo(yolo_root, strict=True)
    assert dataset.images[0].annotations[0].bbox == (0.0, 2.0, 20.0, 8.0)  # clipped by rasterisation


def test_label_file_without_image_and_bad_images(yolo_root: Path) -> None:
    orphan = yolo_root / "labels" / "train" / "zzz.txt"
    _labels(orphan, [f"0 {RECTANGLE}"])
    image = yolo_root / "images" / "val" / "b.jpg"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DatasetError) as info:
        read_yolo(yolo_root, strict=True)
    assert f"{image}: image 'val/b.jpg': " in str(info.value)
    dataset = read_yolo(yolo_root)
    assert [i.file_name for i in dataset.images] == ["images/train/a.png"]
    assert [(r.path, r.record) for r in dataset.skipped] == [
        (str(image), "image 'val/b.jpg'"),
        (str(orphan), "label file"),
    ]
    assert "no image in images/" in dataset.skipped[1].reason


def test_real_nuclei_outlines(dsb_root: Path, dsb_image_ids: list[str], tmp_path: Path) -> None:
    """Nuclei masks -> polygons -> normalised YOLO lines -> reader: the same pixels come back."""
    (tmp_path / "classes.txt").write_text("nucleus\n")
    expected = []
    for image_id in dsb_image_ids[:1]:
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{image_id}.png").symlink_to(
            dsb_root / image_id / "images" / f"{image_id}.png"
        )
        lines = []
        for mask_path in sorted((dsb_root / image_id / "masks").glob("*.png")):
            mask = np.asarray(Image.open(mask_path)) > 0
            height, width = mask.shape
            polygons = bitmap_to_polygons(mask)
            if len(polygons) != 1:
                continue  # YOLO holds one polygon per object
            expected.append(mask)
            coords = [v / (width if i % 2 == 0 else height) for i, v in enumerate(polygons[0])]
            lines.append("0 " + " ".join(f"{v:.8f}" for v in coords))
        _labels(tmp_path / "labels" / f"{image_id}.txt", lines)
    dataset = read_yolo(tmp_path, strict=True)
    read_back = [
        decode_rle([polygons_to_rle(a.segmentation, image.height, image.width)])[0]
        for image in dataset.images
        for a in image.annotations
    ]
    assert len(read_back) == len(expected) >= 5
    ious = [(got & want).sum() / (got | want).sum() for got, want in zip(read_back, expected, strict=True)]
    assert min(ious) > 0.98, sorted(ious)[:3]
