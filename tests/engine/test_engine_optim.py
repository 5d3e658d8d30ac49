"""Optimiser construction: weight-decay groups, SGD / AdamW, config checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instaseg.engine.optim import OptimConfig, build_optimizer, parameter_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.frozen = nn.Conv2d(8, 8, 1, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.fc = nn.Linear(8, 2)
        self.tied = self.fc  # the same module twice: its parameters must be listed once


def test_norms_and_biases_get_their_own_decay():
    net = Net()
    decay, no_decay = parameter_groups(net, weight_decay=1e-4, norm_bias_weight_decay=0.0)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == {id(net.conv.weight), id(net.fc.weight)}
    assert ids(no_decay["params"]) == {
        id(net.conv.bias),
        id(net.bn.weight),
        id(net.bn.bias),
        id(net.gn.weight),
        id(net.gn.bias),
        id(net.fc.bias),
    }
    assert id(net.frozen.weight) not in ids(decay["params"]) | ids(no_decay["params"])


def test_sgd_step_decays_only_the_decay_group():
    net = Net()
    optimizer = build_optimizer(net, OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5))
    assert isinstance(optimizer, torch.optim.SGD)
    before_w, before_b = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    # zero gradient: only weight decay moves the weights (w <- w - lr * wd * w); biases stay.
    torch.testing.assert_close(net.fc.weight, before_w * (1 - 0.1 * 0.5))
    torch.testing.assert_close(net.fc.bias, before_b)


def test_adamw_uses_decoupled_decay_and_betas():
    optimizer = build_optimizer(
        Net(), OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.05)
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)


def test_no_trainable_parameters_is_an_error():
    net = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(net, 1e-4, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "'lr' must be > 0"),
        ({"momentum": 1.0}, "'momentum' must be in"),
        ({"nesterov": True, "momentum": 0.0}, "'nesterov' needs"),
        ({"grad_clip_norm": -1.0}, "'grad_clip_norm' must be > 0"),
        ({"weight_decay": -1.0}, "must be >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**kwargs)
