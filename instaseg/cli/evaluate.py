"""`instaseg eval`: COCO AP/AR, per-class AP, matched-mask IoU/Dice, Boundary AP, DSB score and PQ of results;
with `--iou-type panoptic` PQ of COCO panoptic files, with `--iou-type semantic` IoU of class maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.cli.options import add_deprecated_alias


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate COCO results against COCO ground truth",
        description=__doc__,
    )
    parser.add_argument(
        "--gt",
        required=True,
        type=Path,
        help="COCO instances JSON (ground truth); COCO panoptic JSON with --iou-type panoptic (its PNGs in "
        "the folder of the same name); a folder of class-map PNGs with --iou-type semantic",
    )
    parser.add_argument(
        "--pred",
        required=True,
        type=Path,
        help="COCO results JSON (list of detections); panoptic.json / a folder of class maps as for --gt",
    )
    parser.add_argument(
        "--iou-type", choices=("segm", "bbox", "panoptic", "semantic"), default="segm", help="default: segm"
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="--iou-type semantic: ground-truth value of unlabelled pixels, counted nowhere (default 255)",
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=100,
        help="detections per image that count, for every number (default 100; dense scenes need more)",
    )
    add_deprecated_alias(parser, "--max-dets", "--max-detections", "max_detections", type=int)
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        help="score threshold for the DSB score and foreground Dice only (default 0); AP uses every "
        "detection (predict with --score-threshold 0.05 for AP)",
    )
    add_deprecated_alias(parser, "--min-score", "--score-threshold", "score_threshold", type=float)
    parser.add_argument(
        "--metrics",
        type=lambda value: [name.strip() for name in value.split(",") if name.strip()],
        help="comma-separated subset of ap, boundary_ap, matched, foreground_dice, dsb, pq (default: all "
        "that apply to --iou-type; 'ap' alone is the fastest)",
    )
    parser.add_argument(
        "--out", type=Path, help="report JSON path; PR-curve PNGs go beside it as <stem>_pr_<type>.png"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.iou_type in ("panoptic", "semantic"):
        return _run_pixel_metrics(args)
    from instaseg.evaluation.report import evaluate_files, format_report

    report = evaluate_files(
        args.gt,
        args.pred,
        iou_type=args.iou_type,
        max_dets=args.max_detections,
        out=args.out,
        min_score=args.score_threshold,
        metrics=args.metrics,
    )
    print(format_report(report))
    return 0


def _run_pixel_metrics(args: argparse.Namespace) -> int:
    """PQ of COCO panoptic files, or semantic IoU of class-map folders: printed, and written with --out."""
    import json

    from instaseg.io.atomic import atomic_write

    if args.iou_type == "panoptic":
        from instaseg.evaluation.panoptic import evaluate_panoptic_files, panoptic_section

        report = {"panoptic": panoptic_section(evaluate_panoptic_files(args.gt, args.pred))}
        lines = [
            f"{group}: PQ {_value(row['PQ'])}  SQ {_value(row['SQ'])}  RQ {_value(row['RQ'])}  "
            f"({row['n']} classes)"
            for group, row in report["panoptic"]["groups"].items()
        ]
    else:
        from instaseg.evaluation.semantic import evaluate_semantic_folders

        report = {"semantic": evaluate_semantic_folders(args.gt, args.pred, args.ignore_index)}
        semantic = report["semantic"]
        lines = [
            f"{semantic['num_images']} images: mean IoU {_value(semantic['mean_iou'])}  mean Dice "
            f"{_value(semantic['mean_dice'])}  pixel accuracy {_value(semantic['pixel_accuracy'])}",
            *(
                f"  class {index}: IoU {row['iou']:.4f}  Dice {row['dice']:.4f}"
                for index, row in semantic["per_class"].items()
            ),
        ]
    print("\n".join(lines))
    if args.out is not None:
        with atomic_write(args.out, "w") as stream:
            json.dump(report, stream, indent=2)
    return 0


def _value(number: float | None) -> str:
    return "n/a" if number is None else f"{number:.4f}"
