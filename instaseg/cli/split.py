"""`instaseg split`: split a COCO JSON file into train and validation files, reproducibly by seed."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split",
        help="split a COCO JSON file into train and validation files",
        description=__doc__
        + " Whole images move, with their annotations; the same seed gives the same split.",
    )
    parser.add_argument("gt", type=Path, metavar="GT.json", help="COCO instances JSON to split")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of images for validation")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--out-train", type=Path, required=True, help="where to write the training part")
    parser.add_argument("--out-val", type=Path, required=True, help="where to write the validation part")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record (exit code 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.data.split import format_split_summary, split

    summary = split(
        args.gt,
        args.out_train,
        args.out_val,
        val_fraction=args.val_fraction,
        seed=args.seed,
        strict=args.strict,
    )
    print(format_split_summary(summary))
    return 0
