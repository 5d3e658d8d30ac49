"""Benchmark how long `instaseg --help` and `instaseg <command> --help` take to answer (issue 14).

Run: .venv/bin/python benchmarks/bench_cli_help.py [--repeats 7] [--checkouts DIR ...]

Each command line runs in a fresh subprocess (`python -m instaseg ...` with the working directory at a
checkout, whose `instaseg` package then comes first on sys.path; the interpreter start and every import
count, as they do for a user). The commands and checkouts take turns, one run of each per round (a
before/after comparison is interleaved: `--checkouts /tmp/old-commit .`), and the table gives the median
and the slowest wall time over `--repeats` rounds. It also lists which heavy libraries (torch, numpy,
scipy, fastapi) `build_parser()` imports in each checkout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (
    ("--help",),
    ("predict", "--help"),
    ("serve", "--help"),
    ("export", "--help"),
    ("eval", "--help"),
    ("train", "--help"),
)
HEAVY = ("torch", "numpy", "scipy", "fastapi")
REPO = Path(__file__).resolve().parents[1]


def time_once(checkout: Path, arguments: tuple[str, ...]) -> float:
    """Wall seconds of one `python -m instaseg ARGUMENTS` in `checkout` (output discarded; failure raises)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "instaseg", *arguments],
        cwd=checkout,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def heavy_imports(checkout: Path) -> list[str]:
    """Which of `HEAVY` building the parser imports, checked in a fresh interpreter."""
    probe = (
        "import sys; from instaseg.cli.main import build_parser; build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=checkout, check=True, capture_output=True, text=True
    )
    return result.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="rounds (one run of every command each)")
    parser.add_argument(
        "--checkouts",
        type=Path,
        nargs="+",
        default=[REPO],
        help="source trees to compare (default: this one)",
    )
    args = parser.parse_args()
    runs = [(checkout.resolve(), arguments) for checkout in args.checkouts for arguments in COMMANDS]
    for run in runs:  # warm the file cache once; not timed
        time_once(*run)
    times: dict[tuple[Path, tuple[str, ...]], list[float]] = {run: [] for run in runs}
    for _ in range(args.repeats):
        for run in runs:
            times[run].append(time_once(*run))
    for checkout in args.checkouts:
        imported = " ".join(heavy_imports(checkout.resolve())) or "none"
        print(f"{checkout}: build_parser() imports {imported}")
    print(f"{'checkout':<24} {'command':<26} {'median s':>9} {'max s':>7}")
    for (checkout, arguments), values in times.items():
        command = " ".join(("instaseg", *arguments))
        print(
            f"{str(checkout)[-24:]:<24} {command:<26} {statistics.median(values):>9.3f} {max(values):>7.3f}"
        )


if __name__ == "__main__":
    main()
