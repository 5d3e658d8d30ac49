"""Interactive latency of instaseg's promptable model (`PromptableSam`) through `SamPredictor`.

Measures wall and process CPU time, with `--threads` torch threads (default 2), medians over `--repeats`
runs:
- `set_image`: resize + encoder + neck for one image of `--size` (default 696x520, the issue's size), and for
  a model with a refiner its FPN features at the detector's scale;
- one click: `predict` of one point (multimask, 3 masks pasted at full size) on the cached embedding;
- a corrective click: 3 points + the previous low-res logits as mask input, one mask;
- 64 boxes in one call (a detector's boxes refined), per box.
Weights barely change the time (a refiner skips the masks the decoder leaves empty): model files
(`--model`, repeated to time several in one run, one after the other) or random weights of the
architecture of `configs/nuclei_promptable.yaml`.
Run: `.venv/bin/python benchmarks/bench_promptable.py [--model nuclei_promptable --model coarse.pt]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from instaseg.models import load_promptable
from instaseg.models.promptable import PromptableSam, build_promptable
from instaseg.models.sam.predictor import SamPredictor

RANDOM = "promptable_efficientnet_lite0"


def median_ms(function, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of `function`, in ms."""
    function()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="promptable model file (default: random weights)")
    parser.add_argument("--size", default="696x520", help="image WxH (default 696x520)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = [load_promptable(path) for path in args.model] if args.model else [build_promptable(RANDOM)]
    for name, model in zip(args.model or [RANDOM], models, strict=True):
        print(f"\n{name}")
        report(model, args)


def report(model: PromptableSam, args: argparse.Namespace) -> None:
    """Time the four stages of `model` and print them."""
    predictor = SamPredictor(model)
    width, height = (int(v) for v in args.size.split("x"))
    image = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    embed = median_ms(lambda: predictor.set_image(image), args.repeats)
    first = predictor.predict(points=[[width / 2, height / 2]], labels=[1])
    low_res = first.fields["low_res_logits"][:1]
    one_click = median_ms(
        lambda: predictor.predict(points=[[width / 2, height / 2]], labels=[1]), args.repeats
    )
    points = [[width / 2, height / 2], [width / 2 + 5, height / 2], [width / 2, height / 2 + 9]]
    corrective = median_ms(
        lambda: predictor.predict(points=points, labels=[1, 0, 1], mask_input=low_res, multimask=False),
        args.repeats,
    )
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, [width - 40, height - 40], size=(64, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 40, size=(64, 2))], axis=1)
    wall, cpu = median_ms(lambda: predictor.predict(boxes=boxes, multimask=False), max(3, args.repeats // 3))
    per_box = (wall / 64, cpu / 64)
    refiner = "with refiner" if model.refiner is not None else "no refiner"
    print(f"threads {args.threads}, {width}x{height}, frame {model.image_size}, {refiner}; wall / CPU ms")
    for name, (wall, cpu) in (
        ("set_image (embedding)", embed),
        ("one click (3 masks)", one_click),
        ("corrective click", corrective),
        ("64 boxes, per box", per_box),
    ):
        print(f"{name:24s} {wall:8.1f} {cpu:8.1f}")


if __name__ == "__main__":
    main()
