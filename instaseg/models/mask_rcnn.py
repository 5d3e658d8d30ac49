"""Mask R-CNN: the composition. Read `detect` top to bottom for the data path:

images -> inputs.prepare_images -> transform (resize, normalise, pad) -> `detect_batch`: backbone (ResNet or
EfficientNet-Lite + FPN) -> rpn (proposals) -> roi_heads (boxes, classes, 28x28 mask logits) ->
transform.postprocess (original pixels, pasted masks) -> Instances.

`detect_batch` is the one inference path between the padded batch and the detections: eager inference and
the exported ONNX graph (`instaseg.export.onnx_export.InferenceGraph`) both call it.

With a semantic head (Panoptic FPN, `config.num_stuff_classes` > 0) the model also learns and outputs stuff:
each stuff class present in an image comes back as one more instance (its region, the mean class probability
as score, model class `num_classes - 1 + s`), and every instance carries the field `isthing (N,)` bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.fpn import FPN_LEVEL_NAMES, FPN_LEVEL_STRIDES, pooled_pyramid_features
from instaseg.models.inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ModelInputError,
    Target,
    prepare_images,
    prepare_targets,
)
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions, OperatingPoint
from instaseg.models.roi_heads import Detections, RoIHeads
from instaseg.models.rpn import RegionProposalNetwork
from instaseg.models.semantic_head import SemanticFPNHead, semantic_loss, semantic_targets
from instaseg.models.transform import ImageBatch, ImageTransform
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

if TYPE_CHECKING:
    from instaseg.models.config import MaskRCNNConfig


class MaskRCNN(nn.Module):
    """Instance segmentation model (a `SegmentationModel`); see the module docstring for the data path.

    Inference: `model.detect(images, options) -> list[Instances]` (eval mode; `model(images)` is the same
    with the config's own thresholds), one per image, in original-image pixels: `boxes (N, 4)
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
        semantic_head: SemanticFPNHead | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.semantic_head = semantic_head
        self.max_image_pixels = max_image_pixels
        self.config = config
        # What the model file says about the classes and thresholds (set by `instaseg.models.loading`).
        self.categories: list[dict] | None = None
        self.operating_point: OperatingPoint | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes the model outputs, including background (class 0): things, then stuff."""
        return self.num_box_classes + self.num_stuff

    @property
    def num_box_classes(self) -> int:
        """Classes of the box and mask heads, including background: 1 + the thing classes."""
        return self.roi_heads.box_predictor.cls_score.out_features

    def forward(
        self, images: list[Tensor], targets: list[Instances] | None = None
    ) -> list[Instances] | dict[str, Tensor]:
        """Train mode: the losses for `targets`. Eval mode: `detect(images)`."""
        if not self.training:
            if targets is not None:
                raise ModelInputError(
                    "targets are only used in training mode; call model.train() to get losses"
                )
            return self.detect(images)
        images = prepare_images(images, self.max_image_pixels)
        if targets is None:
            raise ModelInputError(
                "training mode needs targets (one Instances per image); call model.eval() for inference"
            )
        targets = prepare_targets(targets, images, self.num_classes, need_masks=True)
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        things = [_things_only(target, self.num_box_classes) for target in targets]
        proposals, rpn_losses = self.rpn(batch, features, things)
        _, head_losses = self.roi_heads(features, proposals, batch.image_sizes, things)
        losses = {**rpn_losses, **head_losses}
        if self.semantic_head is not None:
            semantic = semantic_targets(
                [target.masks for target in targets],
                [target.labels for target in targets],
                self.num_box_classes - 1,
                tuple(batch.tensors.shape[-2:]),
            )
            weight = self.config.semantic_loss_weight if self.config is not None else 1.0
            losses["loss_sem_seg"] = weight * semantic_loss(self.semantic_head(features), semantic)
        return losses

    @property
    def num_stuff(self) -> int:
        """Number of stuff classes of the semantic head (0 without one)."""
        return self.semantic_head.num_stuff if self.semantic_head is not None else 0

    def summary(self) -> dict[str, object]:
        """Family, backbone, classes and input sizes, for listings."""
        return mask_rcnn_summary(self.config.to_dict() if self.config is not None else None, self.num_classes)

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> tuple[int, int]:
        """The padded batch size of an image of `image_size (H, W)`: equal keys share a batch safely."""
        return self.transform.padded_size(image_size, options.input_scale)

    def detect(
        self, images: Sequence[Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """Eval-mode inference: `(3, H, W)` [0, 1] images -> one `Instances` each, in original pixels."""
        if self.training:
            raise ModelInputError("detect needs eval mode; call model.eval() first")
        images = prepare_images(images, self.max_image_pixels)
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        batch, _ = self.transform(images, scale=options.input_scale)
        features, detections = self._detect_features(batch, options)
        results = [
            self.to_instances(image_detections, resized_size, original_size)
            for image_detections, resized_size, original_size in zip(
                detections, batch.image_sizes, original_sizes, strict=True
            )
        ]
        if self.semantic_head is None:
            return results
        logits = self.semantic_head(features)
        min_area = self.config.stuff_min_area if self.config is not None else 0
        return [
            Instances.cat(
                [
                    things.replace(isthing=torch.ones(len(things), dtype=torch.bool)),
                    stuff_instances(
                        image_logits, resized_size, original_size, self.num_box_classes - 1, min_area
                    ),
                ]
            )
            for things, image_logits, resized_size, original_size in zip(
                results, logits, batch.image_sizes, original_sizes, strict=True
            )
        ]

    def image_features(self, images: Sequence[Tensor]) -> Tensor:
        """Pooled backbone features for diversity sampling (`instaseg.active`): `(3, H, W)` [0, 1] images ->
        `(B, C)` float, C = the FPN's channels: each of P2..P5 averaged over the image's own (unpadded) cells,
        then the four levels averaged. Eval mode."""
        if self.training:
            raise ModelInputError("image_features needs eval mode; call model.eval() first")
        batch, _ = self.transform(prepare_images(images, self.max_image_pixels))
        features = self.backbone(batch.tensors)
        levels = [features[name] for name in FPN_LEVEL_NAMES[:4]]
        return pooled_pyramid_features(levels, FPN_LEVEL_STRIDES[:4], batch.image_sizes)

    def detect_batch(
        self, batch: ImageBatch, options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Detections]:
        """The inference path shared by `detect` and the exported graph: a padded, normalised batch ->
        per-image `Detections` in resized-image pixels."""
        return self._detect_features(batch, options)[1]

    def _detect_features(
        self, batch: ImageBatch, options: DetectOptions
    ) -> tuple[dict[str, Tensor], list[Detections]]:
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        detections, _ = self.roi_heads(features, proposals, batch.image_sizes, options=options)
        return features, detections

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
    Shared by `MaskRCNN` and the ONNX Runtime backend (`instaseg.models.onnx_runtime`)."""
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


def mask_rcnn_summary(config: dict | None, num_classes: int) -> dict[str, object]:
    """`SegmentationModel.summary` of a Mask R-CNN from its config dict (None: unknown architecture)."""
    summary: dict[str, object] = {"family": "mask_rcnn", "num_classes": num_classes}
    if config is not None:
        backbone = config["backbone"]
        summary["backbone"] = f"resnet{config['backbone_depth']}" if backbone == "resnet" else backbone
        min_size = config["min_size"]
        summary["min_size"] = min_size[-1] if isinstance(min_size, (list, tuple)) else min_size
        summary["max_size"] = config["max_size"]
        summary["max_image_pixels"] = config["max_image_pixels"]
    return summary


def _things_only(target: Target, num_classes: int) -> Target:
    """The thing annotations of `target` (classes below `num_classes`): what the RPN and RoI heads see."""
    keep = target.labels < num_classes
    if bool(keep.all()):
        return target
    masks = target.masks[keep] if target.masks is not None else None
    return Target(target.boxes[keep], target.labels[keep], masks)


def stuff_instances(
    logits: Tensor,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
    num_things: int,
    min_area: int,
) -> Instances:
    """One image's stuff segments from its `(1 + S, h, w)` stride-4 semantic logits: every stuff class that
    wins at least `min_area` pixels of the original image becomes an instance (model class num_things + s,
    score = its mean probability over the region, `isthing` False, `mask_logits` its probability resampled
    into its box so that masks re-threshold like things')."""
    stride_rows = -(-resized_size[0] // 4)
    stride_cols = -(-resized_size[1] // 4)
    cropped = logits[:, :stride_rows, :stride_cols][None]
    probabilities = F.interpolate(cropped, size=original_size, mode="bilinear", align_corners=False)[0]
    probabilities = probabilities.softmax(dim=0)
    winners = probabilities.argmax(dim=0)
    boxes, scores, labels, masks, logit_crops = [], [], [], [], []
    for stuff in range(1, probabilities.shape[0]):
        mask = winners == stuff
        if int(mask.sum()) < max(1, min_area):
            continue
        rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        boxes.append(torch.tensor([x0, y0, x1, y1], dtype=torch.float32))
        scores.append(probabilities[stuff][mask].mean())
        labels.append(num_things + stuff)
        masks.append(mask)
        inside = probabilities[stuff, y0:y1, x0:x1][None, None]
        crop = F.interpolate(inside, size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
        logit_crops.append(torch.logit(crop.clamp(1e-6, 1 - 1e-6)))
    count = len(boxes)
    return Instances(
        original_size,
        torch.stack(boxes) if count else torch.zeros((0, 4)),
        torch.tensor(labels, dtype=torch.int64),
        torch.stack(scores).float() if count else torch.zeros(0),
        Masks.from_bitmaps(
            torch.stack(masks) if count else torch.zeros((0, *original_size), dtype=torch.bool)
        ),
        mask_logits=torch.stack(logit_crops) if count else torch.zeros((0, 28, 28)),
        isthing=torch.zeros(count, dtype=torch.bool),
    )
