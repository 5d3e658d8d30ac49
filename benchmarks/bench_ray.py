"""Steady-state throughput of batch prediction on Ray against `instaseg predict`, on the same images.

    .venv/bin/python benchmarks/bench_ray.py                      # about 3-5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_ray.py --images 24 --rounds 3

Three configurations, interleaved (one pass of each per round), medians over the rounds:

- `ray 1x1`: `predict_with_ray` with 1 actor x 1 thread;
- `ray 2x1`: 2 actors x 1 thread each;
- `predict 2 threads`: `predict_files` (what `instaseg predict` runs) in this process with 2 torch threads.

Steady state excludes start-up: for Ray, the rate between the arrival of the `--warm-up`-th result and the
last one (actors start, import torch and load the model before that); for `instaseg predict`, images after
the first `--warm-up` ones, timed per image. Scaling efficiency = T(2x1) / (2 T(1x1)), T in images/s.
The bundled model, on nuclei images from ../shared/data/dsb2018 (else copies of the bundled samples).
One local Ray instance with as many CPUs as the machine has; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from instaseg.inference import ray_predict
from instaseg.inference.predictor import Predictor
from instaseg.io.images import images_in_folder
from instaseg.models.default_model import default_model_path, held_out_samples_path

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16, help="images per pass")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (medians are reported)")
    parser.add_argument("--warm-up", type=int, default=3, help="results left out of the steady-state rate")
    return parser.parse_args()


def make_images(folder: Path, count: int) -> list[str]:
    """`count` image files of 256x256-ish nuclei: DSB training images if present, else the samples."""
    sources = sorted(DSB.glob("*/images/*.png"))[:count] if DSB.is_dir() else []
    if not sources:
        sources = sorted(held_out_samples_path().glob("*/images/*.png"))
    for index in range(count):
        shutil.copyfile(sources[index % len(sources)], folder / f"image_{index:04d}.png")
    return [str(p) for p in images_in_folder(folder)]


def ray_rate(paths: list[str], actors: int, warm_up: int) -> float:
    """Images/s between the `warm_up`-th and the last result arriving at the driver (also printed: the wall
    time with start-up, and the arrival times, to show that results do not arrive in bursts)."""
    options = ray_predict.RayOptions(actors=actors, cpus_per_actor=1)
    common = {"model": "bundled", "model_sha256": "-"}
    predictor_options = {"device": "cpu", "postprocess": None, "tiling": None, "tta": None, "batch_size": 1}
    arrivals = []
    source = str(default_model_path())
    started = time.perf_counter()
    for row in ray_predict._run(ray, paths, None, source, predictor_options, options, common):
        assert row["error"] is None, row["error"]
        arrivals.append(time.perf_counter())
    steady = arrivals[warm_up - 1 :]
    offsets = " ".join(f"{t - started:.1f}" for t in arrivals)
    print(f"  ray {actors}x1: wall {arrivals[-1] - started:.1f} s with start-up; results at {offsets} s")
    return (len(steady) - 1) / (steady[-1] - steady[0])


def local_rate(paths: list[str], warm_up: int) -> float:
    """Images/s of `predict_files`' per-image work (decode, model, post-processing) after `warm_up` images,
    with 2 torch threads; the Predictor is built beforehand, as the command builds it once."""
    from instaseg.inference.runner import _predict_batch

    torch.set_num_threads(2)
    predictor = Predictor(tiling=None)
    times = []
    for path in paths:
        began = time.perf_counter()
        for _, _, _, error in _predict_batch(predictor, [Path(path)]):
            assert error is None, error
        times.append(time.perf_counter() - began)
    return 1.0 / statistics.mean(times[warm_up:])


def main() -> None:
    args = parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"Ray CPUs: {ray.cluster_resources().get('CPU')}, load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), args.images)
        results: dict[str, list[float]] = {"ray 1x1": [], "ray 2x1": [], "predict 2 threads": []}
        for round_index in range(args.rounds):
            results["ray 1x1"].append(ray_rate(paths, 1, args.warm_up))
            results["ray 2x1"].append(ray_rate(paths, 2, args.warm_up))
            results["predict 2 threads"].append(local_rate(paths, args.warm_up))
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()))
    ray.shutdown()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"\nimages: {args.images}, rounds: {args.rounds}, load average after: {os.getloadavg()}")
    print("| configuration | images/s (median) | per round |")
    print("|---|---|---|")
    for name, value in medians.items():
        rounds = ", ".join(f"{v:.3f}" for v in results[name])
        print(f"| {name} | {value:.3f} | {rounds} |")
    print(f"scaling efficiency T(2x1) / (2 T(1x1)) = {medians['ray 2x1'] / (2 * medians['ray 1x1']):.2f}")
    print(f"ray 2x1 / predict 2 threads = {medians['ray 2x1'] / medians['predict 2 threads']:.2f}")


if __name__ == "__main__":
    main()
