"""Mask branch: four 3x3 convs on 14x14 RoI features, a 2x transposed conv, per-class 28x28 mask logits."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.ops import roi_align


class MaskRCNNHeads(nn.Sequential):
    """`(K, C, 14, 14)` -> `(K, layers[-1], 14, 14)` through 3x3 conv + ReLU blocks (names `i.0.weight`)."""

    def __init__(self, in_channels: int = 256, layers: tuple[int, ...] = (256, 256, 256, 256)) -> None:
        blocks = []
        for out_channels in layers:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)
                )
            )
            in_channels = out_channels
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # torchvision's published COCO checkpoints name the blocks `mask_fcn1..4`.
        for index in range(len(self)):
            for kind in ("weight", "bias"):
                old_key = f"{prefix}mask_fcn{index + 1}.{kind}"
                if old_key in state_dict:
                    state_dict[f"{prefix}{index}.0.{kind}"] = state_dict.pop(old_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class MaskRCNNPredictor(nn.Sequential):
    """`(K, C, 14, 14)` -> `(K, num_classes, 28, 28)` logits: 2x2 stride-2 transposed conv, ReLU, 1x1 conv."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, kernel_size=2, stride=2)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, kernel_size=1)),
                ]
            )
        )
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv5_mask.bias)
        # Small logits at the start (detectron2's init): torchvision's He init of this layer gives logits of
        # magnitude ~10 with few classes, and training from scratch then diverges without a long warm-up.
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fcn_logits.bias)


class SubpixelMaskPredictor(nn.Module):
    """`MaskRCNNPredictor`'s function computed by 1x1 convs only; exported graphs use it (`from_predictor`).

    A 2x2 stride-2 transposed conv is a 1x1 conv to 4x the channels, one group of `dim_reduced` per output
    sub-pixel `(dy, dx)`, followed by a pixel shuffle. Here the logits conv runs on each group first (a
    grouped 1x1 conv), so only the `num_classes` logits are shuffled. Why: ONNX Runtime's static int8
    quantization turns 1x1 convs into integer convolutions but has no integer transposed convolution.
    `(K, C, 14, 14)` -> `(K, num_classes, 28, 28)`, equal to the predictor's up to float rounding.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.subpixels = nn.Conv2d(in_channels, 4 * dim_reduced, kernel_size=1)
        self.logits = nn.Conv2d(4 * dim_reduced, 4 * num_classes, kernel_size=1, groups=4)

    @classmethod
    def from_predictor(cls, predictor: MaskRCNNPredictor) -> SubpixelMaskPredictor:
        """The same function as `predictor`, with its weights rearranged (the predictor is not changed)."""
        transposed, logits = predictor.conv5_mask, predictor.mask_fcn_logits
        in_channels, dim_reduced = transposed.weight.shape[:2]
        subpixel = cls(in_channels, dim_reduced, logits.out_channels)
        with torch.no_grad():
            # Transposed conv weight (C_in, D, dy, dx) -> 1x1 conv rows in order (dy, dx, D).
            subpixel.subpixels.weight.copy_(
                transposed.weight.permute(2, 3, 1, 0).reshape(4 * dim_reduced, in_channels, 1, 1)
            )
            subpixel.subpixels.bias.copy_(transposed.bias.repeat(4))
            subpixel.logits.weight.copy_(logits.weight.repeat(4, 1, 1, 1))
            subpixel.logits.bias.copy_(logits.bias.repeat(4))
        return subpixel

    def forward(self, features: Tensor) -> Tensor:
        logits = self.logits(F.relu(self.subpixels(features)))  # channels in order (dy, dx, class)
        rois, _, height, width = logits.shape
        shuffled = logits.reshape(rois, 2, 2, self.num_classes, height, width).permute(0, 3, 4, 1, 5, 2)
        return shuffled.reshape(rois, self.num_classes, 2 * height, 2 * width)


def select_class_channel(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """`(K, num_classes, M, M)` logits -> `(K, M, M)`: for each RoI the channel of its own label."""
    return mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_indices: Tensor, size: int) -> Tensor:
    """Crop and resample ground-truth masks `(G, H, W)` to each RoI: `(K, size, size)` float in [0, 1].

    `boxes (K, 4)` are RoIs in the masks' pixels; `matched_indices (K,)` picks each RoI's ground truth.
    """
    rois = torch.cat([matched_indices[:, None].to(boxes), boxes], dim=1)
    return roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0)[:, 0]


def mask_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_indices: list[Tensor],
) -> Tensor:
    """Mean per-pixel BCE between each positive RoI's logits in the channel of its ground-truth class and the
    ground-truth mask cropped to the RoI. Per image: `proposals (K_i, 4)`, `gt_masks (G_i, H, W)`,
    `gt_labels (G_i,)`, `matched_indices (K_i,)`."""
    size = mask_logits.shape[-1]
    labels, targets = [], []
    for masks, boxes, image_labels, indices in zip(
        gt_masks, proposals, gt_labels, matched_indices, strict=True
    ):
        if indices.numel():  # images without positive RoIs (e.g. without objects) contribute nothing
            labels.append(image_labels[indices])
            targets.append(project_masks_on_boxes(masks, boxes, indices, size))
    if not targets:
        return mask_logits.sum() * 0
    labels, targets = torch.cat(labels), torch.cat(targets)
    return F.binary_cross_entropy_with_logits(select_class_channel(mask_logits, labels), targets)
