"""Panoptic Quality: panopticapi's rules by hand, agreement with hotcoco's panoptic evaluation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import hotcoco.panoptic
import numpy as np
import pytest
from PIL import Image

from instaseg.evaluation import EvaluationInputError, evaluate, evaluate_panoptic_files
from instaseg.structures.masks import encode_rle, rle_area, rle_to_boxes

CATEGORIES = [
    {"id": 1, "name": "cell", "isthing": 1},
    {"id": 2, "name": "tissue", "isthing": 0},
    {"id": 3, "name": "unused", "isthing": 1},
]


def _save_png(ids: np.ndarray, path: Path) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def _write(folder: Path, name: str, images: dict[int, tuple[np.ndarray, list[dict]]]) -> Path:
    """A COCO panoptic JSON `<name>.json` and its PNG folder `<name>/` for {image id: (id map, segments)}."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    annotations, entries = [], []
    for image_id, (ids, segments) in images.items():
        _save_png(ids, folder / name / f"{image_id}.png")
        height, width = ids.shape
        entries.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": CATEGORIES}))
    return path


def _segment(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


def _hand_made(folder: Path) -> tuple[Path, Path]:
    """Four 8x10 images, one rule each (see the test)."""
    shape = (8, 10)
    gt, pred = {}, {}
    # Image 1 (VOID left out of the union): GT cell rows 0-3 x cols 0-3 (16 px); the prediction adds rows
    # 4-5 (8 px) that are VOID in the ground truth: IoU 16 / (24 + 16 - 16 - 8) = 1.
    g, p = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    g[0:4, 0:4] = 1
    p[0:6, 0:4] = 7
    gt[1], pred[1] = (g, [_segment(1, 1)]), (p, [_segment(7, 1)])
    # Image 2 (IoU exactly 0.5 is no match): GT cell 4 px, prediction 2 of them: FN 1 and FP 1.
    g, p = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    g[0:2, 0:2] = 1
    p[0:2, 0:1] = 3
    g[2:, :] = 2  # tissue everywhere else, predicted exactly: a stuff TP with IoU 1
    p[2:, :] = 4
    gt[2], pred[2] = (g, [_segment(1, 1), _segment(2, 2)]), (p, [_segment(3, 1), _segment(4, 2)])
    # Image 3 (crowd): a crowd region of cells (20 px, never a FN); a cell prediction with 6 of its 8 px on
    # it (2 on VOID) is not a FP; tissue predictions: 4 px on VOID (not a FP), 3 px on the cells' crowd
    # region (a crowd region of another class does not excuse it: a FP).
    g, p = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    g[0:4, 0:5] = 9
    p[1:5, 0:2] = 1
    p[0:2, 6:8] = 2
    p[1:4, 4:5] = 5
    gt[3] = (g, [_segment(9, 1, iscrowd=1)])
    pred[3] = (p, [_segment(1, 1), _segment(2, 2), _segment(5, 2)])
    # Image 4 (mostly-VOID predictions): tissue predicted exactly (TP); tissue predictions all on VOID, and
    # with 6 of 10 px on VOID (4 on a cell), are ignored; one with exactly 5 of 10 on VOID (5 on another cell)
    # is a FP. Neither cell is predicted: 2 FNs.
    g, p = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    g[0:8, 0:4] = 3
    g[2:4, 4:6] = 12
    g[4:5, 4:9] = 4
    p[0:8, 0:4] = 6
    p[0:2, 4:9] = 8
    p[2:4, 4:9] = 10
    p[4:6, 4:9] = 11
    gt[4] = (g, [_segment(3, 2), _segment(4, 1), _segment(12, 1)])
    pred[4] = (p, [_segment(6, 2), _segment(8, 2), _segment(10, 2), _segment(11, 2)])
    return _write(folder, "gt", gt), _write(folder, "pred", pred)


def test_rules_by_hand(tmp_path: Path) -> None:
    gt_json, pred_json = _hand_made(tmp_path)
    quality = evaluate_panoptic_files(gt_json, pred_json)
    rows = {row["name"]: row for row in quality.per_class}
    # cells: TP image 1 (IoU 1 thanks to VOID); FN + FP image 2 (IoU 0.5); image 3 nothing; image 4: 2 FNs.
    assert (rows["cell"]["TP"], rows["cell"]["FP"], rows["cell"]["FN"]) == (1, 1, 3)
    assert rows["cell"]["PQ"] == pytest.approx(1 / 3)
    assert rows["cell"]["SQ"] == pytest.approx(1.0)
    # tissue: TPs in images 2 and 4 (IoU 1 each); FPs on the cells' crowd region and half on VOID.
    assert (rows["tissue"]["TP"], rows["tissue"]["FP"], rows["tissue"]["FN"]) == (2, 2, 0)
    assert rows["tissue"]["PQ"] == pytest.approx(2 / 3)
    assert rows["tissue"]["RQ"] == pytest.approx(2 / 3)
    assert "unused" not in rows  # no TP, FP or FN: left out of the means
    assert quality.groups["Things"]["PQ"] == pytest.approx(1 / 3) and quality.groups["Things"]["n"] == 1
    assert quality.groups["Stuff"]["PQ"] == pytest.approx(2 / 3)
    assert quality.groups["All"]["PQ"] == pytest.approx(0.5) and quality.groups["All"]["n"] == 2
    # hotcoco (panopticapi's rules) agrees on every class.
    reference = _hotcoco(gt_json, pred_json)["per_class"]
    assert (reference[1]["tp"], reference[1]["fp"], reference[1]["fn"]) == (1, 1, 3)
    assert (reference[2]["tp"], reference[2]["fp"], reference[2]["fn"]) == (2, 2, 0)


def _hotcoco(gt_json: Path, pred_json: Path) -> dict:
    evaluator = hotcoco.panoptic.PanopticEval(
        str(gt_json),
        str(pred_json),
        gt_folder=str(gt_json.with_suffix("")),
        pred_folder=str(pred_json.with_suffix("")),
    )
    evaluator.evaluate()
    return evaluator.results()


def _random_case(rng: np.random.Generator, folder: Path) -> tuple[Path, Path]:
    """Random boxes painted in turn (later ones cover earlier ones), some crowd, VOID left where none falls;
    predictions: the ground truth's boxes moved, resized, relabelled or dropped, plus random ones."""
    gt, pred = {}, {}
    for image_id in range(1, 5):
        shape = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        g, p = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        g_segments, p_segments = [], []
        crowd_classes: set[int] = set()
        for k in range(int(rng.integers(2, 9))):
            category = int(rng.choice([1, 2, 3]))
            y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            h, w = rng.integers(3, 14), rng.integers(3, 14)
            crowd = int(category not in crowd_classes and rng.random() < 0.15)
            crowd_classes |= {category} if crowd else set()
            g[y : y + h, x : x + w] = k + 1
            g_segments.append(_segment(k + 1, category, crowd))
            if rng.random() < 0.8:
                dy, dx = rng.integers(-2, 3, size=2)
                label = category if rng.random() < 0.85 else int(rng.choice([1, 2, 3]))
                top, left = max(y + dy, 0), max(x + dx, 0)
                p[top : top + h + rng.integers(-1, 2), left : left + w + rng.integers(-1, 2)] = k + 1
                p_segments.append(_segment(k + 1, label))
        for k in range(int(rng.integers(0, 3))):
            y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
            p[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = 50 + k
            p_segments.append(_segment(50 + k, int(rng.choice([1, 2, 3]))))
        g_present, p_present = set(np.unique(g).tolist()), set(np.unique(p).tolist())
        gt[image_id] = (g, [s for s in g_segments if s["id"] in g_present])
        pred[image_id] = (p, [s for s in p_segments if s["id"] in p_present])
    return _write(folder, "gt", gt), _write(folder, "pred", pred)


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_hotcoco_on_random_cases(tmp_path: Path, seed: int) -> None:
    gt_json, pred_json = _random_case(np.random.default_rng(seed), tmp_path)
    ours = evaluate_panoptic_files(gt_json, pred_json)
    reference = _hotcoco(gt_json, pred_json)
    for group in ("All", "Things", "Stuff"):
        if reference[group]["n"] == 0:
            assert ours.groups[group]["n"] == 0
            continue
        assert ours.groups[group]["n"] == reference[group]["n"]
        for name in ("PQ", "SQ", "RQ"):
            assert ours.groups[group][name] == pytest.approx(reference[group][name.lower()], abs=1e-12)
    rows = {row["category_id"]: row for row in ours.per_class}
    for category_id, expected in reference["per_class"].items():
        if expected["tp"] + expected["fp"] + expected["fn"] == 0:
            assert int(category_id) not in rows
            continue
        row = rows[int(category_id)]
        assert (row["TP"], row["FP"], row["FN"]) == (expected["tp"], expected["fp"], expected["fn"])
        assert row["PQ"] == pytest.approx(expected["pq"], abs=1e-12)


def _one_image(folder: Path) -> tuple[Path, Path, np.ndarray]:
    ids = np.zeros((6, 8), np.int64)
    ids[:3, :4] = 1
    ids[3:, :] = 2
    gt_json = _write(folder, "gt", {1: (ids, [_segment(1, 1), _segment(2, 2)])})
    pred_json = _write(folder, "pred", {1: (ids, [_segment(1, 1), _segment(2, 2)])})
    return gt_json, pred_json, ids


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            "png id not in json",
            r"pred[/\\]1\.png: annotation of image 1, segment 5: in the PNG but not in .*pred\.json",
        ),
        ("json id not in png", r"pred\.json: annotation of image 1, segment 9: in the JSON but not in"),
        ("overlapping segments", r"pred\.json: annotation of image 1, segment 2: listed twice"),
        ("unknown category", r"pred\.json: annotation of image 1, segment 2: unknown category_id 77"),
        ("wrong size", r"pred[/\\]1\.png: annotation of image 1: the PNG is 9x6 \(WxH\) but image 1 is 8x6"),
        ("missing image", r"pred\.json: no annotation for image 1 of .*gt\.json"),
    ],
)
def test_bad_input_names_the_file_and_the_segment(tmp_path: Path, change: str, match: str) -> None:
    gt_json, pred_json, ids = _one_image(tmp_path)
    png = tmp_path / "pred" / "1.png"
    if change == "png id not in json":
        wrong = ids.copy()
        wrong[0, 0] = 5
        _save_png(wrong, png)
    elif change == "json id not in png":
        _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"].append(_segment(9, 1)))
    elif change == "overlapping segments":
        _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"].append(_segment(2, 1)))
    elif change == "unknown category":
        _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"][1].update(category_id=77))
    elif change == "wrong size":
        _save_png(np.pad(ids, ((0, 0), (0, 1)), mode="edge"), png)
    else:
        _edit_json(pred_json, lambda d: d["annotations"].clear())
    with pytest.raises(EvaluationInputError, match=match):
        evaluate_panoptic_files(gt_json, pred_json)


def _instance_inputs() -> tuple[dict, list[dict]]:
    """One 20x20 image, two cells (rows 0-9 and 10-19 of columns 0-9) and a crowd region (columns 15-19)."""
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 10:20, 0:10] = True
    masks[2, :, 15:20] = True
    annotations = []
    for k, rle in enumerate(encode_rle(masks)):
        x1, y1, x2, y2 = rle_to_boxes([rle])[0].tolist()
        annotations.append(
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": int(k == 2)}
            | {"area": int(rle_area([rle])[0]), "bbox": [x1, y1, x2 - x1, y2 - y1]}
        )
    gt = {
        "images": [{"id": 1, "height": 20, "width": 20}],
        "annotations": annotations,
        "categories": [CATEGORIES[0]],
    }
    pred = np.zeros((4, 20, 20), dtype=bool)
    pred[0, 0:12, 0:10] = True  # cell 1 with 2 extra rows; scored highest, it keeps rows 10-11
    pred[1, 10:20, 0:10] = True  # cell 2, loses rows 10-11 to the first: IoU 80 / 100
    pred[2, 0:4, 15:20] = True  # on the crowd region: not a false positive
    pred[3, 0:4, 11:14] = True  # on background: a false positive (background is not VOID here)
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": rle, "score": score}
        for rle, score in zip(encode_rle(pred), (0.9, 0.8, 0.7, 0.6), strict=True)
    ]
    return gt, results


def test_instance_sets_pq_by_hand() -> None:
    gt, results = _instance_inputs()
    report, _ = evaluate(gt, results, metrics=["pq"])
    cells = report["panoptic"]["per_class"][0]
    # TP: pred 0 vs cell 1 (IoU 100 / 120), pred 1 vs cell 2 (80 / 100); FP: pred 3; pred 2 on the crowd.
    assert (cells["TP"], cells["FP"], cells["FN"]) == (2, 1, 0)
    assert cells["SQ"] == pytest.approx((100 / 120 + 0.8) / 2)
    assert cells["PQ"] == pytest.approx((100 / 120 + 0.8) / 2.5)
    assert (
        report["panoptic"]["groups"]["Stuff"]["n"] == 0
        and report["panoptic"]["groups"]["Stuff"]["PQ"] is None
    )
    # The score threshold drops the false positive.
    report, _ = evaluate(gt, results, metrics=["pq"], min_score=0.65)
    assert report["panoptic"]["per_class"][0]["FP"] == 0


def test_instance_sets_pq_splits_things_and_stuff_by_isthing() -> None:
    """A stuff category (`isthing: 0`) counts in Stuff and All, not in Things."""
    gt, results = _instance_inputs()
    tissue = np.zeros((20, 20), dtype=bool)
    tissue[:, 10:15] = True  # the columns between the cells and the crowd region
    (rle,) = encode_rle(tissue[None])
    gt["categories"] = [CATEGORIES[0], CATEGORIES[1]]
    gt["annotations"].append(
        {"id": 4, "image_id": 1, "category_id": 2, "segmentation": rle, "iscrowd": 0, "area": 100}
    )
    half = tissue.copy()
    half[:8] = False  # 60 of the 100 pixels, none under the false positive: IoU 0.6
    results.append({"image_id": 1, "category_id": 2, "segmentation": encode_rle(half[None])[0], "score": 0.5})
    report, _ = evaluate(gt, results, metrics=["pq"])
    groups = report["panoptic"]["groups"]
    cells = (100 / 120 + 0.8) / 2.5  # as in test_instance_sets_pq_by_hand
    assert groups["Things"]["n"] == 1 and groups["Things"]["PQ"] == pytest.approx(cells)
    assert groups["Stuff"]["n"] == 1 and groups["Stuff"]["PQ"] == pytest.approx(0.6)
    assert groups["All"]["n"] == 2 and groups["All"]["PQ"] == pytest.approx((cells + 0.6) / 2)
    assert [row["isthing"] for row in report["panoptic"]["per_class"]] == [True, False]


def test_isthing_must_be_zero_or_one() -> None:
    gt, results = _instance_inputs()
    gt["categories"] = [{**CATEGORIES[0], "isthing": 2}]
    with pytest.raises(EvaluationInputError, match="category 1: 'isthing' must be 0 or 1, got 2"):
        evaluate(gt, results, metrics=["pq"])
