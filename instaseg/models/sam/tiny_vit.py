"""MobileSAM's TinyViT-5M image encoder (`vit_t`): `(B, 3, 1024, 1024)` -> `(B, 256, 64, 64)`.

Stem (two stride-2 conv+BN) to 1/4, a stage of MBConv blocks, then three stages of windowed attention blocks
(attention bias per relative offset, depthwise conv, MLP), patch merging between stages (the last one keeps
1/16), and SAM's neck to 256 channels. Parameter names are `mobile_sam.pt`'s, including the unused ImageNet
classifier (`norm_head`, `head`) that the checkpoint carries.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from instaseg.models.sam.vit_encoder import IMAGE_SIZE, neck

EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)


class ConvBN(nn.Sequential):
    """Conv2d without bias (`c`) + BatchNorm2d (`bn`), eval-mode statistics."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)


class MBConv(nn.Module):
    """Inverted residual on `(B, C, H, W)`: 1x1 expand x4, 3x3 depthwise, 1x1 project, + input, GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = dim * 4
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """`(B, C, H, W)` -> `(B, H' * W', C_out)` tokens: 1x1 conv, 3x3 depthwise (stride 2; 1 into the last
    stage), 1x1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


def attention_bias_index(window: int) -> torch.Tensor:
    """`(N, N)` int64, N = window^2: for each query/key pair of a window, the index of its offset
    (|dy|, |dx|), offsets numbered in order of first appearance (the layout of `attention_biases`)."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    index = []
    for p in points:
        for q in points:
            offset = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            index.append(offsets.setdefault(offset, len(offsets)))
    return torch.tensor(index, dtype=torch.int64).view(len(points), len(points))


class WindowAttention(nn.Module):
    """LayerNorm + multi-head attention within a window, `(B, N, C)` -> `(B, N, C)`, N = window^2.

    The bias table `attention_biases (heads, offsets)` is gathered into `(heads, N, N)` at every call, from
    the parameters as they are now: the official module caches the gathered table when switched to eval
    mode, so a model put in eval mode before loading keeps the initial zeros until `.eval()` is called again.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        index = attention_bias_index(window)
        # One bias per offset (|dy|, |dx|), each in 0..window-1: window^2 of them.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # q, k, v are interleaved per head in `qkv`'s output: (heads, [q | k | v]).
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTMlp(nn.Module):
    """LayerNorm, Linear x4, GELU, Linear on `(B, N, C)`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 4)
        self.fc2 = nn.Linear(dim * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention + residual, 3x3 depthwise conv+BN, MLP + residual on `(B, H * W, C)` tokens.

    Windows are zero-padded *before* the attention's own LayerNorm (so padded tokens carry the norm's bias),
    which is the official order and differs from SAM's ViT.
    """

    def __init__(self, dim: int, num_heads: int, window: int, resolution: int) -> None:
        super().__init__()
        self.window = window
        self.resolution = resolution
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, kernel=3, groups=dim)
        self.mlp = TinyViTMlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        size, window = self.resolution, self.window
        if size == window:
            attended = self.attn(x)
        else:
            grid = x.view(batch, size, size, channels)
            pad = (window - size % window) % window
            if pad:
                grid = F.pad(grid, (0, 0, 0, pad, 0, pad))
            padded = size + pad
            count = padded // window
            windows = grid.view(batch, count, window, count, window, channels).transpose(2, 3)
            windows = self.attn(windows.reshape(batch * count * count, window * window, channels))
            grid = windows.view(batch, count, count, window, window, channels).transpose(2, 3)
            attended = grid.reshape(batch, padded, padded, channels)[:, :size, :size].reshape(
                batch, tokens, channels
            )
        x = x + attended
        x = self.local_conv(x.transpose(1, 2).reshape(batch, channels, size, size))
        x = x.view(batch, channels, tokens).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on `(B, 64, 256, 256)`, then patch merging to `(B, 128 * 128, 128)` tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(EMBED_DIMS[0]) for _ in range(DEPTHS[0]))
        self.downsample = PatchMerging(EMBED_DIMS[0], EMBED_DIMS[1], stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on `(B, resolution^2, dim)` tokens, then patch merging unless the last."""

    def __init__(self, stage: int, resolution: int) -> None:
        super().__init__()
        dim = EMBED_DIMS[stage]
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, NUM_HEADS[stage], WINDOW_SIZES[stage], resolution) for _ in range(DEPTHS[stage])
        )
        self.downsample = None
        if stage < len(DEPTHS) - 1:
            # Merging into the last stage keeps the resolution (1/16), as MobileSAM's encoder does.
            stride = 1 if stage == len(DEPTHS) - 2 else 2
            self.downsample = PatchMerging(dim, EMBED_DIMS[stage + 1], stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            batch, _, channels = x.shape
            grid = x.transpose(1, 2).reshape(batch, channels, self.resolution, self.resolution)
            x = self.downsample(grid)
        return x


class Stem(nn.Module):
    """Two 3x3 stride-2 conv+BN with GELU between: `(B, 3, 1024, 1024)` -> `(B, 64, 256, 256)`."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(3, EMBED_DIMS[0] // 2, kernel=3, stride=2),
            nn.GELU(),
            ConvBN(EMBED_DIMS[0] // 2, EMBED_DIMS[0], kernel=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class TinyViTImageEncoder(nn.Module):
    """MobileSAM's `vit_t`: `(B, 3, 1024, 1024)` -> `(B, 256, 64, 64)`."""

    def __init__(self) -> None:
        super().__init__()
        self.img_size = IMAGE_SIZE
        self.patch_embed = Stem()
        resolutions = (IMAGE_SIZE // 8, IMAGE_SIZE // 16, IMAGE_SIZE // 16)  # stages 1..3: 128, 64, 64
        self.layers = nn.ModuleList(
            [ConvStage()] + [AttentionStage(stage, resolutions[stage - 1]) for stage in (1, 2, 3)]
        )
        # ImageNet classifier of the distilled TinyViT: kept so that `mobile_sam.pt` loads strictly; unused.
        self.norm_head = nn.LayerNorm(EMBED_DIMS[-1])
        self.head = nn.Linear(EMBED_DIMS[-1], 1000)
        self.neck = neck(EMBED_DIMS[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        batch, tokens, channels = x.shape
        side = IMAGE_SIZE // 16
        return self.neck(x.transpose(1, 2).reshape(batch, channels, side, side))
