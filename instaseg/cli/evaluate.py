"""`instaseg eval`: COCO AP/AR, per-class AP, matched-mask IoU/Dice, Boundary AP and DSB score of results."""

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
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances JSON (ground truth)")
    parser.add_argument("--pred", required=True, type=Path, help="COCO results JSON (list of detections)")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm", help="default: segm")
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
