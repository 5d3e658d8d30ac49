"""`instaseg models register|list|promote|rollback|set-canary`, and registration of a real checkpoint with
drift reference statistics computed from real nuclei images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.cli import models
from instaseg.models import build, save_weights
from instaseg.serving.drift import ReferenceStats
from instaseg.serving.registry import ModelRegistry, RegistryError

# A tiny Mask R-CNN (64-pixel inputs, 20 proposals): registration runs it on every reference image.
TINY = {
    "num_classes": 2,
    "min_size": 64,
    "max_size": 64,
    "box_detections_per_img": 2,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 20,
    "fpn_channels": 64,
}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="instaseg")
    models.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", **TINY)
    path = tmp_path_factory.mktemp("models_cli") / "trained.pt"
    # The layout training writes: config, weights, and the dataset categories behind classes 1..K.
    model.categories = [{"id": 7, "name": "nucleus"}]
    save_weights(model, path)
    return path


def test_register_with_reference_from_real_images(
    tmp_path: Path, checkpoint: Path, dsb_root: Path, dsb_image_ids: list[str], capsys: pytest.CaptureFixture
) -> None:
    registry = tmp_path / "registry"
    images = [str(dsb_root / i / "images" / f"{i}.png") for i in dsb_image_ids]
    assert (
        cli(
            "register",
            "nuclei",
            str(checkpoint),
            "--registry",
            str(registry),
            "--reference-images",
            *images,
            "--reference-limit",
            "2",
            "--description",
            "dsb baseline",
        )
        == 0
    )
    assert (
        capsys.readouterr().out.strip() == "registered nuclei v1 (categories: nucleus; drift reference: yes)"
    )
    entry = ModelRegistry(registry).get("nuclei", 1)
    assert entry.classes == [{"id": 7, "name": "nucleus"}]  # from the checkpoint's categories
    assert entry.model_info["backbone"] == "resnet18" and entry.model_info["min_size"] == 64
    reference = ReferenceStats.from_dict(entry.reference)
    assert reference.images == 2  # --reference-limit: the first 2 of the 4 images given
    assert reference.histograms["size"].sum() == 2
    # The model's scores on those images are the score reference (2 detections per image at most).
    assert 0 < reference.histograms["score"].sum() <= 4
    assert entry.description == "dsb baseline"


def test_full_cycle(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    registry = str(tmp_path / "registry")
    for _ in range(2):
        argv = ("register", "nuclei", str(checkpoint), "--registry", registry, "--category-names", "cell")
        assert cli(*argv) == 0
    assert "registered nuclei v2 (categories: cell; drift reference: no)" in capsys.readouterr().out
    assert ModelRegistry(registry).get("nuclei", 2).classes == [{"id": 1, "name": "cell"}]

    assert cli("set-canary", "nuclei", "2", "--share", "0.2", "--registry", registry) == 0
    assert capsys.readouterr().out.strip() == "nuclei: production v1, canary v2 (20%)"
    assert cli("list", "--registry", registry) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["nuclei", "1", "production"]
    assert table[2].split()[:4] == ["nuclei", "2", "canary", "20%"]

    assert cli("promote", "nuclei", "--registry", registry) == 0
    assert capsys.readouterr().out.strip() == "nuclei: production v2, no canary"
    assert cli("rollback", "nuclei", "--registry", registry) == 0
    assert capsys.readouterr().out.strip() == "nuclei: production v1, no canary"
    assert cli("list", "--json", "--registry", registry) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"name": "nuclei", "production": 1, "canary": None, "canary_share": 0.0, "history": [1]}
    ]


def test_errors(tmp_path: Path, checkpoint: Path) -> None:
    registry = str(tmp_path / "registry")
    with pytest.raises(RegistryError, match="no model registry at"):
        cli("list", "--registry", registry)
    with pytest.raises(RegistryError, match="2 class names given, but .* has 1 classes"):
        cli("register", "nuclei", str(checkpoint), "--registry", registry, "--category-names", "a", "b")
    assert cli("register", "nuclei", str(checkpoint), "--registry", registry) == 0
    with pytest.raises(RegistryError, match="no canary and no earlier production version"):
        cli("rollback", "nuclei", "--registry", registry)
    with pytest.raises(RegistryError, match="has no version 5"):
        cli("promote", "nuclei", "--version", "5", "--registry", registry)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        cli("register", "nuclei", str(tmp_path / "missing.pt"), "--registry", registry)
    not_a_checkpoint = tmp_path / "weights.pt"
    not_a_checkpoint.write_bytes(np.arange(10).tobytes())
    with pytest.raises(ValueError, match="weights.pt"):
        cli("register", "nuclei", str(not_a_checkpoint), "--registry", registry)
    with pytest.raises(ValueError, match="no reference images found"):
        cli(
            "register",
            "nuclei",
            str(checkpoint),
            "--registry",
            registry,
            "--reference-images",
            str(tmp_path / "none" / "*.png"),
        )
    assert [v.version for v in ModelRegistry(registry).versions("nuclei")] == [1]  # nothing half-registered


def test_old_classes_flag_still_names_the_categories(tmp_path: Path, checkpoint: Path, capsys) -> None:
    registry = str(tmp_path / "registry")
    assert cli("register", "nuclei", str(checkpoint), "--registry", registry, "--classes", "cell") == 0
    assert "--classes is deprecated" in capsys.readouterr().err
    assert ModelRegistry(registry).get("nuclei", 1).classes == [{"id": 1, "name": "cell"}]
