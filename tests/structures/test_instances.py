"""Instances: validation, indexing, concatenation, devices, COCO annotation and result dicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.structures import Instances, Masks, decode_rle, encode_rle


def _instances(count: int = 4, image_size: tuple[int, int] = (12, 10)) -> Instances:
    """Instances whose every attribute encodes its row, so indexing mistakes show up."""
    height, width = image_size
    rows = torch.arange(count, dtype=torch.float32)
    boxes = torch.stack([rows, rows, rows + 2, rows + 3], dim=1)
    bitmaps = torch.zeros(count, height, width, dtype=torch.bool)
    for i in range(count):
        bitmaps[i, : i + 1, :2] = True  # mask i has area 2 * (i + 1)
    return Instances(
        image_size,
        boxes,
        torch.arange(count) + 10,
        scores=1.0 - rows / 10,
        masks=Masks.from_bitmaps(bitmaps),
        track_ids=torch.arange(count) * 100,
        mask_logits=rows[:, None, None].expand(count, 28, 28).clone(),
    )


def _assert_rows(instances: Instances, rows: list[int]) -> None:
    assert len(instances) == len(rows)
    assert instances.labels.tolist() == [row + 10 for row in rows]
    assert instances.boxes[:, 0].tolist() == [float(row) for row in rows]
    assert instances.scores.tolist() == pytest.approx([1.0 - row / 10 for row in rows])
    assert instances.fields["track_ids"].tolist() == [row * 100 for row in rows]
    assert instances.fields["mask_logits"][:, 5, 5].tolist() == [float(row) for row in rows]
    assert instances.masks.area().tolist() == [2 * (row + 1) for row in rows]


def test_construction_keeps_everything() -> None:
    instances = _instances()
    _assert_rows(instances, [0, 1, 2, 3])
    assert instances.image_size == (12, 10)
    assert instances.labels.dtype == torch.int64
    assert set(instances.fields) == {"track_ids", "mask_logits"}
    assert instances.device.type == "cpu"


def test_integer_boxes_become_float32_and_labels_int64() -> None:
    instances = Instances((5, 5), torch.tensor([[0, 0, 2, 2]]), torch.tensor([3], dtype=torch.int32))
    assert instances.boxes.dtype == torch.float32 and instances.labels.dtype == torch.int64
    assert instances.scores is None and instances.masks is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"boxes": torch.zeros(2, 5)}, r"shape \(N, 4\)"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, r"labels has shape \(3,\), expected \(2,\)"),
        ({"labels": torch.zeros(2)}, "labels must be integers"),
        ({"scores": torch.zeros(1)}, r"scores has shape \(1,\)"),
        ({"scores": torch.zeros(2, dtype=torch.int64)}, "scores must be floating point"),
        ({"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, float("nan"), 1.0, 1.0]])}, r"rows \[1\]"),
        ({"boxes": torch.tensor([[0.0, 0.0, float("inf"), 1.0], [0.0, 0.0, 1.0, 1.0]])}, r"rows \[0\]"),
        ({"masks": Masks.from_bitmaps(torch.zeros(2, 5, 6, dtype=torch.bool))}, r"masks are \(5, 6\)"),
        ({"masks": Masks.from_bitmaps(torch.zeros(3, 5, 5, dtype=torch.bool))}, "3 masks for 2 boxes"),
        ({"iscrowd": torch.zeros(3)}, "field 'iscrowd'"),
        ({"image_size": (5, 0)}, "image size must be two positive integers"),
        ({"image_size": (5.0, 5)}, "image size must be two integers"),
    ],
)
def test_constructor_validation(arguments: dict, message: str) -> None:
    values = {"image_size": (5, 5), "boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64)}
    values.update(arguments)
    with pytest.raises(ValueError, match=message):
        Instances(**values)


def test_constructor_type_errors() -> None:
    with pytest.raises(TypeError, match="field 'ids' must be a tensor"):
        Instances((5, 5), torch.zeros(1, 4), torch.ones(1, dtype=torch.int64), ids=[1])
    with pytest.raises(TypeError, match="masks must be a Masks"):
        Instances((5, 5), torch.zeros(1, 4), torch.ones(1, dtype=torch.int64), masks=torch.zeros(1, 5, 5))


def test_indexing_variants() -> None:
    instances = _instances()
    _assert_rows(instances[2], [2])
    _assert_rows(instances[-1], [3])
    _assert_rows(instances[1:3], [1, 2])
    _assert_rows(instances[::-2], [3, 1])
    _assert_rows(instances[torch.tensor([True, False, True, True])], [0, 2, 3])
    _assert_rows(instances[instances.scores > 0.85], [0, 1])
    _assert_rows(instances[torch.tensor([3, 0, 3])], [3, 0, 3])
    _assert_rows(instances[[1]], [1])
    _assert_rows(instances[np.array([2, 1])], [2, 1])
    _assert_rows(instances[torch.zeros(4, dtype=torch.bool)], [])
    with pytest.raises(IndexError):
        instances[4]
    with pytest.raises(IndexError, match="bool index has 3 entries"):
        instances[torch.tensor([True, False, True])]


def test_cat_preserves_order_and_checks_compatibility() -> None:
    instances = _instances()
    _assert_rows(Instances.cat([instances[2:], instances[:1], instances[1]]), [2, 3, 0, 1])
    _assert_rows(Instances.cat([instances[:0], instances]), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="image size"):
        Instances.cat([instances, _instances(image_size=(12, 11))])
    without_field = Instances((12, 10), instances.boxes, instances.labels, instances.scores, instances.masks)
    with pytest.raises(ValueError, match="has fields"):
        Instances.cat([instances, without_field])
    with pytest.raises(ValueError, match="scores / masks"):
        Instances.cat([instances, instances.replace(scores=None)])
    with pytest.raises(ValueError, match="at least one"):
        Instances.cat([])


def test_replace_revalidates() -> None:
    instances = _instances()
    moved = instances.replace(boxes=instances.boxes + 1)
    assert torch.equal(moved.boxes, instances.boxes + 1) and torch.equal(moved.labels, instances.labels)
    with pytest.raises(ValueError, match="labels has shape"):
        instances.replace(labels=instances.labels[:2])


def test_to_device_moves_every_tensor() -> None:
    instances = _instances().to(torch.device("cpu"))
    _assert_rows(instances, [0, 1, 2, 3])
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: only the CPU move was checked")
    on_gpu = _instances().to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.labels.is_cuda and on_gpu.scores.is_cuda
    assert on_gpu.masks.bitmaps().is_cuda and all(value.is_cuda for value in on_gpu.fields.values())
    _assert_rows(on_gpu[torch.tensor([True, False, True, False], device="cuda")].to("cpu"), [0, 2])


def _polygon_annotations() -> list[dict]:
    return [
        {
            "id": 7,
            "image_id": 3,
            "category_id": 18,
            "bbox": [1.5, 2.0, 4.0, 3.25],
            "area": 11.75,
            "iscrowd": 0,
            "segmentation": [[1.5, 2.0, 5.5, 2.0, 5.5, 5.25, 1.5, 5.25]],
        },
        {
            "id": 8,
            "image_id": 3,
            "category_id": 1,
            "bbox": [0.0, 0.0, 6.0, 3.0],
            "area": 9.0,
            "iscrowd": 0,
            "segmentation": [[0.0, 0.0, 3.0, 0.0, 3.0, 3.0], [4.0, 0.0, 6.0, 0.0, 6.0, 2.0, 4.0, 2.0]],
        },
    ]


def test_coco_annotations_round_trip_with_polygons() -> None:
    annotations = _polygon_annotations()
    instances = Instances.from_coco(annotations, (8, 9))
    assert instances.masks.form == Masks.POLYGONS
    assert instances.labels.tolist() == [18, 1]
    torch.testing.assert_close(instances.boxes[0], torch.tensor([1.5, 2.0, 5.5, 5.25]))
    assert instances.to_coco_annotations(image_id=3, first_annotation_id=7) == annotations


def test_coco_annotations_round_trip_with_rle_and_crowd() -> None:
    bitmaps = np.zeros((2, 6, 7), dtype=bool)
    bitmaps[0, 1:4, 2:5] = True
    bitmaps[1, :, :3] = True
    rles = encode_rle(bitmaps)
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 2, "bbox": [2.0, 1.0, 3.0, 3.0], "area": 9.0, "iscrowd": 0,
         "segmentation": rles[0]},
        {"id": 2, "image_id": 9, "category_id": 2, "bbox": [0.0, 0.0, 3.0, 6.0], "area": 18.0, "iscrowd": 1,
         "segmentation": rles[1]},
    ]  # fmt: skip
    instances = Instances.from_coco(annotations, (6, 7))
    assert instances.masks.form == Masks.RLES
    assert instances.fields["iscrowd"].tolist() == [0, 1]
    assert instances.to_coco_annotations(9, 1) == annotations


def test_uncompressed_crowd_rle_and_mixed_forms_become_compressed_rle() -> None:
    crowd = {"size": [8, 9], "counts": [8, 4, 60]}  # column 1, rows 0..3
    annotations = [
        *_polygon_annotations(),
        {"id": 9, "category_id": 5, "bbox": [1.0, 0.0, 1.0, 4.0], "iscrowd": 1, "segmentation": crowd},
    ]
    instances = Instances.from_coco(annotations, (8, 9))
    assert instances.masks.form == Masks.RLES
    out = instances.to_coco_annotations(3, 7)
    assert isinstance(out[2]["segmentation"]["counts"], str)
    expected = np.zeros((8, 9), dtype=bool)
    expected[0:4, 1] = True
    np.testing.assert_array_equal(decode_rle([out[2]["segmentation"]])[0], expected)
    assert out[2]["area"] == 4.0  # no area given: the bbox area stands in
    polygon_pixels = Masks.from_polygons([annotations[0]["segmentation"]], (8, 9)).bitmaps()[0]
    np.testing.assert_array_equal(decode_rle([out[0]["segmentation"]])[0], polygon_pixels.numpy())


def test_from_coco_without_segmentation_and_empty() -> None:
    boxes_only = [{"id": 1, "category_id": 4, "bbox": [0, 0, 2, 2]}]
    instances = Instances.from_coco(boxes_only, (5, 5))
    assert instances.masks is None
    (annotation,) = instances.to_coco_annotations(1, 1)
    assert "segmentation" not in annotation and annotation["area"] == 4.0 and annotation["iscrowd"] == 0
    empty = Instances.from_coco([], (5, 5))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    assert empty.to_coco_annotations(1, 1) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [0, 0, 2]}, "annotation 42: 'bbox'"),
        ({"bbox": [0, 0, -2, 2]}, "annotation 42: 'bbox'.*non-negative"),
        ({"bbox": [0, 0, float("nan"), 2]}, "annotation 42: 'bbox'"),
        ({"category_id": "cat"}, "annotation 42: 'category_id'"),
        ({"iscrowd": None}, "annotation 42: 'iscrowd'"),
        ({"area": -1}, "annotation 42: 'area'"),
        ({"segmentation": [[0, 0, 1, 1]]}, "annotation 42: 'segmentation'.*3 points"),
        ({"segmentation": {"size": [4, 4], "counts": "04"}}, "annotation 42: 'segmentation'.*size"),
        ({"segmentation": "polygon"}, "annotation 42: 'segmentation'"),
    ],
)
def test_from_coco_errors_name_the_annotation(change: dict, message: str) -> None:
    annotation = {"id": 42, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2]]}
    annotation.update(change)
    with pytest.raises(ValueError, match=message):
        Instances.from_coco([annotation], (5, 5))


def test_from_coco_refuses_partial_segmentation() -> None:
    annotations = [
        {"id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]},
    ]
    with pytest.raises(ValueError, match="annotation 2: no 'segmentation'"):
        Instances.from_coco(annotations, (5, 5))


def test_coco_results() -> None:
    instances = _instances()
    results = instances.to_coco_results(image_id=5)
    assert len(results) == 4
    json.dumps(results)  # plain JSON types only
    first = results[1]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert first["image_id"] == 5 and first["category_id"] == 11
    assert first["bbox"] == [1.0, 1.0, 2.0, 3.0]
    assert first["score"] == pytest.approx(0.9)
    assert isinstance(first["segmentation"]["counts"], str)
    np.testing.assert_array_equal(
        decode_rle([first["segmentation"]])[0], instances.masks.bitmaps()[1].numpy()
    )
    box_only = Instances((5, 5), torch.zeros(1, 4), torch.ones(1, dtype=torch.int64), torch.ones(1))
    assert "segmentation" not in box_only.to_coco_results(1)[0]
    with pytest.raises(ValueError, match="needs scores"):
        box_only.replace(scores=None).to_coco_results(1)


def test_real_nuclei_annotations_round_trip(dsb_root: Path, dsb_image_ids: list[str]) -> None:
    image_id = dsb_image_ids[0]
    paths = sorted((dsb_root / image_id / "masks").glob("*.png"))
    bitmaps = torch.from_numpy(np.stack([np.array(Image.open(path)) > 0 for path in paths]))
    masks = Masks.from_bitmaps(bitmaps)
    instances = Instances(
        tuple(bitmaps.shape[1:]), masks.boxes(), torch.ones(len(masks), dtype=torch.int64), None, masks
    )
    annotations = instances.to_coco_annotations(image_id=1, first_annotation_id=1)
    assert [annotation["area"] for annotation in annotations] == bitmaps.sum(dim=(1, 2)).tolist()
    back = Instances.from_coco(annotations, instances.image_size)
    assert torch.equal(back.masks.bitmaps(), bitmaps)
    torch.testing.assert_close(back.boxes, instances.boxes)
    assert back.to_coco_annotations(image_id=1, first_annotation_id=1) == annotations
