"""COCO JSON reader and writer: the three segmentation forms, round trips, and every bad-input rule."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from instaseg.data import coco as coco_module
from instaseg.data.coco import read_coco, write_coco
from instaseg.data.records import DatasetError
from instaseg.structures.masks import decode_rle, encode_rle

# Image 1 is 10 high and 12 wide, image 2 is 8 x 8.
SQUARE = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]


def _bitmap(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    bitmap = np.zeros((height, width), dtype=bool)
    bitmap[rows, cols] = True
    return bitmap


def _coco_dict() -> dict[str, Any]:
    rle = encode_rle(_bitmap(10, 12, slice(1, 4), slice(7, 11))[None])[0]
    column_major = _bitmap(8, 8, slice(2, 5), slice(3, 4)).flatten(order="F").astype(int)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, column_major, -1]) != 0)).tolist()  # zeros first
    return {
        "info": {"description": "test set"},
        "images": [
            {"id": 1, "file_name": "images/a.png", "height": 10, "width": 12, "license": 3},
            {"id": 2, "file_name": "images/b.png", "height": 8, "width": 8},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "iscrowd": 0, "note": "x"},
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "segmentation": rle,
                "area": 12,
                "bbox": [7, 1, 4, 3],
                "iscrowd": 1,
            },
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": {"size": [8, 8], "counts": runs}},
        ],
        "categories": [{"id": 1, "name": "cell", "supercategory": "thing"}, {"id": 2, "name": "blob"}],
    }


def _write_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "images" / "b.png")


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def coco_file(tmp_path: Path) -> Path:
    _write_images(tmp_path)
    return _write_json(tmp_path / "ann.json", _coco_dict())


def test_reads_polygons_compressed_and_uncompressed_rle(coco_file: Path) -> None:
    dataset = read_coco(coco_file)
    assert dataset.skipped == []
    assert dataset.root == coco_file.parent
    assert [c.name for c in dataset.categories] == ["cell", "blob"]
    assert dataset.extra == {"info": {"description": "test set"}}
    first, second = dataset.images
    assert (first.height, first.width, first.extra) == (10, 12, {"license": 3})
    polygon, crowd = first.annotations
    assert polygon.segmentation == SQUARE
    assert polygon.area == 16 and polygon.bbox == (2.0, 2.0, 4.0, 4.0)  # computed: not in the JSON
    assert polygon.extra == {"note": "x"}
    assert crowd.iscrowd == 1 and crowd.area == 12 and crowd.bbox == (7, 1, 4, 3)
    (uncompressed,) = second.annotations
    assert isinstance(uncompressed.segmentation["counts"], str)  # now compressed
    decoded = decode_rle([uncompressed.segmentation])[0]
    assert np.array_equal(decoded, _bitmap(8, 8, slice(2, 5), slice(3, 4)))
    assert uncompressed.bbox == (3.0, 2.0, 1.0, 3.0) and uncompressed.area == 3


def test_write_then_read_gives_the_same_dataset(coco_file: Path, tmp_path: Path) -> None:
    dataset = read_coco(coco_file)
    out = tmp_path / "copy.json"
    write_coco(dataset, out)
    again = read_coco(out)
    assert again.images == dataset.images
    assert again.categories == dataset.categories
    assert again.extra == dataset.extra
    written = json.loads(out.read_text())
    assert all(
        isinstance(a["segmentation"], list) or isinstance(a["segmentation"]["counts"], str)
        for a in written["annotations"]
    )
    assert [a["image_id"] for a in written["annotations"]] == [1, 1, 2]


def test_writing_elsewhere_keeps_images_reachable(coco_file: Path, tmp_path: Path) -> None:
    dataset = read_coco(coco_file)
    out = tmp_path / "runs" / "deep" / "out.json"
    write_coco(dataset, out)
    again = read_coco(out)  # checks that every image file exists with the JSON's size
    assert again.skipped == []
    assert again.images[0].file_name == "../../images/a.png"
    for before, after in zip(dataset.images, again.images, strict=True):
        assert os.path.samefile(dataset.image_path(before), again.image_path(after))


def test_writing_into_a_symlinked_folder_keeps_images_reachable(coco_file: Path, tmp_path: Path) -> None:
    (tmp_path / "scratch" / "deep").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(tmp_path / "scratch" / "deep")  # runs/.. is scratch/, not tmp_path
    write_coco(read_coco(coco_file), tmp_path / "runs" / "out.json")
    again = read_coco(tmp_path / "runs" / "out.json")
    assert again.skipped == [] and len(again.images) == 2


def test_image_root_parameter(coco_file: Path, tmp_path: Path) -> None:
    data = _coco_dict()
    for image in data["images"]:
        image["file_name"] = image["file_name"].removeprefix("images/")
    moved = _write_json(tmp_path / "elsewhere.json", data)
    assert len(read_coco(moved, tmp_path / "images").images) == 2
    with pytest.raises(DatasetError, match="no such file"):
        read_coco(moved, strict=True)


def test_write_is_atomic(coco_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = read_coco(coco_file)
    before = coco_file.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(coco_module.json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        write_coco(dataset, coco_file)
    assert coco_file.read_bytes() == before
    assert sorted(p.name for p in coco_file.parent.iterdir()) == ["ann.json", "images"]


def test_written_file_has_the_usual_permissions(coco_file: Path, tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_coco(read_coco(coco_file), tmp_path / "out.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644  # not a private temporary file's 0600


def test_writer_refuses_duplicate_ids(coco_file: Path, tmp_path: Path) -> None:
    dataset = read_coco(coco_file)
    dataset.images[1].id = 1
    with pytest.raises(DatasetError, match="image id=1: duplicate image id"):
        write_coco(dataset, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the COCO dict: `path` like 'annotations.0.segmentation'."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _append(key: str, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda data: data[key].append(copy.deepcopy(entry))


# (mutation, the record the report must name, a fragment of the reason, how many records survive)
BAD_RECORDS = {
    "duplicate image id": (
        _append("images", {"id": 2, "file_name": "images/a.png", "height": 10, "width": 12}),
        "image id=2 (index 2)",
        "duplicate image id 2",
    ),
    "duplicate annotation id": (
        _append("annotations", {"id": 11, "image_id": 2, "category_id": 1, "segmentation": SQUARE}),
        "annotation id=11 (index 3)",
        "duplicate annotation id 11",
    ),
    "missing image": (
        _set("annotations.0.image_id", 99),
        "annotation id=10 (index 0)",
        "points at missing image id 99",
    ),
    "missing category": (
        _set("annotations.2.category_id", 7),
        "annotation id=12 (index 2)",
        "points at missing category id 7",
    ),
    "polygon with 2 points": (
        _set("annotations.0.segmentation", [[1.0, 1.0, 5.0, 5.0]]),
        "annotation id=10 (index 0)",
        "polygon 0 has 2 point(s); a polygon needs at least 3",
    ),
    "polygon outside the image": (
        _set("annotations.0.segmentation", [[2.0, 2.0, 14.5, 2.0, 6.0, 6.0]]),
        "annotation id=10 (index 0)",
        "outside the 12x10 image by more than 1 px",
    ),
    "polygon covering no pixel": (
        _set("annotations.0.segmentation", [[2.0, 2.0, 4.0, 2.0, 6.0, 2.0]]),
        "annotation id=10 (index 0)",
        "covers no pixel",
    ),
    "RLE of another size": (
        _set("annotations.2.segmentation", {"size": [8, 9], "counts": [72]}),
        "annotation id=12 (index 2)",
        "RLE size 8x9 (HxW) differs from the image's 8x8",
    ),
    "garbled RLE counts": (
        _set("annotations.1.segmentation", {"size": [10, 12], "counts": "!!!"}),
        "annotation id=11 (index 1)",
        "compressed RLE 'counts' do not describe a 10x12 mask",
    ),
    "bad iscrowd": (
        _set("annotations.0.iscrowd", 2),
        "annotation id=10 (index 0)",
        "'iscrowd' must be 0 or 1",
    ),
    "bad bbox": (_set("annotations.1.bbox", [1, 2, -3, 4]), "annotation id=11 (index 1)", "width and height"),
    "image without height": (
        _set("images.1.height", None),
        "image id=2 (index 1)",
        "positive integer 'height' and 'width'",
    ),
    "duplicate category id": (
        _append("categories", {"id": 2, "name": "again"}),
        "category id=2 (index 2)",
        "duplicate category id 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_raise_in_strict_mode(coco_file: Path, case: str) -> None:
    mutate, record, reason = BAD_RECORDS[case]
    data = _coco_dict()
    mutate(data)
    _write_json(coco_file, data)
    with pytest.raises(DatasetError) as info:
        read_coco(coco_file, strict=True)
    assert str(coco_file) in str(info.value)
    assert record in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_are_skipped_and_listed(coco_file: Path, case: str) -> None:
    mutate, record, reason = BAD_RECORDS[case]
    data = _coco_dict()
    mutate(data)
    _write_json(coco_file, data)
    dataset = read_coco(coco_file)
    matching = [r for r in dataset.skipped if r.record == record and reason in r.reason]
    assert len(matching) == 1 and matching[0].path == str(coco_file), dataset.skipped
    kept_annotations = {a.id for image in dataset.images for a in image.annotations}
    kept_records = len(dataset.images) + len(kept_annotations) + len(dataset.categories)
    total = sum(len(data[key]) for key in ("images", "annotations", "categories"))
    # Every record is either kept or reported (an image's annotations are reported with it).
    assert kept_records + len(dataset.skipped) == total


def test_annotations_of_a_skipped_image_are_reported(coco_file: Path) -> None:
    (coco_file.parent / "images" / "a.png").unlink()
    dataset = read_coco(coco_file)
    assert [image.id for image in dataset.images] == [2]
    reasons = {r.record: r.reason for r in dataset.skipped}
    assert "no such file" in reasons["image id=1 (index 0)"]
    assert str(coco_file.parent / "images" / "a.png") in reasons["image id=1 (index 0)"]
    assert reasons["annotation id=10 (index 0)"] == "its image id 1 was skipped"
    assert reasons["annotation id=11 (index 1)"] == "its image id 1 was skipped"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.unlink(), "no such file"),
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_text("not an image"), "not an image"),
        (_truncate, "truncated"),
        (lambda p: Image.new("RGB", (12, 11)).save(p), "is 11x12 (HxW) but the JSON says 10x12"),
    ],
    ids=["missing", "zero-byte", "not-an-image", "truncated", "wrong-size"],
)
def test_bad_image_files(coco_file: Path, damage: Callable[[Path], None], reason: str) -> None:
    image_path = coco_file.parent / "images" / "a.png"
    damage(image_path)
    with pytest.raises(DatasetError, match=r"image id=1 \(index 0\)") as info:
        read_coco(coco_file, strict=True)
    assert reason in str(info.value) and str(coco_file) in str(info.value)
    dataset = read_coco(coco_file)
    assert [image.id for image in dataset.images] == [2]
    assert reason in dataset.skipped[0].reason and dataset.skipped[0].record == "image id=1 (index 0)"


def test_truncation_needs_a_full_decode(coco_file: Path) -> None:
    _truncate(coco_file.parent / "images" / "a.png")
    assert len(read_coco(coco_file, decode_images=False).images) == 2  # the header alone is intact
    assert len(read_coco(coco_file, check_images=False).images) == 2


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not readable as JSON"),
        ("[]", "JSON object at the top level"),
        ('{"images": [], "categories": []}', "no 'annotations' list"),
    ],
)
def test_unusable_files_always_raise(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=reason) as info:
        read_coco(path)
    assert str(path) in str(info.value)
    with pytest.raises(DatasetError, match="no such file"):
        read_coco(tmp_path / "missing.json")
