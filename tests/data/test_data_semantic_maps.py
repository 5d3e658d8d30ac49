"""Semantic label maps (class-index PNGs): classes as stuff or thing segments, the round trip through COCO,
and bad input named by file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.coco import read_coco, write_coco
from instaseg.data.records import DatasetError
from instaseg.data.semantic_maps import read_semantic_label_maps
from instaseg.structures.masks import decode_rle


def _image(path: Path, size_hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size_hw, 3), dtype=np.uint8)).save(path)


def _class_map(path: Path, class_map: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(class_map).save(path)


def _synthetic_maps(seed: int, size_hw: tuple[int, int]) -> np.ndarray:
    """A class map: void (0) border, bands of classes 1-3, and two separate blobs of class 4 (a thing)."""
    rng = np.random.default_rng(seed)
    height, width = size_hw
    class_map = np.zeros(size_hw, dtype=np.uint8)
    rows = np.sort(rng.choice(np.arange(2, height - 2), 2, replace=False))
    class_map[1 : rows[0], 1:-1] = 1
    class_map[rows[0] : rows[1], 1:-1] = 2
    class_map[rows[1] : -1, 1:-1] = 3
    class_map[2:4, 2:4] = 4
    class_map[-4:-2, -4:-2] = 4
    return class_map


@pytest.fixture()
def semantic_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "scenes"
    maps = {"a": _synthetic_maps(0, (16, 20)), "b": _synthetic_maps(1, (12, 9))}
    maps["b"][maps["b"] == 4] = 2  # no thing in the second image
    for name, class_map in maps.items():
        _image(root / "images" / f"{name}.png", class_map.shape)
        _class_map(root / "labels" / f"{name}.png", class_map)
    categories = [
        {"id": 1, "name": "sky"},
        {"id": 2, "name": "grass", "isthing": 0},
        {"id": 3, "name": "road", "supercategory": "ground"},
        {"id": 4, "name": "car", "isthing": 1},
    ]
    (root / "categories.json").write_text(json.dumps(categories))
    return root, maps


def test_round_trip_through_coco_gives_the_maps_back(
    semantic_root: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, maps = semantic_root
    dataset = read_semantic_label_maps(root, categories=root / "categories.json")
    assert dataset.skipped == []
    write_coco(dataset, tmp_path / "out" / "coco.json")
    written = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert [(c["id"], c["isthing"]) for c in written["categories"]] == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert written["categories"][2]["supercategory"] == "ground"
    again = read_coco(tmp_path / "out" / "coco.json")
    for image in again.images:
        class_map = maps[Path(image.file_name).stem]
        rebuilt = np.zeros_like(class_map)
        for annotation in image.annotations:
            mask = decode_rle([annotation.segmentation])[0]
            assert not rebuilt[mask].any()  # segments do not overlap
            rebuilt[mask] = annotation.category_id
            assert annotation.iscrowd == 0 and annotation.area == mask.sum()
        np.testing.assert_array_equal(rebuilt, class_map)
    first = next(image for image in again.images if image.file_name.endswith("a.png"))
    per_category = [a.category_id for a in first.annotations]
    assert per_category == [1, 2, 3, 4, 4]  # one region per stuff class, one per connected car


def test_category_names_give_stuff_ids_from_one(tmp_path: Path) -> None:
    root = tmp_path / "maps"
    class_map = np.full((6, 7), 255, dtype=np.uint8)  # 255: void
    class_map[:3] = 0  # with another ignore index, 0 is a class: background
    class_map[3:, 2:] = 1
    _image(root / "img" / "x.jpg", class_map.shape)
    _class_map(root / "cls" / "x_sem.png", class_map)
    categories = root / "categories.json"
    categories.write_text(
        json.dumps({"categories": [{"id": 0, "name": "background"}, {"id": 1, "name": "a"}]})
    )
    dataset = read_semantic_label_maps(
        root, categories=categories, ignore_index=255, images_dir="img", masks_dir="cls", mask_suffix="_sem"
    )
    assert [(a.category_id, a.area) for a in dataset.images[0].annotations] == [(0, 21), (1, 15)]
    class_map[class_map == 0] = 2
    _class_map(root / "cls" / "x_sem.png", class_map)
    dataset = read_semantic_label_maps(
        root,
        category_names=["a", "b"],
        ignore_index=255,
        images_dir="img",
        masks_dir="cls",
        mask_suffix="_sem",
    )
    assert [(c.id, c.name, c.extra) for c in dataset.categories] == [
        (1, "a", {"isthing": 0}),
        (2, "b", {"isthing": 0}),
    ]
    assert [(a.category_id, a.area) for a in dataset.images[0].annotations] == [(1, 15), (2, 21)]


def _break(root: Path, change: str) -> Path:
    """Make one image's input bad; returns the file the error must name."""
    label = root / "labels" / "b.png"
    if change == "size":
        _class_map(label, np.ones((5, 5), dtype=np.uint8))
    elif change == "unknown class":
        class_map = np.asarray(Image.open(label)).copy()
        class_map[0, 0] = 9
        _class_map(label, class_map)
    elif change == "unreadable":
        label.write_bytes(b"not a png")
    elif change == "rgb":
        Image.fromarray(np.zeros((12, 9, 3), np.uint8)).save(label)
    elif change == "missing":
        label.unlink()
    elif change == "orphan":
        label = root / "labels" / "c.png"
        _class_map(label, np.ones((3, 3), dtype=np.uint8))
    return label


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("size", "class map is 5x5 (WxH) but its image is 9x12"),
        (
            "unknown class",
            "class map holds value(s) 9 with no category (category ids 1, 2, 3, 4; ignore index 0)",
        ),
        ("unreadable", "unreadable class map PNG"),
        ("rgb", "class map has 3 channels"),
        ("missing", "no class map for this image"),
        ("orphan", "no image in images/ for this class map"),
    ],
)
def test_bad_input_names_the_file(
    semantic_root: tuple[Path, dict[str, np.ndarray]], change: str, reason: str
) -> None:
    root, _ = semantic_root
    bad = _break(root, change)
    dataset = read_semantic_label_maps(root, categories=root / "categories.json")
    (report,) = dataset.skipped
    assert report.path == str(bad) and reason in report.reason
    kept = {Path(image.file_name).stem for image in dataset.images}
    assert kept == ({"a", "b"} if change == "orphan" else {"a"})
    with pytest.raises(DatasetError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_semantic_label_maps(root, categories=root / "categories.json", strict=True)


@pytest.mark.parametrize(
    ("categories", "options", "message"),
    [
        (None, {}, "give exactly one of a categories file and a list of category names"),
        ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], {}, r"categories\[1\]: duplicate category id 1"),
        ([{"id": 1, "name": "a", "isthing": 2}], {}, r"'isthing' must be 0 or 1, got 2"),
        ([{"id": "1", "name": "a"}], {}, "'id' must be a non-negative integer"),
        ([{"id": 1}], {}, "needs a non-empty 'name'"),
        ([{"id": 0, "name": "a"}], {}, "is the ignore index 0: its pixels would be void"),
        ([], {}, "needs a non-empty list of categories"),
        ([{"id": 1, "name": "a"}], {"category_names": ["a"]}, "give exactly one of"),
    ],
)
def test_bad_categories_raise_naming_the_file(
    semantic_root: tuple[Path, dict[str, np.ndarray]], categories: list | None, options: dict, message: str
) -> None:
    root, _ = semantic_root
    path = None
    if categories is not None:
        path = root / "bad_categories.json"
        path.write_text(json.dumps(categories))
    with pytest.raises(DatasetError, match=message) as info:
        read_semantic_label_maps(root, categories=path, **options)
    if path is not None:
        assert str(path) in str(info.value)
