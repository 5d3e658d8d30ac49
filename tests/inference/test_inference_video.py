"""predict_video end to end: a synthetic clip of moving objects keeps one track id per object."""

from __future__ import annotations

import json

import cv2
import numpy as np
from PIL import Image

from instaseg.inference.predictor import Predictor
from instaseg.inference.video import predict_video

FRAMES = 16


def positions(frame: int) -> list[tuple[float, float, float]]:
    """Two discs: one moving right along the top, one moving left and down along the bottom."""
    return [(30.0, 20.0 + 7 * frame, 10.0), (80.0 + 1.5 * frame, 150.0 - 6 * frame, 12.0)]


def write_clip(path, make_disc_image) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (180, 120))
    for frame in range(FRAMES):
        writer.write(cv2.cvtColor(make_disc_image(120, 180, positions(frame)), cv2.COLOR_RGB2BGR))
    writer.release()


def test_track_ids_are_stable_across_a_video(tmp_path, make_segmenter, make_disc_image):
    write_clip(tmp_path / "clip.mp4", make_disc_image)
    out = tmp_path / "out"
    summary = predict_video(
        tmp_path / "clip.mp4", out, Predictor(make_segmenter(), tiling=None), overlay=True
    )
    assert summary.frames == FRAMES and summary.tracks == 2 and summary.failures == []
    document = json.loads((out / "tracks.json").read_text())
    assert document["fps"] == 10.0 and len(document["frames"]) == FRAMES
    assert document["thresholds"] == {"score_threshold": 0.05, "mask_threshold": 0.5}  # no operating point
    ids_by_object: dict[str, set[int]] = {"top": set(), "bottom": set()}
    for record in document["instances"]:
        x, y, w, h = record["bbox"]
        ids_by_object["top" if y + h / 2 < 55 else "bottom"].add(record["track_id"])
        assert record["segmentation"]["size"] == [120, 180]
    assert len(document["instances"]) == 2 * FRAMES
    assert ids_by_object["top"] | ids_by_object["bottom"] == {1, 2}
    assert len(ids_by_object["top"]) == 1 and len(ids_by_object["bottom"]) == 1
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    capture.release()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_frame_folder_with_an_unreadable_frame(tmp_path, make_segmenter, make_disc_image):
    frames = tmp_path / "frames"
    frames.mkdir()
    for frame in range(6):
        Image.fromarray(make_disc_image(120, 180, positions(frame))).save(frames / f"f{frame}.png")
    (frames / "f3.png").write_bytes(b"")
    out = tmp_path / "out"
    summary = predict_video(frames, out, Predictor(make_segmenter(), tiling=None), overlay=True)
    assert summary.frames == 5 and summary.tracks == 2
    assert len(summary.failures) == 1 and "f3.png" in summary.failures[0].reason
    document = json.loads((out / "tracks.json").read_text())
    assert [frame["name"] for frame in document["frames"]] == ["f0", "f1", "f2", "f4", "f5"]
    assert {record["image_id"] for record in document["instances"]} == {1, 2, 3, 5, 6}
    assert sorted(p.name for p in (out / "overlay_frames").iterdir()) == [
        f"f{i}.png" for i in (0, 1, 2, 4, 5)
    ]
    assert np.asarray(Image.open(out / "overlay_frames" / "f0.png")).shape == (120, 180, 3)
