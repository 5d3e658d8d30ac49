"""Interactive latency of instaseg's promptable model (`PromptableSam`) through `SamPredictor`.

Measures, with `--threads` torch threads (default 2) and medians over `--repeats` runs:
- `set_image`: resize + encoder + neck for one image of `--size` (default 696x520, the issue's size);
- one click: `predict` of one point (multimask, 3 masks pasted at full size) on the cached embedding;
- a corrective click: 3 points + the previous low-res logits as mask input, one mask;
- 64 boxes in one call (a detector's boxes refined), per box.
Weights do not change the time: a model file (`--model`) or random weights of the architecture of
`configs/nuclei_promptable.yaml`.
Run: `.venv/bin/python benchmarks/bench_promptable.py [--model runs/nuclei_promptable/last.pt]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from instaseg.inference.promptable import SamPredictor
from instaseg.models import load_model
from instaseg.models.promptable import build_promptable


def median_ms(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="promptable model file (default: random weights)")
    parser.add_argument("--size", default="696x520", help="image WxH (default 696x520)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model) if args.model else build_promptable("promptable_efficientnet_lite0")
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
    per_box = (
        median_ms(lambda: predictor.predict(boxes=boxes, multimask=False), max(3, args.repeats // 3)) / 64
    )
    print(f"threads {args.threads}, image {width}x{height}, frame {model.image_size}")
    print(f"set_image (embedding): {embed:.1f} ms")
    print(f"one click (3 masks):   {one_click:.1f} ms")
    print(f"corrective click:      {corrective:.1f} ms")
    print(f"64 boxes, per box:     {per_box:.1f} ms")


if __name__ == "__main__":
    main()
