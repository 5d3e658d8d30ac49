"""COCO panoptic in, COCO instances out (`instaseg convert --from coco-panoptic`): every segment an annotation
with its exact mask, crowd flag and category; categories keep `isthing`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instaseg.cli.main import main
from instaseg.data.coco_panoptic import read_coco_panoptic
from instaseg.data.records import DatasetError
from instaseg.structures.masks import decode_rle
from instaseg.structures.panoptic import PanopticSegmentation


def panoptic_file(root, with_images=True):
    ids = np.zeros((6, 8), dtype=np.int32)
    ids[:3, :4], ids[3:, :] = 7, 9
    (root / "pan").mkdir(parents=True)
    Image.fromarray(PanopticSegmentation(ids).to_rgb()).save(root / "pan" / "a.png")
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(root / "a.jpg")
    payload = {
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 7, "category_id": 1, "iscrowd": 0},
                    {"id": 9, "category_id": 2, "iscrowd": 1},
                ],
            }
        ],
        "categories": [{"id": 1, "name": "cell", "isthing": 1}, {"id": 2, "name": "glass", "isthing": 0}],
    }
    if with_images:
        payload["images"] = [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}]
    (root / "pan.json").write_text(json.dumps(payload))
    return root / "pan.json", ids


def test_segments_become_annotations_with_exact_masks(tmp_path):
    path, ids = panoptic_file(tmp_path)
    dataset = read_coco_panoptic(path)
    (image,) = dataset.images
    assert image.file_name == "a.jpg" and (image.height, image.width) == (6, 8)
    first, second = image.annotations
    assert (first.category_id, first.iscrowd, first.area) == (1, 0, 12)
    assert (second.category_id, second.iscrowd, second.area) == (2, 1, 24)
    assert np.array_equal(decode_rle([second.segmentation])[0].astype(bool), ids == 9)
    assert [c.extra["isthing"] for c in dataset.categories] == [1, 0]


def test_convert_cli_writes_coco_with_isthing(tmp_path):
    path, _ = panoptic_file(tmp_path)
    out = tmp_path / "instances.json"
    assert main(["convert", "--from", "coco-panoptic", str(path), "--to", "coco", str(out)]) == 0
    written = json.loads(out.read_text())
    assert [c["isthing"] for c in written["categories"]] == [1, 0]
    assert [a["area"] for a in written["annotations"]] == [12, 24]


def test_a_file_without_images_is_refused_by_name(tmp_path):
    path, _ = panoptic_file(tmp_path, with_images=False)
    with pytest.raises(DatasetError, match="image id=1.*needs 'images' with a 'file_name'"):
        read_coco_panoptic(path)
