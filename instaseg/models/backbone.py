"""Backbone = body (ResNet or EfficientNet-Lite) + FPN: normalised `(B, 3, H, W)` images -> five maps of
`fpn.out_channels`, strides 4..64."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from instaseg.models.efficientnet_lite import EfficientNetLite
from instaseg.models.fpn import FeaturePyramidNetwork
from instaseg.models.resnet import ResNet


class BackboneWithFPN(nn.Module):
    """`forward(images (B,3,H,W)) -> OrderedDict('0'..'3', 'pool')` of `(B, C, H/s, W/s)`, s = 4..64.

    `trainable_layers` (0..5) keeps that many of the body's five stages trainable, counting from the top (C5)
    down to the stem, as torchvision's `trainable_backbone_layers` (its default for fine-tuning is 3: stem
    and C2 stage frozen). Frozen stages get `requires_grad=False` and stay in eval mode even when the model
    trains, so trainable batch norm in a frozen stage keeps its statistics.
    """

    def __init__(
        self, body: ResNet | EfficientNetLite, fpn: FeaturePyramidNetwork, trainable_layers: int = 3
    ) -> None:
        super().__init__()
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be between 0 and 5, got {trainable_layers}")
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        stages = body.stages()
        self.frozen_modules = [module for stage in stages[: 5 - trainable_layers] for module in stage]
        for module in self.frozen_modules:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> BackboneWithFPN:
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))
