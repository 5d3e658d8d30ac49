"""Accuracy of a promptable model as a refiner of a detector's masks and as "segment everything" (issue 17).

Every image of the COCO file `--gt` (file names relative to its folder) is predicted through `Predictor`
with every detection kept (score > 0.05, masks cut at 0.5, at most `--max-dets`), in these configurations:
- `detector`: the detector alone (`--detector`, default the bundled Mask R-CNN);
- `refined, replace` / `refined, fuse`: the detector's boxes as box prompts to the promptable model
  (`SamRefinedModel`), its masks replacing the detector's, or only where both agree (mask IoU >= 0.5);
- `everything`: the promptable model alone, automatic mask generation on a `--points-per-side` grid,
  class-agnostic, scored by predicted IoU (`--pred-iou-thresh` / `--stability-thresh` filter candidates).
Reported side by side: mask AP, AP50, AP75, Boundary AP, box AP (`instaseg.evaluation`, the same cap), and
seconds per image (2 threads unless `--threads`).

    .venv/bin/python benchmarks/bench_promptable_accuracy.py --gt runs/nuclei/val.json \
        [--promptable nuclei_promptable] [--detector nuclei_maskrcnn] [--max-images N] [--skip-everything]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.report import evaluate
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.models import load_model, load_promptable
from instaseg.models.protocol import SegmentationModel
from instaseg.models.sam.automatic_masks import AutomaticMaskSettings, SamEverythingModel
from instaseg.models.sam.refined_model import SamRefinedModel

EVERY_DETECTION = PostprocessOptions(score_threshold=0.05, mask_threshold=0.5)


def score(model: SegmentationModel, gt_path: Path, entries: list[dict], max_dets: int) -> dict[str, float]:
    """Predict every entry of the ground truth with `model`; its metrics and seconds per image."""
    predictor = Predictor(model, postprocess=EVERY_DETECTION)
    results = []
    started = time.perf_counter()
    for entry in entries:
        instances = predictor.predict(gt_path.parent / entry["file_name"])
        results.extend(instances.to_coco_results(entry["id"]))
    seconds = (time.perf_counter() - started) / len(entries)
    full = json.loads(gt_path.read_text())
    ids = {entry["id"] for entry in entries}
    annotations = [record for record in full["annotations"] if record["image_id"] in ids]
    gt = {**full, "images": entries, "annotations": annotations}
    report, computed = evaluate(gt, results, max_dets=max_dets, metrics=("ap", "boundary_ap"))
    mask, boundary = computed["segm"].stats, computed["boundary"].stats
    box = evaluate_coco(gt, results, iou_type="bbox", max_dets=max_dets).stats
    return {
        "mask_AP": mask["AP"],
        "AP50": mask["AP50"],
        "AP75": mask["AP75"],
        "boundary_AP": boundary["AP"],
        "box_AP": box["AP"],
        "detections": report["num_detections"],
        "seconds_per_image": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, required=True)
    parser.add_argument("--promptable", default="nuclei_promptable")
    parser.add_argument("--detector", default="nuclei_maskrcnn")
    parser.add_argument("--max-dets", type=int, default=500)
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.5)
    parser.add_argument("--stability-thresh", type=float, default=0.8)
    parser.add_argument("--skip-everything", action="store_true")
    parser.add_argument("--skip-refiner", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = json.loads(args.gt.read_text())["images"][: args.max_images]
    promptable = load_promptable(args.promptable)
    rows: dict[str, dict[str, float]] = {}
    if not args.skip_refiner:
        detector = load_model(args.detector)
        rows["detector"] = score(detector, args.gt, entries, args.max_dets)
        for mode in ("replace", "fuse"):
            refined = SamRefinedModel(detector, promptable, mode=mode)
            rows[f"refined, {mode}"] = score(refined, args.gt, entries, args.max_dets)
    if not args.skip_everything:
        settings = AutomaticMaskSettings(
            points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_thresh,
        )
        everything = SamEverythingModel(promptable, settings)
        rows["everything"] = score(everything, args.gt, entries, args.max_dets)
    print(
        f"{len(entries)} images of {args.gt}; detector {args.detector}; promptable {args.promptable}; "
        f"max_dets {args.max_dets}; {torch.get_num_threads()} threads; everything: "
        f"{args.points_per_side}x{args.points_per_side} points, predicted IoU > {args.pred_iou_thresh}, "
        f"stability >= {args.stability_thresh}\n"
    )
    print("| configuration | mask AP | AP50 | AP75 | Boundary AP | box AP | detections | s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['mask_AP']:.4f} | {row['AP50']:.4f} | {row['AP75']:.4f} | "
            f"{row['boundary_AP']:.4f} | {row['box_AP']:.4f} | {row['detections']} | "
            f"{row['seconds_per_image']:.2f} |"
        )


if __name__ == "__main__":
    main()
