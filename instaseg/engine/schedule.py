"""Learning-rate schedule: linear warm-up, then multi-step, cosine or constant, counted in iterations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class ScheduleConfig:
    """The `schedule` config section.

    The learning rate at iteration `i` is `optim.lr * lr_factor(i)`: during the first `warmup_iterations` it
    rises linearly from `warmup_factor` to 1 (multiplied by the decay factor at that iteration); after that,
    `multistep` multiplies by `gamma` at each of `milestones`, `cosine` falls from 1 to `final_factor` at
    `iterations`, `constant` stays at 1.
    """

    iterations: int = 1000
    warmup_iterations: int = 100
    warmup_factor: float = 0.001
    decay: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    final_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"'iterations' must be >= 1; got {self.iterations}")
        if not 0 <= self.warmup_iterations <= self.iterations:
            raise ValueError(f"'warmup_iterations' must be in [0, iterations={self.iterations}]")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"'warmup_factor' must be in (0, 1]; got {self.warmup_factor}")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"'milestones' must be strictly increasing; got {list(self.milestones)}")
        if any(not 0 < m < self.iterations for m in self.milestones):
            raise ValueError(
                f"'milestones' must lie in (0, iterations={self.iterations}); got {list(self.milestones)}"
            )
        if self.decay != "multistep" and self.milestones:
            raise ValueError(f"'milestones' are only used with decay 'multistep', not {self.decay!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"'gamma' must be in (0, 1]; got {self.gamma}")
        if not 0 <= self.final_factor <= 1:
            raise ValueError(f"'final_factor' must be in [0, 1]; got {self.final_factor}")


def lr_factor(config: ScheduleConfig, iteration: int) -> float:
    """The multiplier of the base learning rate for the update made at `iteration` (0-based)."""
    if config.decay == "multistep":
        factor = config.gamma ** sum(iteration >= m for m in config.milestones)
    elif config.decay == "cosine":
        progress = min(iteration / config.iterations, 1.0)
        factor = config.final_factor + (1 - config.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if iteration < config.warmup_iterations:
        alpha = iteration / config.warmup_iterations
        factor *= config.warmup_factor * (1 - alpha) + alpha
    return factor


class WarmupSchedule(torch.optim.lr_scheduler.LRScheduler):
    """A torch LR scheduler following `lr_factor`; call `step()` once after each optimiser step.

    Its `state_dict()` (the iteration count and base learning rates) goes into checkpoints like any torch
    scheduler's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: ScheduleConfig, last_iteration: int = -1):
        self.config = config
        super().__init__(optimizer, last_epoch=last_iteration)

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.config, self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("config", None)
        return state
