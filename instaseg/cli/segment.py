"""`instaseg segment`: promptable segmentation of one image, with the bundled promptable model (trained on
nuclei) or a SAM / MobileSAM checkpoint (`--model`).

Prompts are points (`--points x,y[,label]`, label 1 foreground by default, 0 background; all points form one
prompt, shared by every box) and boxes (`--boxes x1,y1,x2,y2`, one prompt each, decoded in one batch), in
image pixels; or `--everything` for automatic mask generation (`--mode exact` reproduces segment-anything's
generator, `--mode fast` decodes fewer points). Outputs are those of `instaseg predict`: results.json (COCO
RLE; `score` is SAM's predicted IoU, `category_id` 1) and images.json, and on request an overlay, a label map
and GeoJSON polygons.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from points, boxes, or everything (bundled model or SAM / MobileSAM)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="image file")
    parser.add_argument(
        "--model",
        help="promptable model: sam_vit_b/l/h_*.pth, mobile_sam.pt, a SAM export (.onnx), an instaseg "
        "promptable model file (default: the bundled nuclei_promptable)",
    )
    parser.add_argument("--points", nargs="+", default=None, metavar="X,Y[,LABEL]", help="point prompts")
    parser.add_argument("--boxes", nargs="+", default=None, metavar="X1,Y1,X2,Y2", help="box prompts")
    parser.add_argument("--single-mask", action="store_true", help="one mask per prompt instead of three")
    parser.add_argument("--everything", action="store_true", help="automatic mask generation")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="with --everything")
    parser.add_argument("--points-per-side", type=int, default=32, help="with --everything (default 32)")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="with --everything")
    parser.add_argument("--stability-thresh", type=float, default=0.95, help="with --everything")
    parser.add_argument("--min-region-area", type=int, default=0, help="with --everything: clean-up size")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overlay", action="store_true", help="write overlays/<stem>.png")
    parser.add_argument("--label-maps", action="store_true", help="write label_maps/<stem>.png")
    parser.add_argument("--polygons", action="store_true", help="write polygons/<stem>.geojson")
    parser.set_defaults(func=run)


def parse_numbers(values: list[str] | None, sizes: tuple[int, ...], option: str) -> list[list[float]]:
    """'x,y' style arguments -> lists of floats; each must have one of `sizes` numbers."""
    parsed = []
    for value in values or []:
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"{option}: {value!r} is not a comma-separated list of numbers") from None
        if len(numbers) not in sizes:
            expected = " or ".join(str(size) for size in sizes)
            raise ValueError(f"{option}: {value!r} has {len(numbers)} numbers, expected {expected}")
        parsed.append(numbers)
    return parsed


def run(args: argparse.Namespace) -> int:
    from instaseg.inference.outputs import (
        ResultsFile,
        encode_png,
        ensure_writable_folder,
        geojson,
        label_map,
        write_bytes,
        write_json,
    )
    from instaseg.inference.overlay import draw_overlay
    from instaseg.io.images import load_image
    from instaseg.models import load_promptable
    from instaseg.models.sam.automatic_masks import AutomaticMaskGenerator, AutomaticMaskSettings
    from instaseg.models.sam.predictor import SamPredictor

    points = parse_numbers(args.points, (2, 3), "--points")
    boxes = parse_numbers(args.boxes, (4,), "--boxes")
    if args.everything == bool(points or boxes):
        raise ValueError("give --points and/or --boxes, or --everything (not both)")
    ensure_writable_folder(args.out)
    image = load_image(args.image)
    predictor = SamPredictor(load_promptable(args.model))
    if args.everything:
        settings = AutomaticMaskSettings(
            points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_thresh,
            min_mask_region_area=args.min_region_area,
            mode=args.mode,
        )
        instances = AutomaticMaskGenerator(predictor, settings).generate(image)
    else:
        predictor.set_image(image)
        instances = predictor.predict(
            points=[point[:2] for point in points] if points else None,
            labels=[int(point[2]) if len(point) == 3 else 1 for point in points] if points else None,
            boxes=boxes or None,
            multimask=not args.single_mask,
        )
    order = instances.scores.argsort(descending=True, stable=True)
    instances = instances[order]
    results = ResultsFile(args.out, categories=[{"id": 1, "name": "object"}])
    results.add(1, args.image.name, instances)
    results.save()
    stem = args.image.stem
    if args.overlay:
        ensure_writable_folder(args.out / "overlays")
        write_bytes(args.out / "overlays" / f"{stem}.png", encode_png(draw_overlay(image, instances)))
    if args.label_maps:
        ensure_writable_folder(args.out / "label_maps")
        write_bytes(args.out / "label_maps" / f"{stem}.png", encode_png(label_map(instances)))
    if args.polygons:
        ensure_writable_folder(args.out / "polygons")
        write_json(args.out / "polygons" / f"{stem}.geojson", geojson(instances))
    print(f"{args.image}: {len(instances)} masks -> {args.out / 'results.json'}")
    return 0
