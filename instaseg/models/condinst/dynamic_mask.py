"""The dynamic mask head (CondInst): each instance's own three 1x1 layers, applied to the shared mask
features sampled on a `size x size` grid inside the instance's box, plus two coordinates relative to the
point that predicted it. The result is box-relative mask logits `(N, size, size)`, what `Instances`'
`mask_logits` field holds, so masks are pasted, re-thresholded and fused by TTA exactly as Mask R-CNN's.

Sampling features inside the box (RoIAlign) rather than evaluating the whole stride-4 map keeps the cost at
`N * size^2` points whatever the image size, and gives large objects more than one logit per 4 pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.models.condinst.config import MASK_STRIDE
from instaseg.ops import roi_align


def dynamic_mask_logits(
    mask_features: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    points: Tensor,
    kernels: Tensor,
    size: int,
    hidden: int,
) -> Tensor:
    """Mask logits `(N, size, size)` of N instances.

    `mask_features (B, C, H / 4, W / 4)`; per instance: `boxes (N, 4)` x1y1x2y2 in resized-image pixels,
    `image_index (N,)` int64 into B, `points (N, 2)` x, y of the predicting point in pixels, `kernels (N, D)`
    parameters of its head ((C + 2) * hidden + hidden, hidden * hidden + hidden, hidden + 1: weights then
    biases, layer by layer).
    """
    count, channels = boxes.shape[0], mask_features.shape[1]
    rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], dim=1)
    # (N, C, size, size): features at the centres of size x size bins of each box
    sampled = roi_align(mask_features.float(), rois, (size, size), 1.0 / MASK_STRIDE, 2, aligned=True)
    steps = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    # relative coordinates: (bin centre - point) / box side, about [-1, 1] inside the box
    rel_x = (boxes[:, 0:1] + steps[None] * widths[:, None] - points[:, 0:1]) / widths[:, None]
    rel_y = (boxes[:, 1:2] + steps[None] * heights[:, None] - points[:, 1:2]) / heights[:, None]
    coords = torch.stack(
        [rel_x[:, None, :].expand(count, size, size), rel_y[:, :, None].expand(count, size, size)], dim=-1
    )
    inputs = torch.cat([sampled.permute(0, 2, 3, 1), coords], dim=-1).reshape(
        count, size * size, channels + 2
    )
    w1, b1, w2, b2, w3, b3 = split_kernels(kernels.float(), channels + 2, hidden)
    x = F.relu(torch.bmm(inputs, w1) + b1[:, None])
    x = F.relu(torch.bmm(x, w2) + b2[:, None])
    return (torch.bmm(x, w3) + b3[:, None]).reshape(count, size, size)


def split_kernels(kernels: Tensor, inputs: int, hidden: int) -> tuple[Tensor, ...]:
    """`(N, D)` flat parameters -> w1 `(N, inputs, hidden)`, b1 `(N, hidden)`, w2 `(N, hidden, hidden)`, b2,
    w3 `(N, hidden, 1)`, b3 `(N, 1)`."""
    sizes = [inputs * hidden, hidden, hidden * hidden, hidden, hidden, 1]
    w1, b1, w2, b2, w3, b3 = kernels.split(sizes, dim=1)
    count = kernels.shape[0]
    return (
        w1.reshape(count, inputs, hidden),
        b1,
        w2.reshape(count, hidden, hidden),
        b2,
        w3.reshape(count, hidden, 1),
        b3,
    )
