"""Sampled prediction log for debugging: a share of requests written to a local folder, size-capped.

Layout:

    predictions-000001.jsonl   one JSON object per line: time, input hash, model version, options, outputs,
                               timings
    predictions-000002.jsonl   a new segment starts when the current one would pass `segment_bytes`
    images/<sha256>.<ext>      the uploaded bytes, when `include_images` (named by content, stored once)

When the folder passes `max_bytes`, the oldest files (segments and images alike, by modification time) are
deleted until it fits again: rotation by age under a fixed disk budget. Each record is appended with a single
`write` of one whole line (a reader never sees half a record from a finished write); images are written to a
temporary file and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from pathlib import Path

from instaseg.io.atomic import atomic_write

__all__ = ["PredictionSampler"]

_log = logging.getLogger(__name__)
_SEGMENT = re.compile(r"^predictions-(\d{6})\.jsonl$")
IMAGE_FOLDER = "images"


class PredictionSampler:
    """Decides which requests to log (`wants`) and writes them (`write`); safe to call from many threads."""

    def __init__(
        self,
        folder: str | Path,
        share: float,
        max_bytes: int,
        segment_bytes: int,
        include_images: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"sampling share must lie in [0, 1], got {share}")
        if segment_bytes < 1 or max_bytes < segment_bytes:
            raise ValueError(
                f"sampling needs 1 <= segment_bytes <= max_bytes, got {segment_bytes}, {max_bytes}"
            )
        self.folder = Path(folder)
        self.share = share
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.include_images = include_images
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        (self.folder / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
        segments = [int(m.group(1)) for p in self.folder.iterdir() if (m := _SEGMENT.match(p.name))]
        self._segment = max(segments, default=0) + 1  # never append to a segment of an earlier run
        self._segment_size = 0
        self._total = sum(p.stat().st_size for p in self._files())

    def wants(self) -> bool:
        """Whether to log the current request (true for a `share` of the calls)."""
        with self._lock:
            return self.share > 0 and self._rng.random() < self.share

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def write(self, record: dict, data: bytes | None = None, extension: str = "bin") -> None:
        """Append `record` (and keep `data` under images/ when asked to); raises `OSError` on failure."""
        with self._lock:
            if self.include_images and data is not None and "input_sha256" in record:
                relative = f"{IMAGE_FOLDER}/{record['input_sha256']}.{extension.lower()}"
                target = self.folder / relative
                if not target.exists():
                    with atomic_write(target, "wb") as stream:
                        stream.write(data)
                    self._total += len(data)
                record = {**record, "image_file": relative}
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
            if self._segment_size and self._segment_size + len(line) > self.segment_bytes:
                self._segment += 1
                self._segment_size = 0
            descriptor = os.open(self._segment_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(descriptor, line)
            finally:
                os.close(descriptor)
            self._segment_size += len(line)
            self._total += len(line)
            if self._total > self.max_bytes:
                self._enforce_cap()

    def try_write(self, record: dict, data: bytes | None = None, extension: str = "bin") -> bool:
        """`write`, but a failure is logged as a warning and returns False: the debugging log must never
        fail a prediction (the caller counts the failure)."""
        try:
            self.write(record, data, extension)
        except OSError as exc:
            _log.warning("could not write the sampled prediction log in %s: %s", self.folder, exc)
            return False
        return True

    def _segment_path(self) -> Path:
        return self.folder / f"predictions-{self._segment:06d}.jsonl"

    def _files(self) -> list[Path]:
        segments = [p for p in self.folder.iterdir() if _SEGMENT.match(p.name)]
        images = [
            p for p in (self.folder / IMAGE_FOLDER).iterdir() if p.is_file() and not p.name.startswith(".")
        ]
        return segments + images

    def _enforce_cap(self) -> None:
        """Delete the oldest files (never the segment being written) until the folder fits `max_bytes`."""
        current = self._segment_path()
        candidates = sorted(
            ((p.stat().st_mtime_ns, p.name, p) for p in self._files() if p != current), key=lambda t: t[:2]
        )
        for _, _, path in candidates:
            if self._total <= self.max_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self._total -= size
