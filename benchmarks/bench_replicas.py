"""Load test of `instaseg serve` replicas around one PostgreSQL registry: throughput and p95 latency of two
replicas behind a round-robin client next to one replica, over loopback.

    .venv/bin/python benchmarks/bench_replicas.py                 # about 2-3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_replicas.py --requests 96 --rounds 3

A PostgreSQL server is started in a temporary folder (as the tests start it: tests/serving/conftest.py), the
model is registered once (checkpoint store in a temporary folder), and three server processes are started
from the registry: replicas A and B with one torch thread each, and C, one replica with two threads (the same
cores as A + B). Per round, in turn: C alone, A alone, A + B (requests alternate between them); medians over
the rounds. The model is a random-weight Mask R-CNN (ResNet-18 FPN) small enough for a CPU, as in
bench_serving_load.py: the numbers measure the serving path, not a trained model. Batching is off
(max_batch_size 1) so one request is one model call. Bounded: a fixed number of requests per round, loopback.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from PIL import Image

from instaseg.models import build, save_weights
from instaseg.serving.registration import register_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))  # the tests' PostgreSQL helper, not copied here
from conftest import PostgresServer, _postgres_bin  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per configuration and round")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (medians are reported)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_replica(folder: Path, url: str, name: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = folder / f"{name}.yaml"
    settings = {
        "registry": f"{url}?checkpoint_cache={folder / ('cache-' + name)}",
        "port": port,
        "torch_threads": threads,
        "log_level": "warning",
        "batching": {"max_batch_size": 1},
    }
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "instaseg.cli.main", "serve", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"replica {name} did not become ready")


def load(bases: list[str], images: list[bytes], requests: int, clients: int) -> tuple[float, float]:
    """(requests/s, p95 latency in ms) of `requests` uploads spread round-robin over `bases`."""
    targets = cycle(bases)
    jobs = [(next(targets), images[i % len(images)]) for i in range(requests)]
    latencies: list[float] = []

    def one(job: tuple[str, bytes]) -> None:
        base, data = job
        began = time.perf_counter()
        response = httpx.post(
            f"{base}/v1/predict", files={"image": ("a.png", data, "image/png")}, timeout=120
        )
        response.raise_for_status()
        latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, jobs))
    seconds = time.perf_counter() - started
    return requests / seconds, float(np.percentile(latencies, 95) * 1000)


def main() -> None:
    args = parse_args()
    bin_dir = _postgres_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin or PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="instaseg-pg-")))
        server.start()
        processes = []
        try:
            url = server.new_database()
            torch.manual_seed(0)
            model = build("maskrcnn_resnet18_fpn", num_classes=2, min_size=256, max_size=256, fpn_channels=64)
            checkpoint = folder / "model.pt"
            save_weights(model, checkpoint)
            register_model(
                f"{url}?checkpoints={folder / 'store'}", "nuclei", checkpoint, class_names=["nucleus"]
            )
            replicas = {}
            for name, threads in (("a", 1), ("b", 1), ("c", 2)):
                process, base = start_replica(folder, url, name, threads)
                processes.append(process)
                replicas[name] = base
            rng = np.random.default_rng(0)
            images = []
            for _ in range(8):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(
                    buffer, format="PNG"
                )
                images.append(buffer.getvalue())
            for base in replicas.values():  # warm every replica's first calls
                load([base], images, 4, 1)
            configurations = {
                "1 replica x 2 threads": [replicas["c"]],
                "1 replica x 1 thread": [replicas["a"]],
                "2 replicas x 1 thread (round robin)": [replicas["a"], replicas["b"]],
            }
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in configurations}
            for round_index in range(args.rounds):
                for name, bases in configurations.items():
                    results[name].append(load(bases, images, args.requests, args.clients))
                print(
                    f"round {round_index + 1}: "
                    + ", ".join(f"{n} {r[-1][0]:.2f}/s" for n, r in results.items())
                )
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
            server.stop()
    print(f"\nrequests {args.requests} x {args.rounds} rounds, {args.clients} clients, 256x256 PNG uploads")
    print("| configuration | requests/s (median) | p95 ms (median) |")
    print("|---|---|---|")
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        p95 = statistics.median(v[1] for v in values)
        print(f"| {name} | {rate:.2f} | {p95:.0f} |")


if __name__ == "__main__":
    main()
