"""Box regression targets: boxes <-> `(dx, dy, dw, dh)` deltas relative to reference boxes (R-CNN's encoding).

`dx = wx * (gx - px) / pw`, `dy = wy * (gy - py) / ph`, `dw = ww * log(gw / pw)`, `dh = wh * log(gh / ph)`,
where `(px, py, pw, ph)` is a proposal's centre and size and `(gx, gy, gw, gh)` the target box's. The
numbers match torchvision's `BoxCoder.encode_single` / `decode_single` bit for bit, so its checkpoints regress
the same boxes. Whole-tensor operations only (no Python loops over boxes): it traces for TorchScript / ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


class BoxCoder:
    """Encodes boxes as deltas against proposals and decodes deltas back to boxes.

    Args:
        weights: `(wx, wy, ww, wh)` multipliers of the four deltas (Faster R-CNN's box head uses
            `(10, 10, 5, 5)`, the RPN `(1, 1, 1, 1)`).
        bbox_xform_clip: upper bound on the decoded `dw, dh` (after dividing by the weights), so `exp` cannot
            blow a box up beyond `1000 / 16` times its proposal.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive finite numbers, got {weights!r}")
        if math.isnan(bbox_xform_clip):
            raise ValueError("BoxCoder: bbox_xform_clip must not be NaN")
        self.weights = weights
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas that turn each proposal into its reference (target) box.

        reference_boxes `(N, 4)` and proposals `(N, 4)` x1y1x2y2 in the same pixels -> `(N, 4)` deltas
        `(dx, dy, dw, dh)` in `reference_boxes`' dtype. Proposals need positive width and height.
        """
        _check_boxes(reference_boxes, "encode", "reference_boxes")
        _check_boxes(proposals, "encode", "proposals")
        if reference_boxes.shape[0] != proposals.shape[0]:
            n_ref, n_prop = reference_boxes.shape[0], proposals.shape[0]
            raise ValueError(f"BoxCoder.encode: {n_ref} reference boxes for {n_prop} proposals")
        proposals = proposals.to(reference_boxes.dtype)
        wx, wy, ww, wh = self.weights
        proposal_w = proposals[:, 2] - proposals[:, 0]
        proposal_h = proposals[:, 3] - proposals[:, 1]
        proposal_x = proposals[:, 0] + 0.5 * proposal_w
        proposal_y = proposals[:, 1] + 0.5 * proposal_h
        target_w = reference_boxes[:, 2] - reference_boxes[:, 0]
        target_h = reference_boxes[:, 3] - reference_boxes[:, 1]
        target_x = reference_boxes[:, 0] + 0.5 * target_w
        target_y = reference_boxes[:, 1] + 0.5 * target_h
        dx = wx * (target_x - proposal_x) / proposal_w
        dy = wy * (target_y - proposal_y) / proposal_h
        dw = ww * torch.log(target_w / proposal_w)
        dh = wh * torch.log(target_h / proposal_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas to boxes: the inverse of `encode`, with `dw, dh` clamped at `bbox_xform_clip`.

        deltas `(N, 4 * K)` (K boxes per row, e.g. one per class) and boxes `(N, 4)` x1y1x2y2 -> `(N, K, 4)`
        x1y1x2y2 in `deltas`' dtype (`.reshape(N, -1)` gives torchvision's `decode_single` layout). Boxes are
        not clipped to the image.
        """
        if not isinstance(deltas, Tensor) or deltas.ndim != 2 or deltas.shape[1] == 0 or deltas.shape[1] % 4:
            shape = tuple(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
            raise ValueError(f"BoxCoder.decode: deltas must be a (N, 4 * K) tensor, got {shape}")
        _check_boxes(boxes, "decode", "boxes")
        if deltas.shape[0] != boxes.shape[0]:
            raise ValueError(f"BoxCoder.decode: {deltas.shape[0]} rows of deltas for {boxes.shape[0]} boxes")
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        centre_x = boxes[:, 0, None] + 0.5 * widths
        centre_y = boxes[:, 1, None] + 0.5 * heights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.bbox_xform_clip)
        pred_x = dx * widths + centre_x
        pred_y = dy * heights + centre_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=2)


def _check_boxes(boxes: Tensor, method: str, name: str) -> None:
    is_tensor = isinstance(boxes, Tensor)
    if not is_tensor or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"BoxCoder.{method}: {name} must be a floating (N, 4) x1y1x2y2 tensor, got {shape}")
