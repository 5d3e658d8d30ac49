"""`instaseg rank`: rank unlabelled images for annotation and export the chosen ones as pre-annotations.

Writes into --out: ranking.csv and ranking.json (every image: rank, path, score, selected, components),
contact_sheet.png (the top images with predictions drawn on), cvat/instances_default.json (COCO 1.0 import)
and label_studio/tasks.json with label_studio/label_config.xml. Scores are count-invariant: score-weighted
means over detections, never sums (docs/annotation.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# `instaseg.active.ranking.Method`'s values, restated so that --help needs no import of torch
# (tests/active/test_active_cli.py checks that the two agree).
METHODS = (
    "random",
    "mean-uncertainty",
    "max-uncertainty",
    "mask-uncertainty",
    "tta-disagreement",
    "coreset",
    "hybrid",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rank",
        help="rank unlabelled images for annotation; export the top ones to CVAT / Label Studio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders (recursive), globs")
    parser.add_argument(
        "--model", help="model file, checkpoint, .onnx file or model name (default: the bundled nuclei model)"
    )
    parser.add_argument("--method", required=True, choices=METHODS, help="how to score the images")
    parser.add_argument("--budget", type=int, required=True, help="how many images to select")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--labeled",
        nargs="+",
        default=(),
        metavar="IMAGE",
        help="coreset / hybrid: images already annotated (the fixed centres)",
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        help="folder that CVAT file names and Label Studio paths are relative to (default: the deepest "
        "folder holding every selected image)",
    )
    parser.add_argument(
        "--label-studio-form",
        choices=("brush", "polygon"),
        default="brush",
        help="Label Studio regions: brush (lossless RLE, default) or polygon (holes filled)",
    )
    parser.add_argument(
        "--sheet-size", type=int, default=16, help="images on the contact sheet (default 16; 0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random: the seed of the draw (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.active.export import export_selection, write_ranking
    from instaseg.active.ranking import RankOptions, rank_images
    from instaseg.inference.outputs import ensure_writable_folder
    from instaseg.inference.predictor import Predictor
    from instaseg.models.loading import load_model

    if args.sheet_size < 0:
        raise ValueError(f"--sheet-size must be >= 0, got {args.sheet_size}")
    ensure_writable_folder(args.out)
    model = load_model(args.model)
    ranking = rank_images(
        args.inputs,
        model,
        args.method,
        args.budget,
        RankOptions(seed=args.seed, device=args.device),
        labelled=args.labeled,
        progress=False if args.no_progress else None,
    )
    written = write_ranking(ranking, args.out)
    predictor = Predictor(model, device=args.device)
    written += export_selection(
        ranking,
        predictor,
        args.out,
        image_root=args.image_root,
        form=args.label_studio_form,
        sheet_size=args.sheet_size,
    )
    print(
        f"ranked {len(ranking.images)} image(s) by {ranking.method.value}; selected {len(ranking.selected)}"
    )
    for image in ranking.selected[:10]:
        print(f"  #{image.rank} {image.score:.4f} {image.path}")
    for failure in ranking.failures:
        print(f"  failed: {failure.source}: {failure.reason}")
    for path in written:
        print(f"wrote {path}")
    return 0
