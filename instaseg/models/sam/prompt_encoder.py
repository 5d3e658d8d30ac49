"""SAM's prompt encoder: points, boxes and a low-res mask -> sparse tokens and a dense embedding.

Coordinates come in the 1024-pixel input frame (`transforms.scale_coords`), x then y. Points and box corners
are shifted to pixel centres (+0.5), encoded with random Fourier features of their position in [0, 1] and
added to a learned embedding per kind (background point 0, foreground point 1, box corners 2 and 3). A point
set without a box gets one padding point (label -1, `not_a_point_embed`), as the official model was trained.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from instaseg.models.sam.common import LayerNorm2d

EMBED_DIM = 256
MASK_IN_CHANS = 16
PADDING_LABEL = -1
# The labels a box's corners get when a box is written as two points (the exported decoder's input).
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 2, 3


class RandomFourierPE(nn.Module):
    """Position encoding by random spatial frequencies: `(..., 2)` coords in [0, 1] -> `(..., 2 * F)`.

    `positional_encoding_gaussian_matrix (2, F)` is a persistent buffer (it is in the checkpoints).
    """

    def __init__(self, num_feats: int = EMBED_DIM // 2) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords `(..., 2)` (x, y) in [0, 1] -> `(..., 2F)` = [sin, cos] of 2*pi*(2*coords - 1) @ G."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def dense(self, height: int, width: int) -> torch.Tensor:
        """The encoding of every cell centre of an `(height, width)` grid: `(2F, height, width)`."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (height, width, 2) as (x, y)
        return self.encode(grid).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords `(B, N, 2)` (x, y) in input pixels of an `image_size (H, W)` frame -> `(B, N, 2F)`."""
        scale = coords.new_tensor([image_size[1], image_size[0]])
        return self.encode(coords.float() / scale)


class PromptEncoder(nn.Module):
    """Prompts -> `sparse (B, T, 256)` tokens and `dense (B, 256, 64, 64)` mask embedding."""

    def __init__(
        self,
        embedding_size: tuple[int, int] = (64, 64),
        input_size: tuple[int, int] = (1024, 1024),
    ) -> None:
        super().__init__()
        self.embed_dim = EMBED_DIM
        self.image_embedding_size = embedding_size
        self.input_image_size = input_size
        self.mask_input_size = (4 * embedding_size[0], 4 * embedding_size[1])
        self.pe_layer = RandomFourierPE(EMBED_DIM // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, EMBED_DIM) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, EMBED_DIM)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, MASK_IN_CHANS // 4, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS // 4),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS // 4, MASK_IN_CHANS, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS, EMBED_DIM, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, EMBED_DIM)

    def dense_pe(self) -> torch.Tensor:
        """The position encoding of the image embedding's cells: `(1, 256, 64, 64)`."""
        return self.pe_layer.dense(*self.image_embedding_size)[None]

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """coords `(B, N, 2)` input pixels, labels `(B, N)` in {-1, 0, 1} -> `(B, N (+1 if pad), 256)`."""
        coords = coords + 0.5
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], dim=1)
        encoded = self.pe_layer.points(coords, self.input_image_size)
        labels = labels[..., None]
        # The padding point keeps no position: its token is `not_a_point_embed` alone.
        encoded = torch.where(labels == PADDING_LABEL, torch.zeros_like(encoded), encoded)
        encoded = encoded + (labels == PADDING_LABEL) * self.not_a_point_embed.weight
        encoded = encoded + (labels == 0) * self.point_embeddings[0].weight
        return encoded + (labels == 1) * self.point_embeddings[1].weight

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes `(B, 4)` x1y1x2y2 input pixels -> `(B, 2, 256)`, one token per corner."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        encoded = self.pe_layer.points(corners, self.input_image_size)
        corner_kind = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return encoded + corner_kind

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points `((B, N, 2), (B, N))`, boxes `(B, 4)`, masks `(B, 1, 256, 256)` logits, each optional.

        Returns `sparse (B, T, 256)` (T = point tokens, then 2 box tokens) and `dense (B, 256, 64, 64)`, or
        `(1, 256, 64, 64)` without masks: `no_mask_embed`, shared by every prompt.
        """
        batch = _batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        tokens = [torch.empty(batch, 0, EMBED_DIM, device=device)]
        if points is not None:
            tokens.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            tokens.append(self.embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            height, width = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        return sparse, dense


def _batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, masks: torch.Tensor | None
) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1


def decoder_inputs(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points `(B, N, 2)` / labels `(B, N)` and boxes `(B, 4)`, all in the 1024 input frame (either may be
    None) -> the decoder graph's `point_coords (B, N', 2)` and `point_labels (B, N')`: the points, then the
    box corners (labels 2, 3), or one padding point when there is no box."""
    coords = [torch.zeros(count, 0, 2)]
    labels = [torch.zeros(count, 0)]
    if point_coords is not None:
        coords.append(point_coords.float())
        labels.append(point_labels.float())
    if boxes is not None:
        coords.append(boxes.float().reshape(count, 2, 2))
        labels.append(torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], dtype=torch.float32).expand(count, 2))
    else:
        coords.append(torch.zeros(count, 1, 2))
        labels.append(torch.full((count, 1), float(PADDING_LABEL)))
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)
