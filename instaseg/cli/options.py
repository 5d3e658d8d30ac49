"""Argument helpers shared by the commands: renamed flags that still work for one release, and option values
passed on only when given (so that the library's defaults stay the only defaults).

Nothing here imports more than the standard library: `instaseg --help` must not load torch
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class _DeprecatedAlias(argparse.Action):
    """Stores like the flag it replaces and tells the user, on stderr, the new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str, **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"instaseg: {option_string} is deprecated and will be removed in the next release; use "
            f"{self.new_flag}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old_flag: str,
    new_flag: str,
    dest: str,
    **kwargs: Any,
) -> None:
    """Accept `old_flag` as `new_flag` (same `dest`; `type` / `nargs` in `kwargs`), hidden from --help."""
    parser.add_argument(
        old_flag, dest=dest, action=_DeprecatedAlias, new_flag=new_flag, help=argparse.SUPPRESS, **kwargs
    )


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments whose value is not None: what the user set on the command line."""
    return {key: value for key, value in values.items() if value is not None}
