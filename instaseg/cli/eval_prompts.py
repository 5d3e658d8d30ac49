"""`instaseg eval-prompts`: score a promptable model with a simulated user (interactive segmentation)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """A simulated user clicks at the centre of the largest error region of each object's current mask,
up to --max-clicks times; one more prompt per object is its tight box. Printed and written: mIoU@1/3/5 (mean
IoU after 1, 3, 5 clicks), NoC@85 / NoC@90 (mean clicks to reach that IoU, --max-clicks when never),
box_mIoU, and per-image numbers in the JSON file. --model takes instaseg's promptable model files (configs/
nuclei_promptable.yaml; default: the bundled nuclei_promptable), SAM exports (.onnx) and the official SAM /
MobileSAM checkpoints."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-prompts",
        help="interactive-segmentation metrics of a promptable model (clicks and boxes)",
        description=__doc__,
        epilog=EPILOG,
    )
    parser.add_argument("--gt", type=Path, required=True, metavar="GT.json", help="COCO instances JSON")
    parser.add_argument(
        "--model", help="promptable model file or SAM checkpoint (default: the bundled nuclei_promptable)"
    )
    parser.add_argument("--image-root", type=Path, help="folder the GT's file names are relative to")
    parser.add_argument("--out", type=Path, default=Path("prompt_metrics.json"), help="JSON file to write")
    parser.add_argument("--max-clicks", type=int, default=20, help="clicks per object at most (default 20)")
    parser.add_argument("--max-images", type=int, help="score only the first N images")
    parser.add_argument("--max-objects-per-image", type=int, help="objects drawn per image (seeded)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the object draw (default 0)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from instaseg.evaluation.interactive import evaluate_prompts
    from instaseg.io.atomic import atomic_write
    from instaseg.models import load_promptable
    from instaseg.models.default_model import DEFAULT_PROMPTABLE_MODEL
    from instaseg.models.sam.predictor import SamPredictor

    for name in ("max_clicks", "max_images", "max_objects_per_image", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    predictor = SamPredictor(load_promptable(args.model))
    started = time.perf_counter()
    metrics = evaluate_prompts(
        predictor,
        args.gt,
        args.image_root,
        max_images=args.max_images,
        max_objects_per_image=args.max_objects_per_image,
        max_clicks=args.max_clicks,
        seed=args.seed,
    )
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["model"] = str(args.model or DEFAULT_PROMPTABLE_MODEL)
    metrics["gt"] = str(args.gt)
    with atomic_write(args.out, "w") as stream:
        json.dump(metrics, stream, indent=2)
    shown = ("mIoU@1", "mIoU@3", "mIoU@5", "NoC@85", "NoC@90", "box_mIoU")
    print(f"{metrics['images']} images, {int(metrics['objects'])} objects, {metrics['seconds']} s")
    print("  ".join(f"{key} {metrics[key]:.3f}" for key in shown if key in metrics))
    print(f"written: {args.out}")
    return 0
