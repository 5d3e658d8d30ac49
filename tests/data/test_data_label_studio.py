"""Label Studio: the brush RLE codec (checked against label-studio-sdk's), tasks out, JSON exports in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from instaseg.data.coco import read_coco
from instaseg.data.convert import convert
from instaseg.data.label_studio import (
    decode_brush_rle,
    encode_brush_rle,
    label_config,
    read_label_studio,
    tasks_from_dataset,
)
from instaseg.data.records import Dataset, DatasetError, image_record_to_instances
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.structures.masks import Masks, decode_rle, polygons_to_rle

# label-studio-sdk 2.1.2's `converter.brush.mask2rle` of REFERENCE_MASK * 255 (computed once with that
# package, which instaseg does not depend on).
REFERENCE_RLE = [0, 0, 0, 140, 57, 27, 254, 35, 0, 183, 255, 124, 2, 223, 254, 59, 0, 143, 252]


def _reference_mask() -> np.ndarray:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:5] = True
    mask[4, 6] = True
    return mask


def test_encoding_matches_label_studio_sdk() -> None:
    assert encode_brush_rle(_reference_mask()) == REFERENCE_RLE


def test_decoding_the_reference_gives_the_mask_back() -> None:
    assert np.array_equal(decode_brush_rle(REFERENCE_RLE, 5, 7), _reference_mask())


@pytest.mark.parametrize("shape", [(1, 1), (64, 48), (300, 400), (3, 30000)])
def test_brush_round_trip_is_lossless(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(0).random(shape) > 0.6
    mask[: shape[0] // 2] = False  # a long background run: chunks of 2^16 values
    assert np.array_equal(decode_brush_rle(encode_brush_rle(mask), *shape), mask)


def test_literal_chunks_as_the_editor_writes_them_decode() -> None:
    # A 1x2 image whose pixels are (10, 20, 30, 255) and (0, 0, 0, 0): one literal chunk of 4 words, then a
    # repeat chunk of 4 zeros; header: count 8, word size 8, field sizes 3, 4, 8, 16.
    bits = f"{8:032b}{7:05b}{2:04b}{3:04b}{7:04b}{15:04b}"
    bits += "0" + "00" + f"{3:03b}" + "".join(f"{v:08b}" for v in (10, 20, 30, 255))
    bits += "1" + "00" + f"{3:03b}" + f"{0:08b}"
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_brush_rle(rle, 1, 2).tolist() == [[True, False]]


def test_a_brush_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"brush holds 140 values, but a 8x5 \(WxH\) RGBA image has 160"):
        decode_brush_rle(REFERENCE_RLE, 5, 8)


def test_a_cut_brush_is_refused() -> None:
    with pytest.raises(ValueError, match="ends in the middle of a run"):
        decode_brush_rle(REFERENCE_RLE[:-4], 5, 7)


def test_label_config_names_the_categories(tmp_path: Path) -> None:
    dataset = read_coco(make_synthetic_dataset(tmp_path, 1), strict=True)
    xml = label_config(dataset.categories, "polygon")
    assert '<PolygonLabels name="label" toName="image">' in xml
    assert '<Label value="ellipse"/>' in xml and '<Label value="rectangle"/>' in xml


def _annotated_export(tasks: list[dict], path: Path) -> Path:
    """Turn exported pre-annotation tasks into what Label Studio exports once each draft is accepted."""
    for task_id, task in enumerate(tasks, start=1):
        task["id"] = task_id
        task["annotations"] = [{"id": 100 + task_id, "result": task.pop("predictions")[0]["result"]}]
    path.write_text(json.dumps(tasks))
    return path


def _masks(dataset: Dataset) -> list[np.ndarray]:
    return [image_record_to_instances(image).masks.bitmaps().numpy() for image in dataset.images]


def test_tasks_round_trip_brushes_losslessly(tmp_path: Path) -> None:
    original = read_coco(make_synthetic_dataset(tmp_path / "data", 6, num_negatives=1), strict=True)
    tasks = tasks_from_dataset(original, form="brush")
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/0000.png"
    back = read_label_studio(_annotated_export(tasks, tmp_path / "data" / "export.json"), strict=True)
    assert [image.file_name for image in back.images] == [image.file_name for image in original.images]
    assert [c.name for c in back.categories] == ["ellipse", "rectangle"]
    for before, after in zip(_masks(original), _masks(back), strict=True):
        assert np.array_equal(before, after)
    names = {c.id: c.name for c in original.categories}
    back_names = {c.id: c.name for c in back.categories}
    for before, after in zip(original.images, back.images, strict=True):
        assert [names[a.category_id] for a in before.annotations] == [
            back_names[a.category_id] for a in after.annotations
        ]


def test_tasks_round_trip_polygons_within_tolerance(tmp_path: Path) -> None:
    # Vertices come back within 1e-9 px; each object's parts rasterise back to its mask with holes filled
    # (overlapping synthetic shapes can cut a hole or split an earlier one into parts).
    original = read_coco(make_synthetic_dataset(tmp_path / "data", 6), strict=True)
    tasks = tasks_from_dataset(original, form="polygon")
    back = read_label_studio(_annotated_export(tasks, tmp_path / "data" / "export.json"), strict=True)
    for before, after in zip(original.images, back.images, strict=True):
        size = (before.height, before.width)
        parts = [Masks.from_rles([a.segmentation], size).polygons()[0] for a in before.annotations]
        read = [a.segmentation for a in after.annotations]
        assert len(read) == sum(len(p) for p in parts)
        flat = [part for object_parts in parts for part in object_parts]
        for expected, got in zip(flat, read, strict=True):
            assert len(got) == 1
            np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-9)
        position = 0
        for annotation, object_parts in zip(before.annotations, parts, strict=True):
            mask = decode_rle([annotation.segmentation], size)[0]
            rasterised = np.zeros(size, dtype=bool)
            for segmentation in read[position : position + len(object_parts)]:
                rasterised |= decode_rle([polygons_to_rle(segmentation, *size)], size)[0]
            position += len(object_parts)
            assert np.array_equal(rasterised, ndimage.binary_fill_holes(mask))


def _one_image_export(tmp_path: Path, results: list[dict], **task: object) -> Path:
    Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(tmp_path / "cells.png")
    brush = {
        "id": "r1",
        "type": "brushlabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 7,
        "original_height": 5,
        "value": {"format": "rle", "rle": REFERENCE_RLE, "brushlabels": ["nucleus"]},
    }
    entry = {"id": 3, "data": {"image": "/data/local-files/?d=cells.png"}, "annotations": [{"id": 9}]}
    entry["annotations"][0]["result"] = [brush, *results]
    entry.update(task)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([entry]))
    return path


def test_a_brush_export_reads_as_one_object(tmp_path: Path) -> None:
    dataset = read_label_studio(_one_image_export(tmp_path, []), strict=True)
    (image,) = dataset.images
    assert (image.id, image.file_name, image.height, image.width) == (3, "cells.png", 5, 7)
    assert np.array_equal(decode_rle([image.annotations[0].segmentation], (5, 7))[0], _reference_mask())
    assert image.annotations[0].bbox == (2.0, 1.0, 5.0, 4.0)
    assert [(c.id, c.name) for c in dataset.categories] == [(1, "nucleus")]


def test_an_unknown_result_type_skips_the_whole_task_naming_it(tmp_path: Path) -> None:
    rectangle = {"id": "r2", "type": "rectanglelabels", "value": {"rectanglelabels": ["nucleus"]}}
    path = _one_image_export(tmp_path, [rectangle])
    dataset = read_label_studio(path)
    assert dataset.images == []
    (report,) = dataset.skipped
    assert report.record == "task id=3 (index 0), result r2"
    assert "result type 'rectanglelabels' is not supported" in report.reason
    with pytest.raises(DatasetError, match=r"export.json: task id=3 \(index 0\), result r2: result type"):
        read_label_studio(path, strict=True)


def test_a_brush_of_the_wrong_size_skips_the_task(tmp_path: Path) -> None:
    wrong = {
        "id": "r2",
        "type": "brushlabels",
        "original_width": 8,
        "original_height": 5,
        "value": {"format": "rle", "rle": REFERENCE_RLE, "brushlabels": ["nucleus"]},
    }
    (report,) = read_label_studio(_one_image_export(tmp_path, [wrong])).skipped
    assert "drawn on a 8x5 (WxH) image, but the image file is 7x5" in report.reason
    wrong.update(original_width=7, value={**wrong["value"], "rle": encode_brush_rle(np.ones((5, 8), bool))})
    (report,) = read_label_studio(_one_image_export(tmp_path, [wrong])).skipped
    assert "brush holds 160 values, but a 7x5 (WxH) RGBA image has 140" in report.reason


def test_an_empty_brush_skips_only_that_object(tmp_path: Path) -> None:
    empty = {
        "id": "r2",
        "type": "brushlabels",
        "original_width": 7,
        "original_height": 5,
        "value": {"format": "rle", "rle": encode_brush_rle(np.zeros((5, 7), bool)), "brushlabels": ["x"]},
    }
    dataset = read_label_studio(_one_image_export(tmp_path, [empty]))
    assert len(dataset.images) == 1 and len(dataset.images[0].annotations) == 1
    assert [str(r) for r in dataset.skipped] == [
        f"{tmp_path / 'export.json'}: task id=3 (index 0), result r2: empty brush or polygon; object skipped"
    ]


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ([], "no annotation (predictions alone are not ground truth)"),
        ([{"id": 1, "result": []}, {"id": 2, "result": []}], "2 annotations (ids [1, 2])"),
    ],
)
def test_tasks_need_exactly_one_annotation(tmp_path: Path, annotations: list, reason: str) -> None:
    (report,) = read_label_studio(_one_image_export(tmp_path, [], annotations=annotations)).skipped
    assert reason in report.reason


def test_a_cancelled_annotation_does_not_count(tmp_path: Path) -> None:
    annotations = [{"id": 1, "result": [], "was_cancelled": True}, {"id": 2, "result": []}]
    dataset = read_label_studio(_one_image_export(tmp_path, [], annotations=annotations), strict=True)
    assert len(dataset.images) == 1 and dataset.images[0].annotations == []


def test_a_missing_image_skips_the_task_naming_the_url(tmp_path: Path) -> None:
    path = _one_image_export(tmp_path, [], data={"image": "/data/local-files/?d=gone.png"})
    (report,) = read_label_studio(path).skipped
    assert "image '/data/local-files/?d=gone.png' ->" in report.reason and "gone.png" in report.reason


def test_uploaded_file_urls_match_without_the_upload_prefix(tmp_path: Path) -> None:
    path = _one_image_export(tmp_path, [], data={"image": "/data/upload/4/1a2b3c4d-cells.png"})
    assert read_label_studio(path, strict=True).images[0].file_name == "cells.png"


def test_a_json_min_export_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "min.json"
    path.write_text(json.dumps({"image": "x.png"}))
    with pytest.raises(DatasetError, match="holds a list of tasks"):
        read_label_studio(path)


def test_convert_from_label_studio_writes_coco(tmp_path: Path) -> None:
    summary = convert("label-studio", _one_image_export(tmp_path, []), tmp_path / "out" / "gt.json")
    assert (summary.num_images, summary.num_annotations, summary.skipped) == (1, 1, [])
    written = read_coco(tmp_path / "out" / "gt.json", strict=True)
    assert written.images[0].file_name == "../cells.png"
    assert np.array_equal(
        decode_rle([written.images[0].annotations[0].segmentation], (5, 7))[0], _reference_mask()
    )
