"""Small convolution blocks of the neck and head: batch-normalised, ReLU, depthwise-separable where wide.

`fold_norms` turns a trained network's blocks into their inference form (batch norm folded into the
convolutions).
"""

from __future__ import annotations

from torch import Tensor, nn

from instaseg.models.norm import folded_conv


class ConvBN(nn.Sequential):
    """`k x k` conv (no bias) -> batch norm -> ReLU (or no activation): `(B, C_in, H, W) -> (B, C_out,
    H / stride, W / stride)`; `groups=C_in` makes it depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConv(nn.Sequential):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU: `(B, C_in, H, W) -> (B, C_out,
    H, W)` at about 1/8 of a dense 3x3 conv's cost for 64 channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBN(in_channels, in_channels, 3, groups=in_channels),
            ConvBN(in_channels, out_channels, 1),
        )


class SharedSeparableConv(nn.Module):
    """A `SeparableConv` whose convolutions are shared by the pyramid levels while each level keeps its own
    batch norms (RTMDet's head: the levels' feature statistics differ). `forward(x, level)`."""

    def __init__(self, in_channels: int, out_channels: int, levels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.depthwise_norms = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(levels))
        self.pointwise_norms = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in range(levels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, level: int) -> Tensor:
        x = self.act(self.depthwise_norms[level](self.depthwise(x)))
        return self.act(self.pointwise_norms[level](self.pointwise(x)))

    def folded(self) -> LevelSeparableConv:
        """The inference form: each level's norms folded into its own copy of the two convolutions."""
        levels = range(len(self.depthwise_norms))
        return LevelSeparableConv(
            [folded_conv(self.depthwise, self.depthwise_norms[level]) for level in levels],
            [folded_conv(self.pointwise, self.pointwise_norms[level]) for level in levels],
        )


class LevelSeparableConv(nn.Module):
    """`SharedSeparableConv` with its norms folded (`SharedSeparableConv.folded`): per level a depthwise and
    a pointwise convolution with bias, each followed by ReLU. `forward(x, level)` as the shared block's."""

    def __init__(self, depthwise: list[nn.Conv2d], pointwise: list[nn.Conv2d]) -> None:
        super().__init__()
        self.depthwise = nn.ModuleList(depthwise)
        self.pointwise = nn.ModuleList(pointwise)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self.act(self.pointwise[level](self.act(self.depthwise[level](x))))


def fold_norms(module: nn.Module) -> None:
    """Fold the batch norm of every `ConvBN` and `SharedSeparableConv` inside `module` into the convolutions,
    in place, using the norms' running statistics: eval-mode outputs stay the same up to float rounding, and
    each block runs one memory-bound pass over its activations fewer. For an inference copy only (the
    folded blocks no longer train as batch-normalised ones)."""
    for name, child in module.named_children():
        if isinstance(child, ConvBN):
            child[0] = folded_conv(child[0], child[1])
            child[1] = nn.Identity()
        elif isinstance(child, SharedSeparableConv):
            setattr(module, name, child.folded())
        else:
            fold_norms(child)
