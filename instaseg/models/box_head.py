"""Box branch: two FC layers on 7x7 RoI features, then class logits and class-specific box deltas."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """`(K, C, 7, 7)` pooled RoI features -> `(K, representation_size)` after two FC + ReLU layers."""

    def __init__(self, in_features: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc6(x.flatten(start_dim=1)))
        return F.relu(self.fc7(x))


class FastRCNNPredictor(nn.Module):
    """`(K, D)` -> class logits `(K, num_classes)` (0 = background) and deltas `(K, 4 * num_classes)`.

    Deltas are per class (class-specific regression), encoded with weights (10, 10, 5, 5) relative to the RoI.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        # detectron2's init: near-uniform class scores, near-zero deltas (proposals kept) at the start.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def box_losses(
    class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """Fast R-CNN losses over K sampled RoIs of the whole batch.

    `loss_classifier`: cross-entropy of `(K, num_classes)` logits against `labels (K,)` (0 = background).
    `loss_box_reg`: smooth L1 (beta 1/9) between the deltas of each positive RoI's own class and
    `regression_targets (K, 4)`, summed and divided by K.
    """
    classifier_loss = F.cross_entropy(class_logits, labels)
    positive = labels > 0
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[positive, labels[positive]]
    box_loss = F.smooth_l1_loss(deltas, regression_targets[positive], beta=1 / 9, reduction="sum")
    return {"loss_classifier": classifier_loss, "loss_box_reg": box_loss / max(labels.numel(), 1)}
