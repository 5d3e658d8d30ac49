"""Exponential moving average of a model's weights: a smoother, often better, final model."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps `ema = d * ema + (1 - d) * weights` after every optimiser step, in a separate copy of the model.

    The decay ramps up as `d = min(decay, (1 + n) / (10 + n))` after `n` updates, so the first updates are not
    dominated by the random initial weights. Floating-point parameters and buffers are averaged; integer
    buffers (e.g. BatchNorm's `num_batches_tracked`) are copied. The copy is in eval mode and never trained.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold `model`'s current weights (same architecture, unwrapped from DDP) into the average."""
        decay = self.current_decay()
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.is_floating_point():
                ema_value.mul_(decay).add_(value, alpha=1 - decay)
            else:
                ema_value.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        self.module.load_state_dict(state["module"])
