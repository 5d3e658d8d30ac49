"""`instaseg segment` (instaseg/cli/segment.py) end to end on a tiny SAM checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.cli import segment
from instaseg.models.sam import ViTConfig, sam_vit

TINY = ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=())


def run_segment(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    segment.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["segment", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("segment")
    torch.manual_seed(0)
    checkpoint = folder / "sam_tiny.pth"
    torch.save({"model": sam_vit(TINY).state_dict()}, checkpoint)
    image = folder / "cells.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    return checkpoint, image


def test_points_and_boxes_write_results_and_outputs(files: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, image = files
    code = run_segment(
        [
            str(image),
            "--model",
            str(checkpoint),
            "--points",
            "10,12",
            "30,20,0",
            "--boxes",
            "5,5,40,30",
            "20,10,60,45",
            "--single-mask",
            "--out",
            str(tmp_path),
            "--overlay",
            "--label-maps",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 2  # two boxes (sharing the point set), one mask each
    assert {r["category_id"] for r in results} == {1}
    assert results[0]["score"] >= results[1]["score"]
    assert results[0]["segmentation"]["size"] == [48, 64]
    assert (tmp_path / "overlays" / "cells.png").is_file()
    assert Image.open(tmp_path / "label_maps" / "cells.png").size == (64, 48)


@pytest.mark.slow
def test_everything_mode(files: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, image = files
    argv = [
        str(image),
        "--model",
        str(checkpoint),
        "--everything",
        "--points-per-side",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert run_segment([*argv, "--pred-iou-thresh", "0", "--stability-thresh", "0"]) == 0
    assert isinstance(json.loads((tmp_path / "results.json").read_text()), list)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--points", "1,2,3,4"], "--points: '1,2,3,4' has 4 numbers"),
        (["--boxes", "a,b,c,d"], "--boxes: 'a,b,c,d' is not a comma-separated list"),
        ([], "give --points and/or --boxes, or --everything"),
        (["--everything", "--points", "1,2"], "not both"),
        (["--points", "500,2"], r"points: \(500, 2\) lies outside the 64x48 image"),
    ],
)
def test_bad_arguments_are_named(
    files: tuple[Path, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    checkpoint, image = files
    with pytest.raises(ValueError, match=message):
        run_segment([str(image), "--model", str(checkpoint), "--out", str(tmp_path), *extra])
