"""`instaseg demo`: the bundled model on bundled real nuclei images, evaluated, with no download.

Bundled DSB samples (mask folders, held out from the model's training) -> COCO ground truth (the data
package) -> the bundled default model through `Predictor` and `predict_files` (results.json, overlay PNGs) ->
evaluation report (max 500 detections per image) and precision-recall curves -> the classical watershed
baseline on the same images, for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

from instaseg.baselines.watershed import segment_nuclei
from instaseg.data.coco import write_coco
from instaseg.data.mask_folders import read_mask_folders
from instaseg.evaluation.report import evaluate, evaluate_files
from instaseg.inference.predictor import Predictor
from instaseg.inference.runner import OutputOptions, predict_files
from instaseg.models.default_model import held_out_samples_path

DEMO_MAX_DETS = 500  # nuclei images are dense; COCO's default of 100 would cap recall


def run_demo(out_dir: str | Path, model: str | Path | None = None) -> dict:
    """Run the demo, writing into `out_dir` (created if missing; files in it are replaced atomically).

    `model`: what `Predictor` accepts; None is the bundled default model. Writes `ground_truth.json` (COCO),
    `results.json` / `images.json` (the model's predictions), `overlays/*.png`, `report.json` and
    `report_pr_segm.png` / `report_pr_boundary.png`. Returns a summary: counts, mask AP/AP50/AP75, Boundary
    AP, mean IoU of matched masks, DSB score, the watershed baseline's mask AP and DSB score, the paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = read_mask_folders(held_out_samples_path(), category_name="nucleus", strict=True)
    gt_path = out_dir / "ground_truth.json"
    write_coco(dataset, gt_path)
    paths = {str(dataset.image_path(image)): image.id for image in dataset.images}
    # The model's operating point (the bundled model's: score 0.7, masks at 0.6, chosen on training images;
    # docs/models.md): what a user counting nuclei gets.
    predictor = Predictor(model)
    prediction = predict_files(
        list(paths),
        out_dir,
        predictor,
        OutputOptions(overlay=True),
        image_ids=paths,
        progress=False,
    )
    if prediction.failures:
        raise RuntimeError(f"the demo could not segment its own samples: {prediction.format()}")
    baseline_results = []
    for path, image_id in paths.items():
        baseline_results.extend(segment_nuclei(path).to_coco_results(image_id))
    report = evaluate_files(
        gt_path,
        out_dir / "results.json",
        max_dets=DEMO_MAX_DETS,
        out=out_dir / "report.json",
    )
    baseline, _ = evaluate(json.loads(gt_path.read_text()), baseline_results, max_dets=DEMO_MAX_DETS)
    segm, boundary = report["coco"]["segm"]["stats"], report["coco"]["boundary"]["stats"]
    return {
        "images": report["num_images"],
        "gt_instances": report["num_gt_instances"],
        "detections": report["num_detections"],
        "seconds": prediction.seconds,
        "max_dets": DEMO_MAX_DETS,
        "score_threshold": predictor.postprocess_options.score_threshold,
        "mask_threshold": predictor.postprocess_options.mask_threshold,
        "mask_AP": segm["AP"],
        "mask_AP50": segm["AP50"],
        "mask_AP75": segm["AP75"],
        "boundary_AP": boundary["AP"],
        "mean_matched_iou": report["matched_masks"]["mean_iou"],
        "dsb_score": report["pixel_metrics"]["dsb_score"],
        "baseline_mask_AP": baseline["coco"]["segm"]["stats"]["AP"],
        "baseline_dsb_score": baseline["pixel_metrics"]["dsb_score"],
        "files": {
            "ground_truth": str(gt_path),
            "results": str(out_dir / "results.json"),
            "overlays": str(out_dir / "overlays"),
            **report["files"],
        },
    }


def format_demo_summary(summary: dict) -> str:
    """A few lines for the terminal from `run_demo`'s summary."""
    matched_iou = summary["mean_matched_iou"]
    matched = "n/a" if matched_iou is None else f"{matched_iou:.3f}"
    lines = [
        f"bundled model (score >= {summary['score_threshold']}, mask probability >= "
        f"{summary['mask_threshold']}) on {summary['images']} bundled nuclei images (held out from its "
        "training): "
        f"{summary['detections']} detections, {summary['gt_instances']} annotated nuclei, "
        f"{summary['seconds']:.1f} s",
        f"mask AP {summary['mask_AP']:.3f}  AP50 {summary['mask_AP50']:.3f}  AP75 {summary['mask_AP75']:.3f}"
        f"  boundary AP {summary['boundary_AP']:.3f}  (max {summary['max_dets']} detections per image)",
        f"DSB score {summary['dsb_score']:.3f}  mean IoU of matched masks {matched}",
        f"watershed baseline on the same images: mask AP {summary['baseline_mask_AP']:.3f}  "
        f"DSB score {summary['baseline_dsb_score']:.3f}",
        f"results: {summary['files']['results']}",
        f"overlays: {summary['files']['overlays']}",
        f"report: {summary['files']['report']}",
    ]
    lines += [f"precision-recall curve: {path}" for path in summary["files"]["pr_curves"].values()]
    return "\n".join(lines)
