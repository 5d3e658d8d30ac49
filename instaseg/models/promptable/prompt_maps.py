"""`PromptMapEncoder`: clicks and boxes drawn as maps on the low-res mask grid, embedded densely and added
to the prompt encoder's dense embedding.

Why: SAM locates a prompt only through attention between the prompt tokens' Fourier encoding and the
image cells. Trained from scratch on nuclei (10-30 px objects, 1-4 embedding cells, dozens of look-alike
neighbours), that route did not learn within this machine's budget: the decoder segmented every
nucleus-like region (Dice loss stuck at 0.93-0.95 for 150+ steps on 8 images, with SAM's Fourier scale
and with 4x / 10x higher frequencies). Click maps, the input of click-based interactive segmentation
models (RITM, FocalClick), give each image cell its distance to the prompt directly: with them the same
overfitting run reached Dice loss 0.23 in 120 steps (runs of 2026-12-02, docs/models.md). The SAM tokens
are kept: the decoder sees both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from instaseg.models.sam.common import LayerNorm2d
from instaseg.models.sam.prompt_encoder import EMBED_DIM

# Gaussian radius of a drawn click, in low-res pixels (2 input pixels each): about a small nucleus' radius.
CLICK_SIGMA = 2.0
# Map channels: positive clicks, negative clicks, box interior.
MAP_CHANNELS = 3


class PromptMapEncoder(nn.Module):
    """Points and boxes in the `input_size` frame -> maps `(B, 3, 4h, 4w)` on the low-res grid -> a dense
    embedding `(B, 256, h, w)` (the layout of SAM's mask downscaling: two 2x2 stride-2 convs with LayerNorm
    and GELU, then a 1x1 conv), for an `embedding_size (h, w)` image embedding."""

    def __init__(self, embedding_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid = (4 * embedding_size[0], 4 * embedding_size[1])
        self.input_size = input_size
        self.downscaling = nn.Sequential(
            nn.Conv2d(MAP_CHANNELS, 16, kernel_size=2, stride=2),
            LayerNorm2d(16),
            nn.GELU(),
            nn.Conv2d(16, 64, kernel_size=2, stride=2),
            LayerNorm2d(64),
            nn.GELU(),
            nn.Conv2d(64, EMBED_DIM, kernel_size=1),
        )

    def maps(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None) -> Tensor:
        """points `((B, N, 2) x, y input pixels, (B, N) labels)` (label 1 positive, 0 negative, others not
        drawn), boxes `(B, 4)` x1y1x2y2 -> `(B, 3, 4h, 4w)` in [0, 1]: the maximum of the clicks' Gaussians
        of each sign, and 1 inside the box."""
        height, width = self.grid
        reference = points[0] if points is not None else boxes
        device = reference.device
        scale_x = width / self.input_size[1]
        scale_y = height / self.input_size[0]
        ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
        xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
        maps = torch.zeros(reference.shape[0], MAP_CHANNELS, height, width, device=device)
        if points is not None and points[0].shape[1]:
            coords, labels = points
            x = (coords[..., 0].float() + 0.5) * scale_x  # (B, N) low-res pixels, pixel centre
            y = (coords[..., 1].float() + 0.5) * scale_y
            # A 2-D Gaussian is the product of two 1-D ones: exp on (B, N, h) + (B, N, w), not (B, N, h, w).
            along_x = torch.exp(-((xs - x[..., None]) ** 2) / (2 * CLICK_SIGMA**2))
            along_y = torch.exp(-((ys - y[..., None]) ** 2) / (2 * CLICK_SIGMA**2))
            gauss = along_y[..., :, None] * along_x[..., None, :]  # (B, N, h, w)
            for channel, label in ((0, 1), (1, 0)):
                chosen = (labels == label)[..., None, None]
                maps[:, channel] = torch.where(chosen, gauss, 0.0).amax(dim=1)
        if boxes is not None:
            scale = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
            x1, y1, x2, y2 = (boxes.float() * scale).unbind(1)
            inside_x = (xs >= x1[:, None]) & (xs <= x2[:, None])
            inside_y = (ys >= y1[:, None]) & (ys <= y2[:, None])
            maps[:, 2] = (inside_y[:, :, None] & inside_x[:, None, :]).float()
        return maps

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None) -> Tensor:
        return self.downscaling(self.maps(points, boxes))
