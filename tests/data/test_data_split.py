"""Train / validation split: reproducible, independent of input order, disjoint, annotations follow images."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from instaseg.data.coco import read_coco
from instaseg.data.split import format_split_summary, split, split_dataset


def _coco(num_images: int) -> dict[str, Any]:
    """A COCO dict (no image files: `split` reads only the JSON) with 1-3 annotations per image."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"img/{image_id}.png", "height": 20, "width": 20})
        for k in range(image_id % 3 + 1):
            x = 2.0 + 4 * k
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 + k % 2,
                    "segmentation": [[x, 2.0, x + 3, 2.0, x + 3, 6.0, x, 6.0]],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"info": {"v": 1}, "images": images, "annotations": annotations, "categories": categories}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_split_is_disjoint_complete_and_keeps_annotations_with_images(tmp_path: Path) -> None:
    data = _coco(40)
    gt = _write(tmp_path / "gt.json", data)
    summary = split(gt, tmp_path / "train.json", tmp_path / "val.json", val_fraction=0.15, seed=0)
    train, val = (
        read_coco(tmp_path / "train.json", check_images=False),
        read_coco(tmp_path / "val.json", check_images=False),
    )
    train_ids, val_ids = {i.id for i in train.images}, {i.id for i in val.images}
    assert len(val_ids) == round(40 * 0.15) == summary.val_images
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(1, 41))
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["id"])
    for part in (train, val):
        assert [c.name for c in part.categories] == ["a", "b"]
        assert part.extra == {"info": {"v": 1}}
        for image in part.images:
            assert [a.id for a in image.annotations] == by_image[image.id]
    assert sum(summary.train_instances.values()) + sum(summary.val_instances.values()) == len(
        data["annotations"]
    )
    assert summary.val_instances == val.instances_per_category()


def test_same_seed_same_split_whatever_the_input_order(tmp_path: Path) -> None:
    data = _coco(30)
    shuffled = json.loads(json.dumps(data))
    random.Random(5).shuffle(shuffled["images"])
    random.Random(6).shuffle(shuffled["annotations"])
    outputs = []
    for name, source in (("a", data), ("b", shuffled), ("c", data)):
        gt = _write(tmp_path / name / "gt.json", source)
        split(gt, tmp_path / name / "train.json", tmp_path / name / "val.json", seed=7)
        outputs.append(
            ((tmp_path / name / "train.json").read_bytes(), (tmp_path / name / "val.json").read_bytes())
        )
    assert outputs[0] == outputs[1] == outputs[2]


def test_seed_and_fraction(tmp_path: Path) -> None:
    dataset = read_coco(_write(tmp_path / "gt.json", _coco(50)), check_images=False)
    val_ids = {seed: {i.id for i in split_dataset(dataset, 0.2, seed)[1].images} for seed in (0, 1)}
    assert val_ids[0] != val_ids[1]
    small = {i.id for i in split_dataset(dataset, 0.1, 0)[1].images}
    large = {i.id for i in split_dataset(dataset, 0.3, 0)[1].images}
    assert len(small) == 5 and len(large) == 15 and small < large  # a larger fraction only adds images
    tiny = read_coco(_write(tmp_path / "two.json", _coco(2)), check_images=False)
    assert [len(p.images) for p in split_dataset(tiny, 0.01, 0)] == [1, 1]  # both parts non-empty


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(tmp_path: Path, fraction: float) -> None:
    dataset = read_coco(_write(tmp_path / "gt.json", _coco(5)), check_images=False)
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        split_dataset(dataset, fraction, 0)


def test_refuses_one_image_and_clashing_paths(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.json", _coco(1))
    with pytest.raises(ValueError, match="cannot split 1 image"):
        split(one, tmp_path / "t.json", tmp_path / "v.json")
    gt = _write(tmp_path / "gt.json", _coco(5))
    with pytest.raises(ValueError, match="must differ"):
        split(gt, tmp_path / "t.json", tmp_path / "t.json")
    with pytest.raises(ValueError, match="must differ"):
        split(gt, gt, tmp_path / "v.json")


def test_bad_records_are_reported_in_the_summary(tmp_path: Path) -> None:
    data = _coco(10)
    data["annotations"][0]["image_id"] = 99
    gt = _write(tmp_path / "gt.json", data)
    summary = split(gt, tmp_path / "train.json", tmp_path / "val.json")
    assert [(r.path, r.record) for r in summary.skipped] == [(str(gt), "annotation id=1 (index 0)")]
    text = format_split_summary(summary)
    assert "skipped: 1" in text and "points at missing image id 99" in text
    assert f"val: {summary.val_images} images" in text
