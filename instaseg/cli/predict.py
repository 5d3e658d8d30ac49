"""`instaseg predict`: segment images (files, folders, globs) or a video, and write results.json and more."""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.inference.command import run_predict
from instaseg.export.onnx_export import BACKENDS
from instaseg.inference.postprocess import NMS_KINDS, PostprocessOptions
from instaseg.inference.runner import OutputOptions
from instaseg.inference.tiling import TilingOptions
from instaseg.inference.tracking import TrackerOptions
from instaseg.inference.tta import TTAOptions

_POST = PostprocessOptions()
_TILE = TilingOptions()
_TRACK = TrackerOptions()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images or a video with a model",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs")
    parser.add_argument(
        "--model",
        help="an instaseg checkpoint, a torchvision-layout Mask R-CNN state dict (COCO class names), or a "
        "model name (e.g. maskrcnn_resnet50_fpn, random weights); default: the bundled nuclei model",
    )
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="torch, or onnx (ONNX Runtime, CPU; a checkpoint is exported once to a cache); default: onnx "
        "for an .onnx --model, else torch",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument(
        "--coco-gt", type=Path, help="COCO JSON whose image ids to use (matched by file name)"
    )
    parser.add_argument(
        "--overlay", action="store_true", help="write overlay PNGs (an overlay video for --video)"
    )
    parser.add_argument("--label-maps", action="store_true", help="write instance label-map PNGs")
    parser.add_argument("--polygons", action="store_true", help="write mask outlines as GeoJSON")
    parser.add_argument("--video", action="store_true", help="INPUT is one video file or folder of frames")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    post = parser.add_argument_group("post-processing")
    post.add_argument(
        "--score-threshold", type=float, default=_POST.score_threshold, help="drop lower scores"
    )
    post.add_argument(
        "--mask-threshold", type=float, default=_POST.mask_threshold, help="mask probability cut"
    )
    post.add_argument("--nms", choices=NMS_KINDS, default=_POST.nms, help="extra NMS after the model's")
    post.add_argument(
        "--nms-iou", type=float, default=_POST.nms_iou_threshold, help="IoU for hard / linear NMS"
    )
    post.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    post.add_argument("--max-detections", type=int, default=_POST.max_detections, help="best N per image")
    post.add_argument("--min-mask-area", type=int, default=_POST.min_mask_area, help="pixels")
    post.add_argument("--fill-holes", action="store_true", help="fill holes inside masks")
    post.add_argument("--opening-radius", type=int, default=_POST.opening_radius, help="pixels; 0 = off")
    post.add_argument("--largest-component", action="store_true", help="keep each mask's largest part")
    post.add_argument("--non-overlapping", action="store_true", help="each pixel to the best instance only")

    large = parser.add_argument_group("tiling and test-time augmentation")
    large.add_argument("--no-tiling", action="store_true", help="never tile, whatever the image size")
    large.add_argument("--tile-size", type=int, default=_TILE.tile_size, help="tile side, pixels")
    large.add_argument("--tile-overlap", type=int, default=_TILE.overlap, help="pixels shared by tiles")
    large.add_argument(
        "--tile-above", type=int, default=_TILE.min_image_side, help="tile images wider or taller"
    )
    large.add_argument("--tta-flip", action="store_true", help="add horizontally flipped views")
    large.add_argument("--tta-scales", type=float, nargs="+", help="input scales, e.g. 0.8 1.0 1.2")

    track = parser.add_argument_group("video tracking")
    track.add_argument("--track-iou", type=float, default=_TRACK.iou_threshold, help="least IoU to continue")
    track.add_argument(
        "--track-max-age", type=int, default=_TRACK.max_age, help="frames a track may be unseen"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tta = None
    if args.tta_flip or args.tta_scales:
        tta = TTAOptions(flip=args.tta_flip, scales=tuple(args.tta_scales or (1.0,)))
    summary = run_predict(
        args.inputs,
        args.out,
        args.model,
        device=args.device,
        postprocess=PostprocessOptions(
            score_threshold=args.score_threshold,
            mask_threshold=args.mask_threshold,
            nms=args.nms,
            nms_iou_threshold=args.nms_iou,
            class_agnostic=args.class_agnostic,
            max_detections=args.max_detections,
            min_mask_area=args.min_mask_area,
            fill_holes=args.fill_holes,
            opening_radius=args.opening_radius,
            largest_component_only=args.largest_component,
            non_overlapping=args.non_overlapping,
        ),
        tiling=None
        if args.no_tiling
        else TilingOptions(
            tile_size=args.tile_size, overlap=args.tile_overlap, min_image_side=args.tile_above
        ),
        tta=tta,
        outputs=OutputOptions(overlay=args.overlay, label_maps=args.label_maps, polygons=args.polygons),
        coco_gt=args.coco_gt,
        batch_size=args.batch_size,
        video=args.video,
        tracker=TrackerOptions(iou_threshold=args.track_iou, max_age=args.track_max_age),
        progress=False if args.no_progress else None,
        backend=args.backend,
    )
    print(summary.format())
    return 1 if summary.failures else 0
