"""PAFPN neck: EfficientNet-Lite0's C2..C5 -> P2, P3, P4 with top-down and bottom-up paths (PANet).

Every level is `channels` wide (64 by default) and every fusion is an add followed by a depthwise-separable
conv, so the neck costs a fraction of the body even at stride 4. C5 feeds the top-down path only: the head
runs on strides 4, 8 and 16 (objects of up to ~250 px).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.condinst.layers import ConvBN, SeparableConv


class PAFPN(nn.Module):
    """`forward([C2, C3, C4, C5]) -> [P2, P3, P4]`: `(B, channels, H / s, W / s)` for s = 4, 8, 16.

    Inputs are `(B, in_channels[i], H / 2^(i+2), W / 2^(i+2))` with H, W multiples of 32 (exact 2x
    up- and down-sampling between levels)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBN(c, channels, 1) for c in in_channels)
        self.top_down = nn.ModuleList(SeparableConv(channels, channels) for _ in in_channels[:-1])
        self.downsample = nn.ModuleList(
            ConvBN(channels, channels, 3, stride=2, groups=channels, activation=False) for _ in range(2)
        )
        self.bottom_up = nn.ModuleList(SeparableConv(channels, channels) for _ in range(2))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [layer(feature) for layer, feature in zip(self.lateral, features, strict=True)]
        top = laterals[-1]
        top_down = []
        for index in range(len(laterals) - 2, -1, -1):  # C4, C3, C2
            top = self.top_down[index](laterals[index] + F.interpolate(top, scale_factor=2.0, mode="nearest"))
            top_down.insert(0, top)
        outputs = [top_down[0]]
        for index in range(2):  # P3, P4 from the level below
            outputs.append(self.bottom_up[index](top_down[index + 1] + self.downsample[index](outputs[-1])))
        return outputs
