"""`CondInstConfig`: every architecture, training and inference setting of the single-stage CondInst-style
model, as a dataclass that round-trips to plain data (model files carry it, like `MaskRCNNConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from instaseg.models.config import ConfigError, ModelSettings
from instaseg.models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD
from instaseg.models.inputs import DEFAULT_MAX_IMAGE_PIXELS

BACKBONES = ("efficientnet_lite0",)
# Output strides of the pyramid levels the head runs on (P2, P3, P4) and of the mask feature map.
HEAD_STRIDES = (4, 8, 16)
MASK_STRIDE = 4


@dataclass
class CondInstConfig(ModelSettings):
    """Settings of `instaseg.models.condinst.CondInst`.

    `frozen_stages`: body stage groups (stem, then the blocks ending at C2..C5) whose weights do not train:
    the stride-2 and stride-4 stages cost most of the backward pass and their ImageNet edges transfer.
    Sizes are in resized-image pixels. Images are never upsampled: one whose long side exceeds `max_size` is
    scaled down to it, any other is used as it is. `neck_channels` / `head_channels`: widths of the PAFPN and
    of the head towers (depthwise-separable convs). `mask_channels` features feed the dynamic mask head
    (`dynamic_channels` wide, three 1x1 layers), evaluated on `mask_size` x `mask_size` points inside each
    box. Assignment: points within `candidate_radius` strides of an object's centre or inside its box are
    candidates; each object takes its `dynamic_topk`-IoU-sum lowest-cost candidates (RTMDet's dynamic soft
    label assigner). `mask_positives_per_image` caps the positives whose masks are computed in training.
    Inference: sigmoid scores above `score_thresh`, the `pre_nms_top_k` best (point, class) pairs, per-class
    NMS at `nms_thresh`, at most `detections_per_img`.
    """

    num_classes: int = 2
    backbone: str = "efficientnet_lite0"
    frozen_bn_eps: float = 1e-3
    frozen_stages: int = 2
    neck_channels: int = 64
    head_channels: int = 64
    mask_channels: int = 8
    dynamic_channels: int = 8
    mask_size: int = 28
    max_size: int = 1024
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    candidate_radius: float = 1.0
    center_prior_radius: float = 3.0
    dynamic_topk: int = 13
    iou_cost_weight: float = 3.0
    box_loss_weight: float = 2.0
    mask_loss_weight: float = 1.0
    mask_positives_per_image: int = 256
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    pre_nms_top_k: int = 2000
    detections_per_img: int = 500

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: {self.num_classes} must be at least 2 (background + one class)")
        for name in (
            "neck_channels",
            "head_channels",
            "mask_channels",
            "dynamic_channels",
            "mask_size",
            "max_size",
            "max_image_pixels",
            "dynamic_topk",
            "mask_positives_per_image",
            "pre_nms_top_k",
            "detections_per_img",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be a positive integer")
        if not 0 <= self.frozen_stages <= 5:
            raise ConfigError(f"frozen_stages: {self.frozen_stages} must be between 0 and 5")
        for name in ("candidate_radius", "center_prior_radius", "iou_cost_weight", "frozen_bn_eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be >= 0")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{name}: need 3 values (R, G, B), got {getattr(self, name)}")
        for name in ("score_thresh", "nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be within [0, 1]")

    @property
    def dynamic_params(self) -> int:
        """Parameters of one instance's dynamic mask head: three 1x1 layers with biases, the first taking
        the mask features and two relative coordinates (169 for 8 features, 8 hidden: CondInst's)."""
        inputs, hidden = self.mask_channels + 2, self.dynamic_channels
        return inputs * hidden + hidden + hidden * hidden + hidden + hidden + 1
