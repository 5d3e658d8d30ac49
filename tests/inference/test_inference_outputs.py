"""Output files round-trip through the evaluation code, and are written atomically."""

from __future__ import annotations

import errno
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import instaseg.io.atomic as atomic
from instaseg.evaluation import evaluate_coco
from instaseg.inference.outputs import (
    OutputWriteError,
    ResultsFile,
    encode_png,
    ensure_writable_folder,
    geojson,
    label_map,
    polygons_from_geojson,
    write_bytes,
    write_json,
)
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SIZE = (60, 80)


def disc(cy: float, cx: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def instances_of(bitmaps: list[np.ndarray], labels: list[int], scores: list[float] | None) -> Instances:
    masks = Masks.from_bitmaps(torch.from_numpy(np.stack(bitmaps)))
    return Instances(
        SIZE, masks.boxes(), torch.tensor(labels), None if scores is None else torch.tensor(scores), masks
    )


GROUND_TRUTH = instances_of(
    [disc(15, 15, 8), disc(15, 50, 9), disc(45, 20, 7), disc(45, 60, 10)], [1, 1, 2, 2], None
)
GT = {
    "images": [{"id": 7, "file_name": "scene.png", "height": SIZE[0], "width": SIZE[1]}],
    "annotations": GROUND_TRUTH.to_coco_annotations(7, 1),
    "categories": [{"id": 1, "name": "round"}, {"id": 2, "name": "flat"}],
}
# Predictions, sorted by decreasing score and not overlapping: a false positive first, one exact match, one
# shifted by 3 pixels, one with the wrong class; the fourth object is missed. AP is neither 0 nor 1.
PREDICTIONS = instances_of(
    [disc(30, 40, 4), disc(15, 15, 8), disc(15, 53, 9), disc(45, 20, 7)], [1, 1, 1, 1], [0.95, 0.9, 0.8, 0.7]
)


def ap(results: list[dict], iou_type: str = "segm") -> float:
    return evaluate_coco(GT, results, iou_type=iou_type).stats["AP"]


def test_results_json_evaluates_like_the_predictions(tmp_path):
    expected = ap(PREDICTIONS.to_coco_results(7))
    assert 0.1 < expected < 0.9
    results = ResultsFile(tmp_path, categories=GT["categories"])
    results.add(7, "scene.png", PREDICTIONS)
    results.add(8, "empty.png", instances_of([np.zeros(SIZE, bool)], [1], [0.5])[:0])
    results.add_failure("broken.png", "cannot read image broken.png: the file is empty (0 bytes)")
    results.save()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert ap(saved) == pytest.approx(expected, abs=1e-12)
    assert ap(saved, "bbox") == pytest.approx(ap(PREDICTIONS.to_coco_results(7), "bbox"), abs=1e-12)
    assert {record["file_name"] for record in saved} == {"scene.png"}
    images = json.loads((tmp_path / "images.json").read_text())
    assert [image["file_name"] for image in images["images"]] == ["scene.png", "empty.png"]
    assert images["failures"][0]["file"] == "broken.png"
    assert images["categories"] == GT["categories"]


def test_label_maps_evaluate_like_the_predictions(tmp_path):
    write_bytes(tmp_path / "scene.png", encode_png(label_map(PREDICTIONS)))
    values = np.asarray(Image.open(tmp_path / "scene.png"))
    assert values.dtype == np.uint8 and values.max() == len(PREDICTIONS)
    # Value k is the k-th instance of the image in results.json (by decreasing score).
    read_back = instances_of(
        [values == k for k in range(1, len(PREDICTIONS) + 1)], [1] * 4, PREDICTIONS.scores.tolist()
    )
    assert ap(read_back.to_coco_results(7)) == pytest.approx(ap(PREDICTIONS.to_coco_results(7)), abs=1e-12)


def test_label_maps_give_overlaps_to_the_higher_score_and_go_16_bit():
    overlapping = instances_of([disc(20, 20, 10), disc(20, 30, 10)], [1, 1], [0.9, 0.5])
    values = label_map(overlapping)
    assert values[20, 25] == 1 and values[20, 38] == 2 and values[0, 0] == 0
    many = instances_of([np.zeros(SIZE, bool)] * 299 + [disc(30, 40, 5)], [1] * 300, [0.5] * 300)
    values = label_map(many)
    assert values.dtype == np.uint16 and values[30, 40] == 300
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(values)))), values)


def test_geojson_polygons_evaluate_like_the_predictions(tmp_path):
    write_json(tmp_path / "scene.geojson", geojson(PREDICTIONS, {1: "round"}))
    collection = json.loads((tmp_path / "scene.geojson").read_text())
    feature = collection["features"][0]
    assert feature["properties"] == {
        "index": 1,
        "category_id": 1,
        "category_name": "round",
        "score": pytest.approx(0.95),
    }
    ring = feature["geometry"]["coordinates"][0][0]
    assert ring[0] == ring[-1]  # closed ring
    polygons = polygons_from_geojson(collection)
    read_back = PREDICTIONS.replace(masks=Masks.from_polygons(polygons, SIZE))
    assert torch.equal(read_back.masks.bitmaps(), PREDICTIONS.masks.bitmaps())
    assert ap(read_back.to_coco_results(7)) == pytest.approx(ap(PREDICTIONS.to_coco_results(7)), abs=1e-12)


def test_geojson_is_refused_when_malformed():
    with pytest.raises(ValueError, match="expected a FeatureCollection"):
        polygons_from_geojson({"type": "Feature"})
    with pytest.raises(ValueError, match="feature 0: expected a MultiPolygon"):
        polygons_from_geojson({"type": "FeatureCollection", "features": [{"geometry": {"type": "Point"}}]})


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json(target, [{"old": True}])

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*results\.json: No space left on device"):
        write_json(target, [{"new": True}])
    assert json.loads(target.read_text()) == [{"old": True}]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputWriteError, match="cannot create output folder .*file/out"):
        ensure_writable_folder(blocker / "out")
    ensure_writable_folder(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())
