"""Dense head: per point of P2..P4, class logits, box distances and the parameters of a dynamic mask head;
plus the mask branch, the stride-4 feature map those dynamic heads read.

Points are the cell centres `((i + 0.5) * stride, (j + 0.5) * stride)` in resized-image pixels; outputs are
flattened over levels in the order P2, P3, P4 and, within a level, row by row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from instaseg.models.condinst.layers import SeparableConv, SharedSeparableConv

# Initial foreground probability of every point (RetinaNet's prior): the classification loss starts small.
PRIOR_PROBABILITY = 0.01
# Box distances are exp(x) * stride; x is clamped so that no distance exceeds e^10 strides in bf16 training.
MAX_LOG_DISTANCE = 10.0


@dataclass
class HeadOutputs:
    """Per image b and point p (all levels, see the module docstring): `cls_logits (B, P, K)` for classes
    1..K, `distances (B, P, 4)` left, top, right, bottom in pixels (> 0), `kernels (B, P, D)` dynamic mask
    head parameters; `points (P, 2)` x, y and `strides (P,)` in pixels; `level_shapes` the `(H_l, W_l)` grid
    of each level."""

    cls_logits: Tensor
    distances: Tensor
    kernels: Tensor
    points: Tensor
    strides: Tensor
    level_shapes: list[tuple[int, int]]


class DenseHead(nn.Module):
    """`forward([P2, P3, P4], strides) -> HeadOutputs`. Two shared depthwise-separable convs per tower
    (classification; box + kernels), batch norm per level."""

    def __init__(
        self, in_channels: int, channels: int, classes: int, kernel_params: int, levels: int
    ) -> None:
        super().__init__()
        self.cls_tower = nn.ModuleList(
            [
                SharedSeparableConv(in_channels, channels, levels),
                SharedSeparableConv(channels, channels, levels),
            ]
        )
        self.reg_tower = nn.ModuleList(
            [
                SharedSeparableConv(in_channels, channels, levels),
                SharedSeparableConv(channels, channels, levels),
            ]
        )
        self.cls_logits = nn.Conv2d(channels, classes, 1)
        self.box = nn.Conv2d(channels, 4, 1)
        self.kernels = nn.Conv2d(channels, kernel_params, 1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.zeros_(self.box.bias)
        nn.init.normal_(self.kernels.weight, std=0.01)
        nn.init.zeros_(self.kernels.bias)

    def forward(self, features: list[Tensor], strides: tuple[int, ...]) -> HeadOutputs:
        cls_all, dist_all, kernel_all, points, point_strides, shapes = [], [], [], [], [], []
        for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
            cls, reg = feature, feature
            for cls_layer, reg_layer in zip(self.cls_tower, self.reg_tower, strict=True):
                cls, reg = cls_layer(cls, level), reg_layer(reg, level)
            height, width = feature.shape[-2], feature.shape[-1]
            cls_all.append(self.cls_logits(cls).flatten(2).transpose(1, 2))
            log_distances = self.box(reg).float().clamp(max=MAX_LOG_DISTANCE)
            dist_all.append((log_distances.exp() * stride).flatten(2).transpose(1, 2))
            kernel_all.append(self.kernels(reg).flatten(2).transpose(1, 2))
            level_points = grid_points(height, width, stride, feature.device)
            points.append(level_points)
            point_strides.append(torch.full((level_points.shape[0],), float(stride), device=feature.device))
            shapes.append((height, width))
        return HeadOutputs(
            torch.cat(cls_all, dim=1),
            torch.cat(dist_all, dim=1),
            torch.cat(kernel_all, dim=1),
            torch.cat(points),
            torch.cat(point_strides),
            shapes,
        )


def grid_points(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Cell centres of an `height x width` grid of `stride` pixels: `(height * width, 2)` x, y, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


class MaskBranch(nn.Module):
    """`forward(P2 (B, C, H/4, W/4)) -> (B, mask_channels, H/4, W/4)`: two depthwise-separable convs and a
    1x1 projection, the features every instance's dynamic mask head reads."""

    def __init__(self, in_channels: int, channels: int, mask_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(SeparableConv(in_channels, channels), SeparableConv(channels, channels))
        self.project = nn.Conv2d(channels, mask_channels, 1)

    def forward(self, p2: Tensor) -> Tensor:
        return self.project(self.convs(p2))
