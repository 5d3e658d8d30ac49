"""Mask R-CNN: the composition. Read `forward` top to bottom for the data path:

images -> inputs.prepare_images -> transform (resize, normalise, pad) -> backbone (ResNet + FPN) -> rpn
(proposals) -> roi_heads (boxes, classes, 28x28 mask logits) -> transform.postprocess (original pixels, pasted
masks) -> Instances.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.inputs import DEFAULT_MAX_IMAGE_PIXELS, ModelInputError, prepare_images, prepare_targets
from instaseg.models.roi_heads import Detections, RoIHeads
from instaseg.models.rpn import RegionProposalNetwork
from instaseg.models.transform import ImageTransform
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

if TYPE_CHECKING:
    from instaseg.models.config import MaskRCNNConfig


class MaskRCNN(nn.Module):
    """Instance segmentation model; see the module docstring for the data path.

    Eval mode: `model(images) -> list[Instances]`, one per image, in original-image pixels: `boxes (N, 4)
    x1y1x2y2`, `scores`, `labels` (model classes 1..num_classes-1), `masks` (bitmaps, probability > 0.5) and
    the field `mask_logits (N, 28, 28)` (each detection's own class, in its box). Train mode:
    `model(images, targets) -> dict` with `loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`,
    `loss_box_reg`, `loss_mask`. Images are `(3, H, W)` float tensors in [0, 1] of any sizes (see `inputs` for
    what is converted and what is rejected); images with more than `max_image_pixels` pixels are rejected.
    """

    def __init__(
        self,
        transform: ImageTransform,
        backbone: BackboneWithFPN,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        config: MaskRCNNConfig | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.max_image_pixels = max_image_pixels
        self.config = config

    @property
    def num_classes(self) -> int:
        """Number of classes including background (class 0)."""
        return self.roi_heads.box_predictor.cls_score.out_features

    def forward(
        self, images: list[Tensor], targets: list[Instances] | None = None
    ) -> list[Instances] | dict[str, Tensor]:
        images = prepare_images(images, self.max_image_pixels)
        if self.training:
            if targets is None:
                raise ModelInputError(
                    "training mode needs targets (one Instances per image); call model.eval() for inference"
                )
            targets = prepare_targets(targets, images, self.num_classes, need_masks=True)
        elif targets is not None:
            raise ModelInputError("targets are only used in training mode; call model.train() to get losses")
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return [
            self.to_instances(image_detections, resized_size, original_size)
            for image_detections, resized_size, original_size in zip(
                detections, batch.image_sizes, original_sizes, strict=True
            )
        ]

    def to_instances(
        self, detections: Detections, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Instances:
        """One image's detections (resized-image pixels) -> `Instances` in original-image pixels."""
        return detections_to_instances(self.transform, detections, resized_size, original_size)


def detections_to_instances(
    transform: ImageTransform,
    detections: Detections,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Instances:
    """One image's detections (resized-image pixels, `(H, W)` `resized_size`) -> `Instances` of an image of
    `original_size (H, W)`: boxes rescaled, 28x28 mask probabilities pasted into bitmaps, `mask_logits` kept.
    Shared by `MaskRCNN` and the ONNX Runtime backend (`instaseg.inference.onnx_backend`)."""
    boxes, masks = transform.postprocess(
        detections.boxes, detections.mask_logits.sigmoid()[:, None], resized_size, original_size
    )
    return Instances(
        original_size,
        boxes,
        detections.labels,
        detections.scores,
        masks=Masks.from_bitmaps(masks),
        mask_logits=detections.mask_logits,
    )
