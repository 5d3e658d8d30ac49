"""`instaseg` entry point: one sub-command per module in this package, listed explicitly below.

The command modules import only the standard library at import time; each command's `func` imports the
library it calls. So `instaseg --help` and `instaseg <command> --help` answer without loading torch.
"""

from __future__ import annotations

import argparse
import sys

from instaseg import __doc__ as PACKAGE_DOC
from instaseg import __version__
from instaseg.cli import (
    convert,
    demo,
    eval_prompts,
    evaluate,
    export,
    models,
    plot_metrics,
    predict,
    rank,
    segment,
    serve,
    slo,
    split,
    train,
)

# Each module defines `add_parser(subparsers)`; the parser it adds sets `func(args) -> int` (the exit code).
COMMANDS = [
    predict,
    segment,
    demo,
    convert,
    split,
    evaluate,
    eval_prompts,
    train,
    plot_metrics,
    serve,
    models,
    slo,
    export,
    rank,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instaseg", description=PACKAGE_DOC)
    parser.add_argument("--version", action="version", version=f"instaseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"instaseg {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2


def _describe(error: Exception) -> str:
    """One line for the user; for an OSError the file and the system's reason ('out.json: Is a directory')."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
