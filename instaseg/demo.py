"""`instaseg demo`: the whole path on bundled real nuclei images, with no download and no trained model.

Bundled DSB samples (mask folders) -> COCO ground truth (the data package) -> watershed baseline predictions
-> COCO results -> evaluation report (max 500 detections per image) and precision-recall curves.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from instaseg.baselines.watershed import segment_nuclei
from instaseg.data.coco import write_coco
from instaseg.data.mask_folders import read_mask_folders
from instaseg.evaluation.report import evaluate_files
from instaseg.io.atomic import atomic_write

DEMO_MAX_DETS = 500  # nuclei images are dense; COCO's default of 100 would cap recall


def run_demo(out_dir: str | Path) -> dict:
    """Run the demo, writing into `out_dir` (created if missing; files in it are replaced atomically).

    Writes `ground_truth.json` (COCO), `results.json` (COCO results of the watershed baseline), `report.json`
    and `report_pr_segm.png` / `report_pr_boundary.png`. Returns a summary: counts, mask AP/AP50/AP75,
    Boundary AP, mean IoU of matched masks, DSB score, and the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = resources.files("instaseg") / "assets" / "samples" / "dsb2018"
    with resources.as_file(samples) as sample_root:
        dataset = read_mask_folders(sample_root, category_name="nucleus", strict=True)
        gt_path = out_dir / "ground_truth.json"
        write_coco(dataset, gt_path)
        results = []
        for image in dataset.images:
            results.extend(segment_nuclei(dataset.image_path(image)).to_coco_results(image.id))
    results_path = out_dir / "results.json"
    with atomic_write(results_path, "w") as stream:
        json.dump(results, stream)
    report = evaluate_files(gt_path, results_path, max_dets=DEMO_MAX_DETS, out=out_dir / "report.json")
    segm, boundary = report["coco"]["segm"]["stats"], report["coco"]["boundary"]["stats"]
    return {
        "images": report["num_images"],
        "gt_instances": report["num_gt_instances"],
        "detections": report["num_detections"],
        "max_dets": DEMO_MAX_DETS,
        "mask_AP": segm["AP"],
        "mask_AP50": segm["AP50"],
        "mask_AP75": segm["AP75"],
        "boundary_AP": boundary["AP"],
        "mean_matched_iou": report["matched_masks"]["mean_iou"],
        "dsb_score": report["pixel_metrics"]["dsb_score"],
        "files": {"ground_truth": str(gt_path), "results": str(results_path), **report["files"]},
    }


def format_demo_summary(summary: dict) -> str:
    """A few lines for the terminal from `run_demo`'s summary."""
    matched_iou = summary["mean_matched_iou"]
    matched = "n/a" if matched_iou is None else f"{matched_iou:.3f}"
    lines = [
        f"watershed baseline on {summary['images']} bundled nuclei images: "
        f"{summary['detections']} detections, {summary['gt_instances']} annotated nuclei",
        f"mask AP {summary['mask_AP']:.3f}  AP50 {summary['mask_AP50']:.3f}  AP75 {summary['mask_AP75']:.3f}"
        f"  boundary AP {summary['boundary_AP']:.3f}  (max {summary['max_dets']} detections per image)",
        f"DSB score {summary['dsb_score']:.3f}  mean IoU of matched masks {matched}",
        f"results: {summary['files']['results']}",
        f"report: {summary['files']['report']}",
    ]
    lines += [f"precision-recall curve: {path}" for path in summary["files"]["pr_curves"].values()]
    return "\n".join(lines)
