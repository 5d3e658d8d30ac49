"""`instaseg predict` throughput on real nuclei images, and the accuracy and cost of test-time augmentation.

Throughput: `predict_files` (what `instaseg predict` runs after parsing its arguments) on the first
`--images` images of ../shared/data/dsb2018/stage1_train (sorted by id), with 2 threads, one Predictor built
once (its load time is shown separately). Each configuration runs `--runs` times, interleaved; the table
shows the median wall time and images/s. Configurations: the model's forward pass alone (the floor);
`predict_files` writing results.json; all outputs (overlays, label maps, GeoJSON); flip TTA (2 views).
Without `--model` the model is a random-weight `maskrcnn_resnet50_fpn` at torchvision's default settings
(800 px short side, up to 100 detections of score > 0.05 per image): the same work per image as a trained
COCO model, a worst case for post-processing and output writing.

TTA accuracy (needs a trained model): with `--model CHECKPOINT --gt VAL.json`, every image of the COCO file
VAL.json (file names relative to its folder) is predicted without TTA, with flip, and with flip + scales
0.8/1.0/1.2; mask AP / AP50 / AP75, box AP, the DSB score (`instaseg.evaluation`, `--max-dets` detections
per image) and time per image are reported side by side.

    .venv/bin/python benchmarks/bench_predict.py [--images 16] [--runs 3] [--model NAME|PATH]
    .venv/bin/python benchmarks/bench_predict.py --model CKPT --gt VAL.json [--max-dets 500] --skip-throughput
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.report import evaluate
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.inference.runner import OutputOptions, predict_files
from instaseg.inference.tta import TTAOptions
from instaseg.io.images import load_image, read_image_size, to_tensor

DSB_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018" / "stage1_train"
# AP needs every detection: COCO's 0.05, not the model's operating point.
EVERY_DETECTION = PostprocessOptions(score_threshold=0.05, mask_threshold=0.5)
TTA_CONFIGS = {
    "none": None,
    "flip": TTAOptions(flip=True),
    "flip + scales 0.8/1.0/1.2": TTAOptions(flip=True, scales=(0.8, 1.0, 1.2)),
}


def dsb_images(count: int) -> list[Path]:
    if not DSB_ROOT.is_dir():
        raise SystemExit(f"shared nuclei images not found at {DSB_ROOT}")
    folders = sorted(p for p in DSB_ROOT.iterdir() if p.is_dir())[:count]
    return [folder / "images" / f"{folder.name}.png" for folder in folders]


def describe_sizes(images: list[Path]) -> str:
    sizes = Counter(read_image_size(path) for path in images)
    return ", ".join(f"{count} x {h}x{w}" for (h, w), count in sorted(sizes.items()))


def throughput(model: str, images: list[Path], runs: int, batch_size: int) -> None:
    start = time.perf_counter()
    plain = Predictor(model, batch_size=batch_size)
    load_seconds = time.perf_counter() - start
    flip = Predictor(plain.model, tta=TTAOptions(flip=True), batch_size=batch_size)
    configs = {
        "results.json only": (plain, OutputOptions()),
        "+ overlays, label maps, GeoJSON": (
            plain,
            OutputOptions(overlay=True, label_maps=True, polygons=True),
        ),
        "flip TTA (2 views), results.json": (flip, OutputOptions()),
    }
    predict_files(images[:1], tempfile.mkdtemp(), plain, progress=False)  # warm-up
    tensors = [to_tensor(load_image(path)) for path in images]
    model_only = "model forward only (images decoded beforehand)"
    seconds: dict[str, list[float]] = {model_only: [], **{name: [] for name in configs}}
    instances: dict[str, int] = {}
    for _ in range(runs):
        start = time.perf_counter()
        with torch.inference_mode():
            instances[model_only] = sum(len(plain.model([tensor])[0]) for tensor in tensors)
        seconds[model_only].append(time.perf_counter() - start)
        for name, (predictor, outputs) in configs.items():
            with tempfile.TemporaryDirectory() as out:
                summary = predict_files(images, out, predictor, outputs, progress=False)
            if summary.failures:
                raise SystemExit(f"{name}: failures: {summary.failures}")
            seconds[name].append(summary.seconds)
            instances[name] = summary.instances
    print(
        f"model {model}; load {load_seconds:.1f} s; {len(images)} DSB images ({describe_sizes(images)}); "
        f"batch size {batch_size}; {torch.get_num_threads()} threads; median of {runs} runs\n"
    )
    print("| configuration | wall s (median) | images/s | ms/image | instances |")
    print("|---|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.1f} | {len(images) / median:.2f} | {1000 * median / len(images):.0f} | "
            f"{instances[name]} |"
        )


def tta_accuracy(
    model: str, gt_path: Path, max_dets: int, max_images: int | None, dsb_min_score: float
) -> None:
    gt = json.loads(gt_path.read_text())
    entries = gt["images"][:max_images] if max_images else gt["images"]
    subset = {**gt, "images": entries}
    base = Predictor(model, postprocess=EVERY_DETECTION)
    print(
        f"model {model}; {len(entries)} images of {gt_path}; max_dets {max_dets}; DSB score of the "
        f"detections scoring >= {dsb_min_score}\n"
    )
    print("| TTA | mask AP | AP50 | AP75 | box AP | DSB score | s/image | cost vs none |")
    print("|---|---|---|---|---|---|---|---|")
    reference = None
    for name, tta in TTA_CONFIGS.items():
        predictor = Predictor(base.model, tta=tta, postprocess=EVERY_DETECTION)
        results = []
        start = time.perf_counter()
        for entry in entries:
            instances = predictor.predict(gt_path.parent / entry["file_name"])
            results.extend(instances.to_coco_results(entry["id"]))
        per_image = (time.perf_counter() - start) / len(entries)
        reference = reference or per_image
        report, _ = evaluate(subset, results, max_dets=max_dets, min_score=dsb_min_score)
        mask = report["coco"]["segm"]["stats"]
        box = evaluate_coco(subset, results, iou_type="bbox", max_dets=max_dets).stats
        print(
            f"| {name} | {mask['AP']:.4f} | {mask['AP50']:.4f} | {mask['AP75']:.4f} | {box['AP']:.4f} | "
            f"{report['pixel_metrics']['dsb_score']:.4f} | {per_image:.2f} | {per_image / reference:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--model", default="maskrcnn_resnet50_fpn")
    parser.add_argument("--gt", type=Path, help="COCO validation JSON for the TTA accuracy table")
    parser.add_argument("--max-dets", type=int, default=500)
    parser.add_argument("--max-gt-images", type=int, help="evaluate TTA on the first N images only")
    parser.add_argument(
        "--dsb-min-score",
        type=float,
        default=0.5,
        help="the DSB score counts detections from this score up (it has no ranking: every kept mask counts)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.skip_throughput:
        throughput(args.model, dsb_images(args.images), args.runs, args.batch_size)
    if args.gt is not None:
        print()
        tta_accuracy(args.model, args.gt, args.max_dets, args.max_gt_images, args.dsb_min_score)
    else:
        print("\nTTA accuracy: pending (pass --model CHECKPOINT --gt VAL.json with a trained model)")


if __name__ == "__main__":
    main()
