"""Choose the post-processing operating point for the DSB score on training images, then report it on val.

Run: `.venv/bin/python benchmarks/bench_operating_point.py --model CKPT --train TRAIN.json --val VAL.json
[--train-images 100] [--score-thresholds 0.5 0.6 0.7 0.8]`

COCO AP ranks detections by score and needs no threshold, but the Data Science Bowl score counts every mask a
method outputs (made non-overlapping by the metric itself): it depends on the score threshold, and through
its IoU thresholds up to 0.95 on where mask probabilities are cut. This benchmark predicts the first
`--train-images` images of TRAIN.json (sorted by id) once with `Predictor` (score > 0.05), applies each
candidate `PostprocessOptions` (score threshold x mask threshold) to those predictions, and picks the
candidate with the best DSB score on the training images. It then reports every candidate on the
validation images too, marking the one chosen on the training images: the validation split never chooses.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from instaseg.evaluation.report import evaluate
from instaseg.inference.postprocess import PostprocessOptions, postprocess
from instaseg.inference.predictor import Predictor
from instaseg.structures.instances import Instances

SCORE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
MASK_THRESHOLDS = (0.4, 0.5, 0.6)


def predict(predictor: Predictor, gt: dict, gt_path: Path) -> list[tuple[int, Instances]]:
    return [(entry["id"], predictor.predict(gt_path.parent / entry["file_name"])) for entry in gt["images"]]


def dsb_scores(
    gt: dict, predictions: list[tuple[int, Instances]], score_thresholds: tuple[float, ...]
) -> dict[tuple[float, float], float]:
    scores = {}
    for score_threshold, mask_threshold in itertools.product(score_thresholds, MASK_THRESHOLDS):
        options = PostprocessOptions(score_threshold=score_threshold, mask_threshold=mask_threshold)
        results = []
        for image_id, instances in predictions:
            results.extend(postprocess(instances, options).to_coco_results(image_id))
        report, _ = evaluate(gt, results, max_dets=500)
        scores[(score_threshold, mask_threshold)] = report["pixel_metrics"]["dsb_score"]
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the bundled model)")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--train-images", type=int, default=100)
    parser.add_argument(
        "--score-thresholds",
        type=float,
        nargs="+",
        default=SCORE_THRESHOLDS,
        help="candidates (default 0.5-0.8, for Mask R-CNN's classifier scores; CondInst's quality-focal "
        "scores estimate the IoU and run lower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    # Every detection (COCO's 0.05): the thresholds are applied per grid point below.
    predictor = Predictor(
        args.model, postprocess=PostprocessOptions(score_threshold=0.05, mask_threshold=0.5)
    )
    train = json.loads(args.train.read_text())
    entries = sorted(train["images"], key=lambda entry: entry["id"])[: args.train_images]
    ids = {entry["id"] for entry in entries}
    train = {
        **train,
        "images": entries,
        "annotations": [a for a in train["annotations"] if a["image_id"] in ids],
    }
    val = json.loads(args.val.read_text())
    candidates = tuple(args.score_thresholds)
    on_train = dsb_scores(train, predict(predictor, train, args.train), candidates)
    chosen = max(on_train, key=on_train.get)
    on_val = dsb_scores(val, predict(predictor, val, args.val), candidates)
    print(
        f"model {args.model or 'bundled default'}; {len(entries)} training images, {len(val['images'])} val"
    )
    print("| score threshold | mask threshold | DSB train | DSB val | chosen on train |")
    print("|---|---|---|---|---|")
    for key in on_train:
        print(
            f"| {key[0]} | {key[1]} | {on_train[key]:.4f} | {on_val[key]:.4f} | "
            f"{'**yes**' if key == chosen else ''} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
