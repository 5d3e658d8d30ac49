"""COCO AP via hotcoco equals pycocotools' COCOeval on real nuclei data (with crowd regions, score ties,
perturbed and duplicated detections), with any detection cap."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instaseg.data.coco import write_coco
from instaseg.data.mask_folders import read_mask_folders
from instaseg.evaluation import STAT_NAMES, evaluate_coco, match_detections, normalize_results
from instaseg.evaluation.coco_eval import candidate_ious, matching_inputs
from instaseg.evaluation.instance_pairs import collect
from instaseg.evaluation.matching import accumulate, match
from instaseg.evaluation.validation import check_ground_truth, check_results
from instaseg.structures.masks import decode_rle, encode_rle, merge_rles, rle_area, rle_to_boxes


def _dsb_ground_truth(dsb_root: Path, image_ids: list[str], tmp_path: Path) -> dict:
    """COCO ground truth for DSB images, made by the data package's mask-folder reader and COCO writer."""
    layout = tmp_path / "dsb"
    layout.mkdir()
    for image_id in image_ids:
        (layout / image_id).symlink_to(dsb_root / image_id, target_is_directory=True)
    dataset = read_mask_folders(layout, category_name="nucleus", strict=True)
    write_coco(dataset, tmp_path / "gt.json")
    gt = json.loads((tmp_path / "gt.json").read_text())
    # A second category without ground truth: its detections must not change any number.
    gt["categories"].append({"id": 2, "name": "debris"})
    return gt


def _perturbed_results(gt: dict, seed: int) -> list[dict]:
    """Detections made from the ground truth: dropped, shifted, rescored (with ties), duplicated, and FPs."""
    rng = np.random.default_rng(seed)
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    results = []
    for annotation in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # dropped: a false negative
        mask = decode_rle([annotation["segmentation"]])[0]
        shift = rng.integers(-3, 4, size=2)
        mask = np.roll(mask, tuple(shift), axis=(0, 1))
        score = float(np.round(rng.random(), 1))  # rounded: many ties, which both libraries must break alike
        rle = encode_rle(mask[None])[0]
        record = {"image_id": annotation["image_id"], "category_id": 1, "segmentation": rle, "score": score}
        results.append(record)
        if rng.random() < 0.2:  # duplicated: the copy is a false positive at every threshold
            results.append({**results[-1], "score": float(rng.random())})
    for image_id, (height, width) in sizes.items():
        for _ in range(5):  # false positives: random blobs, some in the extra category
            mask = np.zeros((height, width), dtype=bool)
            y, x = rng.integers(0, height - 12), rng.integers(0, width - 12)
            mask[y : y + rng.integers(3, 12), x : x + rng.integers(3, 12)] = True
            category = int(rng.choice([1, 2]))
            rle = encode_rle(mask[None])[0]
            record = {"image_id": image_id, "category_id": category, "segmentation": rle, "score": 0.35}
            results.append(record)
    return results


def _pycocotools(gt: dict, results: list[dict], iou_type: str, max_dets: int) -> PyCOCOeval:
    """pycocotools' COCOeval with maxDets [1, 10, max_dets]; its summary is read for the `max_dets` slot.

    pycocotools' summarize() looks up maxDets=100 for AP and AR_max, so after accumulating, the last slot is
    relabelled 100: summarize() then reports pycocotools' own numbers for the `max_dets` cap.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = PyCOCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.summarize()
    return evaluator


def _with_crowds(gt: dict) -> dict:
    """Every 6th nucleus marked crowd, and per image one crowd region over three more nuclei (their union)."""
    gt = copy.deepcopy(gt)
    for k, annotation in enumerate(gt["annotations"]):
        annotation["iscrowd"] = int(k % 6 == 5)
    next_id = max(a["id"] for a in gt["annotations"]) + 1
    for image in gt["images"]:
        members = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]][:3]
        region = merge_rles([a["segmentation"] for a in members])
        x1, y1, x2, y2 = rle_to_boxes([region])[0].tolist()
        crowd = {
            "id": next_id,
            "image_id": image["id"],
            "category_id": 1,
            "segmentation": region,
            "iscrowd": 1,
        }
        gt["annotations"].append(
            crowd | {"area": int(rle_area([region])[0]), "bbox": [x1, y1, x2 - x1, y2 - y1]}
        )
        next_id += 1
    return gt


@pytest.fixture(scope="module")
def dsb_gt(dsb_root: Path, dsb_image_ids: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _dsb_ground_truth(dsb_root, dsb_image_ids, tmp_path_factory.mktemp("dsb_gt"))


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("max_dets", [100, 12, 500])
@pytest.mark.parametrize("crowds", [False, True])
def test_equals_pycocotools_on_real_nuclei(dsb_gt: dict, iou_type: str, max_dets: int, crowds: bool) -> None:
    if crowds:
        dsb_gt = _with_crowds(dsb_gt)
        assert sum(a["iscrowd"] for a in dsb_gt["annotations"]) > len(dsb_gt["images"])
    results = _perturbed_results(dsb_gt, seed=max_dets)
    if iou_type == "bbox":
        results = normalize_results(results, dsb_gt, "segm", "results")
        for record in results:  # COCO's bbox of each mask, as pycocotools' loadRes would compute it
            record["bbox"] = [float(v) for v in coco_mask.toBbox(record["segmentation"])]
    ours = evaluate_coco(dsb_gt, results, iou_type, max_dets)
    reference = _pycocotools(dsb_gt, results, iou_type, max_dets)

    assert ours.max_dets_list == [1, 10, max_dets]
    np.testing.assert_allclose(ours.precision, reference.eval["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.recall, reference.eval["recall"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.scores, reference.eval["scores"], rtol=0, atol=1e-9)
    np.testing.assert_allclose([ours.stats[name] for name in STAT_NAMES], reference.stats, rtol=0, atol=1e-9)
    # The numbers are real: neither trivially perfect nor zero, and defined for the DSB nuclei (all small).
    assert 0.05 < ours.stats["AP"] < 0.95
    assert ours.stats["AP_small"] > 0


def test_cap_binds_and_every_number_uses_it(dsb_gt: dict) -> None:
    """With more detections per image than the cap, AP and AR change, and pycocotools' own summarize() with
    the same cap reports -1 for AP (the pitfall this module avoids)."""
    results = _perturbed_results(dsb_gt, seed=3)
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() > 12
    capped = evaluate_coco(dsb_gt, results, "segm", max_dets=12)
    uncapped = evaluate_coco(dsb_gt, results, "segm", max_dets=100)
    assert capped.stats["AR_max"] < uncapped.stats["AR_max"]
    assert capped.stats["AP"] != uncapped.stats["AP"]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(dsb_gt)
        coco_gt.createIndex()
        naive = PyCOCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
        naive.params.maxDets = [1, 10, 12]
        naive.evaluate()
        naive.accumulate()
        naive.summarize()
    assert naive.stats[0] == -1  # pycocotools looked for maxDets=100 and found none
    assert capped.stats["AP"] > 0


def _dense_image(dsb_root: Path) -> str:
    """A real DSB image with more than 100 nuclei and a small size (for a quick test)."""
    for folder in sorted(dsb_root.iterdir()):
        count = sum(1 for _ in (folder / "masks").iterdir())
        if 110 <= count <= 200 and (folder / "images" / f"{folder.name}.png").stat().st_size < 400_000:
            return folder.name
    pytest.skip("no dense DSB image with 110-200 nuclei")


def test_dense_scene_needs_a_higher_cap(dsb_root: Path, tmp_path: Path) -> None:
    gt = _dsb_ground_truth(dsb_root, [_dense_image(dsb_root)], tmp_path)
    n = len(gt["annotations"])
    scores = np.linspace(1.0, 0.5, n)
    perfect = [
        {"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": float(s)}
        for a, s in zip(gt["annotations"], scores, strict=True)
    ]
    at_100 = evaluate_coco(gt, perfect, "segm", max_dets=100)
    at_500 = evaluate_coco(gt, perfect, "segm", max_dets=500)
    assert at_100.stats["AR_max"] == pytest.approx(100 / n)
    assert at_500.stats["AR_max"] == pytest.approx(1.0)
    assert at_500.stats["AP"] == pytest.approx(1.0)
    assert at_100.stats["AP"] < 0.9
    reference = _pycocotools(gt, perfect, "segm", 500)
    ours = [at_500.stats[name] for name in STAT_NAMES]
    np.testing.assert_allclose(ours, reference.stats, rtol=0, atol=1e-9)


def test_per_class_table(dsb_gt: dict) -> None:
    results = _perturbed_results(dsb_gt, seed=5)
    metrics = evaluate_coco(dsb_gt, results, "segm", max_dets=100)
    rows = {row["name"]: row for row in metrics.per_class}
    assert rows["nucleus"]["num_gt"] == len(dsb_gt["annotations"])
    assert rows["nucleus"]["num_detections"] == sum(r["category_id"] == 1 for r in results)
    # One class with ground truth: its AP is the overall AP; the class without ground truth is undefined.
    assert rows["nucleus"]["AP"] == pytest.approx(metrics.stats["AP"], abs=1e-12)
    assert rows["nucleus"]["AP50"] == pytest.approx(metrics.stats["AP50"], abs=1e-12)
    assert rows["debris"]["num_gt"] == 0 and rows["debris"]["AP"] == -1


def test_boundary_ap_is_stricter_than_mask_ap_for_shifted_masks(dsb_gt: dict) -> None:
    results = _perturbed_results(dsb_gt, seed=7)
    segm = evaluate_coco(dsb_gt, results, "segm", max_dets=100)
    boundary = evaluate_coco(dsb_gt, results, "boundary", max_dets=100)
    # Boundary AP matches with min(mask IoU, boundary IoU): never above mask AP, lower for shifted masks.
    assert boundary.stats["AP"] < segm.stats["AP"]
    assert boundary.stats["AP50"] <= segm.stats["AP50"] + 1e-12


def test_matches_pair_each_kept_detection_with_its_source(dsb_gt: dict) -> None:
    """Unshifted copies of the ground truth match their own annotation with IoU 1; copies with a duplicate
    match once (the duplicate is a false positive)."""
    results, sources = [], []
    for k, annotation in enumerate(dsb_gt["annotations"]):
        record = {"image_id": annotation["image_id"], "category_id": 1, "score": 1.0 - k * 1e-4}
        results.append({**record, "segmentation": annotation["segmentation"]})
        sources.append(annotation["id"])
        if k % 3 == 0:
            results.append({**record, "score": 0.01, "segmentation": annotation["segmentation"]})
            sources.append(None)
    records = normalize_results(results, dsb_gt, "segm", "results")
    matches = match_detections(dsb_gt, records, "segm", max_dets=500)
    assert len(matches) == len(dsb_gt["annotations"])
    for pair in matches:
        assert sources[pair.result_index] == pair.gt_id
        assert pair.iou == pytest.approx(1.0)


@pytest.mark.parametrize("max_dets", [12, 100])
@pytest.mark.parametrize("crowds", [False, True])
def test_matcher_on_mask_ious_equals_pycocotools(dsb_gt: dict, max_dets: int, crowds: bool) -> None:
    """instaseg's own COCO matcher (mask AP, Boundary AP and matched pairs), given mask IoUs from its pixel
    counts, accumulates pycocotools' arrays: duplicates and crowd regions exercise the greedy loop."""
    gt = _with_crowds(dsb_gt) if crowds else dsb_gt
    results = _perturbed_results(gt, seed=max_dets + 1)
    checked = check_ground_truth(gt, "gt", "segm")
    columns = check_results(results, checked, "segm", "results")
    pairs = collect(checked, columns, boundary=False, claims=False)
    detections, ground_truths = matching_inputs(checked, columns, pairs)
    matching = match(detections, ground_truths, *candidate_ious(checked, columns, pairs), max_dets)
    ours = accumulate(detections, ground_truths, matching, len(checked.category_ids), [1, 10, max_dets])
    reference = _pycocotools(gt, results, "segm", max_dets)
    for name in ("precision", "recall", "scores"):
        np.testing.assert_allclose(getattr(ours, name), reference.eval[name], rtol=0, atol=1e-9)
    assert (ours.precision > 0).any()


@pytest.mark.parametrize("max_dets", [12, 100])
@pytest.mark.parametrize("crowds", [False, True])
def test_boundary_ap_equals_faster_coco_eval(dsb_gt: dict, max_dets: int, crowds: bool) -> None:
    gt = _with_crowds(dsb_gt) if crowds else dsb_gt
    results = _perturbed_results(gt, seed=max_dets + 2)
    ours = evaluate_coco(gt, results, "boundary", max_dets)
    coco_gt = FasterCOCO(copy.deepcopy(gt), print_function=lambda *_: None)
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    reference = COCOeval_faster(coco_gt, coco_dt, "boundary", print_function=lambda *_: None)
    reference.params.maxDets = [1, 10, max_dets]
    reference.evaluate()
    reference.accumulate()
    for name in ("precision", "recall", "scores"):
        np.testing.assert_allclose(getattr(ours, name), reference.eval[name], rtol=0, atol=1e-9)
    assert 0.05 < ours.stats["AP"] < evaluate_coco(gt, results, "segm", max_dets).stats["AP"]
