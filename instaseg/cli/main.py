"""`instaseg` entry point: one sub-command per module in this package, listed explicitly below."""

from __future__ import annotations

import argparse
import sys

from instaseg import __version__
from instaseg.cli import convert, demo, evaluate, split

# Each module defines `add_parser(subparsers)`; the parser it adds sets `func(args) -> int` (the exit code).
COMMANDS = [convert, split, evaluate, demo]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instaseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"instaseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, UserError) as exc:
        print(f"instaseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
