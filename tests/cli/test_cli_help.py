"""`instaseg --help` and every `instaseg <command> --help` answer without importing torch and friends (the
command modules import the library inside their functions), and what the parsers restate of the library
(choices, defaults quoted in help texts) agrees with it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from instaseg.cli import convert, export, predict, serve
from instaseg.cli.main import COMMANDS, build_parser

# Modules whose import costs seconds (torch, SciPy, OpenCV, the service), and the packages that pull them in.
HEAVY = (
    "torch",
    "numpy",
    "scipy",
    "cv2",
    "fastapi",
    "instaseg.models",
    "instaseg.inference",
    "instaseg.serving",
    "instaseg.export",
    "instaseg.engine",
    "instaseg.evaluation",
    "instaseg.data",
)

# Builds the parser and formats every help text, then prints which of the names on stdin were imported.
PROBE = """
import contextlib, io, sys
from instaseg.cli.main import build_parser
parser = build_parser()
for argv in [["--help"]] + [[name, "--help"] for name in sys.argv[1:]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
print(" ".join(name for name in sys.stdin.read().split() if name in sys.modules))
"""


def subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_help_imports_no_heavy_module() -> None:
    names = subcommands()
    assert {"predict", "serve", "export", "eval", "train", "models"} <= set(names)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *names],
        input=" ".join(HEAVY),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [], f"--help imported {result.stdout.strip()}"


def test_every_command_module_is_listed_once() -> None:
    assert len(COMMANDS) == len(set(COMMANDS)) == len(subcommands())


def test_restated_choices_and_defaults_are_the_library_ones() -> None:
    from instaseg.data.convert import SOURCE_FORMATS
    from instaseg.export.onnx_export import BACKENDS, DEFAULT_OPSET
    from instaseg.export.quantize import DEFAULT_CALIBRATION_IMAGES, QUANTIZATION_MODES
    from instaseg.inference.postprocess import NMS_KINDS
    from instaseg.models.sam.refined_model import REFINE_MODES

    assert convert.SOURCE_FORMATS == SOURCE_FORMATS
    assert serve.BACKENDS == BACKENDS
    assert predict.NMS_KINDS == NMS_KINDS
    assert predict.REFINE_MODES == REFINE_MODES
    assert export.DEFAULT_OPSET == DEFAULT_OPSET
    assert export.QUANTIZATION_MODES == QUANTIZATION_MODES
    assert export.DEFAULT_CALIBRATION_IMAGES == DEFAULT_CALIBRATION_IMAGES


@pytest.mark.parametrize(
    ("flag", "options", "field"),
    [
        ("--nms", "postprocess", "nms"),
        ("--nms-iou-threshold", "postprocess", "nms_iou_threshold"),
        ("--min-mask-area", "postprocess", "min_mask_area"),
        ("--opening-radius", "postprocess", "opening_radius"),
        ("--tile-size", "tiling", "tile_size"),
        ("--tile-overlap", "tiling", "overlap"),
        ("--tile-above", "tiling", "min_image_side"),
        ("--track-iou-threshold", "tracker", "iou_threshold"),
        ("--track-max-age", "tracker", "max_age"),
    ],
)
def test_predict_help_quotes_the_library_defaults(flag: str, options: str, field: str) -> None:
    """predict passes on only the options given, so the library's defaults apply; its help must quote them."""
    from instaseg.inference.postprocess import PostprocessOptions
    from instaseg.inference.tiling import TilingOptions
    from instaseg.inference.tracking import TrackerOptions

    classes = {"postprocess": PostprocessOptions, "tiling": TilingOptions, "tracker": TrackerOptions}
    default = getattr(classes[options](), field)
    action = next(a for a in subparser("predict")._actions if flag in a.option_strings)
    assert action.default is None
    quoted = re.search(r"\(default ([\w.-]+)", action.help).group(1)
    assert quoted == (default if isinstance(default, str) else f"{default:g}")
