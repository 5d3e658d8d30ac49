"""What to predict on: expand files, folders and glob patterns into image paths; read video frames.

Nothing here decodes images (that is `instaseg.io.images.load_image`); an input that cannot be expanded
becomes an `InputFailure`, so one bad argument never stops the others.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from instaseg.io.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    images_in_folder,
    load_image,
    natural_sort_key,
)

_GLOB_CHARACTERS = re.compile(r"[*?\[]")


class VideoReadError(ValueError):
    """A video file or frame folder that cannot be opened or read."""


@dataclass(frozen=True)
class InputFailure:
    """An input (a path, a pattern or an image file) that gave no result, and why."""

    source: str
    reason: str


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[InputFailure]]:
    """Expand command-line inputs into a list of image files, in the order given.

    - an existing file is taken as is, whatever its extension (an unsupported format fails later, when read);
    - a folder gives every image file below it (`IMAGE_SUFFIXES` of `instaseg.io.images`, any case);
    - anything else containing `*`, `?` or `[` is a glob pattern (`**` recurses); folders it matches expand
      as above.
    A missing path, a pattern matching nothing and a folder holding no image become `InputFailure`s. A file
    reached twice is listed once (its first position).
    """
    files: list[Path] = []
    failures: list[InputFailure] = []
    for raw in inputs:
        source = str(raw)
        path = Path(source)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = images_in_folder(path)
            if not found:
                extensions = ", ".join(IMAGE_SUFFIXES)
                failures.append(InputFailure(source, f"folder holds no image files ({extensions})"))
            files.extend(found)
        elif _GLOB_CHARACTERS.search(source):
            matches = [
                Path(m)
                for m in sorted(glob.glob(source, recursive=True), key=lambda m: natural_sort_key(Path(m)))
            ]
            found = [p for m in matches for p in ([m] if m.is_file() else images_in_folder(m))]
            if not found:
                failures.append(InputFailure(source, "pattern matched no image files"))
            files.extend(found)
        else:
            failures.append(InputFailure(source, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for path in files:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, failures


@dataclass(frozen=True)
class Frame:
    """One video frame: its position, a name for outputs, and the pixels as (H, W, 3) uint8 RGB.

    A frame file of a folder that cannot be read has `image` None and the reason in `error`.
    """

    index: int
    name: str
    image: np.ndarray | None
    error: str | None = None


class FrameSource:
    """The frames of a video file (read with OpenCV) or of a folder of images (natural sort order).

    `fps` is the video's frame rate, or `default_fps` for a folder or a video that does not state one;
    `frame_count` is the number of frames (as the video's header states it), or None when unknown.
    """

    def __init__(self, source: str | Path, default_fps: float = 25.0) -> None:
        self.source = Path(source)
        self.fps = default_fps
        self.frame_count: int | None = None
        self._frames: list[Path] | None = None
        if self.source.is_dir():
            self._frames = images_in_folder(self.source)
            if not self._frames:
                raise VideoReadError(f"{self.source}: folder holds no image frames")
            self.frame_count = len(self._frames)
        elif self.source.is_file():
            capture = cv2.VideoCapture(str(self.source))
            try:
                if not capture.isOpened():
                    raise VideoReadError(f"{self.source}: not a video OpenCV can read")
                fps = capture.get(cv2.CAP_PROP_FPS)
                if fps and np.isfinite(fps) and fps > 0:
                    self.fps = float(fps)
                count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
                self.frame_count = int(count) if count and count > 0 else None
            finally:
                capture.release()
        else:
            raise VideoReadError(f"{self.source}: no such video file or frame folder")

    def __iter__(self) -> Iterator[Frame]:
        if self._frames is not None:
            for index, path in enumerate(self._frames):
                try:
                    image = load_image(path)
                except ImageReadError as exc:
                    yield Frame(index, path.stem, None, str(exc))
                    continue
                yield Frame(index, path.stem, image)
            return
        capture = cv2.VideoCapture(str(self.source))
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield Frame(index, f"{self.source.stem}_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise VideoReadError(f"{self.source}: video holds no readable frames")
