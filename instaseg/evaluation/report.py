"""The evaluation report behind `instaseg eval`: COCO AP (+ Boundary AP), matched-mask quality, DSB score.

`evaluate_files` reads a COCO ground-truth file and a COCO results file, computes everything with one
detection cap, writes the report JSON and one precision-recall PNG per IoU type, and returns the report as a
dict that `format_report` turns into the printed summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from instaseg.evaluation.coco_eval import (
    STAT_NAMES,
    CocoMetrics,
    EarlyEvaluation,
    check_max_dets,
    coco_metrics,
    matched_pairs,
    start_hotcoco,
)
from instaseg.evaluation.dsb import dsb_from_pairs
from instaseg.evaluation.instance_pairs import InstancePairs, collect
from instaseg.evaluation.mask_quality import foreground_dices, quality_of
from instaseg.evaluation.panoptic import instance_panoptic_quality, panoptic_section
from instaseg.evaluation.pr_curve import plot_pr_curve, pr_curve_data
from instaseg.evaluation.validation import (
    EvaluationInputError,
    GroundTruth,
    Results,
    check_ground_truth,
    check_results,
    read_json,
)
from instaseg.io.atomic import atomic_write

REPORT_IOU_TYPES = ("segm", "bbox")
# What `metrics` may choose: COCO AP/AR of the IoU type, Boundary AP, matched-mask IoU / Dice / boundary IoU,
# foreground Dice, the DSB score, Panoptic Quality of the instance sets (all but AP segm only).
METRICS = ("ap", "boundary_ap", "matched", "foreground_dice", "dsb", "pq")
SEGM_ONLY = ("boundary_ap", "matched", "foreground_dice", "dsb", "pq")
# The metrics made of detections made non-overlapping (`instance_pairs.Claims`).
CLAIM_METRICS = ("foreground_dice", "dsb", "pq")


def _coco_section(metrics: CocoMetrics) -> dict:
    return {"stats": metrics.stats, "per_class": metrics.per_class, "pr_curve": pr_curve_data(metrics)}


def check_metrics(metrics: Sequence[str] | None, iou_type: str) -> tuple[str, ...]:
    """The metrics to compute, in `METRICS` order: all that apply to `iou_type` when `metrics` is None."""
    if metrics is None:
        return METRICS if iou_type == "segm" else ("ap",)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown or not metrics:
        raise EvaluationInputError(
            f"metrics must be a non-empty subset of {', '.join(METRICS)}; got {metrics!r}"
        )
    if iou_type != "segm" and set(metrics) & set(SEGM_ONLY):
        raise EvaluationInputError(
            f"{', '.join(sorted(set(metrics) & set(SEGM_ONLY)))} need iou_type 'segm'; got {iou_type!r}"
        )
    return tuple(name for name in METRICS if name in metrics)


def evaluate(
    gt: Mapping,
    results: list,
    *,
    iou_type: str = "segm",
    max_dets: int = 100,
    min_score: float = 0.0,
    metrics: Sequence[str] | None = None,
    gt_source: str = "ground truth",
    results_source: str = "results",
) -> tuple[dict, dict[str, CocoMetrics]]:
    """The metrics of the report for in-memory COCO `gt` (dataset dict) and `results` (result records).

    `metrics` chooses among `METRICS` (default: all for "segm": mask AP, Boundary AP, matched-mask IoU/Dice/
    boundary IoU, foreground Dice, the DSB score and Panoptic Quality; box AP only for "bbox"). `max_dets`
    caps detections per image for every COCO number; `min_score` filters detections for the threshold-
    dependent pixel metrics (DSB score, foreground Dice, Panoptic Quality). Returns (the JSON-ready report
    dict, the CocoMetrics per IoU type).
    """
    if iou_type not in REPORT_IOU_TYPES:
        raise EvaluationInputError(f"iou_type must be one of {REPORT_IOU_TYPES}; got {iou_type!r}")
    chosen = check_metrics(metrics, iou_type)
    check_max_dets(max_dets)
    with ThreadPoolExecutor(max_workers=1) as pool:
        early = start_hotcoco(pool, gt, results, iou_type, max_dets) if "ap" in chosen else None
        checked = check_ground_truth(gt, gt_source, iou_type)
        columns = check_results(results, checked, iou_type, results_source)
        return _report(checked, columns, chosen, iou_type, max_dets, min_score, early)


def _report(
    checked: GroundTruth,
    columns: Results,
    chosen: tuple[str, ...],
    iou_type: str,
    max_dets: int,
    min_score: float,
    early: EarlyEvaluation | None,
) -> tuple[dict, dict[str, CocoMetrics]]:
    gt_source, results_source = checked.source, columns.source
    report: dict = {
        "ground_truth": gt_source,
        "results": results_source,
        "iou_type": iou_type,
        "max_dets": max_dets,
        "metrics": list(chosen),
        "num_images": int(checked.image_ids.size),
        "num_gt_instances": int(np.count_nonzero(checked.iscrowd == 0)),
        "num_detections": len(columns),
    }
    computed: dict[str, CocoMetrics] = {}
    pairs = None
    if iou_type == "segm":  # every segm metric, mask AP included, is made of the same pixel counts
        pairs = collect(
            checked,
            columns,
            boundary="boundary_ap" in chosen or "matched" in chosen,
            claims=bool(set(chosen) & set(CLAIM_METRICS)),
            min_score=min_score,
        )
    if "ap" in chosen:
        computed[iou_type] = coco_metrics(checked, columns, iou_type, max_dets, pairs, early)
    if pairs is not None:
        _segm_sections(report, computed, checked, columns, chosen, max_dets, min_score, pairs)
    report["coco"] = {name: _coco_section(m) for name, m in computed.items()}
    return report, computed


def _segm_sections(
    report: dict,
    computed: dict[str, CocoMetrics],
    checked: GroundTruth,
    columns: Results,
    chosen: tuple[str, ...],
    max_dets: int,
    min_score: float,
    pairs: InstancePairs,
) -> None:
    """The sections of the segm-only metrics in `chosen`, added to `report` (Boundary AP to `computed`)."""
    if "boundary_ap" in chosen:
        computed["boundary"] = coco_metrics(checked, columns, "boundary", max_dets, pairs)
    if "matched" in chosen:
        quality = quality_of(checked, pairs, *matched_pairs(checked, columns, pairs, max_dets))
        report["matched_masks"] = {
            "iou_threshold": 0.5,
            "num_matched": quality.num_matched,
            "mean_iou": quality.mean_iou,
            "mean_dice": quality.mean_dice,
            "mean_boundary_iou": quality.mean_boundary_iou,
        }
    pixel: dict = {}
    if "foreground_dice" in chosen:
        pixel["foreground_dice"] = float(foreground_dices(pairs).mean())
    if "dsb" in chosen:
        dsb = dsb_from_pairs(checked, columns.scores, columns.image_index, pairs)
        pixel["dsb_score"] = dsb.score
        pixel["dsb_per_image"] = [{"image_id": k, "score": v} for k, v in dsb.per_image.items()]
    if pixel:
        report["pixel_metrics"] = {"min_score": min_score, **pixel}
    if "pq" in chosen:
        quality = instance_panoptic_quality(checked, columns, pairs)
        report["panoptic"] = {"min_score": min_score, **panoptic_section(quality)}


def _plot_paths(out: Path, iou_types: list[str]) -> dict[str, Path]:
    return {name: out.with_name(f"{out.stem}_pr_{name}.png") for name in iou_types}


def evaluate_files(
    gt_path: str | Path,
    results_path: str | Path,
    *,
    iou_type: str = "segm",
    max_dets: int = 100,
    out: str | Path | None = None,
    min_score: float = 0.0,
    metrics: Sequence[str] | None = None,
) -> dict:
    """Evaluate the COCO results file `results_path` against the COCO ground truth `gt_path` (see `evaluate`).

    With `out`, writes the report JSON there and a precision-recall PNG per IoU type beside it
    (`<out stem>_pr_<iou type>.png`), all atomically; their paths are listed in the report under "files".
    """
    gt = read_json(gt_path, "ground-truth")
    results = read_json(results_path, "results")
    report, metrics = evaluate(
        gt,
        results,
        iou_type=iou_type,
        max_dets=max_dets,
        min_score=min_score,
        metrics=metrics,
        gt_source=str(gt_path),
        results_source=str(results_path),
    )
    if out is not None:
        out = Path(out)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {out.parent}")
        plots = _plot_paths(out, list(metrics))
        for name, path in plots.items():
            plot_pr_curve(metrics[name], path)
        report["files"] = {"report": str(out), "pr_curves": {name: str(path) for name, path in plots.items()}}
        with atomic_write(out, "w") as stream:
            json.dump(report, stream, indent=1)
            stream.write("\n")
    return report


def _number(value: float | None) -> str:
    return "  n/a" if value is None or value < 0 else f"{value:.3f}"


def _stat_label(name: str, max_dets: int) -> str:
    return f"AR{max_dets}" if name == "AR_max" else name


def format_report(report: Mapping) -> str:
    """The printed summary of a report from `evaluate` or `evaluate_files`."""
    max_dets = report["max_dets"]
    lines = [
        f"{report['num_images']} images, {report['num_gt_instances']} ground-truth instances, "
        f"{report['num_detections']} detections; at most {max_dets} detections per image count"
    ]
    for iou_type, section in report["coco"].items():
        lines.append("")
        lines.append(
            f"COCO {iou_type} (IoU 0.50:0.95 unless named; area all unless named; maxDets {max_dets}):"
        )
        labels = [_stat_label(name, max_dets) for name in STAT_NAMES]
        lines.append("  " + " ".join(f"{label:>9}" for label in labels))
        lines.append("  " + " ".join(f"{_number(section['stats'][name]):>9}" for name in STAT_NAMES))
        lines.append(
            f"  per class: {'category':<24} {'#gt':>6} {'#det':>7} {'AP':>6} {'AP50':>6} {'AP75':>6}"
        )
        for row in section["per_class"]:
            lines.append(
                f"             {row['name'][:24]:<24} {row['num_gt']:>6} {row['num_detections']:>7} "
                f"{_number(row['AP']):>6} {_number(row['AP50']):>6} {_number(row['AP75']):>6}"
            )
    if "matched_masks" in report:
        matched = report["matched_masks"]
        lines.append("")
        lines.append(
            f"matched masks (COCO matcher, IoU >= 0.5): {matched['num_matched']} pairs, "
            f"mean IoU {_number(matched['mean_iou'])}, mean Dice {_number(matched['mean_dice'])}, "
            f"mean boundary IoU {_number(matched['mean_boundary_iou'])}"
        )
    if "pixel_metrics" in report:
        pixel = report["pixel_metrics"]
        parts = []
        if "foreground_dice" in pixel:
            parts.append(f"foreground Dice {_number(pixel['foreground_dice'])}")
        if "dsb_score" in pixel:
            parts.append(f"DSB score {_number(pixel['dsb_score'])}")
        lines.append("")
        lines.append(f"pixel metrics (detections with score >= {pixel['min_score']:g}): {', '.join(parts)}")
    if "panoptic" in report:
        panoptic = report["panoptic"]
        groups = panoptic["groups"]["All"]
        lines.append("")
        lines.append(
            f"panoptic quality (instance sets made non-overlapping, detections with score >= "
            f"{panoptic['min_score']:g}; {groups['n']} classes): PQ {_number(groups['PQ'])}, "
            f"SQ {_number(groups['SQ'])}, RQ {_number(groups['RQ'])}"
        )
    if "files" in report:
        lines.append("")
        lines.append(f"report: {report['files']['report']}")
        for path in report["files"]["pr_curves"].values():
            lines.append(f"precision-recall curve: {path}")
    return "\n".join(lines)
