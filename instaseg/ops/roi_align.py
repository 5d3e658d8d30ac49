"""RoIAlign: average of bilinearly sampled points in each output bin of each region of interest.

Same signature and numbers as ``torchvision.ops.roi_align`` (Mask R-CNN's pooling), so torchvision
checkpoints give the same features. ``roi_align`` runs the C++ kernel of ``instaseg._C`` for float32/float64
CPU tensors and the pure-PyTorch path (``roi_align_torch``) otherwise; both differentiate in ``input``.

Coordinate conventions (torchvision's): a box ``x1, y1, x2, y2`` is in input-image pixels and is multiplied by
``spatial_scale`` to reach feature-map cells. With ``aligned=False`` pixel centres sit on integer coordinates
and a box is at least 1 cell wide; ``aligned=True`` shifts boxes by -0.5 cell so that pixel centres sit on
half integers (detectron2's correction). Sample points farther than one cell outside the map give 0; points
in that one-cell margin read the border value.

While `torch.export` traces a model, ``roi_align`` on a ``(K, 5)`` rois tensor is the operator
``instaseg_export::roi_align``, which ``instaseg.export`` translates to ONNX ``RoiAlign`` (same numbers:
``aligned=False`` is its ``output_half_pixel`` mode); the argument checks, which read the data, are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from instaseg.ops import _extension

_KERNEL_DTYPES = (torch.float32, torch.float64)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool each box of ``boxes`` from ``input`` into a fixed ``output_size`` grid.

    Args:
        input: ``(B, C, H, W)`` floating feature maps.
        boxes: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``, or a list of at most ``B`` ``(Ki, 4)``
            x1y1x2y2 tensors, the i-th for image i. Coordinates in input-image pixels (see ``spatial_scale``).
        output_size: ``h`` or ``(h, w)`` bins per box.
        spatial_scale: feature-map cells per input-image pixel (e.g. 1/4 for a stride-4 map).
        sampling_ratio: sample points per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(box size in cells / output size)`` per box and axis.
        aligned: shift boxes by -0.5 cell (pixel-exact, detectron2's ``ROIAlignV2``) and drop the 1-cell
            minimum size.

    Returns:
        ``(K, C, h, w)`` in ``input``'s dtype, boxes in the order given.
    """
    if torch.compiler.is_exporting() and isinstance(boxes, Tensor):
        out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
        return torch.ops.instaseg_export.roi_align(
            input, boxes, float(spatial_scale), out_h, out_w, int(sampling_ratio), bool(aligned)
        )
    rois, out_hw = _check_arguments(input, boxes, output_size, spatial_scale, sampling_ratio)
    if _extension.HAS_EXTENSION and input.device.type == "cpu":
        if input.dtype in _KERNEL_DTYPES:
            return _RoIAlignKernel.apply(
                input, rois, out_hw, float(spatial_scale), int(sampling_ratio), bool(aligned)
            )
        # Reduced precision (bf16 autocast): pool in float32 with the kernel, as torchvision's autocast does;
        # autograd carries the gradient back through the casts.
        pooled = _RoIAlignKernel.apply(
            input.float(), rois.float(), out_hw, float(spatial_scale), int(sampling_ratio), bool(aligned)
        )
        return pooled.to(input.dtype)
    return _roi_align_sparse(input, rois, out_hw, float(spatial_scale), int(sampling_ratio), bool(aligned))


@torch.library.custom_op("instaseg_export::roi_align", mutates_args=())
def _roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    out_h: int,
    out_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``roi_align`` on ``(K, 5)`` rois as one operator for ``torch.export`` graphs."""
    return roi_align(input, rois, (out_h, out_w), spatial_scale, sampling_ratio, aligned)


@_roi_align_op.register_fake
def _roi_align_op_fake(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    out_h: int,
    out_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return input.new_empty((rois.shape[0], input.shape[1], out_h, out_w))


def roi_align_torch(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``roi_align`` computed in pure PyTorch on any device (the fallback, and the oracle for the C++ kernel).

    float16/bfloat16 inputs are computed in float32 and returned in their own dtype.
    """
    rois, out_hw = _check_arguments(input, boxes, output_size, spatial_scale, sampling_ratio)
    return _roi_align_sparse(input, rois, out_hw, float(spatial_scale), int(sampling_ratio), bool(aligned))


def _check_arguments(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> tuple[Tensor, tuple[int, int]]:
    """Validate the arguments; return ``(K, 5)`` rois in the compute dtype and ``(h, w)``."""
    if not isinstance(input, Tensor) or input.dim() != 4 or not input.is_floating_point():
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"roi_align: input must be a floating (B, C, H, W) tensor, got {shape}")
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(out_hw) != 2 or not all(isinstance(s, int) and s > 0 for s in out_hw):
        raise ValueError(f"roi_align: output_size must be a positive int or (h, w) pair, got {output_size!r}")
    if not (isinstance(spatial_scale, (int, float)) and math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"roi_align: spatial_scale must be a positive finite number, got {spatial_scale!r}")
    if not isinstance(sampling_ratio, int):
        raise ValueError(
            f"roi_align: sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}"
        )
    compute_dtype = input.dtype if input.dtype in _KERNEL_DTYPES else torch.float32
    rois = _as_rois(boxes, input.shape[0], compute_dtype, input.device)
    _check_rois(rois, input.shape[0])
    return rois, out_hw


def boxes_to_rois(boxes: Sequence[Tensor], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Per-image ``(Ki, 4)`` x1y1x2y2 boxes -> ``(sum Ki, 5)`` rows ``[image_index, x1, y1, x2, y2]``."""
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"roi_align: boxes[{i}] must be a (K, 4) x1y1x2y2 tensor, got {shape}")
    if not boxes:
        return torch.zeros((0, 5), dtype=dtype, device=device)
    # `b.shape[0]`, not `len(b)`: the box count is symbolic when the model is traced for export.
    index = torch.cat(
        [torch.full((b.shape[0], 1), i, dtype=dtype, device=device) for i, b in enumerate(boxes)]
    )
    return torch.cat([index, torch.cat([b.to(device=device, dtype=dtype) for b in boxes])], dim=1)


def _as_rois(
    boxes: Tensor | Sequence[Tensor], batch_size: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``(K, 5)`` ``[batch_index, x1, y1, x2, y2]`` rows, detached, from either accepted box format."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                "roi_align: boxes tensor must be (K, 5) [batch_index, x1, y1, x2, y2], "
                f"got {tuple(boxes.shape)}"
            )
        if boxes.device != device:
            raise ValueError(f"roi_align: boxes are on {boxes.device} but input is on {device}")
        rois = boxes
    else:
        boxes = list(boxes)
        if len(boxes) > batch_size:
            raise ValueError(f"roi_align: {len(boxes)} box tensors for an input batch of {batch_size} images")
        rois = boxes_to_rois(boxes, dtype, device)
    return rois.detach().to(dtype).contiguous()


def _check_rois(rois: Tensor, batch_size: int) -> None:
    """Reject non-finite coordinates and batch indices that are not integers in ``[0, batch_size)``."""
    batch_index = rois[:, 0]
    bad = (
        ~torch.isfinite(rois).all(dim=1)
        | (batch_index != batch_index.floor())
        | (batch_index < 0)
        | (batch_index >= batch_size)
    )
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"roi_align: roi {row} = {rois[row].tolist()} needs an integer batch index in [0, {batch_size}) "
            "and finite coordinates"
        )


class _RoIAlignKernel(torch.autograd.Function):
    """The C++ kernels ``torch.ops.instaseg.roi_align_forward/backward`` as an autograd function of input."""

    @staticmethod
    def forward(ctx, input, rois, out_hw, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.arguments = (out_hw, spatial_scale, sampling_ratio, aligned)
        ctx.input_shape = tuple(input.shape)
        return torch.ops.instaseg.roi_align_forward(
            input, rois, spatial_scale, out_hw[0], out_hw[1], sampling_ratio, aligned
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        (out_h, out_w), spatial_scale, sampling_ratio, aligned = ctx.arguments
        grad_input = torch.ops.instaseg.roi_align_backward(
            grad_output.contiguous(),
            rois,
            spatial_scale,
            out_h,
            out_w,
            *ctx.input_shape,
            sampling_ratio,
            aligned,
        )
        return grad_input, None, None, None, None, None


def _roi_align_sparse(
    input: Tensor,
    rois: Tensor,
    out_hw: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Pure-PyTorch RoIAlign as one sparse matrix product.

    Every output bin is a weighted sum of input pixels, so the whole op is ``W @ X`` with ``X`` the input as
    ``(B*H*W, C)`` and ``W`` a sparse ``(K*h*w, B*H*W)`` matrix of bilinear weights over the sample count.
    Memory stays proportional to the number of sample points (not points x channels), and autograd through
    ``torch.sparse.mm`` gives the backward pass (``W.T @ grad``) for free.
    """
    batch, channels, height, width = input.shape
    num_rois = rois.shape[0]
    out_h, out_w = out_hw
    bins, pixels, weights = _bilinear_weights(
        rois, height, width, out_hw, spatial_scale, sampling_ratio, aligned
    )
    matrix = torch.sparse_coo_tensor(
        torch.stack([bins, pixels]),
        weights,
        (num_rois * out_h * out_w, batch * height * width),
        check_invariants=False,
    )
    features = input.to(rois.dtype).permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = torch.sparse.mm(matrix, features)
    return pooled.reshape(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2).to(input.dtype).contiguous()


def _bilinear_weights(
    rois: Tensor,
    height: int,
    width: int,
    out_hw: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse entries of the RoIAlign matrix: ``(bin index, flat input pixel b*H*W + y*W + x, weight)``.

    Each sample point contributes its four bilinear neighbours. Arithmetic follows torchvision's CPU kernel
    operation by operation (in the rois' dtype) so both agree to float rounding.
    """
    out_h, out_w = out_hw
    dtype, device = rois.dtype, rois.device
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_w
    roi_h = rois[:, 4] * spatial_scale - offset - start_h
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_w = roi_w / out_w
    bin_h = roi_h / out_h
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        # An empty or inverted aligned box gets no samples (and output 0), as in torchvision.
        grid_h = torch.ceil(roi_h / out_h).clamp(min=0).to(torch.int64)
        grid_w = torch.ceil(roi_w / out_w).clamp(min=0).to(torch.int64)
    count = (grid_h * grid_w).clamp(min=1).to(dtype)

    # One entry per sample point, rois concatenated; decompose the index within a roi as (ph, pw, iy, ix).
    per_roi = out_h * out_w * grid_h * grid_w
    roi = torch.repeat_interleave(torch.arange(len(rois), device=device), per_roi)
    local = torch.arange(len(roi), device=device) - (torch.cumsum(per_roi, 0) - per_roi)[roi]
    gw, gh = grid_w[roi], grid_h[roi]
    ix, rest = local % gw, local // gw
    iy, rest = rest % gh, rest // gh
    pw, ph = rest % out_w, rest // out_w

    y = start_h[roi] + ph.to(dtype) * bin_h[roi] + (iy.to(dtype) + 0.5) * bin_h[roi] / gh.to(dtype)
    x = start_w[roi] + pw.to(dtype) * bin_w[roi] + (ix.to(dtype) + 0.5) * bin_w[roi] / gw.to(dtype)
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y_low, y_high, ly = _neighbours(y, height)
    x_low, x_high, lx = _neighbours(x, width)
    hy, hx = 1.0 - ly, 1.0 - lx
    scale = inside.to(dtype) / count[roi]

    base = rois[:, 0].to(torch.int64)[roi] * (height * width)
    pixels = torch.cat(
        [
            base + y_low * width + x_low,
            base + y_low * width + x_high,
            base + y_high * width + x_low,
            base + y_high * width + x_high,
        ]
    )
    weights = torch.cat([hy * hx * scale, hy * lx * scale, ly * hx * scale, ly * lx * scale])
    bins = (roi * (out_h * out_w) + ph * out_w + pw).repeat(4)
    return bins, pixels, weights


def _neighbours(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lower and upper integer neighbours of ``coord`` and its fraction past the lower one.

    Coordinates are first clamped to ``[0, size - 1]``: points in the margin before the first cell, or at or
    beyond the last cell, read the border cell (torchvision's clamp); the caller zero-weights points further.
    """
    coord = coord.clamp(0.0, size - 1)
    low = coord.to(torch.int64)
    high = (low + 1).clamp(max=size - 1)
    return low, high, coord - low.to(coord.dtype)
