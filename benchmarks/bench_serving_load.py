"""Load test of `instaseg serve` over loopback: throughput and p50 / p95 / p99 latency with dynamic batching
on (window + max batch size) against off (batch size 1), side by side in one run, then an optional soak run
that checks for errors and for memory growth.

    .venv/bin/python benchmarks/bench_serving_load.py                        # about 2-4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_serving_load.py --soak-seconds 180     # plus a 3-minute soak

Two server processes are started from the same registry (one with batching, one without) so both modes see
the same machine at the same time; rounds alternate between them and medians over the rounds are reported.
Requests upload real nuclei images (../shared/data/dsb2018) when present, else random images of the same
size. The model is a random-weight Mask R-CNN (ResNet-18 FPN) made small enough for a CPU: timings measure
the serving path and the batching gain, not a trained model's accuracy. Bounded: a fixed number of requests
per round, loopback only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from instaseg.models import build, save_weights
from instaseg.serving.registration import register_model

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"
LAUNCHER = (
    "import argparse, sys\n"
    "from instaseg.cli import serve\n"
    "parser = argparse.ArgumentParser(prog='instaseg')\n"
    "serve.add_parser(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=48, help="requests per mode and round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--window-ms", type=float, default=10.0, help="batching window of the 'on' server")
    parser.add_argument("--max-batch-size", type=int, default=8, help="max batch of the 'on' server")
    parser.add_argument("--images", type=int, default=16, help="distinct images to upload")
    parser.add_argument("--min-size", type=int, default=128, help="model input size (shorter side)")
    parser.add_argument("--detections", type=int, default=5, help="detections per image")
    parser.add_argument("--proposals", type=int, default=50, help="RPN proposals per image")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per server")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="soak duration (0: no soak)")
    parser.add_argument("--soak-clients", type=int, default=4, help="concurrent clients during the soak")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def test_images(count: int) -> list[bytes]:
    """PNG bytes of real nuclei images (256 x 256 ones), or random images of that size without the data."""
    images = []
    if DSB.is_dir():
        for folder in sorted(DSB.iterdir()):
            path = folder / "images" / f"{folder.name}.png"
            if path.is_file() and Image.open(path).size == (256, 256):
                images.append(path.read_bytes())
            if len(images) == count:
                return images
    rng = np.random.default_rng(0)
    while len(images) < count:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`instaseg serve` in a child process on a loopback port."""

    def __init__(
        self, registry: Path, window_ms: float, max_batch_size: int, threads: int, log: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = log.with_suffix(".yaml")
        config.write_text(
            f"registry: {registry}\nport: {self.port}\ntorch_threads: {threads}\nlog_level: warning\n"
            f"batching: {{window_ms: {window_ms}, max_batch_size: {max_batch_size}, max_queue: 1024}}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "serve", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self._log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s} s; see {self._log.name}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def batch_sizes(self) -> tuple[float, float]:
        """(images, model calls) so far, from the server's own metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line.startswith(("instaseg_batch_size_sum", "instaseg_batch_size_count")):
                name = line.split("{")[0]
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return values.get("instaseg_batch_size_sum", 0.0), values.get("instaseg_batch_size_count", 0.0)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def run_load(url: str, images: list[bytes], clients: int, requests: int | None, until: float | None) -> dict:
    """`clients` threads send uploads until `requests` are done (or the clock passes `until`)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120.0) as http:
            while True:
                with lock:
                    index = next(counter)
                if (requests is not None and index >= requests) or (
                    until is not None and time.time() > until
                ):
                    return
                data = images[index % len(images)]
                began = time.perf_counter()
                try:
                    response = http.post("/v1/predict", files={"image": ("image.png", data, "image/png")})
                    status = response.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - began
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(str(status))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latency = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(latency, 50)),
        "p95_ms": float(np.percentile(latency, 95)),
        "p99_ms": float(np.percentile(latency, 99)),
        "wall_s": wall,
    }


def soak(server: ServerProcess, images: list[bytes], clients: int, seconds: float) -> dict:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    began = time.time()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time() - began, server.rss_mb()))
            stop.wait(5.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = run_load(server.url, images, clients, None, began + seconds)
    stop.set()
    sampler.join()
    times = np.array([t for t, _ in samples])
    rss = np.array([m for _, m in samples])
    settled = times >= 0.2 * seconds  # the first fifth warms caches and allocator pools
    slope = float(np.polyfit(times[settled] / 60, rss[settled], 1)[0]) if settled.sum() >= 3 else float("nan")
    return {
        **result,
        "seconds": seconds,
        "rss_mb_start": float(rss[settled][0]) if settled.any() else float("nan"),
        "rss_mb_end": float(rss[-1]),
        "rss_mb_max": float(rss.max()),
        "rss_slope_mb_per_min": slope,
        "rss_samples": len(samples),
    }


def median_of(rounds: list[dict]) -> dict:
    keys = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms")
    return {
        **{key: float(np.median([r[key] for r in rounds])) for key in keys},
        "errors": sum(r["errors"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
    }


def main() -> None:
    args = parse_args()
    images = test_images(args.images)
    source = "dsb2018 256x256 PNGs" if DSB.is_dir() else "random 256x256 PNGs"
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        torch.manual_seed(0)
        model = build(
            "maskrcnn_resnet18_fpn",
            num_classes=2,
            min_size=args.min_size,
            max_size=args.min_size,
            box_detections_per_img=args.detections,
            rpn_pre_nms_top_n_test=args.proposals * 5,
            rpn_post_nms_top_n_test=args.proposals,
        )
        save_weights(model, tmp / "model.pt")
        register_model(tmp / "registry", "nuclei", tmp / "model.pt", class_names=["nucleus"])
        servers = {
            "off": ServerProcess(tmp / "registry", 0.0, 1, args.torch_threads, tmp / "off.log"),
            "on": ServerProcess(
                tmp / "registry", args.window_ms, args.max_batch_size, args.torch_threads, tmp / "on.log"
            ),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():  # warm the HTTP path and the allocator, not measured
                run_load(server.url, images, args.clients, args.clients * 2, None)
            rounds: dict[str, list[dict]] = {"off": [], "on": []}
            calls_before = {name: server.batch_sizes() for name, server in servers.items()}
            for index in range(args.rounds):
                order = ("off", "on") if index % 2 == 0 else ("on", "off")
                for name in order:
                    result = run_load(servers[name].url, images, args.clients, args.requests, None)
                    rounds[name].append(result)
                    print(
                        f"round {index + 1} batching {name:>3}: {result['throughput_rps']:6.2f} req/s  "
                        f"p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  "
                        f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}",
                        flush=True,
                    )
            summary = {name: median_of(results) for name, results in rounds.items()}
            for name, server in servers.items():
                images_after, calls_after = server.batch_sizes()
                images_before, calls_before_n = calls_before[name]
                summary[name]["mean_batch_size"] = (images_after - images_before) / max(
                    1.0, calls_after - calls_before_n
                )
            report = {
                "setup": {
                    **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "images": source,
                    "cpu_count": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(),
                },
                "median_over_rounds": summary,
                "throughput_gain": summary["on"]["throughput_rps"] / summary["off"]["throughput_rps"],
            }
            if args.soak_seconds > 0:
                report["soak"] = soak(servers["on"], images, args.soak_clients, args.soak_seconds)
        finally:
            for server in servers.values():
                server.stop()
    print()
    header = ("batching", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors")
    print(f"{header[0]:<14} " + " ".join(f"{h:>9}" for h in header[1:]))
    for name, label in (("off", "off (1)"), ("on", f"on ({args.window_ms:g} ms, {args.max_batch_size})")):
        row = report["median_over_rounds"][name]
        print(
            f"{label:<14} {row['throughput_rps']:9.2f} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} "
            f"{row['p99_ms']:9.1f} {row['mean_batch_size']:9.2f} {row['errors']:9d}"
        )
    print(f"throughput gain with batching: x{report['throughput_gain']:.2f}")
    if "soak" in report:
        s = report["soak"]
        print(
            f"soak {s['seconds']:.0f} s, {args.soak_clients} clients: {s['requests']} requests, "
            f"{s['errors']} errors, {s['throughput_rps']:.2f} req/s, p95 {s['p95_ms']:.0f} ms; RSS "
            f"{s['rss_mb_start']:.0f} -> {s['rss_mb_end']:.0f} MB (max {s['rss_mb_max']:.0f}), slope "
            f"{s['rss_slope_mb_per_min']:+.2f} MB/min"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
