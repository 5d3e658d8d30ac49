"""`convert`: every source format to COCO JSON, the summary, option checks and strict mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.coco import read_coco
from instaseg.data.convert import convert, format_convert_summary
from instaseg.data.records import DatasetError


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[rows, cols] = 255
    return mask


IMAGE = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _mask_folders(root: Path) -> Path:
    _png(root / "s1" / "images" / "s1.png", IMAGE)
    _png(root / "s1" / "masks" / "a.png", _mask(slice(0, 3), slice(0, 3)))
    _png(root / "s1" / "masks" / "b.png", _mask(slice(5, 9), slice(5, 7)))
    _png(root / "s2" / "images" / "s2.png", IMAGE)
    _png(root / "s2" / "masks" / "empty.png", np.zeros((12, 16), np.uint8))
    return root


def _label_maps(root: Path) -> Path:
    _png(root / "PNGImages" / "p1.png", IMAGE)
    label_map = (_mask(slice(0, 3), slice(0, 3)) // 255) + 2 * (_mask(slice(5, 9), slice(5, 7)) // 255)
    _png(root / "PedMasks" / "p1_mask.png", label_map)
    return root


def _yolo(root: Path) -> Path:
    _png(root / "images" / "y1.png", IMAGE)
    (root / "labels").mkdir()
    (root / "labels" / "y1.txt").write_text("1 0 0 0.5 0 0.5 0.5\n0 0.1 0.1 0.2\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_mask_folders_to_coco(tmp_path: Path) -> None:
    source = _mask_folders(tmp_path / "src")
    out = tmp_path / "out" / "train.json"
    summary = convert("mask-folders", source, out, category_name="nucleus")
    assert (summary.num_images, summary.num_annotations) == (2, 2)
    assert summary.instances_per_category == {"nucleus": 2}
    assert [(r.path, r.record) for r in summary.skipped] == [
        (str(source / "s2" / "masks" / "empty.png"), "image 's2', mask 'empty'")
    ]
    written = json.loads(out.read_text())
    assert [a["area"] for a in written["annotations"]] == [9, 8]
    assert [a["bbox"] for a in written["annotations"]] == [[0, 0, 3, 3], [5, 5, 2, 4]]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in written["annotations"])
    assert read_coco(out).skipped == []  # the images are found from the output's folder
    text = format_convert_summary(summary)
    assert "images: 2" in text and "  nucleus: 2" in text and "skipped: 1" in text
    assert f"{source / 's2' / 'masks' / 'empty.png'}: image 's2', mask 'empty': empty mask" in text


def test_label_maps_yolo_and_coco_to_coco(tmp_path: Path) -> None:
    summary = convert("label-maps", _label_maps(tmp_path / "lm"), tmp_path / "lm.json")
    assert (summary.num_annotations, summary.instances_per_category) == (2, {"object": 2})
    summary = convert("yolo", _yolo(tmp_path / "yolo"), tmp_path / "yolo.json")
    assert summary.instances_per_category == {"cat": 0, "dog": 1}
    assert [r.record for r in summary.skipped] == ["image 'y1.png', line 2"]
    again = convert("coco", tmp_path / "yolo.json", tmp_path / "copy" / "yolo.json")
    assert (again.num_images, again.num_annotations, again.skipped) == (1, 1, [])
    assert read_coco(tmp_path / "copy" / "yolo.json").images[0].file_name == "../yolo/images/y1.png"


def test_strict_conversion_writes_nothing(tmp_path: Path) -> None:
    source = _mask_folders(tmp_path / "src")
    out = tmp_path / "out.json"
    with pytest.raises(DatasetError, match="image 's2', mask 'empty': empty mask"):
        convert("mask-folders", source, out, strict=True)
    assert not out.exists()


def test_options_must_fit_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category_name do not apply to the yolo format"):
        convert("yolo", tmp_path, tmp_path / "out.json", category_name="x")
    with pytest.raises(ValueError, match="unknown source format 'voc'"):
        convert("voc", tmp_path, tmp_path / "out.json")
