"""Rules shared by every reader: polygon / RLE validity, box and area, and conversion to Instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.data.records import (
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    ProblemLog,
    bbox_and_area,
    compressed_run_lengths,
    image_record_to_instances,
    polygon_problem,
    rle_problem,
    segmentation_to_rle,
)
from instaseg.structures import masks as masks_module
from instaseg.structures.masks import decode_rle, encode_rle, rle_runs


def test_polygon_rules() -> None:
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    assert polygon_problem(square, 10, 10) is None
    assert "at least 3" in polygon_problem([[1.0, 1.0, 5.0, 5.0]], 10, 10)
    assert "odd number" in polygon_problem([[1.0, 1.0, 5.0, 5.0, 3.0]], 10, 10)
    assert "non-empty list" in polygon_problem([], 10, 10)
    assert "flat list of numbers" in polygon_problem([["1", 2, 3, 4, 5, 6]], 10, 10)
    assert "NaN" in polygon_problem([[1.0, 1.0, 5.0, float("nan"), 3.0, 3.0]], 10, 10)


def test_polygon_tolerance_is_one_pixel_beyond_each_border() -> None:
    # The image is 20 wide and 10 high: x may range over [-1, 21], y over [-1, 11].
    inside_tolerance = [[-1.0, -0.5, 21.0, 0.0, 21.0, 11.0]]
    assert polygon_problem(inside_tolerance, 10, 20) is None
    too_far_right = [[0.0, 0.0, 21.5, 0.0, 5.0, 5.0]]
    assert "outside the 20x10 image" in polygon_problem(too_far_right, 10, 20)
    too_far_up = [[0.0, -1.01, 5.0, 0.0, 5.0, 5.0]]
    assert polygon_problem(too_far_up, 10, 20) is not None


def test_rle_rules() -> None:
    bitmap = np.zeros((1, 4, 5), dtype=bool)
    bitmap[0, 1:3, 2:4] = True
    rle = encode_rle(bitmap)[0]
    assert rle_problem(rle, 4, 5) is None
    assert "differs from the image's 5x4" in rle_problem(rle, 5, 4)
    assert rle_problem({"size": [4, 5], "counts": [5, 2, 13]}, 4, 5) is None
    assert "sum to 19" in rle_problem({"size": [4, 5], "counts": [5, 2, 12]}, 4, 5)
    assert "non-negative integers" in rle_problem({"size": [4, 5], "counts": [5, -2, 17]}, 4, 5)
    assert "'size' and 'counts'" in rle_problem({"counts": "abc"}, 4, 5)
    assert "non-empty string" in rle_problem({"size": [4, 5], "counts": ""}, 4, 5)


def test_compressed_runs_are_the_masks_runs() -> None:
    generator = np.random.default_rng(0)
    bitmaps = generator.random((20, 23, 17)) < generator.random((20, 1, 1))  # sparse to dense masks
    bitmaps[0] = False
    bitmaps[1] = True
    for bitmap, rle in zip(bitmaps, encode_rle(bitmaps), strict=True):
        pixels = bitmap.flatten(order="F").astype(np.int8)  # COCO runs go down the columns, zeros first
        changes = np.flatnonzero(np.diff(np.concatenate([[0], pixels, [1 - pixels[-1]]])))
        expected = np.diff(np.concatenate([[0], changes])).tolist()
        assert compressed_run_lengths(rle["counts"].encode()) == expected


def test_compressed_rle_must_cover_the_image_exactly() -> None:
    bitmap = np.zeros((1, 10, 10), dtype=bool)
    bitmap[0, 2:5, 3:6] = True
    small = encode_rle(bitmap)[0]["counts"]  # 100 pixels of runs, declared as 20x30 = 600
    assert "sum to 100 pixels, not height * width = 600" in rle_problem(
        {"size": [20, 30], "counts": small}, 20, 30
    )
    large = encode_rle(np.zeros((1, 40, 30), dtype=bool))[0]["counts"]
    assert "sum to 1200" in rle_problem({"size": [20, 30], "counts": large}, 20, 30)
    assert "malformed runs" in rle_problem({"size": [4, 5], "counts": "0o"}, 4, 5)  # ends inside a number


def test_runs_of_many_strings_decoded_together_equal_one_by_one() -> None:
    """`rle_runs` (all masks at once, as evaluation checks them) gives each string's runs and flags exactly
    the strings that one-by-one decoding refuses: bad characters, a number cut off, an empty string."""
    generator = np.random.default_rng(1)
    bitmaps = generator.random((30, 13, 11)) < generator.random((30, 1, 1))
    counts = [rle["counts"] for rle in encode_rle(bitmaps)] + ["0o", "", "!!!", "52000"]
    runs, offsets, well_formed = rle_runs(counts)
    for k, text in enumerate(counts):
        single = compressed_run_lengths(text.encode()) if text and "!" not in text else None
        assert bool(well_formed[k]) == (single is not None)
        if single is not None:
            assert runs[offsets[k] : offsets[k + 1]].tolist() == single
    assert well_formed[:30].all() and (np.add.reduceat(runs, offsets[:-1])[:30] == 13 * 11).all()


def test_bbox_and_area_are_pixel_extent_and_count() -> None:
    bitmap = np.zeros((1, 8, 9), dtype=bool)
    bitmap[0, 2:5, 3:7] = True  # rows 2..4, columns 3..6
    bitmap[0, 6, 1] = True
    bbox, area = bbox_and_area(encode_rle(bitmap)[0])
    assert bbox == (1.0, 2.0, 6.0, 5.0)  # x from column 1 to 6 inclusive, y from row 2 to 6 inclusive
    assert area == 13


def test_segmentation_to_rle_accepts_all_three_forms() -> None:
    uncompressed = {"size": [4, 5], "counts": [5, 2, 13]}  # column-major: column 1, rows 1..2
    expected = np.zeros((4, 5), dtype=bool)
    expected[1:3, 1] = True
    compressed = segmentation_to_rle(uncompressed, 4, 5)
    assert isinstance(compressed["counts"], str)
    assert np.array_equal(decode_rle([compressed])[0], expected)
    as_bytes = {"size": [4, 5], "counts": compressed["counts"].encode()}
    assert segmentation_to_rle(as_bytes, 4, 5) == compressed
    polygon = segmentation_to_rle([[1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]], 4, 5)
    assert decode_rle([polygon])[0].sum() > 0


def test_problem_log_strict_raises_with_file_and_record() -> None:
    with pytest.raises(DatasetError, match=r"^/data/a\.json: image id=3: bad thing$") as info:
        ProblemLog(strict=True).report("/data/a.json", "image id=3", "bad thing")
    assert info.value.report.record == "image id=3"
    log = ProblemLog(strict=False)
    log.report("/data/a.json", "image id=3", "bad thing")
    assert [str(r) for r in log.reports] == ["/data/a.json: image id=3: bad thing"]


def test_image_record_to_instances() -> None:
    bitmap = np.zeros((2, 6, 7), dtype=bool)
    bitmap[0, 1:3, 1:4] = True
    bitmap[1, 4:6, 5:7] = True
    rles = encode_rle(bitmap)
    polygon = [[0.0, 0.0, 3.0, 0.0, 3.0, 2.0]]
    image = ImageRecord(
        7,
        "a.png",
        6,
        7,
        [
            AnnotationRecord(1, 3, rles[0], *bbox_and_area(rles[0])),
            AnnotationRecord(2, 5, rles[1], *bbox_and_area(rles[1]), iscrowd=1),
            AnnotationRecord(3, 3, polygon, (0.0, 0.0, 3.0, 2.0), 4.0),
        ],
    )
    instances = image_record_to_instances(image)
    assert instances.image_size == (6, 7)
    assert torch.equal(instances.labels, torch.tensor([3, 5, 3]))
    assert torch.equal(instances.fields["iscrowd"], torch.tensor([0, 1, 0]))
    assert torch.equal(instances.boxes[:2], torch.tensor([[1.0, 1.0, 4.0, 3.0], [5.0, 4.0, 7.0, 6.0]]))
    assert torch.equal(instances.masks.bitmaps()[:2], torch.from_numpy(bitmap))
    empty = image_record_to_instances(ImageRecord(8, "b.png", 6, 7, []))
    assert len(empty) == 0 and empty.masks is not None and empty.masks.image_size == (6, 7)


def test_instances_per_category_counts_every_category() -> None:
    rle = encode_rle(np.ones((1, 2, 2), dtype=bool))[0]
    images = [ImageRecord(1, "a.png", 2, 2, [AnnotationRecord(i, 2, rle, (0, 0, 2, 2), 4) for i in (1, 2)])]
    dataset = Dataset(images, [CategoryRecord(1, "cat"), CategoryRecord(2, "dog")], root=Path("."))
    assert dataset.instances_per_category() == {"cat": 0, "dog": 2}
    assert dataset.num_annotations == 2


def test_runs_decoded_in_batches_equal_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = np.random.default_rng(2)
    bitmaps = generator.random((25, 9, 7)) < generator.random((25, 1, 1))
    counts = [rle["counts"] for rle in encode_rle(bitmaps)] + ["!!", "52000"]
    whole = rle_runs(counts)
    monkeypatch.setattr(masks_module, "RLE_BATCH", 4)
    for batched, expected in zip(rle_runs(counts), whole, strict=True):
        assert np.array_equal(batched, expected)
