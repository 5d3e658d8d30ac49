"""CondInst: the single-stage composition. Read `detect` top to bottom for the data path:

images -> inputs.prepare_images -> transform (normalise, scale down only, pad) -> `detect_batch`:
EfficientNet-Lite0 body (C2..C5) -> PAFPN (P2..P4) -> dense head (per point: class logits, box distances,
dynamic mask kernels) and mask branch (stride-4 features) -> score filter -> top-k -> batched NMS -> each
kept instance's dynamic mask head on its box (`mask_size`^2 logits) -> transform.postprocess (original
pixels, pasted masks) -> Instances.

Training: the same forward up to the head, then `assigner.assign` per image and `losses` (QFL, GIoU, Dice +
BCE on at most `mask_positives_per_image` positives).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.condinst.assigner import assign
from instaseg.models.condinst.config import HEAD_STRIDES, CondInstConfig
from instaseg.models.condinst.dynamic_mask import dynamic_mask_logits
from instaseg.models.condinst.head import DenseHead, HeadOutputs, MaskBranch
from instaseg.models.condinst.layers import fold_norms
from instaseg.models.condinst.losses import dice_loss, mask_targets, quality_focal_loss
from instaseg.models.condinst.neck import PAFPN
from instaseg.models.condinst.transform import NoUpscaleTransform
from instaseg.models.efficientnet_lite import EfficientNetLite
from instaseg.models.fpn import pooled_pyramid_features
from instaseg.models.inputs import ModelInputError, Target, prepare_images, prepare_targets
from instaseg.models.mask_rcnn import detections_to_instances
from instaseg.models.norm import fold_frozen_batchnorm
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions, OperatingPoint
from instaseg.models.roi_heads import Detections
from instaseg.ops import batched_nms, clip_boxes, remove_small_boxes
from instaseg.structures.boxes import paired_giou
from instaseg.structures.instances import Instances

LOSS_KEYS = ("loss_cls", "loss_box", "loss_mask_dice", "loss_mask_bce")
# Boxes narrower or lower than this (pixels) after clipping are dropped before NMS (Mask R-CNN's rule).
MIN_BOX_SIZE = 1e-2


class _Network(nn.Module):
    """The networks of a `CondInst` as one module (`CondInst.folded_network`'s inference copy)."""

    def __init__(self, body: nn.Module, neck: PAFPN, head: DenseHead, mask_branch: MaskBranch) -> None:
        super().__init__()
        self.body, self.neck, self.head, self.mask_branch = body, neck, head, mask_branch


class CondInst(nn.Module):
    """Single-stage instance segmentation (a `SegmentationModel`); see the module docstring.

    Eval: `detect(images, options) -> list[Instances]` in original-image pixels: `boxes (N, 4)` x1y1x2y2,
    `scores`, `labels` (1..num_classes-1), `masks` (probability > 0.5) and `mask_logits (N, mask_size,
    mask_size)` inside each box. Train: `model(images, targets) -> dict` of `LOSS_KEYS`. Images are `(3, H,
    W)` float in [0, 1], checked by `inputs.prepare_images` exactly as for Mask R-CNN.
    """

    def __init__(
        self,
        transform: NoUpscaleTransform,
        body: EfficientNetLite,
        neck: PAFPN,
        head: DenseHead,
        mask_branch: MaskBranch,
        config: CondInstConfig,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.body = body
        self.neck = neck
        self.head = head
        self.mask_branch = mask_branch
        self.config = config
        self.max_image_pixels = config.max_image_pixels
        self.categories: list[dict] | None = None
        self.operating_point: OperatingPoint | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes including background (class 0)."""
        return self.head.cls_logits.out_channels + 1

    def summary(self) -> dict[str, object]:
        """Family, backbone, classes and input size limit, for listings."""
        return condinst_summary(self.config.to_dict(), self.num_classes)

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> tuple[int, int]:
        """The padded batch size of an image of `image_size (H, W)`: equal keys share a batch safely."""
        return self.transform.padded_size(image_size, options.input_scale)

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
        checked = prepare_targets(targets, images, self.num_classes, need_masks=True)
        batch, checked = self.transform(images, checked)
        outputs, mask_features = self.features(batch.tensors)
        return self.losses(outputs, mask_features, checked, batch.image_sizes)

    def features(self, tensors: Tensor) -> tuple[HeadOutputs, Tensor]:
        """Padded batch `(B, 3, H, W)` -> head outputs and mask features `(B, mask_channels, H/4, W/4)`."""
        network, pyramid = self._pyramid(tensors)
        return network.head(pyramid, HEAD_STRIDES), network.mask_branch(pyramid[0])

    def _pyramid(self, tensors: Tensor) -> tuple[nn.Module, list[Tensor]]:
        """Padded batch -> (the networks that ran: the folded copy in eval mode, except while exporting;
        P2..P4)."""
        inference = not self.training and not torch.compiler.is_exporting()
        network = self.folded_network() if inference else self
        return network, network.neck(network.body(tensors.contiguous(memory_format=torch.channels_last)))

    def folded_network(self) -> _Network:
        """For eval-mode inference: a copy of body, neck, head and mask branch with every batch norm folded
        into its convolution (the body's frozen norms were a quarter of its CPU time at 256 x 256; the neck's
        and head's norms are a smaller share, larger on a busy machine, where memory-bound passes wait).
        Rebuilt when any of their tensors was replaced or changed in place (an optimiser or EMA step,
        `load_state_dict`), which the tensors' ids and version counters tell; kept outside the module tree,
        so neither `state_dict` nor `parameters` sees it."""
        parts = (self.body, self.neck, self.head, self.mask_branch)
        tensors = [tensor for part in parts for tensor in (*part.parameters(), *part.buffers())]
        key = tuple((id(tensor), tensor._version) for tensor in tensors)
        cached = self.__dict__.get("_folded_network")
        if cached is None or cached[0] != key:
            network = _Network(*copy.deepcopy(parts)).eval()
            fold_frozen_batchnorm(network.body)
            fold_norms(network)
            cached = (key, network)
            self.__dict__["_folded_network"] = cached
        return cached[1]

    def detect(
        self, images: Sequence[Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        """Eval-mode inference: `(3, H, W)` [0, 1] images -> one `Instances` each, in original pixels."""
        if self.training:
            raise ModelInputError("detect needs eval mode; call model.eval() first")
        images = prepare_images(list(images), self.max_image_pixels)
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        batch, _ = self.transform(images, scale=options.input_scale)
        return [
            detections_to_instances(self.transform, detections, resized_size, original_size)
            for detections, resized_size, original_size in zip(
                self.detect_batch(batch.tensors, batch.image_sizes, options),
                batch.image_sizes,
                original_sizes,
                strict=True,
            )
        ]

    def image_features(self, images: Sequence[Tensor]) -> Tensor:
        """Pooled neck features for diversity sampling (`instaseg.active`): `(3, H, W)` [0, 1] images ->
        `(B, C)` float, C = the neck's channels: each of P2..P4 averaged over the image's own (unpadded)
        cells, then the three levels averaged (as `MaskRCNN.image_features`). Eval mode."""
        if self.training:
            raise ModelInputError("image_features needs eval mode; call model.eval() first")
        batch, _ = self.transform(prepare_images(list(images), self.max_image_pixels))
        _, pyramid = self._pyramid(batch.tensors)
        return pooled_pyramid_features(pyramid, HEAD_STRIDES, batch.image_sizes)

    def detect_batch(
        self,
        tensors: Tensor,
        image_sizes: list[tuple[int, int]],
        options: DetectOptions = DEFAULT_DETECT_OPTIONS,
    ) -> list[Detections]:
        """The inference path shared by `detect` and the exported graph: a padded, normalised batch `(B, 3,
        H, W)` whose image i fills `image_sizes[i]` -> per-image `Detections` in resized-image pixels."""
        config = self.config
        score_thresh = config.score_thresh if options.score_threshold is None else options.score_threshold
        nms_thresh = config.nms_thresh if options.iou_threshold is None else options.iou_threshold
        max_detections = (
            config.detections_per_img if options.max_detections is None else options.max_detections
        )
        outputs, mask_features = self.features(tensors)
        classes = outputs.cls_logits.shape[-1]
        selected = []
        for index, image_size in enumerate(image_sizes):
            scores = outputs.cls_logits[index].float().sigmoid().reshape(-1)
            count = torch.sym_min(config.pre_nms_top_k, scores.shape[0])  # symbolic when exported
            top_scores, top_indices = scores.topk(count)
            keep = torch.where(top_scores > score_thresh)[0]
            top_scores, top_indices = top_scores[keep], top_indices[keep]
            point_index = torch.div(top_indices, classes, rounding_mode="floor")
            labels = top_indices % classes + 1
            boxes = clip_boxes(
                decode_boxes(outputs.points[point_index], outputs.distances[index][point_index]), image_size
            )
            keep = remove_small_boxes(boxes, MIN_BOX_SIZE)
            keep = keep[batched_nms(boxes[keep], top_scores[keep], labels[keep], nms_thresh, max_detections)]
            selected.append((boxes[keep], top_scores[keep], labels[keep], point_index[keep]))
        boxes = torch.cat([item[0] for item in selected])
        image_index = torch.cat([torch.full_like(item[3], index) for index, item in enumerate(selected)])
        point_index = torch.cat([item[3] for item in selected])
        kernels = outputs.kernels[image_index, point_index]
        mask_logits = dynamic_mask_logits(
            mask_features,
            boxes,
            image_index,
            outputs.points[point_index],
            kernels,
            config.mask_size,
            config.dynamic_channels,
        ).split([item[0].shape[0] for item in selected])
        return [
            Detections(item[0], item[1], item[2], logits)
            for item, logits in zip(selected, mask_logits, strict=True)
        ]

    def losses(
        self,
        outputs: HeadOutputs,
        mask_features: Tensor,
        targets: list[Target],
        image_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """`LOSS_KEYS` for a batch: QFL summed over all points and classes / the sum of soft labels; GIoU and
        the mask losses averaged over positives (mask losses over at most `mask_positives_per_image` of each
        image's, drawn at random)."""
        config = self.config
        cls_logits = outputs.cls_logits.float()
        cls_targets = torch.zeros_like(cls_logits)
        pred_all, gt_all, mask_parts = [], [], []
        for index, target in enumerate(targets):
            pred_boxes = decode_boxes(outputs.points, outputs.distances[index].float())
            assignment = assign(
                outputs.points,
                outputs.strides,
                outputs.level_shapes,
                HEAD_STRIDES,
                pred_boxes.detach(),
                cls_logits[index].detach(),
                target.boxes,
                target.labels,
                config.candidate_radius,
                config.center_prior_radius,
                config.dynamic_topk,
                config.iou_cost_weight,
            )
            positive = torch.where(assignment.gt_index >= 0)[0]
            matched = assignment.gt_index[positive]
            cls_targets[index, positive, target.labels[matched] - 1] = assignment.ious[positive]
            pred_all.append(pred_boxes[positive])
            gt_all.append(target.boxes[matched])
            if positive.numel():
                chosen = torch.randperm(positive.numel(), device=positive.device)
                chosen = chosen[: config.mask_positives_per_image]
                mask_parts.append((index, positive[chosen], matched[chosen], pred_boxes[positive[chosen]]))
        soft_total = cls_targets.sum().clamp(min=1.0)
        loss_cls = quality_focal_loss(cls_logits, cls_targets) / soft_total
        pred_boxes, gt_boxes = torch.cat(pred_all), torch.cat(gt_all)
        if pred_boxes.shape[0]:
            loss_box = (1 - paired_giou(pred_boxes, gt_boxes)).mean() * config.box_loss_weight
        else:
            loss_box = outputs.distances.sum() * 0
        if not mask_parts:
            zero = outputs.kernels.sum() * 0 + mask_features.sum() * 0
            return dict(zip(LOSS_KEYS, (loss_cls, loss_box, zero, zero), strict=True))
        logits, wanted = [], []
        for index, points, matched, boxes in mask_parts:
            boxes = clip_boxes(boxes.detach(), image_sizes[index])
            logits.append(
                dynamic_mask_logits(
                    mask_features,
                    boxes,
                    torch.full_like(points, index),
                    outputs.points[points],
                    outputs.kernels[index, points],
                    config.mask_size,
                    config.dynamic_channels,
                )
            )
            wanted.append(mask_targets(targets[index].masks, boxes, matched, config.mask_size))
        logits, wanted = torch.cat(logits), torch.cat(wanted)
        weight = config.mask_loss_weight
        return {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_mask_dice": dice_loss(logits, wanted) * weight,
            "loss_mask_bce": F.binary_cross_entropy_with_logits(logits, wanted) * weight,
        }


def decode_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Points `(N, 2)` x, y and distances `(N, 4)` left, top, right, bottom -> boxes `(N, 4)` x1y1x2y2."""
    return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)


def condinst_summary(config: dict, num_classes: int) -> dict[str, object]:
    """`SegmentationModel.summary` of a CondInst from its config dict (also used by its ONNX backend)."""
    return {
        "family": "condinst",
        "backbone": config["backbone"],
        "num_classes": num_classes,
        "max_size": config["max_size"],
        "max_image_pixels": config["max_image_pixels"],
    }
