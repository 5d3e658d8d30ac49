"""One training step on the CPU, float32 vs bfloat16 autocast, and where its time goes next to inference.

Run: `.venv/bin/python benchmarks/bench_train_step.py [--runs 5] [--size 512] [--model NAME]`

The model is a named architecture (default: the EfficientNet-Lite0 FPN of `configs/nuclei_lite0.yaml`; also
`maskrcnn_resnet18_fpn` of `configs/nuclei_r18.yaml`) with the nuclei settings (input resized to `--size`,
anchors 8-128, 2000 RPN proposals, 500 detections) and random weights, on a batch of `--batch` synthetic
`--size` x `--size` images holding `--instances` ellipses / rectangles each (instaseg.data.synthetic). A step
is what the trainer does: forward in train mode, backward, SGD step. "backbone train" is the forward +
backward of body + FPN alone on the same (resized, padded) batch: the convolutions, where bf16 could help
most. Inference is the same model in eval mode on the same images, with `box_score_thresh=0` so that every
image yields the full 500 detections (the worst case for the heads). Stage times come from forward hooks on
the transform, backbone, RPN and RoI heads (backward and the optimiser step are timed as a whole). A variant
that fails (e.g. bf16 where an op has no bf16 backward) is reported as failing. The variants run interleaved,
`--runs` times after one warm-up each; tables show medians.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from instaseg.data.coco import read_coco
from instaseg.data.synthetic import make_synthetic_dataset
from instaseg.data.torch_dataset import CategoryMap, TrainingDataset, collate
from instaseg.models import MODEL_CONFIGS, build

THREADS = 2
STAGES = ("transform", "backbone", "rpn", "roi_heads")
NUCLEI_SETTINGS = {
    "anchor_sizes": [8, 16, 32, 64, 128],
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 2000,
    "rpn_post_nms_top_n_test": 2000,
    "box_detections_per_img": 500,
    "box_score_thresh": 0.0,
}


class StageTimer:
    """Accumulates wall time spent in the model's top-level stages, through forward pre / post hooks."""

    def __init__(self, model: torch.nn.Module):
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        for name in STAGES:
            module = getattr(model, name)
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))

    def _pre(self, name: str):
        def hook(*_args) -> None:
            self._started[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(*_args) -> None:
            self.seconds[name] += time.perf_counter() - self._started.pop(name)

        return hook

    def take(self) -> dict[str, float]:
        result = dict(self.seconds)
        self.seconds.clear()
        return result


def make_batch(args: argparse.Namespace, root: Path) -> tuple[list[torch.Tensor], list, int]:
    path = make_synthetic_dataset(
        root, args.batch, size_range=(args.size, args.size), max_instances=args.instances, seed=0
    )
    dataset = read_coco(path)
    categories = CategoryMap([c.id for c in dataset.categories])
    images, targets = collate([TrainingDataset(dataset, categories)[i] for i in range(args.batch)])
    return images, targets, categories.num_classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (after one warm-up each)")
    parser.add_argument(
        "--size", type=int, default=512, help="image side in pixels (the model input size too)"
    )
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--instances", type=int, default=30, help="at most this many instances per image")
    parser.add_argument(
        "--model",
        default="maskrcnn_efficientnet_lite0_fpn",
        choices=sorted(MODEL_CONFIGS),
        help="architecture",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        images, targets, num_classes = make_batch(args, Path(tmp))
    torch.manual_seed(0)
    model = build(
        args.model,
        num_classes=num_classes,
        min_size=args.size,
        max_size=args.size * 2,
        **NUCLEI_SETTINGS,
    )
    timer = StageTimer(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def train_step(bf16: bool) -> dict[str, float]:
        model.train()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model(images, targets)
        forward = time.perf_counter()
        sum(losses.values()).backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        return {**timer.take(), "forward": forward - started, "backward": backward - forward,
                "optimizer": done - backward, "total": done - started}  # fmt: skip

    def inference(bf16: bool) -> dict[str, float]:
        model.eval()
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(images)
        total = time.perf_counter() - started
        return {**timer.take(), "forward": total, "total": total}

    model.train()
    with torch.no_grad():
        batch_tensor = model.transform(images)[0].tensors  # normalised, resized, padded: the backbone's input
    timer.take()

    def backbone_step(bf16: bool) -> dict[str, float]:
        """Forward + backward through body + FPN alone: the convolutions, where bf16 could pay off most."""
        model.train()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = model.backbone(batch_tensor)
        forward = time.perf_counter()
        sum(feature.float().mean() for feature in features.values()).backward()
        done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        return {
            **timer.take(),
            "forward": forward - started,
            "backward": done - forward,
            "total": done - started,
        }

    variants = {
        "train fp32": lambda: train_step(False),
        "train bf16": lambda: train_step(True),
        "backbone train fp32": lambda: backbone_step(False),
        "backbone train bf16": lambda: backbone_step(True),
        "infer fp32": lambda: inference(False),
        "infer bf16": lambda: inference(True),
    }
    failures: dict[str, str] = {}
    samples: dict[str, list[dict[str, float]]] = defaultdict(list)
    for name, run in variants.items():  # warm-up, and find variants that do not run at all
        try:
            run()
        except RuntimeError as error:
            failures[name] = str(error).splitlines()[0]
            optimizer.zero_grad(set_to_none=True)
    for _ in range(args.runs):
        for name, run in variants.items():
            if name not in failures:
                samples[name].append(run())

    print(
        f"{args.model}, CPU ({torch.backends.cpu.get_cpu_capability()}), torch "
        f"{torch.__version__}, {THREADS} threads; batch {args.batch} of {args.size}x{args.size} with <= "
        f"{args.instances} instances; "
        f"median of {args.runs} interleaved runs, milliseconds.\n"
    )
    columns = ("total", "forward", *STAGES, "backward", "optimizer")
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in variants:
        if name in failures:
            print(f"| {name} | fails: {failures[name]} |" + " |" * (len(columns) - 1))
            continue
        cells = []
        for column in columns:
            values = [sample[column] for sample in samples[name] if column in sample]
            cells.append(f"{statistics.median(values) * 1000:.0f}" if values else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    medians = {name: statistics.median(s["total"] for s in samples[name]) for name in samples}
    with contextlib.suppress(KeyError):
        print(f"\nbf16 / fp32 training step: {medians['train bf16'] / medians['train fp32']:.2f}x")
    with contextlib.suppress(KeyError):
        ratio = medians["backbone train bf16"] / medians["backbone train fp32"]
        print(f"bf16 / fp32 backbone forward + backward: {ratio:.2f}x")
    with contextlib.suppress(KeyError):
        print(f"bf16 / fp32 inference: {medians['infer bf16'] / medians['infer fp32']:.2f}x")
    with contextlib.suppress(KeyError):
        print(f"training step / inference (fp32): {medians['train fp32'] / medians['infer fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
