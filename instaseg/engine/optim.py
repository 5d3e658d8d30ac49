"""Optimiser construction: SGD with momentum or AdamW, with no weight decay on norm layers and biases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

# Norm layers whose affine parameters should not be pulled towards zero: decaying a norm's scale shrinks the
# activations it normalises, which the next layer must then undo. FrozenBatchNorm has buffers only, no
# parameters.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


@dataclass
class OptimConfig:
    """The `optim` config section.

    `weight_decay` applies to conv and linear weights; `norm_bias_weight_decay` to norm-layer parameters and
    all biases (0 by default). `grad_clip_norm` clips the global L2 norm of all gradients (None: no clipping).
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    norm_bias_weight_decay: float = 0.0
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"'lr' must be > 0; got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"'momentum' must be in [0, 1); got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("'nesterov' needs 'momentum' > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"'betas' must both be in [0, 1); got {list(self.betas)}")
        if self.weight_decay < 0 or self.norm_bias_weight_decay < 0:
            raise ValueError("'weight_decay' and 'norm_bias_weight_decay' must be >= 0")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"'grad_clip_norm' must be > 0 or null; got {self.grad_clip_norm}")


def parameter_groups(model: nn.Module, weight_decay: float, norm_bias_weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed group and a norm/bias group (empty groups are left out).

    A parameter shared by several modules is listed once, in the group of the first module that owns it.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": norm_bias_weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters (are all layers frozen?)")
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by `config` over `model`'s trainable parameters, in the two weight-decay groups."""
    groups = parameter_groups(model, config.weight_decay, config.norm_bias_weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
