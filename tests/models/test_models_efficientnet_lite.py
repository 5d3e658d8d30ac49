"""EfficientNet-Lite0 body: shapes, packaged ImageNet weights, freezing, and the model preset built on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instaseg.models import WeightsError, build
from instaseg.models.build import load_backbone_weights, read_weights
from instaseg.models.efficientnet_lite import EfficientNetLite, imagenet_weights_path, load_imagenet_weights
from instaseg.models.norm import FrozenBatchNorm2d, norm_layer


def test_features_have_strides_4_to_32_and_the_documented_channels() -> None:
    body = EfficientNetLite(norm_layer("bn")).eval()
    with torch.no_grad():
        features = body(torch.rand(1, 3, 96, 128))
    assert [tuple(f.shape[1:]) for f in features] == [
        (24, 24, 32),
        (40, 12, 16),
        (112, 6, 8),
        (320, 3, 4),
    ]
    assert body.out_channels == [24, 40, 112, 320]


def test_packaged_imagenet_weights_load_into_every_body_tensor() -> None:
    path = imagenet_weights_path()
    assert path.is_file(), path
    body = EfficientNetLite(norm_layer("frozen_bn", 1e-3))
    before = {key: value.clone() for key, value in body.state_dict().items()}
    reference = read_weights(path)
    load_imagenet_weights(body, reference, str(path))
    for key, value in body.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
        assert not torch.equal(value, before[key]) or key.endswith(("running_mean", "bias")), key


def test_pretrained_features_respond_to_image_content() -> None:
    """ImageNet features separate a flat image from a textured one far more than random weights do."""
    flat = torch.full((1, 3, 128, 128), 0.0)
    textured = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pretrained = EfficientNetLite(norm_layer("frozen_bn", 1e-3))
    load_imagenet_weights(pretrained, read_weights(imagenet_weights_path()), "imagenet")
    with torch.no_grad():
        c5_flat, c5_textured = pretrained(flat)[-1], pretrained(textured)[-1]
    assert torch.isfinite(c5_textured).all()
    assert (c5_textured - c5_flat).abs().mean() > 0.1


def test_a_foreign_state_dict_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="resnet.pth: not EfficientNet-Lite0 weights"):
        load_backbone_weights(build("maskrcnn_efficientnet_lite0_fpn", num_classes=2), path)


def test_backbone_weights_only_for_efficientnet_models() -> None:
    model = build("maskrcnn_resnet18_fpn", num_classes=2)
    with pytest.raises(WeightsError, match="only EfficientNet-Lite0 backbones"):
        load_backbone_weights(model, "imagenet")
    lite = build("maskrcnn_efficientnet_lite0_fpn", num_classes=2)
    load_backbone_weights(lite, "imagenet")
    stem = torch.load(imagenet_weights_path(), weights_only=True)["_conv_stem.weight"]
    torch.testing.assert_close(lite.backbone.body._conv_stem.weight, stem)


@pytest.mark.parametrize(("trainable_layers", "frozen_groups"), [(0, 5), (2, 3), (5, 0)])
def test_trainable_layers_freeze_from_the_stem_up(trainable_layers: int, frozen_groups: int) -> None:
    model = build(
        "maskrcnn_efficientnet_lite0_fpn", num_classes=2, norm="bn", trainable_layers=trainable_layers
    )
    for index, group in enumerate(model.backbone.body.stages()):
        for module in group:
            assert {p.requires_grad for p in module.parameters()} == {index >= frozen_groups}
    model.train()
    assert model.backbone.body._blocks[-1].training == (frozen_groups < 5)


def test_preset_is_small_enough_to_ship_and_runs_end_to_end() -> None:
    model = build("maskrcnn_efficientnet_lite0_fpn", num_classes=2, min_size=128, max_size=160)
    assert isinstance(model.backbone.body._bn0, FrozenBatchNorm2d)
    size_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    assert size_mb < 30, size_mb
    with torch.no_grad():
        (result,) = model([torch.rand(3, 120, 150)])
    assert result.image_size == (120, 150)
    assert result.masks is not None and len(result.masks) == len(result)
