"""`instaseg demo`: segment the bundled nuclei samples with the bundled model, draw overlays, evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the bundled model on bundled samples and evaluate it", description=__doc__
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for results.json, overlays, report.json and PNGs"
    )
    parser.add_argument("--model", help="another model to demonstrate (default: the bundled nuclei model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.demo import format_demo_summary, run_demo

    print(format_demo_summary(run_demo(args.out, args.model)))
    return 0
