"""Batch prediction on Ray: the same results as `instaseg predict` (same model, thresholds, post-processing),
bad files as error rows, resume, list files and fsspec URLs, JSONL, an actor killed mid-batch, and clear
errors for bad arguments and unreachable clusters. One local Ray instance (2 CPUs) serves every test."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.inference.outputs import ensure_writable_folder
from instaseg.inference.ray_predict import (
    LOST_BATCH,
    RayClusterError,
    RayOptions,
    _check_reachable,
    expand_sources,
    predict_with_ray,
    read_rows,
)
from instaseg.models.default_model import held_out_samples_path
from instaseg.models.loading import load_model

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'instaseg[ray]')")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled held-out samples, a small extra image, and broken files (empty, not an image,
    truncated)."""
    folder = tmp_path_factory.mktemp("ray_images")
    for sample in sorted(held_out_samples_path().glob("*/images/*.png")):
        shutil.copyfile(sample, folder / f"sample_{sample.stem[:8]}.png")
    (folder / "small.png").write_bytes(_png(40, 56, seed=1))
    broken = folder / "broken"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    (broken / "text.png").write_text("not an image\n")
    full = (folder / "small.png").read_bytes()
    (broken / "truncated.png").write_bytes(full[: len(full) // 2])
    return folder


def _instaseg_predict(paths: list[str], out: Path, *options: str) -> None:
    """`instaseg predict` on one thread, as each actor runs (Ray starts its workers with
    OMP_NUM_THREADS=1; MKL then takes other code paths, whose sums differ in the last bit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "instaseg.cli.main", "predict", *paths, "--out", str(out), *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr  # 1: some inputs failed, as the broken files do


def _by_path(rows: list[dict]) -> dict[str, dict]:
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)), "one row per path"
    return {row["path"]: row for row in rows}


def _assert_same_as_predict(rows: dict[str, dict], out: Path) -> None:
    """The Ray rows hold what `instaseg predict` wrote to `out` (results.json / images.json)."""
    results = json.loads((out / "results.json").read_text())
    listing = json.loads((out / "images.json").read_text())
    for image in listing["images"]:
        row = rows[image["file_name"]]
        assert row["error"] is None and (row["height"], row["width"]) == (image["height"], image["width"])
        mine = [r for r in results if r["file_name"] == image["file_name"]]
        assert row["category_ids"] == [r["category_id"] for r in mine]
        np.testing.assert_array_equal(row["scores"], [r["score"] for r in mine])
        np.testing.assert_array_equal(np.asarray(row["bboxes"]).reshape(-1, 4), [r["bbox"] for r in mine])
        assert row["masks"] == [r["segmentation"]["counts"] for r in mine]
    failures = {f["file"]: f["reason"] for f in listing["failures"]}
    assert {p: r["error"] for p, r in rows.items() if r["error"] is not None} == failures


@pytest.mark.slow
def test_bundled_model_gives_the_results_of_instaseg_predict(
    ray_cluster: None, images: Path, tmp_path: Path
) -> None:
    """The bundled model at its operating point, on the bundled samples and the broken files."""
    paths, _, _ = expand_sources([images])
    _instaseg_predict(paths, tmp_path / "local")
    ray_summary = predict_with_ray([images], tmp_path / "ray", ray=RayOptions(actors=2))
    assert ray_summary.images == 4 and len(ray_summary.errors) == 3
    rows = _by_path(read_rows(tmp_path / "ray"))
    assert sum(len(r["scores"]) for r in rows.values()) > 0
    _assert_same_as_predict(rows, tmp_path / "local")


def test_tiny_model_with_options_gives_the_results_of_instaseg_predict(
    ray_cluster: None, images: Path, tmp_path: Path, tiny_model_checkpoint: Path
) -> None:
    from instaseg.inference.postprocess import PostprocessOptions

    options = PostprocessOptions(score_threshold=0.0, fill_holes=True, max_detections=1)
    paths, _, _ = expand_sources([images])
    flags = ("--score-threshold", "0", "--fill-holes", "--max-detections", "1")
    _instaseg_predict(paths, tmp_path / "local", "--model", str(tiny_model_checkpoint), *flags)
    summary = predict_with_ray(
        [images],
        tmp_path / "ray",
        tiny_model_checkpoint,
        postprocess=options,
        ray=RayOptions(actors=2),
    )
    rows = _by_path(read_rows(tmp_path / "ray"))
    assert len(rows) == 7 and summary.images == 4
    assert {r["model"] for r in rows.values()} == {tiny_model_checkpoint.name}
    assert all(len(r["scores"]) == 1 for r in rows.values() if r["error"] is None)  # max_detections held
    _assert_same_as_predict(rows, tmp_path / "local")
    error = rows[str(images / "broken" / "truncated.png")]["error"]
    assert "truncated" in error and error.startswith(f"cannot read image {images / 'broken'}")


@pytest.mark.slow
def test_a_rerun_resumes(
    ray_cluster: None, images: Path, tmp_path: Path, tiny_model_checkpoint: Path
) -> None:
    """Nothing is done twice for one model (errors included); a new image is; another model starts afresh."""
    from instaseg.inference.postprocess import PostprocessOptions

    options = PostprocessOptions(score_threshold=0.0)
    first = predict_with_ray([images], tmp_path / "ray", tiny_model_checkpoint, postprocess=options)
    assert (first.images, first.skipped, len(first.errors)) == (4, 0, 3)
    again = predict_with_ray([images], tmp_path / "ray", tiny_model_checkpoint, postprocess=options)
    assert (again.images, again.skipped, again.errors) == (0, 7, [])
    (images / "new.png").write_bytes(_png(30, 30, seed=2))
    try:
        more = predict_with_ray([images], tmp_path / "ray", tiny_model_checkpoint, postprocess=options)
        assert (more.images, more.skipped) == (1, 7)
        assert len(_by_path(read_rows(tmp_path / "ray"))) == 8
    finally:
        (images / "new.png").unlink()
    other = predict_with_ray([images], tmp_path / "ray", "maskrcnn_resnet18_fpn", tiling=None)
    assert (other.images, other.skipped) == (4, 0)
    assert {r["model"] for r in read_rows(tmp_path / "ray")} == {
        tiny_model_checkpoint.name,
        "maskrcnn_resnet18_fpn",
    }


@pytest.mark.slow
def test_list_files_urls_and_jsonl(
    ray_cluster: None, images: Path, tmp_path: Path, tiny_model_checkpoint: Path
) -> None:
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# two images\n{images / 'small.png'}\n\n{images / 'broken' / 'text.png'}\n")
    from_list = predict_with_ray([listing], tmp_path / "list", tiny_model_checkpoint, output_format="jsonl")
    rows = _by_path(read_rows(tmp_path / "list"))
    assert sorted(rows) == sorted([str(images / "small.png"), str(images / "broken" / "text.png")])
    assert from_list.images == 1 and list((tmp_path / "list").glob("*.jsonl"))
    # The same images through fsspec (file:// URLs), a folder URL and a pattern: the same predictions.
    urls = predict_with_ray(
        [f"file://{images}/broken", f"file://{images}/sm*.png"], tmp_path / "urls", tiny_model_checkpoint
    )
    url_rows = _by_path(read_rows(tmp_path / "urls"))
    assert urls.images == 1 and len(url_rows) == 4
    small = url_rows[f"file://{images}/small.png"]
    assert small["masks"] == rows[str(images / "small.png")]["masks"]
    assert "cannot read image file://" in url_rows[f"file://{images}/broken/text.png"]["error"]


class _CrashOnHeight:
    """The tiny model, except that an image `height` pixels high kills the whole actor process (as a
    segfault or the OOM killer would); every attempt leaves a file in `attempts`."""

    def __init__(self, checkpoint: Path, height: int, attempts: Path) -> None:
        self.inner = load_model(checkpoint)
        self.height = height
        self.attempts = attempts

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def to(self, device):
        self.inner.to(device)
        return self

    def eval(self):
        self.inner.eval()
        return self

    def detect(self, images, options=None):
        if any(int(image.shape[-2]) == self.height for image in images):
            (self.attempts / f"attempt-{os.getpid()}").write_text("")
            os._exit(1)
        return self.inner.detect(images) if options is None else self.inner.detect(images, options)


@pytest.mark.slow
def test_an_actor_killed_mid_batch_is_retried_once_then_reported(
    ray_cluster: None, images: Path, tmp_path: Path, tiny_model_checkpoint: Path
) -> None:
    poison = tmp_path / "in" / "poison.png"
    ensure_writable_folder(poison.parent)
    poison.write_bytes(_png(37, 41, seed=3))
    shutil.copyfile(images / "small.png", tmp_path / "in" / "small.png")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    ray.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # the actors cannot import this test module
    try:
        model = _CrashOnHeight(tiny_model_checkpoint, 37, attempts)
        summary = predict_with_ray([tmp_path / "in"], tmp_path / "out", model, tiling=None)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    rows = _by_path(read_rows(tmp_path / "out"))
    assert sorted(rows) == [str(poison), str(tmp_path / "in" / "small.png")]  # no image lost
    assert rows[str(poison)]["error"] == LOST_BATCH
    assert rows[str(tmp_path / "in" / "small.png")]["error"] is None and summary.images == 1
    assert len(list(attempts.iterdir())) == 2  # the first try and one retry, each in its own process


def test_bad_arguments_and_unreachable_clusters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--actors and --cpus-per-actor must be >= 1"):
        RayOptions(actors=0)
    with pytest.raises(ValueError, match="output format must be one of parquet, jsonl"):
        predict_with_ray([tmp_path], tmp_path / "out", output_format="csv")
    (tmp_path / "a.png").write_bytes(_png(8, 8, seed=0))
    with pytest.raises(ValueError, match="the inputs mix file systems \\(file, local\\)"):
        expand_sources([f"file://{tmp_path}", str(tmp_path)])
    with pytest.raises(RayClusterError, match="at 127.0.0.1:9: nothing answers at 127.0.0.1:9"):
        _check_reachable("127.0.0.1:9")  # Ray itself would retry for minutes
    with pytest.raises(RayClusterError, match="'nonsense' is not 'auto', 'host:port' or 'ray://host:port'"):
        _check_reachable("nonsense")
    done = subprocess.run(
        [sys.executable, "-m", "instaseg.cli.main", "predict", str(tmp_path), "--engine", "ray"]
        + ["--address", "127.0.0.1:9", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0  # one line, exit 2
    assert "cannot connect to the Ray cluster at 127.0.0.1:9" in done.stderr


@pytest.mark.slow
def test_a_model_no_actor_can_load_fails_the_job_with_one_clear_error(
    ray_cluster: None, images: Path, tmp_path: Path
) -> None:
    with pytest.raises(RayClusterError, match="the Ray job failed after 0 images: .*missing.pt"):
        predict_with_ray([images / "small.png"], tmp_path / "out", str(tmp_path / "missing.pt"))
