"""PyTorch eager vs ONNX Runtime (fp32, int8 dynamic, int8 static) and bf16: latency, COCO AP and parity.

For `--model` (a checkpoint) and a COCO validation file `--gt` (file names relative to its folder):

- exports the model once with and once without batch norm folded, quantizes the folded export to int8
  (dynamic; static calibrated on `--calibration-images` images spread over `--calibration-gt`, the training
  split, never the validation images);
- latency: every variant's `model([image])` (the whole inference path: resize, graph or eager network, mask
  pasting) on the first `--latency-images` validation images at the model's own input size, `--threads`
  threads, one warm-up pass, then `--runs` passes interleaved across variants; the median pass, per image;
- accuracy: mask and box AP (`instaseg.evaluation.evaluate_coco`, `--max-dets` per image) of every variant on
  the validation images (`--limit` for fewer), and parity with PyTorch fp32 (`instaseg.export.parity`): the
  share of images meeting the issue's criteria (same count and labels, boxes within 1e-3 relative, every
  matched mask IoU > 0.99), the largest box error, label mismatches, min / median matched mask IoU.

Variants: torch fp32, torch fp32 with batch norm folded, torch bf16 (CPU autocast), ORT fp32 (folded, the
default export), ORT fp32 unfolded, ORT int8 dynamic, ORT int8 static. ORT has no bf16 CPU kernels for these
convolutions, so there is no ORT bf16 variant.

    .venv/bin/python benchmarks/bench_onnx.py --model runs/nuclei_lite0/best.pt --gt runs/nuclei/val.json \
        --calibration-gt runs/nuclei/train.json [--limit 20] [--runs 5] [--latency-images 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from instaseg.evaluation import evaluate_coco
from instaseg.export import export_model
from instaseg.export.parity import compare_instances
from instaseg.export.quantize import quantize_onnx
from instaseg.io.images import load_image, to_tensor
from instaseg.models.loading import load_model
from instaseg.models.norm import fold_frozen_batchnorm
from instaseg.models.onnx_runtime import OnnxMaskRCNN
from instaseg.structures.instances import Instances

Runner = Callable[[torch.Tensor], Instances]


def torch_runner(model: torch.nn.Module, bf16: bool = False) -> Runner:
    def run(image: torch.Tensor) -> Instances:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            return model([image])[0]

    return run


def onnx_runner(path: Path, threads: int) -> Runner:
    model = OnnxMaskRCNN(path, threads=threads)
    return lambda image: model([image])[0]


def build_variants(
    model_path: str, folder: Path, calibration: list[Path], threads: int, bf16: bool
) -> dict[str, Runner]:
    model = load_model(model_path)
    folded = copy.deepcopy(model)
    fold_frozen_batchnorm(folded.backbone.body)
    variants: dict[str, Runner] = {
        "torch fp32": torch_runner(model),
        "torch fp32, BN folded": torch_runner(folded),
    }
    if bf16:
        variants["torch bf16 autocast"] = torch_runner(model, bf16=True)
    files = {"folded": folder / "model.onnx", "unfolded": folder / "model_unfolded.onnx"}
    for name, path in files.items():
        started = time.perf_counter()
        export_model(model_path, path, fold_batchnorm=name == "folded")
        print(f"export ({name}): {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
    for mode in ("dynamic", "static"):
        started = time.perf_counter()
        path = folder / f"model_int8_{mode}.onnx"
        quantize_onnx(files["folded"], path, mode, calibration if mode == "static" else None)
        print(f"int8 {mode}: {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
    variants["ORT fp32"] = onnx_runner(files["folded"], threads)
    variants["ORT fp32, BN not folded"] = onnx_runner(files["unfolded"], threads)
    variants["ORT int8 dynamic"] = onnx_runner(folder / "model_int8_dynamic.onnx", threads)
    variants["ORT int8 static"] = onnx_runner(folder / "model_int8_static.onnx", threads)
    return variants


def latency(variants: dict[str, Runner], images: list[torch.Tensor], runs: int) -> dict[str, float]:
    """Median over `runs` interleaved passes of the mean seconds per image (after one warm-up pass)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(runs + 1):
        for name, run in variants.items():
            started = time.perf_counter()
            for image in images:
                run(image)
            if index > 0:
                times[name].append((time.perf_counter() - started) / len(images))
    return {name: statistics.median(values) for name, values in times.items()}


def accuracy(
    variants: dict[str, Runner], gt: dict, gt_folder: Path, max_dets: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mask / box AP per variant, and parity statistics of each variant against "torch fp32"."""
    results: dict[str, list[dict]] = {name: [] for name in variants}
    parity: dict[str, list] = {name: [] for name in variants}
    for entry in gt["images"]:
        image = to_tensor(load_image(gt_folder / entry["file_name"]))
        outputs = {name: run(image) for name, run in variants.items()}
        for name, instances in outputs.items():
            results[name].extend(instances.to_coco_results(entry["id"]))
            parity[name].append(compare_instances(outputs["torch fp32"], instances))
    scores, agreement = {}, {}
    for name in variants:
        segm = evaluate_coco(gt, results[name], "segm", max_dets, allow_empty_results=True).stats
        bbox = evaluate_coco(gt, results[name], "bbox", max_dets, allow_empty_results=True).stats
        scores[name] = {"mask AP": 100 * segm["AP"], "box AP": 100 * bbox["AP"]}
        stats = parity[name]
        ious = np.concatenate([s.mask_ious for s in stats]) if stats else np.zeros(0)
        agreement[name] = {
            "images meeting parity": sum(s.meets() for s in stats) / len(stats),
            "count mismatches": sum(s.reference_count != s.candidate_count for s in stats),
            "max box error": max(s.max_box_error for s in stats),
            "label mismatches": sum(s.label_mismatches for s in stats),
            "min mask IoU": float(ious.min()) if len(ious) else float("nan"),
            "median mask IoU": float(np.median(ious)) if len(ious) else float("nan"),
        }
    return scores, agreement


def coco_images(path: Path, count: int | None) -> dict:
    data = json.loads(path.read_text())
    if count is not None:
        keep = {entry["id"] for entry in data["images"][:count]}
        data["images"] = [entry for entry in data["images"] if entry["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return data


def spread(paths: list[Path], count: int) -> list[Path]:
    if len(paths) <= count:
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count).round()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="instaseg checkpoint")
    parser.add_argument("--gt", required=True, type=Path, help="COCO validation file")
    parser.add_argument("--calibration-gt", required=True, type=Path, help="COCO training file (calibration)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--limit", type=int, help="evaluate on the first N validation images only")
    parser.add_argument("--latency-images", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-dets", type=int, default=500)
    parser.add_argument("--no-bf16", action="store_true", help="leave out torch bf16 (slow on most CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gt = coco_images(args.gt, args.limit)
    train = json.loads(args.calibration_gt.read_text())
    calibration = spread(
        [args.calibration_gt.parent / entry["file_name"] for entry in train["images"]],
        args.calibration_images,
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"torch {torch.__version__}, threads {args.threads}; model {args.model}")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
        variants = build_variants(args.model, Path(folder), calibration, args.threads, not args.no_bf16)
        timing_images = [to_tensor(load_image(args.gt.parent / e["file_name"])) for e in gt["images"]]
        timing_images = timing_images[: args.latency_images]
        sizes = ", ".join(f"{tuple(image.shape[-2:])}" for image in timing_images)
        print(f"latency images (original sizes): {sizes}")
        seconds = latency(variants, timing_images, args.runs)
        scores, agreement = accuracy(variants, gt, args.gt.parent, args.max_dets)
    print(f"load average after: {os.getloadavg()}; AP on {len(gt['images'])} validation images")
    base = seconds["torch fp32"]
    base_ap = scores["torch fp32"]["mask AP"]
    print(
        "| variant | ms / image | speed-up | mask AP | box AP | mask AP change | images at parity | "
        "max box err | label mism. | min / median mask IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in variants:
        a = agreement[name]
        print(
            f"| {name} | {1000 * seconds[name]:.0f} | {base / seconds[name]:.2f}x | "
            f"{scores[name]['mask AP']:.2f} | {scores[name]['box AP']:.2f} | "
            f"{scores[name]['mask AP'] - base_ap:+.2f} | {100 * a['images meeting parity']:.0f}% | "
            f"{a['max box error']:.2g} | {a['label mismatches']} | "
            f"{a['min mask IoU']:.3f} / {a['median mask IoU']:.3f} |"
        )


if __name__ == "__main__":
    main()
