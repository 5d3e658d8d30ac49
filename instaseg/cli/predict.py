"""`instaseg predict`: segment images (files, folders, globs) or a video, and write results.json and more.

Without --score-threshold / --mask-threshold the model's recommended operating point is used (for the bundled
nuclei model: score 0.7, mask 0.6); images.json and the summary say which thresholds were used. For COCO AP,
which needs every detection, ask for --score-threshold 0.05.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.cli.options import add_deprecated_alias, given
from instaseg.cli.serve import BACKENDS

# `instaseg.inference.postprocess.NMS_KINDS` and `instaseg.models.sam.refined_model.REFINE_MODES`, restated so
# that --help needs no import of torch; the defaults quoted in the help texts are the library's
# (tests/cli/test_cli_help.py checks both).
NMS_KINDS = ("none", "hard", "soft-gaussian", "soft-linear", "matrix")
REFINE_MODES = ("replace", "fuse")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images or a video with a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs")
    parser.add_argument(
        "--model",
        help="an instaseg model file or checkpoint, an exported .onnx file, a torchvision-layout Mask R-CNN "
        "state dict (COCO category names), a bundled model (nuclei_maskrcnn, the default; nuclei_condinst, "
        "~5x faster, less accurate), or an architecture name (e.g. maskrcnn_resnet50_fpn, random weights)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("predictions"), help="output folder (default predictions)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="torch, or onnx (ONNX Runtime, CPU; a checkpoint is exported once to a cache); default: onnx "
        "for an .onnx --model, else torch",
    )
    parser.add_argument(
        "--refine-with",
        metavar="PROMPTABLE_MODEL",
        help="redraw every detected mask from its box with a promptable model: nuclei_promptable (bundled), "
        "sam_vit_*.pth, mobile_sam.pt, a SAM export (.onnx)",
    )
    parser.add_argument(
        "--refine-mode",
        choices=REFINE_MODES,
        default="replace",
        help="with --refine-with: replace every mask, or fuse (SAM's mask only where it agrees with the "
        "detector's, mask IoU >= 0.5); default replace",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    parser.add_argument(
        "--coco-gt", type=Path, help="COCO JSON whose image ids to use (matched by file name)"
    )
    parser.add_argument(
        "--overlay", action="store_true", help="write overlay PNGs (an overlay video for --video)"
    )
    parser.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        help="overlays: 'category score' on every object (--no-labels: on none; default: only where the "
        "text fits without covering an object)",
    )
    parser.add_argument("--label-maps", action="store_true", help="write instance label-map PNGs")
    parser.add_argument("--polygons", action="store_true", help="write mask outlines as GeoJSON")
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="write semantic/<image>.png: each pixel the category id of the segment claiming it, 0 where "
        "none does (the panoptic merge of the predictions, see docs/prediction.md)",
    )
    parser.add_argument(
        "--panoptic",
        action="store_true",
        help="write COCO panoptic output: panoptic/<image>.png (segment ids as RGB) and panoptic.json",
    )
    parser.add_argument("--video", action="store_true", help="INPUT is one video file or folder of frames")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    post = parser.add_argument_group("post-processing")
    post.add_argument(
        "--score-threshold",
        type=float,
        help="drop lower scores (default: the model's recommended operating point; 0.05 for a model "
        "without one)",
    )
    post.add_argument(
        "--mask-threshold",
        type=float,
        help="mask probability cut (default: the model's recommended operating point; 0.5 without one)",
    )
    post.add_argument("--nms", choices=NMS_KINDS, help="extra NMS after the model's (default none)")
    post.add_argument("--nms-iou-threshold", type=float, help="IoU for hard / linear NMS (default 0.5)")
    add_deprecated_alias(post, "--nms-iou", "--nms-iou-threshold", "nms_iou_threshold", type=float)
    post.add_argument("--class-agnostic", action="store_true", help="NMS across categories")
    post.add_argument("--max-detections", type=int, help="keep the best N per image (default: no limit)")
    post.add_argument("--min-mask-area", type=int, help="drop smaller masks, pixels (default 0)")
    post.add_argument("--fill-holes", action="store_true", help="fill holes inside masks")
    post.add_argument("--opening-radius", type=int, help="morphological opening, pixels (default 0: off)")
    post.add_argument("--largest-component", action="store_true", help="keep each mask's largest part")
    post.add_argument("--non-overlapping", action="store_true", help="each pixel to the best instance only")

    large = parser.add_argument_group("tiling and test-time augmentation")
    large.add_argument("--no-tiling", action="store_true", help="never tile, whatever the image size")
    large.add_argument("--tile-size", type=int, help="tile side, pixels (default 1024)")
    large.add_argument("--tile-overlap", type=int, help="pixels shared by tiles (default 256)")
    large.add_argument("--tile-above", type=int, help="tile images wider or taller (default 2048)")
    large.add_argument("--tta-flip", action="store_true", help="add horizontally flipped views")
    large.add_argument("--tta-scales", type=float, nargs="+", help="input scales, e.g. 0.8 1.0 1.2")

    track = parser.add_argument_group("video tracking")
    track.add_argument(
        "--track-iou-threshold", type=float, help="least IoU to continue a track (default 0.3)"
    )
    add_deprecated_alias(track, "--track-iou", "--track-iou-threshold", "track_iou_threshold", type=float)
    track.add_argument("--track-max-age", type=int, help="frames a track may be unseen (default 5)")

    cluster = parser.add_argument_group("Ray cluster (--engine ray, see docs/prediction.md)")
    cluster.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: model actors on a Ray cluster, one row per image in --out",
    )
    cluster.add_argument(
        "--address", help="auto, host:port or ray://host:10001 (default: a local Ray instance)"
    )
    cluster.add_argument("--actors", type=int, default=1, help="model replicas (default 1)")
    cluster.add_argument(
        "--cpus-per-actor", type=int, default=1, help="CPUs and torch threads each (default 1)"
    )
    cluster.add_argument(
        "--output-format", choices=("parquet", "jsonl"), default="parquet", help="rows as (default parquet)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.inference.command import run_predict
    from instaseg.inference.postprocess import PostprocessOptions
    from instaseg.inference.runner import OutputOptions
    from instaseg.inference.tiling import TilingOptions
    from instaseg.inference.tracking import TrackerOptions
    from instaseg.inference.tta import TTAOptions

    tta = None
    if args.tta_flip or args.tta_scales:
        tta = TTAOptions(flip=args.tta_flip, scales=tuple(args.tta_scales or (1.0,)))
    postprocess = PostprocessOptions(
        class_agnostic=args.class_agnostic,
        fill_holes=args.fill_holes,
        largest_component_only=args.largest_component,
        non_overlapping=args.non_overlapping,
        **given(
            score_threshold=args.score_threshold,
            mask_threshold=args.mask_threshold,
            nms=args.nms,
            nms_iou_threshold=args.nms_iou_threshold,
            max_detections=args.max_detections,
            min_mask_area=args.min_mask_area,
            opening_radius=args.opening_radius,
        ),
    )
    tiling = TilingOptions(
        **given(tile_size=args.tile_size, overlap=args.tile_overlap, min_image_side=args.tile_above)
    )
    if args.engine == "ray":
        return _run_on_ray(args, postprocess, None if args.no_tiling else tiling, tta)
    summary = run_predict(
        args.inputs,
        args.out,
        args.model,
        device=args.device,
        postprocess=postprocess,
        tiling=None if args.no_tiling else tiling,
        tta=tta,
        outputs=OutputOptions(
            overlay=args.overlay,
            overlay_labels=args.labels,
            label_maps=args.label_maps,
            polygons=args.polygons,
            semantic=args.semantic,
            panoptic=args.panoptic,
        ),
        coco_gt=args.coco_gt,
        batch_size=args.batch_size,
        video=args.video,
        tracker=TrackerOptions(**given(iou_threshold=args.track_iou_threshold, max_age=args.track_max_age)),
        progress=False if args.no_progress else None,
        backend=args.backend,
        refine_with=args.refine_with,
        refine_mode=args.refine_mode,
    )
    print(summary.format())
    return 1 if summary.failures else 0


def _run_on_ray(args: argparse.Namespace, postprocess: object, tiling: object, tta: object) -> int:
    """--engine ray: the same model and options on Ray actors (`instaseg.inference.ray_predict`)."""
    from instaseg.inference.ray_predict import RayOptions, predict_with_ray

    local_only = {"--overlay": args.overlay, "--label-maps": args.label_maps, "--polygons": args.polygons}
    local_only.update({"--semantic": args.semantic, "--panoptic": args.panoptic})
    local_only.update({"--coco-gt": args.coco_gt, "--video": args.video, "--refine-with": args.refine_with})
    if any(local_only.values()):
        used = ", ".join(flag for flag, value in local_only.items() if value)
        raise ValueError(f"--engine ray writes result rows only: {used} need the local engine")
    summary = predict_with_ray(
        args.inputs,
        args.out,
        args.model,
        ray=RayOptions(args.address, args.actors, args.cpus_per_actor),
        device=args.device,
        backend=args.backend,
        postprocess=postprocess,
        tiling=tiling,
        tta=tta,
        batch_size=args.batch_size,
        output_format=args.output_format,
    )
    print(summary.format())
    return 1 if summary.errors else 0
