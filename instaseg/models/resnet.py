"""ResNet body (no pooling head, no classifier) returning the four stage outputs C2..C5.

Parameter names follow torchvision's `resnet*` (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`,
...), so its ImageNet and detection checkpoints load unchanged. Strides of C2..C5 are 4, 8, 16, 32; the stride
of a bottleneck sits on its 3x3 convolution (ResNet v1.5), as in torchvision.
"""

from __future__ import annotations

from torch import Tensor, nn

from instaseg.models.norm import NormLayer, reset_body_parameters

# depth -> (block type, blocks per stage)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, downsample: nn.Module | None, norm: NormLayer
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, downsample: nn.Module | None, norm: NormLayer
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = norm(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet stem + four stages. `forward(x (B,3,H,W)) -> [C2, C3, C4, C5]` at strides 4, 8, 16, 32.

    `out_channels` lists the channel counts of C2..C5: (64, 128, 256, 512) for 18/34, (256, 512, 1024, 2048)
    for 50/101.
    """

    def __init__(self, depth: int, norm: NormLayer) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}: expected one of {sorted(RESNET_DEPTHS)}")
        kind, blocks_per_stage = RESNET_DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        stages = []
        for index, num_blocks in enumerate(blocks_per_stage):
            width = 64 * 2**index
            stride = 1 if index == 0 else 2
            stage, in_channels = make_stage(block, in_channels, width, num_blocks, stride, norm)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = [64 * 2**index * block.expansion for index in range(4)]
        reset_body_parameters(self)

    def stages(self) -> list[list[nn.Module]]:
        """Module groups bottom-up: stem (`conv1`, `bn1`), then `layer1`..`layer4` (five groups)."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    width: int,
    num_blocks: int,
    stride: int,
    norm: NormLayer,
) -> tuple[nn.Sequential, int]:
    """`num_blocks` blocks, the first changing stride / channels (1x1 projection). -> (stage, channels)."""
    out_channels = width * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))
    blocks = [block(in_channels, width, stride, downsample, norm)]
    blocks += [block(out_channels, width, 1, None, norm) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks), out_channels
