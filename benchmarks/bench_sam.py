"""SAM / MobileSAM on the CPU: image encoder, prompt decoder and automatic mask generation (issue 16).

Measures, with `--threads` threads (2, as ../shared/fixtures/sam/REFERENCE_TIMES.md), medians of `--repeats`:

- encoder latency of the `vit_t` (MobileSAM) and `vit_b` layouts on a 1024x1024 input, eager float32 and
  under bf16 CPU autocast (random weights: the cost does not depend on their values); `--skip-vit-b` leaves
  out vit_b (about 30 s a call on a 2-core VM);
- prompt encoder + mask decoder latency for one point prompt, and for a batch of 64 point prompts (also per
  prompt), through `Sam.decode`; with `--onnx`, the vit_t encoder and the same decoder rows on ONNX Runtime
  (the fixture model exported by `export_sam` and run by `OnnxSam`, the backend of `SamPredictor`);
- automatic mask generation per image: `baseline` (the official generator's order of work, rebuilt here
  because segment-anything cannot be installed: the decoder computed op for op as the official one, with
  the image repeated per prompt and transposed convolutions; all three masks of every point upsampled
  256 -> 1024 -> image size before any filter; stability at full size; every kept mask run-length encoded
  in Python before NMS; per-batch results deep-copied), then `exact` and `fast` mode, `--grid` points per
  side (32, the official default; 16 keeps a run short), with MobileSAM's seeded fixture weights
  (`mobile_sam_weights_spec.json`: informative blob masks; random weights give one image-wide mask) on the
  fixture's 512x512 astronaut image, filters off as in REFERENCE_TIMES (`--pred-iou-thresh` and
  `--stability-thresh` set them), the three alternating `--repeats` times, and how many of the exact mode's
  masks the fast mode recovers at mask IoU >= 0.8. `--amg-model` runs these rows on another promptable
  model instead (a trained one, e.g. the bundled `nuclei_promptable`, whose point prompts return real
  objects' masks, which the fast mode's skipping relies on) and `--amg-image` on another image.

    .venv/bin/python benchmarks/bench_sam.py [--threads 2] [--repeats 3] [--grid 32] [--skip-vit-b] [--onnx]
    .venv/bin/python benchmarks/bench_sam.py --skip-encoders --amg-model nuclei_promptable --amg-image IMG

Prints a Markdown table with the command, machine and date (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from instaseg.export.sam_onnx import export_sam
from instaseg.io.images import load_image
from instaseg.models import load_promptable
from instaseg.models.sam import MASK_THRESHOLD, VIT_B, load_sam, mobile_sam, sam_vit
from instaseg.models.sam import mask_decoder as decoder_module
from instaseg.models.sam.automatic_masks import (
    AutomaticMaskGenerator,
    AutomaticMaskSettings,
    build_point_grid,
)
from instaseg.models.sam.common import stability_score
from instaseg.models.sam.onnx_sam import OnnxSam
from instaseg.models.sam.predictor import SamPredictor
from instaseg.models.sam.transforms import postprocess_masks, scale_coords
from instaseg.ops import nms
from instaseg.structures.boxes import mask_boxes
from instaseg.structures.masks import decode_rle, uncompressed_rle_to_rle

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "sam"
sys.path.insert(0, str(REPO / "tests" / "models"))
from test_models_parity import weights_from_recipe  # noqa: E402  (the fixture recipe reader, one home)


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of `repeats` calls after `warmup` calls. The CPU time shows
    this process's own work when other jobs share the cores (the wall time then includes waiting)."""
    for _ in range(warmup):
        function()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def encoder_rows(repeats: int, skip_vit_b: bool) -> list[tuple[str, tuple[float, float]]]:
    image = torch.rand(1, 3, 1024, 1024) * 255
    models = [("vit_t", mobile_sam(), repeats)]
    if not skip_vit_b:
        models.append(("vit_b", sam_vit(VIT_B, "vit_b"), 1))
    rows = []
    for name, model, count in models:
        for label, context in (("float32", nullcontext), ("bf16 autocast", _bf16)):
            with torch.no_grad(), context():
                # vit_b: one call, no warm-up (a call takes ~30 s; the first-call overhead is a few ms).
                warmup = 1 if name == "vit_t" else 0
                seconds = median_seconds(lambda m=model: m.encode_image(image), count, warmup)
            rows.append((f"encoder {name}, {label} (1024x1024)", seconds))
    return rows


def onnx_rows(model, repeats: int) -> list[tuple[str, tuple[float, float]]]:
    """The same encoder and decoder rows on ONNX Runtime: `model` exported (`export_sam`) and run by
    `OnnxSam`, the backend `SamPredictor` and the service use."""
    with tempfile.TemporaryDirectory() as folder:
        graphs = OnnxSam(
            export_sam(model, Path(folder) / "sam.onnx").encoder, threads=torch.get_num_threads()
        )
        image = torch.rand(1, 3, 1024, 1024) * 255
        rows = [
            (
                f"encoder {model.arch}, ONNX Runtime fp32 (1024x1024)",
                median_seconds(lambda: graphs.encode_image(image), repeats),
            )
        ]
        rows += [(f"{label}, ONNX Runtime", seconds) for label, seconds in decoder_rows(graphs, repeats)]
    return rows


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def decoder_rows(model, repeats: int) -> list[tuple[str, tuple[float, float]]]:
    embedding = torch.randn(1, 256, 64, 64)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in (1, 64):
        points = torch.rand(batch, 1, 2, generator=generator) * 1024
        labels = torch.ones(batch, 1, dtype=torch.int64)
        with torch.no_grad():
            seconds = median_seconds(lambda p=points, la=labels: model.decode(embedding, (p, la)), repeats)
        rows.append((f"decoder, batch of {batch} point prompts (per call)", seconds))
        if batch > 1:
            rows.append(
                (
                    f"decoder, batch of {batch} point prompts (per prompt)",
                    (seconds[0] / batch, seconds[1] / batch),
                )
            )
    return rows


def _python_rle(masks: torch.Tensor) -> list[dict]:
    """Uncompressed column-major RLE per mask with a Python loop per mask (the official encoder's method)."""
    count, height, width = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    changes = torch.nonzero(flat[:, 1:] ^ flat[:, :-1])
    rles = []
    for i in range(count):
        indices = changes[changes[:, 0] == i, 1]
        edges = torch.cat([torch.tensor([0]), indices + 1, torch.tensor([height * width])])
        counts = [] if flat[i, 0] == 0 else [0]
        counts.extend((edges[1:] - edges[:-1]).tolist())
        rles.append({"size": [height, width], "counts": counts})
    return rles


class _OfficialDecoder:
    """While active, the decoder runs as the official code does: plain attention over projected
    image tokens, the image repeated per prompt, the upscaling through its ConvTranspose2d modules."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        attention = decoder_module.Attention
        self.saved = (attention.tokens_to_image, attention.image_to_tokens, decoder_module.MaskDecoder._masks)
        attention.tokens_to_image = attention.forward
        attention.image_to_tokens = attention.forward

        def conv_masks(decoder, keys, hyper, height, width):
            batch = keys.shape[0]
            upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(batch, -1, height, width))
            return (hyper @ upscaled.flatten(2)).view(batch, -1, *upscaled.shape[-2:])

        decoder_module.MaskDecoder._masks = conv_masks
        return self

    def __exit__(self, *exc) -> None:
        attention = decoder_module.Attention
        attention.tokens_to_image, attention.image_to_tokens, decoder_module.MaskDecoder._masks = self.saved


def baseline_generate(
    predictor: SamPredictor, image: np.ndarray, grid: int, iou: float, stability: float
) -> int:
    """The official generator's order of work for one crop (see the module docstring); returns the count."""
    model = predictor.model
    predictor.set_image(image)
    size = image.shape[:2]
    points = build_point_grid(grid) * np.array([size[1], size[0]])
    kept: dict[str, list] = {}
    with _OfficialDecoder(model):
        for start in range(0, len(points), 64):
            batch = torch.from_numpy(points[start : start + 64])
            coords = scale_coords(batch, size, model.image_size)[:, None]
            embedding = predictor.embedding.expand(len(batch), -1, -1, -1)  # repeated per prompt
            sparse, dense = model.encode_prompts(
                (coords, torch.ones(len(batch), 1, dtype=torch.int64)), None, None
            )
            # The whole batch at once, as the official code (`Sam.decode` decodes DECODE_CHUNK at a time).
            low_res, scores = model.mask_decoder(
                embedding, model.prompt_encoder.dense_pe(), sparse, dense, True
            )
            logits = postprocess_masks(low_res, predictor.input_size, size, model.image_size).flatten(0, 1)
            scores = scores.flatten()
            keep = scores > iou if iou > 0 else torch.ones_like(scores, dtype=torch.bool)
            logits, scores = logits[keep], scores[keep]
            # A second stage re-predicts each mask with its point (SAM's models return them unchanged).
            clicks = batch.repeat_interleave(low_res.shape[1], dim=0)[keep][:, None].float()
            refined, scores = model.refine_masks(
                predictor.detail, logits[:, None], scores[:, None], None, (clicks, torch.ones(len(clicks), 1))
            )
            logits, scores = refined[:, 0], scores[:, 0]
            stable = stability_score(logits)
            keep = stable >= stability if stability > 0 else torch.ones_like(stable, dtype=torch.bool)
            masks = logits[keep] > MASK_THRESHOLD
            data = {"rles": _python_rle(masks), "boxes": mask_boxes(masks), "iou": scores[keep]}
            for key, value in data.items():
                kept[key] = kept.get(key, []) + [copy.deepcopy(value)]
    boxes, scores = torch.cat(kept["boxes"]), torch.cat(kept["iou"])
    rles = [rle for part in kept["rles"] for rle in part]
    keep = nms(boxes, scores, 0.7).tolist()
    return len([uncompressed_rle_to_rle(rles[i]) for i in keep])


def amg_rows(
    model, image: np.ndarray, grid: int, iou: float, stability: float, repeats: int
) -> tuple[list, str]:
    """Baseline, exact and fast, one after the other `repeats` times (alternating, so that a change of load
    on the machine hits all three), medians."""
    predictor = SamPredictor(model)
    runs = {"baseline (official order)": lambda: baseline_generate(predictor, image, grid, iou, stability)}
    for mode in ("exact", "fast"):
        settings = AutomaticMaskSettings(
            points_per_side=grid, pred_iou_thresh=iou, stability_score_thresh=stability, mode=mode
        )
        generator = AutomaticMaskGenerator(predictor, settings)
        runs[mode] = lambda g=generator: g.generate(image)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, run in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                results[name] = run()
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
    rows = []
    for name in runs:
        found = "" if name not in ("exact", "fast") else f" ({len(results[name])} masks)"
        label = f"automatic masks, {name}, {grid}x{grid} grid{found}"
        rows.append((label, (statistics.median(walls[name]), statistics.median(cpus[name]))))
    pixels = image.shape[0] * image.shape[1]
    exact = decode_rle(results["exact"].masks.rles(), image.shape[:2]).reshape(len(results["exact"]), pixels)
    fast = decode_rle(results["fast"].masks.rles(), image.shape[:2]).reshape(len(results["fast"]), pixels)
    recovered = 0
    if len(exact) and len(fast):
        inter = exact.astype(np.float32) @ fast.astype(np.float32).T
        union = exact.sum(1)[:, None] + fast.sum(1)[None, :] - inter
        recovered = int(((inter / np.maximum(union, 1)) >= 0.8).any(axis=1).sum())
    note = f"fast mode recovers {recovered} of {len(exact)} exact-mode masks at mask IoU >= 0.8"
    return rows, note


def _format(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-thresh", type=float, default=0.0)
    parser.add_argument("--skip-vit-b", action="store_true")
    parser.add_argument("--skip-encoders", action="store_true")
    parser.add_argument("--skip-amg", action="store_true")
    parser.add_argument("--amg-model", help="promptable model of the AMG rows (default: the fixture's)")
    parser.add_argument("--amg-image", type=Path, help="image of the AMG rows (default: the fixture's)")
    parser.add_argument(
        "--onnx", action="store_true", help="also vit_t's encoder and decoder on ONNX Runtime"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not FIXTURES.is_dir():
        sys.exit(f"SAM fixtures not found at {FIXTURES} (the decoder and AMG rows need their weights)")
    cases = torch.load(FIXTURES / "mobile_sam_cases.pt")
    model = load_sam(weights_from_recipe(FIXTURES / "mobile_sam_weights_spec.json"))
    rows = [] if args.skip_encoders else encoder_rows(args.repeats, args.skip_vit_b)
    rows += decoder_rows(model, args.repeats)
    if args.onnx:
        rows += onnx_rows(model, args.repeats)
    notes = []
    if not args.skip_amg:
        image = load_image(args.amg_image) if args.amg_image else cases["image_uint8_hwc"].numpy()
        amg_model = load_promptable(args.amg_model) if args.amg_model else model
        amg, note = amg_rows(
            amg_model, image, args.grid, args.pred_iou_thresh, args.stability_thresh, args.repeats
        )
        rows += amg
        notes.append(note)
    print(f"command: {' '.join(['python', *sys.argv])}")
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    now = datetime.datetime.now(datetime.UTC)
    print(f"date: {now:%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f}")
    print("\n| what | median wall | median CPU (both threads) |\n|---|---|---|")
    for label, (wall, cpu) in rows:
        print(f"| {label} | {_format(wall)} | {_format(cpu)} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
