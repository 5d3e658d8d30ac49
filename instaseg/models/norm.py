"""Norm layers for the backbone bodies: frozen batch norm (inference, fine-tuning), batch norm, group norm."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

NORM_KINDS = ("frozen_bn", "bn", "gn")

# What a body takes to make its norm layers: `norm(num_channels) -> nn.Module` (see `norm_layer`).
NormLayer = Callable[[int], nn.Module]


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
        scale, shift = norm_scale_and_shift(self)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_scale_and_shift(norm: FrozenBatchNorm2d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """`(C,)` per-channel `scale` and `shift` with `norm(x) = x * scale + shift` (a `BatchNorm2d` with its
    running statistics, as in eval mode)."""
    if isinstance(norm, nn.BatchNorm2d) and not (norm.affine and norm.track_running_stats):
        raise ValueError(f"cannot fold {norm}: it needs affine parameters and running statistics")
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


def folded_conv(conv: nn.Conv2d, norm: FrozenBatchNorm2d | nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing `norm(conv(x))` (norm with fixed statistics, see `norm_scale_and_shift`):
    `weight * scale` per output channel, `bias = bias_or_0 * scale + shift`. Same function up to float
    rounding, one memory-bound pass over the activations fewer; for inference and export (nothing trains)."""
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        scale, shift = norm_scale_and_shift(norm)
        folded.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        folded.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
    return folded


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every `FrozenBatchNorm2d` that directly follows a `Conv2d` (whose only use it is) into that
    convolution, in place: the convolution becomes `folded_conv(conv, norm)` and the norm layer `nn.Identity`.
    The pairs come from a `torch.fx` trace of `module`, so only real conv -> norm data flow is folded. Returns
    the number of folded layers. For inference and export."""
    graph = _NormLeafTracer().trace(module)
    modules = dict(module.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], FrozenBatchNorm2d):
            continue
        source = node.args[0]
        if not (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
        ):
            continue
        conv, norm = modules[source.target], modules[node.target]
        _replace(module, source.target, folded_conv(conv, norm))
        _replace(module, node.target, nn.Identity())
        folded += 1
    return folded


def _replace(module: nn.Module, target: str, replacement: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    setattr(module.get_submodule(parent_name), name, replacement)


class _NormLeafTracer(torch.fx.Tracer):
    """Keeps `FrozenBatchNorm2d` calls as single nodes (fx would otherwise trace into them)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FrozenBatchNorm2d) or super().is_leaf_module(module, qualified_name)


def reset_body_parameters(body: nn.Module) -> None:
    """He initialisation for convolutions, identity for trainable norm layers: a body trained from scratch
    (torchvision's ResNet init). Frozen batch norm holds no parameters and keeps its buffers."""
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def norm_layer(kind: str, frozen_bn_eps: float = 1e-5, gn_groups: int = 32) -> NormLayer:
    """A constructor `f(num_channels) -> nn.Module` for `kind` in `NORM_KINDS`.

    `"frozen_bn"` for inference and fine-tuning with small batches (torchvision's default), `"bn"` for
    trainable batch norm with large batches, `"gn"` for group norm (independent of the batch size; the
    largest group count dividing both `gn_groups` and the channels).
    """
    if kind == "frozen_bn":
        return lambda channels: FrozenBatchNorm2d(channels, eps=frozen_bn_eps)
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        # gcd: channel counts like EfficientNet's 40 or 112 are not multiples of 32 groups.
        return lambda channels: nn.GroupNorm(math.gcd(gn_groups, channels), channels)
    raise ValueError(f"unknown norm {kind!r}: expected one of {', '.join(NORM_KINDS)}")
