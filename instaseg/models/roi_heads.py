"""RoI heads: pool each proposal's features, classify and refine it (box branch), segment each detection (mask
branch). Training samples proposals against the ground truth; inference scores, NMSes and keeps the top
detections. All boxes here are `(K, 4) x1y1x2y2` in resized-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.box_head import FastRCNNPredictor, TwoMLPHead, box_losses
from instaseg.models.inputs import Target
from instaseg.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor, mask_loss, select_class_channel
from instaseg.models.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions
from instaseg.ops import BoxCoder, MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes, remove_small_boxes


@dataclass
class Detections:
    """Final detections of one image in resized-image pixels, by decreasing score.

    `boxes (N, 4)`, `scores (N,)`, `labels (N,)` model classes 1..num_classes-1, `mask_logits (N, 28, 28)` of
    the detection's own class.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    mask_logits: Tensor


@dataclass
class TrainingSamples:
    """Sampled RoIs of one image with their class labels (0 = background), the index of the matched ground
    truth (meaningful where label > 0) and box regression targets `(K, 4)`."""

    proposals: Tensor
    labels: Tensor
    matched_indices: Tensor
    regression_targets: Tensor


class RoIHeads(nn.Module):
    """`forward(features, proposals, image_sizes, targets) -> (detections, losses)`.

    Training returns no detections and the losses `loss_classifier`, `loss_box_reg`, `loss_mask`; inference
    returns one `Detections` per image and no losses. Detections keep class scores above `score_thresh`, after
    per-class NMS at IoU `nms_thresh`, at most `detections_per_img` per image.
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: TwoMLPHead,
        box_predictor: FastRCNNPredictor,
        mask_roi_pool: MultiScaleRoIAlign,
        mask_head: MaskRCNNHeads,
        mask_predictor: MaskRCNNPredictor,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10, 10, 5, 5),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_box_size = 1e-2

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target] | None = None,
        options: DetectOptions = DEFAULT_DETECT_OPTIONS,
    ) -> tuple[list[Detections], dict[str, Tensor]]:
        """Training: `([], losses)`. Inference: `(detections, {})`, with `options`' thresholds where set."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            return [], self.losses(features, proposals, image_sizes, targets)
        box_features = self.box_roi_pool(features, proposals, image_sizes, head=self.box_head)
        class_logits, box_deltas = self.box_predictor(box_features)
        boxes, scores, labels = self.select_detections(
            class_logits, box_deltas, proposals, image_sizes, options
        )
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_sizes)))
        mask_logits = select_class_channel(mask_logits, torch.cat(labels)).split([b.shape[0] for b in boxes])
        return [Detections(*fields) for fields in zip(boxes, scores, labels, mask_logits, strict=True)], {}

    def select_detections(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        options: DetectOptions = DEFAULT_DETECT_OPTIONS,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Decode class-specific boxes, then per image: clip, drop background and low scores, drop tiny boxes,
        per-class NMS, keep the best `detections_per_img` (each threshold `options`' where it sets one).
        Returns per-image boxes, scores, labels."""
        score_thresh = _given(options.score_threshold, self.score_thresh)
        nms_thresh = _given(options.iou_threshold, self.nms_thresh)
        max_detections = _given(options.max_detections, self.detections_per_img)
        num_classes = class_logits.shape[-1]
        boxes_per_image = [image_proposals.shape[0] for image_proposals in proposals]
        pred_boxes = self.box_coder.decode(box_deltas, torch.cat(proposals)).reshape(-1, num_classes, 4)
        pred_scores = F.softmax(class_logits, dim=-1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_size in zip(
            pred_boxes.split(boxes_per_image), pred_scores.split(boxes_per_image), image_sizes, strict=True
        ):
            # one candidate per (proposal, foreground class) pair; class 0 is the background
            boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(-1, num_classes, 4)
            boxes = boxes[:, 1:].reshape(-1, 4)
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)[:, 1:].reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > score_thresh)[0]
            keep = keep[remove_small_boxes(boxes[keep], self.min_box_size)]
            keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], nms_thresh, max_detections)]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def sample_proposals(self, proposals: list[Tensor], targets: list[Target]) -> list[TrainingSamples]:
        """Add the ground-truth boxes to the proposals, match (IoU >= 0.5 foreground, below background), and
        sample `batch_size_per_image` RoIs per image with at most `positive_fraction` foreground."""
        matched, labels = [], []
        proposals = [
            torch.cat([image_proposals, target.boxes])
            for image_proposals, target in zip(proposals, targets, strict=True)
        ]
        for image_proposals, target in zip(proposals, targets, strict=True):
            if target.boxes.shape[0] == 0:
                matched.append(
                    torch.zeros(len(image_proposals), dtype=torch.int64, device=image_proposals.device)
                )
                labels.append(torch.zeros_like(matched[-1]))
                continue
            matches = self.matcher(box_iou(target.boxes, image_proposals))
            image_labels = target.labels[matches.clamp(min=0)]
            image_labels[matches == BELOW_LOW_THRESHOLD] = 0
            image_labels[matches == BETWEEN_THRESHOLDS] = -1
            matched.append(matches.clamp(min=0))
            labels.append(image_labels)
        positive, negative = self.sampler(labels)
        samples = []
        for index, target in enumerate(targets):
            chosen = torch.where(positive[index] | negative[index])[0]
            image_proposals = proposals[index][chosen]
            matches = matched[index][chosen]
            gt_boxes = target.boxes if target.boxes.shape[0] else target.boxes.new_zeros((1, 4))
            regression_targets = self.box_coder.encode(gt_boxes[matches], image_proposals)
            samples.append(
                TrainingSamples(image_proposals, labels[index][chosen], matches, regression_targets)
            )
        return samples

    def losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[Target],
    ) -> dict[str, Tensor]:
        samples = self.sample_proposals(proposals, targets)
        rois = [sample.proposals for sample in samples]
        box_features = self.box_roi_pool(features, rois, image_sizes, head=self.box_head)
        class_logits, box_deltas = self.box_predictor(box_features)
        losses = box_losses(
            class_logits,
            box_deltas,
            torch.cat([sample.labels for sample in samples]),
            torch.cat([sample.regression_targets for sample in samples]),
        )
        positives = [torch.where(sample.labels > 0)[0] for sample in samples]
        positive_rois = [sample.proposals[chosen] for sample, chosen in zip(samples, positives, strict=True)]
        mask_logits = self.mask_predictor(
            self.mask_head(self.mask_roi_pool(features, positive_rois, image_sizes))
        )
        losses["loss_mask"] = mask_loss(
            mask_logits,
            positive_rois,
            [target.masks for target in targets],
            [target.labels for target in targets],
            [sample.matched_indices[chosen] for sample, chosen in zip(samples, positives, strict=True)],
        )
        return losses


def _given(value: float | int | None, default: float | int) -> float | int:
    """`value` where a caller set it, else the module's own `default`."""
    return default if value is None else value
