"""Anchor boxes for the RPN: a fixed set of boxes centred on every cell of every FPN level.

Level l has `len(sizes[l]) * len(aspect_ratios[l])` zero-centred templates (aspect ratio = height / width,
area about size**2, corners rounded to whole pixels), shifted to each cell's top-left corner
`(x * stride_w, y * stride_h)`, where the stride is the (padded) image size integer-divided by the feature map
size. Numbers and order are torchvision's `AnchorGenerator`, so torchvision's RPN heads see the same anchors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator"]

# Recently used anchor sets kept per generator. Training with random resizing cycles through a few input
# sizes; one 800x1216 FPN set is ~1 M floats (4 MB), so a small bound keeps memory in check.
_CACHE_SIZE = 8


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps (one per FPN level) of one padded batch.

    Args:
        sizes: per level, the anchor sizes in input-image pixels (square root of the anchor area).
        aspect_ratios: per level, the height / width ratios.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5,
    ) -> None:
        super().__init__()
        if len(sizes) == 0:
            raise ValueError("AnchorGenerator: sizes must have at least one level")
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} levels of sizes, {len(aspect_ratios)} levels of aspect_ratios"
            )
        for name, levels in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
            for level, values in enumerate(levels):
                if len(values) == 0 or not all(math.isfinite(v) and v > 0 for v in values):
                    raise ValueError(f"AnchorGenerator: {name}[{level}] must be positive, got {values!r}")
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per feature-map cell for each level (what the RPN head predicts per cell)."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(self, feature_maps: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """feature_maps: one `(B, C, h, w)` tensor per level; image_size: `(H, W)` of the padded batch.

        Returns `(M, 4)` x1y1x2y2 anchors in input-image pixels, M = sum over levels of `h * w * A_level`,
        concatenated over levels, per level row-major over `(y, x)` then the templates (aspect ratio major,
        size minor). The same for every image of the batch; dtype and device of the first feature map.
        The tensor is cached and shared between calls with the same shapes: do not modify it in place.
        """
        if torch.compiler.is_exporting():
            # Symbolic sizes in an exported graph: anchors are computed in the graph, never cached.
            grids = [(feature.shape[-2], feature.shape[-1]) for feature in feature_maps]
            return self._grid_anchors(grids, image_size, feature_maps[0].dtype, feature_maps[0].device)
        if len(feature_maps) != len(self.sizes):
            raise ValueError(
                f"AnchorGenerator: got {len(feature_maps)} feature maps for {len(self.sizes)} levels of sizes"
            )
        grid_sizes = []
        for level, feature in enumerate(feature_maps):
            if not isinstance(feature, Tensor) or feature.ndim != 4:
                shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
                raise ValueError(f"AnchorGenerator: feature_maps[{level}] must be (B, C, h, w), got {shape}")
            grid_sizes.append((int(feature.shape[-2]), int(feature.shape[-1])))
        height, width = (int(v) for v in image_size)
        for level, (grid_h, grid_w) in enumerate(grid_sizes):
            if not 0 < grid_h <= height or not 0 < grid_w <= width:
                raise ValueError(
                    f"AnchorGenerator: feature_maps[{level}] is {grid_h}x{grid_w} cells, which does not fit "
                    f"an image of {height}x{width} pixels"
                )
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        key = (tuple(grid_sizes), (height, width), dtype, device)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._grid_anchors(grid_sizes, (height, width), dtype, device)
            self._cache[key] = anchors
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return anchors

    def _grid_anchors(
        self,
        grid_sizes: list[tuple[int, int]],
        image_size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tensor:
        levels = []
        for (grid_h, grid_w), sizes, ratios in zip(grid_sizes, self.sizes, self.aspect_ratios, strict=True):
            stride_h, stride_w = image_size[0] // grid_h, image_size[1] // grid_w
            shift_x = torch.arange(grid_w, dtype=torch.int64, device=device) * stride_w
            shift_y = torch.arange(grid_h, dtype=torch.int64, device=device) * stride_h
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            templates = _templates(sizes, ratios, dtype, device)
            levels.append((shifts[:, None, :] + templates[None, :, :]).reshape(-1, 4))
        return torch.cat(levels)


def _templates(
    sizes: tuple[float, ...], ratios: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`(len(ratios) * len(sizes), 4)` zero-centred x1y1x2y2 templates, ratio major, corners rounded to even.

    Computed in `dtype` with torchvision's operation order, so the rounding lands on the same pixels.
    """
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)
    aspect = torch.as_tensor(ratios, dtype=dtype, device=device)
    height_ratios = torch.sqrt(aspect)
    width_ratios = 1 / height_ratios
    widths = (width_ratios[:, None] * scales[None, :]).reshape(-1)
    heights = (height_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack((-widths, -heights, widths, heights), dim=1) / 2).round()
