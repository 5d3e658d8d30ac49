"""`instaseg plot-metrics`: draw a training run's loss and validation-AP curves to PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot-metrics", help="plot a training run's curves", description=__doc__)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, help="folder for loss.png and ap.png (default: RUN_DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.engine.plot import plot_metrics

    for path in plot_metrics(args.run_dir, args.out):
        print(path)
    return 0
