"""The run's metrics file: one JSON object per line, appended as training goes (`metrics.jsonl` in the run
folder).

Each record has `"kind"` ("train" for periodic loss/learning-rate/throughput records, "eval" for validation
metrics) and `"iteration"` (optimiser steps done when it was written). Appending one line at a time keeps the
file readable after a crash; a resumed run drops records past the iteration it resumes from, so the file never
shows the same iteration twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from instaseg.io.atomic import atomic_write


class MetricsFileError(ValueError):
    """A metrics file with a line that is not a JSON object."""


class MetricsLog:
    """Appends records to a JSONL file, flushing each line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record; non-finite floats are written as null (JSON has no NaN)."""
        line = json.dumps({k: _finite_or_none(v) for k, v in record.items()}, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop records written after `iteration` (used on resume: those steps will be redone)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= iteration]
        with atomic_write(self.path, "w") as stream:
            stream.writelines(json.dumps(r) + "\n" for r in kept)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file, in order. An unterminated, unparsable last line is the append a crash
    cut short, and is skipped; anything else malformed raises `MetricsFileError`."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):  # only the last line can lack its newline
                    break
                raise MetricsFileError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise MetricsFileError(
                    f"{path}, line {number}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    return records


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
