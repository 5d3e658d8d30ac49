"""Mask R-CNN R50-FPN speed on the CPU with 2 threads: inference at 800x1216 and 512x512, one training step.

Run: `.venv/bin/python benchmarks/bench_model.py [--runs 5] [--out results.md]`

Each scenario runs in its own subprocess so that its peak resident memory (`ru_maxrss`) is its own.
Inference uses `box_score_thresh=0.0`, so every image yields the full 100 detections (the worst case for the
heads), as torchvision's reference timings in ../shared/fixtures/REFERENCE_TIMES.md did; the training step is
SGD on a batch of two 800x1216 images with 20 instances each. Weights are random (timing does not depend on
their values). Times are medians over `--runs` runs after one warm-up run.

torchvision cannot run here, and its reference times were measured on another machine. So inference also
times, interleaved with the full model, the layers torchvision runs identically (same aten calls on the same
shapes): ResNet + FPN, the RPN head convolutions, the box head on the 1000 proposals' pooled features and the
mask head on the 100 detections'. torchvision cannot be faster than those layers alone on this machine, so
`full / dense` bounds instaseg's slowdown against torchvision here from above; the rest of the time is
anchors, NMS, RoIAlign, detection selection and mask pasting. The table prints to stdout (and to `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from instaseg.models import MaskRCNN, build
from instaseg.models.inputs import prepare_targets
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

REPO = Path(__file__).resolve().parents[1]
REFERENCE_TIMES = REPO.parent / "shared" / "fixtures" / "REFERENCE_TIMES.md"
THREADS = 2
# scenario -> (description, the row of REFERENCE_TIMES.md that torchvision measured for it)
SCENARIOS = {
    "infer_800x1216": ("inference, 800x1216 input, 100 detections", "inference, 800x1216 input"),
    "infer_512x512": ("inference, 512x512 input (-> 800x800), 100 detections", "inference, 512x512 input"),
    "train_batch2": ("training step (SGD), batch 2 of 800x1216, 20 instances each", "training step (SGD)"),
}


def random_targets(height: int, width: int, count: int, generator: torch.Generator) -> Instances:
    """`count` random rectangles (boxes + filled masks) as model classes 1..90."""
    sizes = torch.randint(16, 300, (count, 2), generator=generator)
    corners = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - sizes)
    boxes = torch.cat([corners, corners + sizes], dim=1).floor()
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
        mask[y1:y2, x1:x2] = True
    labels = torch.randint(1, 91, (count,), generator=generator)
    return Instances((height, width), boxes, labels, masks=Masks.from_bitmaps(masks))


def inference_steps(model: MaskRCNN, image: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """The full model on `image`, and the dense layers torchvision shares with it on the same inputs."""
    heads = model.roi_heads
    with torch.no_grad():
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections, _ = heads(features, proposals, batch.image_sizes)
        box_features = heads.box_roi_pool(features, proposals, batch.image_sizes)
        mask_features = heads.mask_roi_pool(features, [d.boxes for d in detections], batch.image_sizes)

    def full() -> None:
        with torch.no_grad():
            (instances,) = model([image])
        assert len(instances) == 100, f"expected 100 detections, got {len(instances)}"

    def dense() -> None:
        with torch.no_grad():
            pyramid = model.backbone(batch.tensors)
            model.rpn.head(list(pyramid.values()))
            heads.box_predictor(heads.box_head(box_features))
            heads.mask_predictor(heads.mask_head(mask_features))

    return full, dense


def training_steps(
    model: MaskRCNN, generator: torch.Generator
) -> tuple[Callable[[], None], Callable[[], None]]:
    """One SGD step of the full model, and forward + backward of the dense layers torchvision shares with it:
    the backbone and RPN head on the batch, the box head on the 2 x 512 sampled RoIs' pooled features and the
    mask head on the positive RoIs' (a surrogate loss, so that the same weight and input gradients are
    computed)."""
    model.train()
    images = [torch.rand(3, 800, 1216, generator=generator) for _ in range(2)]
    targets = [random_targets(800, 1216, 20, generator) for _ in images]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    heads = model.roi_heads
    with torch.no_grad():
        prepared = prepare_targets(targets, images, model.num_classes, need_masks=True)
        batch, resized_targets = model.transform(images, prepared)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features, resized_targets)
        samples = heads.sample_proposals(proposals, resized_targets)
        rois = [sample.proposals for sample in samples]
        positive_rois = [sample.proposals[sample.labels > 0] for sample in samples]
        box_features = heads.box_roi_pool(features, rois, batch.image_sizes)
        mask_features = heads.mask_roi_pool(features, positive_rois, batch.image_sizes)

    def full() -> None:
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def dense() -> None:
        pyramid = model.backbone(batch.tensors)
        logits, deltas = model.rpn.head(list(pyramid.values()))
        class_logits, box_deltas = heads.box_predictor(heads.box_head(box_features.requires_grad_()))
        mask_logits = heads.mask_predictor(heads.mask_head(mask_features.requires_grad_()))
        outputs = [*logits, *deltas, class_logits, box_deltas, mask_logits]
        optimizer.zero_grad()
        sum(output.mean() for output in outputs).backward()

    return full, dense


def run_scenario(name: str, runs: int) -> dict:
    """Time one scenario in this process: median / min ms (of the dense layers too, for inference), this
    process's peak RSS in MiB and the machine's load average."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build("maskrcnn_resnet50_fpn", box_score_thresh=0.0)
    if name == "train_batch2":
        full, dense = training_steps(model, generator)
    else:
        height, width = (800, 1216) if name == "infer_800x1216" else (512, 512)
        full, dense = inference_steps(model, torch.rand(3, height, width, generator=generator))
    steps = {"full": full, "dense": dense}
    times = {key: [] for key in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(runs):
        for key, step in steps.items():  # interleaved, so both see the same machine load
            start = time.perf_counter()
            step()
            times[key].append((time.perf_counter() - start) * 1000)
    result = {
        "median_ms": statistics.median(times["full"]),
        "min_ms": min(times["full"]),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "runs": runs,
        "load_average": os.getloadavg()[0],  # above 2, other jobs shared the 2 cores
    }
    result["dense_median_ms"] = statistics.median(times["dense"])
    return result


def reference_ms(row_start: str) -> float | None:
    """torchvision's median in the REFERENCE_TIMES.md row `maskrcnn_resnet50_fpn <row_start>...`."""
    if not REFERENCE_TIMES.is_file():
        return None
    pattern = re.compile(rf"^\|\s*maskrcnn_resnet50_fpn {re.escape(row_start)}[^|]*\|\s*([0-9.]+)\s*\|", re.M)
    match = pattern.search(REFERENCE_TIMES.read_text())
    return float(match.group(1)) if match else None


def table(results: dict[str, dict]) -> str:
    runs = next(iter(results.values()))["runs"]
    lines = [
        f"Mask R-CNN R50-FPN, CPU, torch {torch.__version__}, {THREADS} threads, median of {runs} runs after "
        "warm-up, random weights, box_score_thresh=0.0. dense: the layers torchvision runs identically, "
        "timed interleaved with the full model (a lower bound for torchvision on this machine). "
        "torchvision: REFERENCE_TIMES.md (another machine). load: 1-minute load average at the end.",
        "",
        "| scenario | instaseg ms | min ms | dense ms | instaseg / dense | torchvision ms (ref.) "
        "| instaseg / ref. | peak RSS MiB | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        description, row = SCENARIOS[name]
        reference = reference_ms(row)
        dense = result.get("dense_median_ms")
        cells = [
            description,
            f"{result['median_ms']:.0f}",
            f"{result['min_ms']:.0f}",
            f"{dense:.0f}" if dense else "n/a",
            f"{result['median_ms'] / dense:.2f}x" if dense else "n/a",
            f"{reference:.0f}" if reference else "n/a",
            f"{result['median_ms'] / reference:.2f}x" if reference else "n/a",
            f"{result['peak_mib']:.0f}",
            f"{result['load_average']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per scenario (after one warm-up)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--child", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_scenario(args.child, args.runs)))
        return 0
    results = {}
    for name in args.scenarios:
        command = [sys.executable, __file__, "--child", name, "--runs", str(args.runs)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]}", file=sys.stderr)
    text = table(results)
    print(text)
    if args.out:
        descriptor, temporary = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
