"""Region proposal network: anchors on every pyramid level, objectness + box deltas per anchor, top-k + NMS.

Anchor order (shared with the ops' `AnchorGenerator`): levels P2..P6 concatenated; within a level row-major
over feature cells (y, then x), then over the anchors of a cell; the head's outputs are flattened alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.models.inputs import Target
from instaseg.models.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from instaseg.models.transform import ImageBatch
from instaseg.ops import AnchorGenerator, BoxCoder, batched_nms, box_iou, clip_boxes, remove_small_boxes


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs: `A` objectness logits and `4A` box deltas per feature cell.

    `forward(features: list[(B, C, H_l, W_l)]) -> (logits [(B, A, H_l, W_l)], deltas [(B, 4A, H_l, W_l)])`.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)
            )
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # torchvision's published COCO checkpoints name the shared conv `conv.weight` (older layout).
        for kind in ("weight", "bias"):
            old_key = f"{prefix}conv.{kind}"
            if old_key in state_dict:
                state_dict[f"{prefix}conv.0.0.{kind}"] = state_dict.pop(old_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_predictions(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> `(B, M)` logits and `(B, M, 4)` deltas in anchor order (M anchors in all)."""
    flat_logits, flat_deltas = [], []
    for level_logits, level_deltas in zip(logits, deltas, strict=True):
        batch, num_anchors, height, width = level_logits.shape
        flat_logits.append(level_logits.permute(0, 2, 3, 1).reshape(batch, -1))
        flat_deltas.append(
            level_deltas.view(batch, num_anchors, 4, height, width)
            .permute(0, 3, 4, 1, 2)
            .reshape(batch, -1, 4)
        )
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """`forward(batch, features, targets) -> (proposals, losses)`.

    proposals: per image `(K_i, 4) x1y1x2y2` in resized-image pixels, by decreasing objectness, K_i <=
    `post_nms_top_n`. Before NMS (IoU `nms_thresh`, per level) each level keeps its `pre_nms_top_n` best
    anchors. Both top-n differ between training (2000/2000) and inference (1000/1000). losses (training only):
    `loss_objectness` (BCE over `batch_size_per_image` sampled anchors, `positive_fraction` positive) and
    `loss_rpn_box_reg` (smooth L1 on positives, divided by the number of sampled anchors).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n_train = pre_nms_top_n_train
        self.pre_nms_top_n_test = pre_nms_top_n_test
        self.post_nms_top_n_train = post_nms_top_n_train
        self.post_nms_top_n_test = post_nms_top_n_test
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_box_size = 1e-3

    def forward(
        self, batch: ImageBatch, features: dict[str, Tensor], targets: list[Target] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feature_maps = list(features.values())
        logits, deltas = self.head(feature_maps)
        anchors = self.anchor_generator(feature_maps, tuple(batch.tensors.shape[-2:]))
        anchors_per_level = [level.shape[1] * level.shape[2] * level.shape[3] for level in logits]
        objectness, box_deltas = flatten_predictions(logits, deltas)
        # Proposals do not back-propagate into the deltas (Faster R-CNN's approximate joint training).
        boxes = self.filter_proposals(
            box_deltas.detach(), anchors, objectness.detach(), batch.image_sizes, anchors_per_level
        )
        if not self.training:
            return boxes, {}
        if targets is None:
            raise ValueError("the RPN needs targets in training mode")
        labels, regression_targets = self.assign_targets(anchors, targets)
        return boxes, self.losses(objectness, box_deltas, labels, regression_targets)

    def filter_proposals(
        self,
        box_deltas: Tensor,
        anchors: Tensor,
        objectness: Tensor,
        image_sizes: list[tuple[int, int]],
        anchors_per_level: list[int],
    ) -> list[Tensor]:
        """Top-n per level, decode, clip, drop tiny boxes, per-level NMS, keep `post_nms_top_n` per image.

        `box_deltas (B, A, 4)` and `objectness (B, A)` per anchor of `anchors (A, 4)`; only the top-n anchors
        of each level are decoded (the same boxes as decoding all, for a fraction of the work).
        """
        pre_nms_top_n = self.pre_nms_top_n_train if self.training else self.pre_nms_top_n_test
        post_nms_top_n = self.post_nms_top_n_train if self.training else self.post_nms_top_n_test
        top_indices, top_levels = [], []
        offset = 0
        for level, level_objectness in enumerate(objectness.split(anchors_per_level, dim=1)):
            count = torch.sym_min(pre_nms_top_n, level_objectness.shape[1])  # symbolic when exported
            indices = level_objectness.topk(count, dim=1).indices + offset
            top_indices.append(indices)
            top_levels.append(torch.full_like(indices, level))
            offset += level_objectness.shape[1]
        top_indices = torch.cat(top_indices, dim=1)
        levels = torch.cat(top_levels, dim=1)
        scores = torch.sigmoid(objectness.gather(1, top_indices))
        top_deltas = box_deltas.gather(1, top_indices[..., None].expand(-1, -1, 4))
        proposals = self.box_coder.decode(top_deltas.reshape(-1, 4), anchors[top_indices.reshape(-1)])
        proposals = proposals.view(top_indices.shape[0], -1, 4)
        results = []
        for boxes, image_scores, image_levels, image_size in zip(
            proposals, scores, levels, image_sizes, strict=True
        ):
            boxes = clip_boxes(boxes, image_size)
            keep = remove_small_boxes(boxes, self.min_box_size)
            keep = keep[image_scores[keep] >= self.score_thresh]
            kept = batched_nms(
                boxes[keep], image_scores[keep], image_levels[keep], self.nms_thresh, post_nms_top_n
            )
            results.append(boxes[keep[kept]])
        return results

    def assign_targets(self, anchors: Tensor, targets: list[Target]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels `(M,)` float (1 object, 0 background, -1 ignored) and box regression
        targets `(M, 4)` towards the matched ground truth."""
        labels, regression_targets = [], []
        for target in targets:
            if target.boxes.shape[0] == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                regression_targets.append(torch.zeros_like(anchors))
                continue
            matches = self.matcher(box_iou(target.boxes, anchors))
            image_labels = (matches >= 0).to(torch.float32)
            image_labels[matches == BELOW_LOW_THRESHOLD] = 0.0
            image_labels[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(target.boxes[matches.clamp(min=0)], anchors))
        return labels, regression_targets

    def losses(
        self, objectness: Tensor, box_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> dict[str, Tensor]:
        positive, negative = self.sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        labels = torch.cat(labels)
        regression_targets = torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(
            box_deltas.reshape(-1, 4)[positive], regression_targets[positive], beta=1 / 9, reduction="sum"
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
