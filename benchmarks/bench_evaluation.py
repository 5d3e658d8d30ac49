"""Evaluation time: instaseg vs hotcoco vs faster-coco-eval vs pycocotools, in one run.

Synthetic dense data: `--images` 256x256 images, each with 50 ground-truth ellipses and 100 detections (85% of
the objects found again, jittered in position and size, the rest random false positives), all masks as
compressed RLE, segm. Every method gets the same in-memory ground truth and results (deep copies made outside
the timed region for the libraries that write into their input) and runs its full pipeline from dicts:

- hotcoco, faster-coco-eval, pycocotools: COCO mask AP (load, evaluate, accumulate, summarize);
- instaseg COCO AP: `instaseg.evaluation.evaluate(..., metrics=["ap"])`, input validation included (mask
  overlaps counted from the RLE runs, then instaseg's COCO matcher; hotcoco is not used for masks);
- instaseg full report: `evaluate(...)` with every default metric (mask AP, Boundary AP, matched-mask IoU /
  Dice / boundary IoU, foreground Dice, DSB score, Panoptic Quality), validation included.

pycocotools is slow (minutes per 1,000 images): it runs on the first `--pycocotools-images` images only, and
its row says so. Runs are interleaved (one pass of each method in turn, `--repeats` times); the table gives
median wall times, min-max, the ratio to hotcoco's median on the same images, the median CPU time of the
process (all its threads: what a loaded machine makes the ratios depend on) and the mask AP each method
reports.

    .venv/bin/python benchmarks/bench_evaluation.py [--images 5000] [--repeats 3] [--pycocotools-images 300]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import statistics
import time
from collections.abc import Callable

import hotcoco
import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instaseg.evaluation import evaluate
from instaseg.structures.masks import polygons_to_rle, rle_area, rle_to_boxes

SIZE = 256
GT_PER_IMAGE = 50
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
        shapes = [(*rng.uniform(15, SIZE - 15, 2), *rng.uniform(4, 14, 2)) for _ in range(GT_PER_IMAGE)]
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
                cx, cy, rx, ry = (*rng.uniform(15, SIZE - 15, 2), *rng.uniform(3, 12, 2))
                score = rng.uniform(0.0, 0.7)
            rle = polygons_to_rle([_ellipse(rng, cx, cy, rx, ry)], SIZE, SIZE)
            results.append(
                {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)}
            )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    return gt, results


def subset(gt: dict, results: list[dict], num_images: int) -> tuple[dict, list[dict]]:
    """The first `num_images` images of the data, with their annotations and results."""
    kept = {image["id"] for image in gt["images"][:num_images]}
    return (
        {
            "images": gt["images"][:num_images],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in kept],
            "categories": gt["categories"],
        },
        [r for r in results if r["image_id"] in kept],
    )


def run_hotcoco(gt: dict, results: list[dict]) -> float:
    coco_gt = hotcoco.COCO(gt)
    evaluator = hotcoco.COCOeval(coco_gt, coco_gt.load_res(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return float(evaluator.stats[0])


def run_faster_coco_eval(gt: dict, results: list[dict]) -> float:
    coco_gt = FasterCOCO(gt, print_function=lambda *_: None)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "segm", print_function=lambda *_: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


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


def run_instaseg_ap(gt: dict, results: list[dict]) -> float:
    report, _ = evaluate(gt, results, max_dets=100, metrics=["ap"])
    return report["coco"]["segm"]["stats"]["AP"]


def run_instaseg_full(gt: dict, results: list[dict]) -> float:
    report, _ = evaluate(gt, results, max_dets=100)
    return report["coco"]["segm"]["stats"]["AP"]


# name -> (function, whether it writes into its input, whether it runs on the pycocotools subset)
METHODS: dict[str, tuple[Callable[[dict, list[dict]], float], bool, bool]] = {
    "hotcoco COCOeval (mask AP)": (run_hotcoco, False, False),
    "instaseg eval, --metrics ap (validation + matcher)": (run_instaseg_ap, False, False),
    "instaseg eval, full default report": (run_instaseg_full, False, False),
    "faster-coco-eval COCOeval_faster (mask AP)": (run_faster_coco_eval, True, False),
    "hotcoco COCOeval (mask AP), pycocotools' images": (run_hotcoco, False, True),
    "pycocotools COCOeval (mask AP)": (run_pycocotools, True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pycocotools-images", type=int, default=300)
    args = parser.parse_args()

    start = time.perf_counter()
    gt, results = make_data(args.images)
    small = subset(gt, results, args.pycocotools_images)
    print(
        f"data: {args.images} images, {len(gt['annotations'])} GT masks, {len(results)} detections "
        f"(made in {time.perf_counter() - start:.0f} s); pycocotools on {len(small[0]['images'])} images",
        flush=True,
    )
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    cpu_times: dict[str, list[float]] = {name: [] for name in METHODS}
    aps: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name, (method, writes, on_subset) in METHODS.items():
            data = small if on_subset else (gt, results)
            inputs = copy.deepcopy(data) if writes else data
            start, cpu_start = time.perf_counter(), time.process_time()
            aps[name] = method(*inputs)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
            print(
                f"run {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s "
                f"(CPU {cpu_times[name][-1]:.2f} s), AP {aps[name]:.6f}",
                flush=True,
            )
            del inputs

    reference = statistics.median(times["hotcoco COCOeval (mask AP)"])
    subset_reference = statistics.median(times["hotcoco COCOeval (mask AP), pycocotools' images"])
    print()
    print(
        f"{args.images} images x {DETS_PER_IMAGE} detections ({SIZE}x{SIZE}, {GT_PER_IMAGE} GT masks each), "
        f"segm, median of {args.repeats} interleaved runs; {platform.machine()} {platform.processor()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, hotcoco {hotcoco.__version__}"
    )
    print()
    print("| method | images | median time (s) | min-max (s) | / hotcoco median | CPU time (s) | mask AP |")
    print("|---|---|---|---|---|---|---|")
    for name, (_, _, on_subset) in METHODS.items():
        median = statistics.median(times[name])
        count = len(small[0]["images"]) if on_subset else args.images
        ratio = f"{median / (subset_reference if on_subset else reference):.2f}x"
        print(
            f"| {name} | {count} | {median:.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} | {ratio} | "
            f"{statistics.median(cpu_times[name]):.2f} | {aps[name]:.6f} |"
        )


if __name__ == "__main__":
    main()
