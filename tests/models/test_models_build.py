"""`build` by name and config file; weights loading, saving (model files) and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import instaseg
from instaseg.models import (
    MODEL_CONFIGS,
    ConfigError,
    MaskRCNN,
    MaskRCNNConfig,
    ModelFile,
    OperatingPoint,
    WeightsError,
    build,
    load_model,
    load_weights,
    save_weights,
)
from instaseg.models.norm import FrozenBatchNorm2d

SMALL = {"num_classes": 3, "min_size": 64, "max_size": 96}


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_build_each_named_model(name: str) -> None:
    model = build(name)
    assert isinstance(model, MaskRCNN) and not model.training
    assert model.config == MODEL_CONFIGS[name]
    if model.config.backbone == "resnet":
        assert model.backbone.body.depth == model.config.backbone_depth
    assert model.num_classes == 91
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 91 * 4
    assert model.rpn.head.cls_logits.out_channels == 3


def test_resnet50_preset_uses_the_eps_of_torchvisions_coco_weights() -> None:
    model = build("maskrcnn_resnet50_fpn")
    eps = {module.eps for module in model.modules() if isinstance(module, FrozenBatchNorm2d)}
    assert eps == {0.0}
    assert build("maskrcnn_resnet18_fpn", norm="frozen_bn", frozen_bn_eps=1e-3).backbone.body.bn1.eps == 1e-3


def test_build_from_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    MaskRCNNConfig(backbone_depth=18, **SMALL).save(path)
    model = build(path, box_detections_per_img=7)
    assert model.config.backbone_depth == 18 and model.num_classes == 3
    assert model.roi_heads.detections_per_img == 7
    assert model.transform.min_size == (64,) and model.transform.max_size == 96


def test_saved_checkpoint_restores_architecture_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", box_score_thresh=0.0, **SMALL)
    path = tmp_path / "model.pt"
    model.categories = [{"id": 4, "name": "cell"}, {"id": 9, "name": "debris"}]
    model.operating_point = OperatingPoint(0.6, 0.55, "a sweep on training images")
    save_weights(model, path, provenance={"data": "synthetic"})
    restored = load_model(path)
    assert restored.config == model.config
    assert restored.categories == model.categories and restored.operating_point == model.operating_point
    assert ModelFile.read(path).provenance == {"instaseg_version": instaseg.__version__, "data": "synthetic"}
    with pytest.raises(ConfigError, match=r"model\.pt is a model file, not an architecture: load it with"):
        build(path)
    image = torch.rand(3, 48, 64)
    with torch.no_grad():
        (expected,), (actual,) = model([image]), restored([image])
    assert len(actual) == len(expected) > 0
    torch.testing.assert_close(actual.boxes, expected.boxes)
    torch.testing.assert_close(actual.scores, expected.scores)


def test_torchvision_checkpoints_with_older_key_names_load() -> None:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", **SMALL)
    renames = [("rpn.head.conv.0.0.", "rpn.head.conv.")]
    renames += [(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.") for i in range(4)]
    renames += [
        (f"backbone.fpn.{kind}.{i}.0.", f"backbone.fpn.{kind}.{i}.")
        for kind in ("inner_blocks", "layer_blocks")
        for i in range(4)
    ]
    old_layout = {}
    for key, value in model.state_dict().items():
        for new, old in renames:
            key = key.replace(new, old)
        old_layout[key] = value
    assert "roi_heads.mask_head.mask_fcn1.weight" in old_layout and "rpn.head.conv.weight" in old_layout
    fresh = build("maskrcnn_resnet18_fpn", **SMALL)
    load_weights(fresh, old_layout)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    other = build("maskrcnn_resnet18_fpn", num_classes=5)
    path = tmp_path / "five_classes.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(
        WeightsError, match="(?s)five_classes.pth: weights do not fit the model.*size mismatch"
    ):
        build("maskrcnn_resnet18_fpn", weights=path, **SMALL)
    partial = dict(other.state_dict())
    partial.pop("rpn.head.cls_logits.bias")
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 missing keys \['rpn.head.cls_logits.bias'\], 1 unexpected"):
        build("maskrcnn_resnet18_fpn", weights=partial, num_classes=5)


def test_unreadable_or_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'maskrcnn_resnet19_fpn'"):
        build("maskrcnn_resnet19_fpn")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build("maskrcnn_resnet18_fpn", weights=tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt.pt: cannot read weights"):
        build("maskrcnn_resnet18_fpn", weights=corrupt)
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="plain.pt: neither an instaseg model file"):
        load_model(plain)
    with pytest.raises(WeightsError, match="plain.pt: not an instaseg model file .* carries no architecture"):
        ModelFile.read(plain)
    with pytest.raises(ConfigError, match="unknown key 'box_thresh'"):
        build("maskrcnn_resnet18_fpn", box_thresh=0.5)
