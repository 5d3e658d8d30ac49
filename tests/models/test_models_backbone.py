"""ResNet body, norm layers, FPN and the frozen / trainable split of the backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.fpn import FeaturePyramidNetwork
from instaseg.models.norm import FrozenBatchNorm2d, norm_layer
from instaseg.models.resnet import ResNet


def test_frozen_batch_norm_equals_batch_norm_in_eval_mode() -> None:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(8).eval()
    reference.weight.data.uniform_(0.5, 1.5)
    reference.bias.data.normal_()
    reference.running_mean.normal_()
    reference.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(8, eps=reference.eps)
    # a trainable layer's state dict (with num_batches_tracked) loads into the frozen one
    frozen.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(frozen(x), reference(x), atol=1e-5, rtol=1e-5)
    assert not list(frozen.parameters()), "a frozen layer has buffers only"


def test_frozen_batch_norm_eps_changes_the_result() -> None:
    x = torch.ones(1, 1, 1, 1)
    zero_eps, default_eps = FrozenBatchNorm2d(1, eps=0.0), FrozenBatchNorm2d(1)
    zero_eps.running_var.fill_(1e-4)
    default_eps.running_var.fill_(1e-4)
    assert zero_eps(x).item() == pytest.approx(100.0)
    assert default_eps(x).item() == pytest.approx(1 / (1.1e-4) ** 0.5)


def test_norm_layer_kinds() -> None:
    assert isinstance(norm_layer("frozen_bn", frozen_bn_eps=0.0)(64), FrozenBatchNorm2d)
    assert isinstance(norm_layer("bn")(64), nn.BatchNorm2d)
    group_norm = norm_layer("gn")(64)
    assert isinstance(group_norm, nn.GroupNorm) and group_norm.num_groups == 32
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        norm_layer("layer")


@pytest.mark.parametrize(
    ("depth", "channels", "parameters"),
    # parameter counts of torchvision's resnet18 / resnet50 without their 1000-class fc layer
    [(18, [64, 128, 256, 512], 11_176_512), (50, [256, 512, 1024, 2048], 23_508_032)],
)
def test_resnet_stage_channels_strides_and_size(depth: int, channels: list[int], parameters: int) -> None:
    body = ResNet(depth, nn.BatchNorm2d).eval()
    assert body.out_channels == channels
    assert sum(parameter.numel() for parameter in body.parameters()) == parameters
    with torch.no_grad():
        outputs = body(torch.rand(1, 3, 64, 96))
    assert [tuple(output.shape) for output in outputs] == [
        (1, channel, 64 // stride, 96 // stride)
        for channel, stride in zip(channels, (4, 8, 16, 32), strict=True)
    ]


def test_resnet_rejects_unknown_depth() -> None:
    with pytest.raises(ValueError, match="unsupported ResNet depth 42"):
        ResNet(42, nn.BatchNorm2d)


def test_fpn_levels_shapes_and_max_pooled_p6() -> None:
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([8, 16, 32, 64], out_channels=4)
    inputs = [torch.randn(2, channels, 32 // 2**i, 48 // 2**i) for i, channels in enumerate([8, 16, 32, 64])]
    outputs = fpn(inputs)
    assert list(outputs) == ["0", "1", "2", "3", "pool"]
    assert [tuple(level.shape) for level in outputs.values()] == [
        (2, 4, 32, 48),
        (2, 4, 16, 24),
        (2, 4, 8, 12),
        (2, 4, 4, 6),
        (2, 4, 2, 3),
    ]
    torch.testing.assert_close(outputs["pool"], outputs["3"][:, :, ::2, ::2])


def test_fpn_loads_torchvision_state_dicts_of_the_older_layout() -> None:
    fpn = FeaturePyramidNetwork([8, 16], out_channels=4)
    old_layout = {key.replace(".0.", "."): value + 1 for key, value in fpn.state_dict().items()}
    assert "inner_blocks.0.weight" in old_layout
    fpn.load_state_dict(old_layout, strict=True)
    torch.testing.assert_close(fpn.inner_blocks[0][0].weight, old_layout["inner_blocks.0.weight"])


@pytest.mark.parametrize(("trainable_layers", "frozen"), [(0, 5), (3, 2), (5, 0)])
def test_trainable_layers_freeze_the_stem_and_first_stages(trainable_layers: int, frozen: int) -> None:
    body = ResNet(18, norm_layer("bn"))
    backbone = BackboneWithFPN(body, FeaturePyramidNetwork(body.out_channels, 16), trainable_layers)
    stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
    for index, names in enumerate(stages):
        for name in names:
            requires_grad = {p.requires_grad for p in getattr(body, name).parameters()}
            assert requires_grad == {index >= frozen}, (name, trainable_layers)
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    backbone.train()
    # batch norm in a frozen stage keeps its running statistics while the rest trains
    assert body.layer4.training == (frozen < 5)
    assert body.layer1.training == (frozen <= 1)


def test_backbone_rejects_out_of_range_trainable_layers() -> None:
    body = ResNet(18, norm_layer("frozen_bn"))
    with pytest.raises(ValueError, match="trainable_layers must be between 0 and 5"):
        BackboneWithFPN(body, FeaturePyramidNetwork(body.out_channels, 8), trainable_layers=6)
