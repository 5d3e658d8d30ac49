"""Accuracy of several models on several COCO files side by side: issue 15's modality-held-out validation.

Each `--model` (a bundled name or a checkpoint) predicts every image of each `--gt` file (file names
relative to its folder) with every detection of score >= 0.05 (no TTA, masks cut at 0.5), and the
predictions are scored by `instaseg.evaluation` with up to `--max-dets` detections per image: mask AP, AP50,
AP75, AP for small objects, Boundary AP, and the DSB score of the detections scoring >= `--dsb-min-score`
(one fixed threshold for every model, since the grey-trained models have no operating point of their own).

    .venv/bin/python benchmarks/make_modality_split.py
    .venv/bin/python benchmarks/bench_modality.py \
        --model nuclei_condinst --model runs/condinst_grey/best.pt \
        --gt runs/nuclei/modality_heldout_colour.json --gt runs/nuclei/modality_val_grey.json \
        [--out runs/measure/modality.json]

Prints one markdown row per model and file; `--out` writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_predict import EVERY_DETECTION

from instaseg.evaluation.report import evaluate
from instaseg.inference.predictor import Predictor
from instaseg.io.atomic import atomic_write


def score_model(model: str, gt_path: Path, max_dets: int, dsb_min_score: float) -> dict:
    """Predict every image of `gt_path` with `model`; its metrics and seconds per image."""
    gt = json.loads(gt_path.read_text())
    predictor = Predictor(model, postprocess=EVERY_DETECTION)
    results = []
    start = time.perf_counter()
    for entry in gt["images"]:
        instances = predictor.predict(gt_path.parent / entry["file_name"])
        results.extend(instances.to_coco_results(entry["id"]))
    per_image = (time.perf_counter() - start) / len(gt["images"])
    report, _ = evaluate(gt, results, max_dets=max_dets, min_score=dsb_min_score)
    mask = report["coco"]["segm"]["stats"]
    return {
        "model": model,
        "gt": str(gt_path),
        "images": len(gt["images"]),
        "mask_AP": mask["AP"],
        "AP50": mask["AP50"],
        "AP75": mask["AP75"],
        "AP_small": mask["AP_small"],
        "boundary_AP": report["coco"]["boundary"]["stats"]["AP"],
        "dsb_score": report["pixel_metrics"]["dsb_score"],
        "s_per_image": per_image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="bundled name or checkpoint")
    parser.add_argument("--gt", action="append", required=True, type=Path, help="COCO JSON to score on")
    parser.add_argument("--max-dets", type=int, default=500)
    parser.add_argument("--dsb-min-score", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON of every row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"max_dets {args.max_dets}; DSB score of detections scoring >= {args.dsb_min_score}\n")
    print("| model | file (images) | mask AP | AP50 | AP75 | AP small | boundary AP | DSB score | s/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for gt_path in args.gt:
        for model in args.model:
            row = score_model(model, gt_path, args.max_dets, args.dsb_min_score)
            rows.append(row)
            print(
                f"| {model} | {gt_path.name} ({row['images']}) | {row['mask_AP']:.4f} | {row['AP50']:.4f} | "
                f"{row['AP75']:.4f} | {row['AP_small']:.4f} | {row['boundary_AP']:.4f} | "
                f"{row['dsb_score']:.4f} | {row['s_per_image']:.2f} |",
                flush=True,
            )
    if args.out is not None:
        with atomic_write(args.out, "w") as stream:
            stream.write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
