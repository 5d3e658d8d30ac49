"""CPU latency of the bundled default model on real nuclei images of the two common sizes (256x256, 696x520).

Run: `.venv/bin/python benchmarks/bench_default_model.py [--model CKPT] [--runs 7] [--threads 2]`

For each image: `Predictor.predict` end to end (decode, model, post-processing at the default score threshold
0.05) and the model's forward alone (on the decoded tensor), interleaved, median and min over `--runs` runs
after one warm-up run each. Images come from `../shared/data/dsb2018/stage1_train` (validation split, so the
detections are those of held-out images). The peak resident memory of the process is printed at the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from instaseg.inference.predictor import Predictor
from instaseg.io.images import load_image, to_tensor

DSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018" / "stage1_train"
# Validation-split images (seed 0) of the two most common sizes in the set.
IMAGES = {
    "256x256": "44ab6a09eedee848b072ea3acd0f4e781f9c43b8d4e3d62598e1024584bf0b01",
    "696x520": "4dbbb275960ab9e4ec2c66c8d3000f7c70c8dce5112df591b95db84e25efa6e9",
}


def image_path(image_id: str) -> Path:
    matches = sorted(DSB.glob(f"{image_id[:16]}*/images/*.png"))
    if not matches:
        raise FileNotFoundError(f"image {image_id} not found under {DSB}")
    return matches[0]


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the bundled model)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor(args.model)
    print(f"model: {args.model or 'bundled default'}, {args.threads} threads, torch {torch.__version__}")
    print("| image | detections | predict ms (median) | predict ms (min) | model forward ms (median) |")
    print("|---|---|---|---|---|")
    for label, image_id in IMAGES.items():
        path = image_path(image_id)
        tensor = to_tensor(load_image(path))
        predicted = predictor.predict(path)  # warm-up
        with torch.inference_mode():
            predictor.model([tensor])
        predict_ms, forward_ms = [], []
        for _ in range(args.runs):
            predict_ms.append(timed(lambda path=path: predictor.predict(path)))
            with torch.inference_mode():
                forward_ms.append(timed(lambda tensor=tensor: predictor.model([tensor])))
        print(
            f"| {label} | {len(predicted)} | {statistics.median(predict_ms):.0f} | {min(predict_ms):.0f} | "
            f"{statistics.median(forward_ms):.0f} |"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
