"""Sampled prediction log: share, JSON-lines records, segment rotation, the disk cap, stored images."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from instaseg.serving.sampling import PredictionSampler


def records(folder: Path) -> list[dict]:
    lines = []
    for segment in sorted(folder.glob("predictions-*.jsonl")):
        lines.extend(json.loads(line) for line in segment.read_text().splitlines())
    return lines


def test_share_decides_how_many_requests_are_logged(tmp_path: Path) -> None:
    assert not any(PredictionSampler(tmp_path, 0.0, 10_000, 1_000).wants() for _ in range(100))
    assert all(PredictionSampler(tmp_path, 1.0, 10_000, 1_000).wants() for _ in range(100))
    sampler = PredictionSampler(tmp_path, 0.2, 10_000, 1_000, rng=random.Random(0))
    hits = sum(sampler.wants() for _ in range(5000))
    assert 900 < hits < 1100  # 1000 expected; the binomial sd is 28


def test_records_are_whole_json_lines(tmp_path: Path) -> None:
    sampler = PredictionSampler(tmp_path, 1.0, 100_000, 10_000)
    threads = [
        threading.Thread(target=lambda i=i: sampler.write({"request": i, "instances": [{"score": 0.5}] * 20}))
        for i in range(40)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logged = records(tmp_path)
    assert sorted(r["request"] for r in logged) == list(range(40))


def test_segments_rotate_and_the_folder_stays_under_its_cap(tmp_path: Path) -> None:
    sampler = PredictionSampler(tmp_path, 1.0, max_bytes=5_000, segment_bytes=1_000)
    for i in range(200):
        sampler.write({"request": i, "padding": "x" * 80})
    segments = sorted(tmp_path.glob("predictions-*.jsonl"))
    on_disk = sum(p.stat().st_size for p in segments)
    assert on_disk <= 5_000 and sampler.total_bytes == on_disk
    assert all(p.stat().st_size <= 1_000 for p in segments)
    kept = [r["request"] for r in records(tmp_path)]
    assert kept == list(range(kept[0], 200))  # the newest records survive, in order, without gaps
    assert len(kept) > 30


def test_images_are_stored_once_by_hash_and_count_towards_the_cap(tmp_path: Path) -> None:
    sampler = PredictionSampler(tmp_path, 1.0, max_bytes=20_000, segment_bytes=2_000, include_images=True)
    sampler.write({"input_sha256": "ab" * 32, "request": 1}, b"\x89PNG" + b"\0" * 3_000, "PNG")
    sampler.write({"input_sha256": "ab" * 32, "request": 2}, b"\x89PNG" + b"\0" * 3_000, "PNG")
    image = tmp_path / "images" / f"{'ab' * 32}.png"
    assert image.stat().st_size == 3_004
    assert [r["image_file"] for r in records(tmp_path)] == [f"images/{'ab' * 32}.png"] * 2
    for i in range(10):
        sampler.write({"input_sha256": f"{i:064d}", "request": 10 + i}, b"\0" * 3_000, "JPEG")
    assert sampler.total_bytes <= 20_000
    assert not image.exists()  # the oldest files went first
    assert (tmp_path / "images" / f"{9:064d}.jpeg").exists()


def test_a_restarted_sampler_starts_a_new_segment_and_counts_old_files(tmp_path: Path) -> None:
    first = PredictionSampler(tmp_path, 1.0, 50_000, 10_000)
    first.write({"run": 1})
    second = PredictionSampler(tmp_path, 1.0, 50_000, 10_000)
    assert second.total_bytes == first.total_bytes
    second.write({"run": 2})
    names = sorted(p.name for p in tmp_path.glob("predictions-*.jsonl"))
    assert names == ["predictions-000001.jsonl", "predictions-000002.jsonl"]


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="share must lie in"):
        PredictionSampler("/tmp", 1.5, 10, 1)
