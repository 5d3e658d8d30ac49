"""Panoptic FPN's semantic head: FPN levels -> per-pixel stuff logits at stride 4, and the stuff segments.

Each of P2..P5 (strides 4, 8, 16, 32) goes through 3x3 conv + group norm + ReLU blocks, each block but the
first-level one followed by a 2x bilinear upsampling, until it reaches stride 4; the four maps are summed
and a 1x1 conv gives `1 + S` logits: class 0 is "a thing or nothing" (every pixel an instance covers, as in
Kirillov et al. 2019), classes 1..S the stuff classes. Training: cross-entropy against the stride-1 target,
pixels without any annotation ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.fpn import FPN_LEVEL_NAMES, FPN_LEVEL_STRIDES

IGNORE = 255  # semantic target value of pixels that no annotation covers
COMMON_STRIDE = 4


def _block(in_channels: int, out_channels: int, upsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(32 if out_channels % 32 == 0 else 1, out_channels),
        nn.ReLU(inplace=True),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticFPNHead(nn.Module):
    """`forward(features) -> (B, 1 + num_stuff, H / 4, W / 4)` logits from the FPN outputs '0'..'3'."""

    def __init__(self, in_channels: int, num_stuff: int, channels: int = 128) -> None:
        super().__init__()
        if num_stuff < 1:
            raise ValueError(f"a semantic head needs at least one stuff class, got {num_stuff}")
        self.num_stuff = num_stuff
        self.scale_heads = nn.ModuleList()
        for stride in FPN_LEVEL_STRIDES[:4]:
            steps = max(1, int(stride // COMMON_STRIDE).bit_length() - 1)
            blocks = [
                _block(in_channels if step == 0 else channels, channels, stride > COMMON_STRIDE)
                for step in range(steps)
            ]
            self.scale_heads.append(nn.Sequential(*blocks))
        self.predictor = nn.Conv2d(channels, 1 + num_stuff, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        summed = None
        for name, head in zip(FPN_LEVEL_NAMES[:4], self.scale_heads, strict=True):
            level = head(features[name])
            if summed is not None and level.shape[-2:] != summed.shape[-2:]:
                level = F.interpolate(level, size=summed.shape[-2:], mode="bilinear", align_corners=False)
            summed = level if summed is None else summed + level
        return self.predictor(summed)


def semantic_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of stride-4 `logits (B, 1 + S, h, w)` against `targets (B, H, W)` long (values 0..S, or
    `IGNORE`), logits upsampled to the target size; 0 when every pixel is ignored."""
    upsampled = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    if bool((targets == IGNORE).all()):
        return upsampled.sum() * 0.0
    return F.cross_entropy(upsampled, targets, ignore_index=IGNORE)


def semantic_targets(
    masks: list[Tensor | None], labels: list[Tensor], num_things: int, padded_size: tuple[int, int]
) -> Tensor:
    """`(B, H_pad, W_pad)` long targets from resized ground truth: per image, `masks (N, h, w)` and model
    `labels (N,)` where 1..num_things are things (target 0) and num_things + s the stuff class s (target s);
    pixels no mask covers are `IGNORE`. Later annotations win where masks overlap."""
    targets = torch.full((len(labels), *padded_size), IGNORE, dtype=torch.int64, device=labels[0].device)
    for index, (image_masks, image_labels) in enumerate(zip(masks, labels, strict=True)):
        if image_masks is None or image_masks.shape[0] == 0:
            continue
        height, width = image_masks.shape[-2:]
        values = torch.where(image_labels > num_things, image_labels - num_things, 0)
        region = targets[index, :height, :width]
        for mask, value in zip(image_masks.bool(), values, strict=True):
            region[mask] = value
    return targets
