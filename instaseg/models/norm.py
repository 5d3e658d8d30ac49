"""Norm layers for the ResNet body: frozen batch norm (inference, fine-tuning), batch norm, group norm."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NORM_KINDS = ("frozen_bn", "bn", "gn")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers (nothing trains).

    Per channel of `(B, C, H, W)`: `x * scale + (bias - running_mean * scale)`, `scale = weight /
    sqrt(running_var + eps)`. torchvision's published COCO Mask R-CNN weights need `eps = 0.0`; ImageNet
    backbones use 1e-5.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # Checkpoints saved from a trainable BatchNorm2d carry a step counter a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_layer(kind: str, frozen_bn_eps: float = 1e-5, gn_groups: int = 32) -> Callable[[int], nn.Module]:
    """A constructor `f(num_channels) -> nn.Module` for `kind` in `NORM_KINDS`.

    `"frozen_bn"` for inference and fine-tuning with small batches (torchvision's default), `"bn"` for
    trainable batch norm with large batches, `"gn"` for group norm (independent of the batch size).
    """
    if kind == "frozen_bn":
        return lambda channels: FrozenBatchNorm2d(channels, eps=frozen_bn_eps)
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda channels: nn.GroupNorm(min(gn_groups, channels), channels)
    raise ValueError(f"unknown norm {kind!r}: expected one of {', '.join(NORM_KINDS)}")
