"""Atomic file writes: write a temporary file beside the target, flush it to disk, then rename it over the
target.

A crash or a full disk while writing leaves the previous file intact: `os.replace` is atomic on POSIX and
Windows when both paths are on the same file system, which a temporary file in the same folder guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` only if the `with` block completes.

    `mode` is "wb" or "w" (text, UTF-8). On any exception (including `OSError: No space left on device`) the
    temporary file is removed and `path` keeps its previous content. The temporary file is created with the
    ordinary permissions (umask applies), so the result is readable like any other file the user writes.
    A missing parent folder is an error that names it (not the temporary file).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w'; got {mode!r}")
    path = Path(path)
    if path.is_dir():  # else the final rename fails, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(
            tmp_path, mode.replace("w", "x"), **({"encoding": "utf-8"} if mode == "w" else {})
        ) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
