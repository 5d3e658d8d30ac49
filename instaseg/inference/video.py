"""Predict on a video (or a folder of frames) with stable track ids: what `instaseg predict --video` does.

Writes `tracks.json`: `{"source", "fps", "categories": [{"id", "name"}], "thresholds": {"score_threshold",
"mask_threshold"}, "frames": [{"index", "name", "height", "width"}], "instances": [...], "failures": [{"file",
"reason"}]}`, where each instance is a COCO
result record (`image_id` = frame index + 1, `category_id`, `bbox`, `score`, `segmentation` RLE) plus its
`track_id`. It is rewritten every `save_every` seconds and at the end, also after an interruption. With
`overlay`, a video file gets `<stem>_overlay.mp4` (written under a temporary name, renamed when complete) and
a frame folder gets `overlay_frames/<frame name>.png`; colours follow track ids.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from instaseg.inference.inputs import FrameSource, InputFailure
from instaseg.inference.outputs import (
    OutputWriteError,
    encode_png,
    ensure_writable_folder,
    write_bytes,
    write_json,
)
from instaseg.inference.overlay import draw_overlay
from instaseg.inference.predictor import Predictor
from instaseg.inference.runner import PER_IMAGE_ERRORS, used_thresholds
from instaseg.inference.tracking import Tracker, TrackerOptions
from instaseg.io.images import to_tensor


@dataclass
class VideoSummary:
    """What a video run did: frames predicted, instances, distinct tracks, failures, wall time."""

    out_dir: Path
    frames: int = 0
    instances: int = 0
    tracks: int = 0
    failures: list[InputFailure] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.frames} frames, {self.instances} instances in {self.tracks} tracks, {self.seconds:.1f} s "
            f"({rate:.2f} frames/s); tracks in {self.out_dir / 'tracks.json'}"
        ]
        if self.failures:
            lines.append(f"{len(self.failures)} failed:")
            lines.extend(f"  {failure.source}: {failure.reason}" for failure in self.failures)
        return "\n".join(lines)


class _OverlayVideo:
    """An MP4 written with OpenCV under a temporary name in the target folder, renamed by `close()`."""

    def __init__(self, path: Path, fps: float, size_hw: tuple[int, int]) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        height, width = size_hw
        self.size_hw = size_hw
        self.writer = cv2.VideoWriter(
            str(self.temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
        )
        if not self.writer.isOpened():
            self.temporary.unlink(missing_ok=True)
            raise OutputWriteError(f"cannot write {path}: OpenCV could not open an MP4 writer")

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != self.size_hw:
            raise OutputWriteError(
                f"{self.path}: frame size {rgb.shape[:2]} differs from the first {self.size_hw}"
            )
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool) -> None:
        self.writer.release()
        if keep:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)


def predict_video(
    source: str | Path,
    out_dir: str | Path,
    predictor: Predictor,
    tracker_options: TrackerOptions | None = None,
    overlay: bool = False,
    progress: bool | None = None,
    save_every: float = 10.0,
) -> VideoSummary:
    """Predict every frame of `source` (a video file or a folder of frame images), track, write tracks.json.

    Raises `VideoReadError` when the source cannot be opened and `OutputWriteError` when `out_dir` cannot be
    written; an unreadable frame or a failed prediction on one frame is a failure entry, and the run goes on.
    """
    out_dir = Path(out_dir)
    frames = FrameSource(source)
    ensure_writable_folder(out_dir)
    if overlay and frames.source.is_dir():
        ensure_writable_folder(out_dir / "overlay_frames")
    tracker = Tracker(tracker_options)
    summary = VideoSummary(out_dir)
    document: dict = {
        "source": str(frames.source),
        "fps": frames.fps,
        "categories": predictor.categories,
        "thresholds": used_thresholds(predictor),
        "frames": [],
        "instances": [],
        "failures": [],
    }
    track_ids: set[int] = set()
    video: _OverlayVideo | None = None
    completed = False
    start = last_save = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=frames.frame_count, unit="frame", disable=not show)
    try:
        for frame in frames:
            bar.update(1)
            where = f"{frames.source} frame {frame.index} ({frame.name})"
            if frame.image is None:
                _fail(summary, document, where, frame.error or "unreadable frame")
                continue
            try:
                instances = tracker.update(predictor.predict_tensors([to_tensor(frame.image)])[0])
            except PER_IMAGE_ERRORS as exc:
                _fail(summary, document, where, str(exc))
                continue
            height, width = frame.image.shape[:2]
            document["frames"].append(
                {"index": frame.index, "name": frame.name, "height": height, "width": width}
            )
            ids = instances.fields["track_ids"].tolist()
            for record, track_id in zip(instances.to_coco_results(frame.index + 1), ids, strict=True):
                document["instances"].append({**record, "track_id": track_id})
            track_ids.update(ids)
            summary.frames += 1
            summary.instances += len(instances)
            if overlay:
                drawn = draw_overlay(frame.image, instances, predictor.class_names)
                if frames.source.is_dir():
                    write_bytes(out_dir / "overlay_frames" / f"{frame.name}.png", encode_png(drawn))
                else:
                    if video is None:
                        target = out_dir / f"{frames.source.stem}_overlay.mp4"
                        video = _OverlayVideo(target, frames.fps, (height, width))
                    video.write(drawn)
            if time.perf_counter() - last_save >= save_every:
                write_json(out_dir / "tracks.json", document)
                last_save = time.perf_counter()
        completed = True
    finally:
        bar.close()
        if video is not None:
            video.close(keep=completed)
        summary.tracks = len(track_ids)
        summary.seconds = time.perf_counter() - start
        write_json(out_dir / "tracks.json", document)
    return summary


def _fail(summary: VideoSummary, document: dict, where: str, reason: str) -> None:
    summary.failures.append(InputFailure(where, reason))
    document["failures"].append({"file": where, "reason": reason})
