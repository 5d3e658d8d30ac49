"""`instaseg export`: write a model's inference graph to ONNX with its metadata, optionally also int8."""

from __future__ import annotations

import argparse
from pathlib import Path

# The export package's defaults and choices, restated so that --help needs no import of torch or onnx
# (tests/cli/test_cli_help.py checks that they agree with instaseg.export).
DEFAULT_OPSET = 18
QUANTIZATION_MODES = ("dynamic", "static")
DEFAULT_CALIBRATION_IMAGES = 32
EXPORT_FORMATS = ("onnx", "model-file-fp16")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (for ONNX Runtime), optionally int8",
        description=__doc__ + " See docs/deployment.md.",
    )
    parser.add_argument(
        "--model",
        help="an instaseg checkpoint, a torchvision-layout state dict, a model name (default: the bundled "
        "nuclei model), or a SAM / MobileSAM checkpoint (two graphs: OUT with .encoder and .decoder before "
        "the suffix)",
    )
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="output format (default onnx); model-file-fp16: the instaseg model file with float16 weights, "
        "half the size (loads and runs as float32)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output file, e.g. model.onnx")
    parser.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="any image size (default); --no-dynamic fixes the graph to one resized size (--input-size)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resized image size of a --no-dynamic graph",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--no-fold-bn", action="store_true", help="keep frozen batch norm as separate ops (default: folded)"
    )
    parser.add_argument(
        "--int8",
        choices=QUANTIZATION_MODES,
        help="also write an int8 copy, OUT with '.int8' before the suffix (static needs --calibration)",
    )
    parser.add_argument("--calibration", type=Path, help="folder of images for static int8 calibration")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"calibration images, spread over the folder (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "model-file-fp16":
        return _write_half_precision(args)
    from instaseg.export.onnx_export import export_model
    from instaseg.export.quantize import calibration_images, quantize_onnx
    from instaseg.export.sam_onnx import SamExport

    if args.int8 == "static" and args.calibration is None:
        raise ValueError("--int8 static needs --calibration FOLDER (images like the ones the model will see)")
    calibration = (
        calibration_images(args.calibration, args.calibration_images) if args.int8 == "static" else None
    )
    metadata = export_model(
        args.model,
        args.out,
        opset=args.opset,
        dynamic=args.dynamic,
        input_size=tuple(args.input_size) if args.input_size else None,
        fold_batchnorm=not args.no_fold_bn,
    )
    if isinstance(metadata, SamExport):
        print(f"wrote {metadata.encoder} and {metadata.decoder} (SAM {metadata.arch}, opset {args.opset})")
        if args.int8:
            raise ValueError("--int8: SAM graphs are exported in float32 only (written above)")
        return 0
    size = "dynamic image size" if metadata.input_size is None else f"{metadata.input_size} only"
    print(f"wrote {args.out} (opset {metadata.opset}, {size}, {metadata.num_classes - 1} classes)")
    if args.int8:
        quantized = args.out.with_suffix(f".int8{args.out.suffix}")
        quantize_onnx(args.out, quantized, args.int8, calibration)
        print(f"wrote {quantized} (int8 {args.int8})")
    return 0


def _write_half_precision(args: argparse.Namespace) -> int:
    from instaseg.models.default_model import bundled_model_source
    from instaseg.models.model_file import ModelFile

    if args.int8:
        raise ValueError("--int8 applies to ONNX exports, not to --format model-file-fp16")
    source = bundled_model_source(args.model)
    ModelFile.read(source).half_precision().save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, float16 weights of {source})")
    return 0
