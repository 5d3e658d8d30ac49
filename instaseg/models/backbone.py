"""Backbone = ResNet body + FPN: normalised `(B, 3, H, W)` images -> five 256-channel maps, strides 4..64."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from instaseg.models.fpn import FeaturePyramidNetwork
from instaseg.models.resnet import ResNet

# Trainable parts counted from the top, as torchvision's `trainable_backbone_layers`.
_STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")


class ResNetFPN(nn.Module):
    """`forward(images (B,3,H,W)) -> OrderedDict('0'..'3', 'pool')` of `(B, 256, H/s, W/s)`, s = 4..64.

    `trainable_layers` (0..5) keeps that many stages trainable, counting from layer4 down to the stem
    (torchvision's default for detection fine-tuning is 3: conv1 and layer1 frozen). Frozen stages get
    `requires_grad=False` and stay in eval mode even when the model trains, so trainable batch norm in a
    frozen stage keeps its statistics.
    """

    def __init__(self, body: ResNet, fpn: FeaturePyramidNetwork, trainable_layers: int = 3) -> None:
        super().__init__()
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be between 0 and 5, got {trainable_layers}")
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        trainable = list(_STAGES_TOP_DOWN[:trainable_layers])
        if trainable_layers == 5:
            trainable.append("bn1")
        self.frozen_modules = [name for name, _ in body.named_children() if name not in trainable]
        for name in self.frozen_modules:
            getattr(body, name).requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetFPN:
        super().train(mode)
        for name in self.frozen_modules:
            getattr(self.body, name).eval()
        return self

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))
