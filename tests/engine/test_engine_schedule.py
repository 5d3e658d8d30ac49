"""Learning-rate schedule: warm-up, multi-step, cosine, and the torch scheduler wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.engine.schedule import ScheduleConfig, WarmupSchedule, lr_factor


def test_multistep_with_linear_warmup():
    config = ScheduleConfig(
        iterations=100, warmup_iterations=10, warmup_factor=0.1, milestones=(50, 80), gamma=0.1
    )
    assert lr_factor(config, 0) == pytest.approx(0.1)
    assert lr_factor(config, 5) == pytest.approx(0.1 * 0.5 + 0.5)
    assert lr_factor(config, 10) == 1.0
    assert lr_factor(config, 49) == 1.0
    assert lr_factor(config, 50) == pytest.approx(0.1)
    assert lr_factor(config, 80) == pytest.approx(0.01)


def test_cosine_falls_to_final_factor():
    config = ScheduleConfig(iterations=100, warmup_iterations=0, decay="cosine", final_factor=0.1)
    assert lr_factor(config, 0) == 1.0
    assert lr_factor(config, 50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(config, 100) == pytest.approx(0.1)
    factors = [lr_factor(config, i) for i in range(101)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


def test_scheduler_sets_group_lrs_and_round_trips():
    params = [torch.nn.Parameter(torch.zeros(1))]
    config = ScheduleConfig(iterations=20, warmup_iterations=4, warmup_factor=0.5, decay="cosine")
    optimizer = torch.optim.SGD(
        [{"params": params}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}], lr=0.2
    )
    scheduler = WarmupSchedule(optimizer, config)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([0.1, 0.5])
    for i, lrs in enumerate(seen):
        assert lrs == pytest.approx([0.2 * lr_factor(config, i), 1.0 * lr_factor(config, i)])
    state = scheduler.state_dict()
    assert "config" not in state and state["last_epoch"] == 10
    fresh = WarmupSchedule(optimizer, config)
    fresh.load_state_dict(state)
    optimizer.step()
    fresh.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(config, 11))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "'iterations' must be >= 1"),
        ({"iterations": 10, "warmup_iterations": 11}, "'warmup_iterations' must be in"),
        ({"iterations": 10, "warmup_iterations": 0, "milestones": (5, 3)}, "strictly increasing"),
        ({"iterations": 10, "warmup_iterations": 0, "milestones": (10,)}, "must lie in"),
        (
            {"iterations": 10, "warmup_iterations": 0, "decay": "cosine", "milestones": (5,)},
            "only used with decay 'multistep'",
        ),
        ({"warmup_factor": 0.0}, "'warmup_factor' must be in"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_constant_decay_keeps_factor_one_after_warmup():
    config = ScheduleConfig(iterations=10, warmup_iterations=2, decay="constant")
    assert [lr_factor(config, i) for i in (2, 5, 9)] == [1.0, 1.0, 1.0]
    assert not math.isclose(lr_factor(config, 1), 1.0)
