"""`instaseg train`: train a model (Mask R-CNN, CondInst, the promptable model) as a YAML config describes;
`key=value` arguments override entries.

Several processes or machines: launch the same command under torchrun, e.g.
`torchrun --nproc_per_node 4 -m instaseg train --config run.yaml` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="training config (YAML)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides with YAML values, e.g. optim.lr=0.01 schedule.milestones=[800]",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--resume", action="store_true", help="continue the run in output_dir from last.pt")
    choice.add_argument(
        "--overwrite", action="store_true", help="replace the run already in output_dir (its files only)"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: shown when stderr is a terminal)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.engine.config import load_config
    from instaseg.engine.trainer import TrainingDivergedError, train

    config = load_config(args.config, args.overrides)
    try:
        result = train(
            config, resume=args.resume, overwrite=args.overwrite, progress=False if args.no_progress else None
        )
    except (TrainingDivergedError, OSError) as error:
        # OSError: e.g. a full disk while saving; the previous checkpoint is left intact by the atomic write.
        print(f"instaseg train: error: {error}", file=sys.stderr)
        return 1
    if not result.is_main:
        return 0
    if result.best_metric is None:
        validation = "no validation set"
    else:
        best = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
        validation = f"best validation {result.best_metric} {best}"
    print(f"trained to iteration {result.iteration}; {validation}; run in {result.run_dir}")
    return 0
