"""`instaseg eval`: COCO AP/AR, per-class AP, matched-mask IoU/Dice, Boundary AP and DSB score of results."""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.evaluation.report import evaluate_files, format_report


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
        "--max-dets",
        type=int,
        default=100,
        help="detections per image that count, for every number (default 100; dense scenes need more)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="score threshold for the DSB score and foreground Dice only; AP uses every detection",
    )
    parser.add_argument(
        "--out", type=Path, help="report JSON path; PR-curve PNGs go beside it as <stem>_pr_<type>.png"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_files(
        args.gt,
        args.pred,
        iou_type=args.iou_type,
        max_dets=args.max_dets,
        out=args.out,
        min_score=args.min_score,
    )
    print(format_report(report))
    return 0
