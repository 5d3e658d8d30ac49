"""Input expansion (files, folders, globs) and frame sources (video files, frame folders)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from instaseg.inference.inputs import FrameSource, VideoReadError, expand_inputs


def touch_png(path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)


def test_files_folders_and_globs(tmp_path):
    touch_png(tmp_path / "a" / "img_10.png")
    touch_png(tmp_path / "a" / "img_2.png")
    touch_png(tmp_path / "a" / "deep" / "x.JPG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    touch_png(tmp_path / "b" / "one.png")
    touch_png(tmp_path / "c.tif")
    (tmp_path / "empty").mkdir()
    files, failures = expand_inputs(
        [
            tmp_path / "a",
            str(tmp_path / "b" / "*.png"),
            tmp_path / "c.tif",
            tmp_path / "missing.png",
            tmp_path / "empty",
            str(tmp_path / "nothing" / "*.png"),
            tmp_path / "a" / "img_2.png",  # again: listed once
        ]
    )
    names = [path.relative_to(tmp_path).as_posix() for path in files]
    assert names == ["a/deep/x.JPG", "a/img_2.png", "a/img_10.png", "b/one.png", "c.tif"]
    reasons = {failure.source.replace(str(tmp_path), ""): failure.reason for failure in failures}
    assert reasons["/missing.png"] == "no such file or folder"
    assert reasons["/empty"].startswith("folder holds no image files")
    assert reasons["/nothing/*.png"] == "pattern matched no image files"


def test_an_explicit_file_is_kept_whatever_its_extension(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3")
    files, failures = expand_inputs([tmp_path / "data.csv"])
    assert files == [tmp_path / "data.csv"] and failures == []  # it fails when read, with its name


def test_recursive_glob(tmp_path):
    touch_png(tmp_path / "x" / "y" / "z.png")
    touch_png(tmp_path / "x" / "top.png")
    files, _ = expand_inputs([str(tmp_path / "**" / "*.png")])
    assert sorted(p.name for p in files) == ["top.png", "z.png"]


def test_frame_folder_in_natural_order_with_an_unreadable_frame(tmp_path):
    for index in (1, 2, 10):
        touch_png(tmp_path / f"frame_{index}.png", value=index)
    (tmp_path / "frame_3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    source = FrameSource(tmp_path)
    assert source.frame_count == 4
    frames = list(source)
    assert [frame.name for frame in frames] == ["frame_1", "frame_2", "frame_3", "frame_10"]
    assert [frame.index for frame in frames] == [0, 1, 2, 3]
    assert frames[2].image is None and "frame_3.png" in frames[2].error
    assert frames[3].image.shape == (4, 4, 3) and frames[3].image[0, 0, 0] == 10


def test_video_file(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (64, 48))
    for value in (0, 120, 250):
        writer.write(np.full((48, 64, 3), value, dtype=np.uint8))
    writer.release()
    source = FrameSource(path)
    assert source.fps == pytest.approx(12.0) and source.frame_count == 3
    frames = list(source)
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert frames[0].image.shape == (48, 64, 3)
    assert abs(int(frames[2].image.mean()) - 250) < 8  # lossy codec


def test_unreadable_sources(tmp_path):
    with pytest.raises(VideoReadError, match="no such video file or frame folder"):
        FrameSource(tmp_path / "missing.mp4")
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(VideoReadError, match="fake.mp4"):
        list(FrameSource(tmp_path / "fake.mp4"))
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoReadError, match="holds no image frames"):
        FrameSource(tmp_path / "frames")
