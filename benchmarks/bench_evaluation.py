"""Mask-AP evaluation time: faster-coco-eval vs pycocotools vs instaseg.evaluation.evaluate_coco.

Synthetic data: `--images` 256x256 images with ~20 ground-truth ellipses each and 100 detections per image
(jittered copies of the ground truth plus random false positives), all masks as compressed RLE. Each method
gets the same in-memory ground truth and results (deep copies made outside the timed region) and runs COCO's
full pipeline: load results, evaluate, accumulate, summarize. Runs are interleaved; the table shows the median
(and min-max) over `--repeats` runs and the AP each method reports.

    .venv/bin/python benchmarks/bench_evaluation.py [--images 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instaseg.evaluation import evaluate_coco
from instaseg.structures.masks import polygons_to_rle, rle_area, rle_to_boxes

SIZE = 256
GT_PER_IMAGE = 20
DETS_PER_IMAGE = 100


def _ellipse(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False) + rng.uniform(0, np.pi)
    xs = np.clip(cx + rx * np.cos(angles), 0, SIZE)
    ys = np.clip(cy + ry * np.sin(angles), 0, SIZE)
    return np.stack([xs, ys], axis=1).ravel().round(2).tolist()


def make_data(num_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """COCO ground truth and results for the benchmark (see the module docstring)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIZE, "width": SIZE})
        num_gt = int(rng.integers(GT_PER_IMAGE - 5, GT_PER_IMAGE + 6))
        shapes = [(*rng.uniform(20, SIZE - 20, 2), *rng.uniform(4, 18, 2)) for _ in range(num_gt)]
        for cx, cy, rx, ry in shapes:
            rle = polygons_to_rle([_ellipse(rng, cx, cy, rx, ry)], SIZE, SIZE)
            x1, y1, x2, y2 = rle_to_boxes([rle])[0].tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": int(rle_area([rle])[0]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
        for k in range(DETS_PER_IMAGE):
            if k < len(shapes) and rng.random() < 0.85:  # a found object, slightly off
                cx, cy, rx, ry = shapes[k]
                cx, cy = cx + rng.normal(0, 1.5), cy + rng.normal(0, 1.5)
                rx, ry = rx * rng.uniform(0.85, 1.15), ry * rng.uniform(0.85, 1.15)
                score = rng.uniform(0.4, 1.0)
            else:  # a false positive
                cx, cy, rx, ry = (*rng.uniform(20, SIZE - 20, 2), *rng.uniform(3, 15, 2))
                score = rng.uniform(0.0, 0.7)
            rle = polygons_to_rle([_ellipse(rng, cx, cy, rx, ry)], SIZE, SIZE)
            results.append(
                {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)}
            )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    return gt, results


def run_pycocotools(gt: dict, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = PyCOCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def run_faster_coco_eval(gt: dict, results: list[dict]) -> float:
    coco_gt = FasterCOCO(gt)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "segm", print_function=lambda *_: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


def run_instaseg(gt: dict, results: list[dict]) -> float:
    return evaluate_coco(gt, results, "segm", max_dets=100).stats["AP"]


METHODS: dict[str, Callable[[dict, list[dict]], float]] = {
    "pycocotools COCOeval": run_pycocotools,
    "faster-coco-eval COCOeval_faster": run_faster_coco_eval,
    "instaseg evaluate_coco (validation + faster-coco-eval)": run_instaseg,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    gt, results = make_data(args.images)
    print(
        f"data: {args.images} images, {len(gt['annotations'])} GT masks, {len(results)} detections "
        f"(made in {time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    aps: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name, method in METHODS.items():
            gt_copy, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
            start = time.perf_counter()
            aps[name] = method(gt_copy, results_copy)
            times[name].append(time.perf_counter() - start)
            print(
                f"run {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.1f} s, AP {aps[name]:.6f}",
                flush=True,
            )

    reference = statistics.median(times["pycocotools COCOeval"])
    print()
    print(
        f"{args.images} images x {DETS_PER_IMAGE} detections (256x256 masks, ~{GT_PER_IMAGE} GT each), "
        f"segm, median of {args.repeats} runs; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    print()
    print("| method | median time (s) | min-max (s) | speed-up vs pycocotools | mask AP |")
    print("|---|---|---|---|---|")
    for name in METHODS:
        median = statistics.median(times[name])
        print(
            f"| {name} | {median:.1f} | {min(times[name]):.1f}-{max(times[name]):.1f} | "
            f"{reference / median:.1f}x | {aps[name]:.6f} |"
        )


if __name__ == "__main__":
    main()
