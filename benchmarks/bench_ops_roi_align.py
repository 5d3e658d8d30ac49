"""MultiScaleRoIAlign speed: C++ kernel vs pure PyTorch, side by side, against torchvision's reference times.

Run: ``.venv/bin/python benchmarks/bench_ops_roi_align.py`` (after building the extension). Prints a markdown
table of median milliseconds. Setup as in /work/shared/fixtures/REFERENCE_TIMES.md: 2 threads, a 4-level FPN
(strides 4-32, 256 channels, random normal) of an 800x1216 image, boxes with sides 8-600 px inside the image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from instaseg.ops import _extension
from instaseg.ops.poolers import MultiScaleRoIAlign

IMAGE_SIZE = (800, 1216)

# torchvision 0.28.0 medians in ms on this kind of machine (REFERENCE_TIMES.md),
# by (RoIs, output size, backward).
REFERENCE_MS = {
    (512, 7, False): 74.2,
    (512, 7, True): 317.1,
    (2000, 7, False): 283.8,
    (2000, 7, True): 1330.8,
    (100, 14, False): 44.6,
}


def make_features(channels: int = 256) -> dict[str, torch.Tensor]:
    height, width = IMAGE_SIZE
    generator = torch.Generator().manual_seed(0)
    return {
        str(level): torch.randn(
            1, channels, height // 2 ** (level + 2), width // 2 ** (level + 2), generator=generator
        )
        for level in range(4)
    }


def make_boxes(count: int, seed: int = 1) -> torch.Tensor:
    """(count, 4) x1y1x2y2 boxes with sides uniform in 8-600 px, placed uniformly inside the image."""
    height, width = IMAGE_SIZE
    generator = torch.Generator().manual_seed(seed)
    sides = torch.rand(count, 2, generator=generator) * (600 - 8) + 8
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - sides)
    return torch.cat([corner, corner + sides], dim=1)


@contextmanager
def pure_pytorch():
    """Route roi_align to its pure-PyTorch path for the duration of the block."""
    saved = _extension.HAS_EXTENSION
    _extension.HAS_EXTENSION = False
    try:
        yield
    finally:
        _extension.HAS_EXTENSION = saved


def median_ms(step: Callable[[], None], runs: int, clock: Callable[[], float], warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = clock()
        step()
        times.append((clock() - start) * 1000)
    return statistics.median(times)


def make_step(num_rois: int, output_size: int, backward: bool) -> Callable[[], None]:
    features = make_features()
    boxes = [make_boxes(num_rois)]
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=output_size, sampling_ratio=2)
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                pooler(features, boxes, [IMAGE_SIZE])

        return forward

    for feature in features.values():
        feature.requires_grad_(True)
    grad = torch.randn(num_rois, 256, output_size, output_size, generator=torch.Generator().manual_seed(2))

    def forward_backward() -> None:
        for feature in features.values():
            feature.grad = None
        pooler(features, boxes, [IMAGE_SIZE]).backward(grad)

    return forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference used 2)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --threads 1: time the process's CPU time instead of wall time, which other processes on a "
        "busy machine do not inflate (torchvision's RoIAlign kernel is single-threaded)",
    )
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time measures one thread: use it with --threads 1")
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    if not _extension.HAS_EXTENSION:
        raise SystemExit(
            f"instaseg._C is not built ({_extension.EXTENSION_ERROR}); run setup.py build_ext --inplace"
        )

    threads = torch.get_num_threads()
    measure = "CPU time" if args.cpu_time else "wall time"
    print(
        f"torch {torch.__version__}, {threads} threads, {measure}, median of {args.runs} runs after warm-up\n"
    )
    print("| case | torchvision ms | C++ ms | C++ / tv | pure PyTorch ms | pure / tv |")
    print("|---|---|---|---|---|---|")
    for (num_rois, output_size, backward), reference in REFERENCE_MS.items():
        step = make_step(num_rois, output_size, backward)
        kernel = median_ms(step, args.runs, clock)
        with pure_pytorch():
            pure = median_ms(step, args.runs, clock)
        name = f"{'fwd+bwd' if backward else 'fwd'}, {num_rois} RoIs, {output_size}x{output_size}"
        print(
            f"| {name} | {reference:.1f} | {kernel:.1f} | {kernel / reference:.2f} | {pure:.1f} | "
            f"{pure / reference:.2f} |"
        )


if __name__ == "__main__":
    main()
