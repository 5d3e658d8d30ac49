"""Exponential moving average of weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instaseg.engine.ema import ModelEMA


def test_ema_follows_the_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    expected = ema.module[0].weight.detach().clone()
    for step in range(5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
        ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 5
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.mul_(3)
    ema.update(model)
    restored = ModelEMA(nn.Linear(2, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and restored.decay == 0.99
    torch.testing.assert_close(restored.module.weight, ema.module.weight)


def test_bad_decay_is_rejected():
    with pytest.raises(ValueError, match="EMA decay must be in"):
        ModelEMA(nn.Linear(1, 1), decay=1.0)
