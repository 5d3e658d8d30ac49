"""Building blocks shared by the SAM image encoders and the mask decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a `(B, C, H, W)` map (eps 1e-6, as SAM's necks and decoder use)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-first normalisation is not a torch op; moving C last for F.layer_norm costs two copies of
        # the map, this costs two reductions.
        mean = x.mean(1, keepdim=True)
        centered = x - mean
        variance = centered.pow(2).mean(1, keepdim=True)
        normalized = centered / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * normalized + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Linear -> activation -> Linear on the last dimension (`lin1`, `lin2`: the official key names)."""

    def __init__(self, dim: int, hidden_dim: int, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """`num_layers` Linear layers (`layers.{i}`) with ReLU between them: the hypernetworks, the IoU head."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


# SAM's masks are its logits above 0; the stability score compares the masks at 0 +- this offset (the
# official automatic mask generator's default).
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


def stability_score(logits: torch.Tensor, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """`(..., H, W)` mask logits -> `(...)` IoU of the masks `logits > offset` and `logits > -offset`.

    The first mask lies inside the second, so the IoU is a ratio of pixel counts (0/0 gives NaN, as the
    official generator does; such a mask never passes a threshold).
    """
    # int32 counts over the flattened mask: exact, and ~7x faster than bool.sum's int64 over two dims.
    inner = (logits > MASK_THRESHOLD + offset).flatten(-2).sum(dim=-1, dtype=torch.int32)
    outer = (logits > MASK_THRESHOLD - offset).flatten(-2).sum(dim=-1, dtype=torch.int32)
    return inner.float() / outer.float()
