"""SAM's ViT image encoder: `(B, 3, 1024, 1024)` normalised, padded image -> `(B, 256, 64, 64)` embedding.

A 16x16-patch ViT (absolute position embedding, windowed attention with decomposed relative positions in most
blocks, global attention in `global_attn_indexes`) and a neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d)
to 256 channels at 1/16 of the input. Parameter names are the official checkpoints' (`image_encoder.*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from instaseg.models.sam.common import LayerNorm2d, MLPBlock

IMAGE_SIZE = 1024
PATCH_SIZE = 16
EMBEDDING_SIZE = IMAGE_SIZE // PATCH_SIZE  # 64: the embedding grid of every SAM encoder
WINDOW_SIZE = 14


@dataclass(frozen=True)
class ViTConfig:
    """The four numbers by which the SAM ViT encoders differ."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


VIT_B = ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
VIT_L = ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
VIT_H = ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))


def relative_positions(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The `(q_size, k_size, C)` embeddings of the offsets between query and key rows (or columns).

    `rel_pos (L, C)` holds one embedding per offset; when L is not `2 * max(q_size, k_size) - 1` (a table
    trained for another size) it is resized linearly first. Offsets of unequal sizes are scaled to the larger.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.t()[None], size=length, mode="linear")
        rel_pos = resized[0].t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = q_coords - k_coords + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


class Attention(nn.Module):
    """Multi-head self-attention on a `(B, H, W, C)` grid with decomposed relative positions (MViTv2).

    The relative-position term `q . R_h[qh, kh] + q . R_w[qw, kw]` (unscaled q) is folded into the dot
    product: q is extended with its `k_h + k_w` relative-position scores and k with one-hot row and column
    indicators, so `scaled_dot_product_attention` runs without an `(N, N)` bias tensor per head (4096^2
    floats each in a global block).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, H, W, C)` -> `(B, H, W, C)`."""
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        rows = relative_positions(height, height, self.rel_pos_h)  # (H, H, head_dim)
        cols = relative_positions(width, width, self.rel_pos_w)  # (W, W, head_dim)
        grid_q = q.reshape(batch, self.num_heads, height, width, -1)
        rel_rows = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rows).reshape(
            batch, self.num_heads, height * width, -1
        )
        rel_cols = torch.einsum("bnhwc,wkc->bnhwk", grid_q, cols).reshape(
            batch, self.num_heads, height * width, -1
        )
        key_rows = torch.arange(height, device=x.device).repeat_interleave(width)
        key_cols = torch.arange(width, device=x.device).repeat(height)
        indicators = torch.cat([F.one_hot(key_rows, height), F.one_hot(key_cols, width)], dim=1).to(
            k.dtype
        )  # (N, H + W)
        q_ext = torch.cat([q * self.scale, rel_rows, rel_cols], dim=-1)
        k_ext = torch.cat([k, indicators.expand(batch, self.num_heads, -1, -1)], dim=-1)
        out = F.scaled_dot_product_attention(q_ext, k_ext, v, scale=1.0)
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`(B, H, W, C)` -> `(B * nW, window, window, C)` windows (zero-padded bottom/right), padded size."""
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels), (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: windows -> `(B, H, W, C)` without the padding."""
    padded_h, padded_w = padded
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    x = windows.view(batch, padded_h // window, padded_w // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, : size[0], : size[1]]


class Block(nn.Module):
    """Pre-norm transformer block; `window > 0`: attention within `window x window` windows, else global.

    Windows are padded after `norm1`, so padded tokens are zeros, not the norm's bias (the official order).
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid_size=window if window > 0 else EMBEDDING_SIZE)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `(B, 64, 64, C)` -> same shape."""
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            size = (x.shape[1], x.shape[2])
            windows, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(windows), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """16x16 stride-16 convolution: `(B, 3, 1024, 1024)` -> `(B, 64, 64, C)` (channels last)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def neck(in_channels: int, out_channels: int = 256) -> nn.Sequential:
    """1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no conv biases): encoder features -> 256 channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


class ViTImageEncoder(nn.Module):
    """SAM's ViT-B/L/H (or any `ViTConfig`): `(B, 3, 1024, 1024)` -> `(B, 256, 64, 64)`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = IMAGE_SIZE
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, EMBEDDING_SIZE, EMBEDDING_SIZE, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                config.embed_dim,
                config.num_heads,
                window=0 if index in config.global_attn_indexes else WINDOW_SIZE,
            )
            for index in range(config.depth)
        )
        self.neck = neck(config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
