"""`RoIMaskRefiner`: the promptable model's second stage, each mask re-predicted inside its box at the
detector's scale.

The decoder's masks live on a 128 x 128 grid over the 256 frame: for a 696x520 image a cell is 5.4 image
pixels, coarse for 10-30 px nuclei. The refiner pools each mask's box (the user's box, one derived from the
clicks by `click_box.py`, or the coarse mask's tight box enlarged by `refine_box_expansion`) from the
encoder's own FPN run at the detector's resize (`refine_min_size` / `refine_max_size`, P2..P5, RoIAlign
14 x 14) and predicts 28 x 28 probabilities with Mask R-CNN's mask head, pasted back into the image: the
resolution scales with the object. The clicks are drawn into the pooled features (`click_maps`: positive and
negative clicks as Gaussians on the 14 x 14 RoI grid, through a 3x3 conv that starts at zero), so the
refiner can tell which of the nuclei in an enlarged box was meant and follow corrections. Its mask head
starts as the bundled detector's (`build.load_promptable_refiner_weights`), made for these features;
`PromptableSam` trains it further (`trained_stage: refiner`).

    image (3, H, W) -> RoIMaskRefiner.features(backbone, image) -> DetailFeatures (P2..P5, computed once)
    boxes (N, 4) x1y1x2y2 original pixels, clicks -> RoIMaskRefiner.box_logits -> (N, 28, 28) logits
    -> RoIMaskRefiner(detail, boxes, clicks) -> (N, H, W) probabilities in the image
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.fpn import FPN_LEVEL_NAMES, FPN_LEVEL_STRIDES
from instaseg.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from instaseg.models.promptable.config import PromptableConfig
from instaseg.models.transform import ImageTransform, resize_boxes
from instaseg.ops import MultiScaleRoIAlign, paste_masks_in_image
from instaseg.structures.boxes import mask_boxes

# The mask head's foreground channel (channel 0 is Mask R-CNN's background class).
FOREGROUND = 1
ROI_SIZE = 14
# Click Gaussians' standard deviation, in cells of the 14 x 14 RoI grid.
CLICK_SIGMA = 1.0


@dataclass
class DetailFeatures:
    """One image's FPN levels P2..P5 at the refiner's scale (`(1, C, h / s, w / s)` by level name), the
    resized `(h, w)` and the original `(H, W)`."""

    levels: dict[str, Tensor]
    resized_size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(level.element_size() * level.nelement() for level in self.levels.values())


class RoIMaskRefiner(nn.Module):
    """See the module docstring. Holds the resize, the pooler and the mask head; the backbone is the
    encoder's (passed to `features`), so its weights are stored once."""

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        self.transform = ImageTransform(
            config.refine_min_size, config.refine_max_size, config.image_mean, config.image_std
        )
        pooled = list(FPN_LEVEL_NAMES[:4])
        scales = [1 / stride for stride in FPN_LEVEL_STRIDES[:4]]
        self.roi_pool = MultiScaleRoIAlign(pooled, ROI_SIZE, sampling_ratio=2, scales=scales)
        channels = config.mask_head_channels
        self.mask_head = MaskRCNNHeads(config.encoder_channels, (channels,) * 4)
        self.mask_predictor = MaskRCNNPredictor(channels, channels, FOREGROUND + 1)
        self.click_maps = nn.Conv2d(2, config.encoder_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.click_maps.weight)
        nn.init.zeros_(self.click_maps.bias)
        self.box_expansion = config.refine_box_expansion

    def features(self, backbone: BackboneWithFPN, image: Tensor) -> DetailFeatures:
        """`(3, H, W)` float image in [0, 1] -> its `DetailFeatures` (the backbone without gradients)."""
        batch, _ = self.transform([image])
        with torch.no_grad():
            levels = backbone(batch.tensors)
        kept = {name: levels[name] for name in FPN_LEVEL_NAMES[:4]}
        return DetailFeatures(kept, batch.image_sizes[0], (image.shape[-2], image.shape[-1]))

    def box_logits(
        self, detail: DetailFeatures, boxes: Tensor, clicks: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """`(N, 4)` x1y1x2y2 boxes in original pixels, optional clicks (`(N, P, 2)` x, y original pixels,
        `(N, P)` labels: 1 positive, 0 negative, -1 none) -> `(N, 28, 28)` mask logits over each box."""
        resized = resize_boxes(boxes, detail.original_size, detail.resized_size)
        pooled = self.roi_pool(detail.levels, [resized], [detail.resized_size])
        if clicks is not None:
            pooled = pooled + self.click_maps(click_maps(boxes, *clicks))
        return self.mask_predictor(self.mask_head(pooled))[:, FOREGROUND]

    def forward(
        self, detail: DetailFeatures, boxes: Tensor, clicks: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """`box_logits`' arguments -> `(N, H, W)` mask probabilities pasted into the original image."""
        if len(boxes) == 0:
            return boxes.new_zeros(0, *detail.original_size)
        probabilities = self.box_logits(detail, boxes, clicks).sigmoid()[:, None]
        return paste_masks_in_image(probabilities, boxes, detail.original_size)[:, 0]

    def mask_rois(self, masks: Tensor) -> Tensor:
        """`(N, H, W)` bool coarse masks -> the boxes to re-predict them in: each tight box enlarged about
        its centre by `box_expansion`, clipped to the image; `(0, 0, 0, 0)` for an empty mask."""
        boxes = mask_boxes(masks)
        half = (boxes[:, 2:] - boxes[:, :2]) * (self.box_expansion - 1) / 2
        height, width = masks.shape[-2:]
        limits = boxes.new_tensor([width, height])
        grown = torch.cat([(boxes[:, :2] - half).clamp(min=0), torch.minimum(boxes[:, 2:] + half, limits)], 1)
        return torch.where(masks.flatten(1).any(dim=1)[:, None], grown, torch.zeros_like(grown))


def click_maps(boxes: Tensor, coords: Tensor, labels: Tensor, size: int = ROI_SIZE) -> Tensor:
    """Clicks `(N, P, 2)` x, y with labels `(N, P)` (1 positive, 0 negative, other values ignored) drawn on
    each box's `size x size` grid -> `(N, 2, size, size)`: per cell the strongest Gaussian
    (`CLICK_SIGMA` cells) of the positive clicks (channel 0) and of the negative ones (channel 1)."""
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
    cells = (coords - boxes[:, None, :2]) / sides[:, None] * size  # (N, P, 2) in cell units
    centres = torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5
    dx = centres[None, None, None, :] - cells[..., 0, None, None]
    dy = centres[None, None, :, None] - cells[..., 1, None, None]
    bumps = torch.exp(-(dx**2 + dy**2) / (2 * CLICK_SIGMA**2))  # (N, P, size, size)
    if labels.shape[1] == 0:
        return bumps.new_zeros(len(boxes), 2, size, size)
    maps = [torch.where((labels == label)[..., None, None], bumps, 0.0).amax(dim=1) for label in (1, 0)]
    return torch.stack(maps, dim=1)
