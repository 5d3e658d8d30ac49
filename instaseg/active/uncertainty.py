"""How unsure a model is about one image, from its detections: class, mask and test-time-augmentation terms.

Every per-image value is a weighted mean (or a weighted quantile) of per-detection values in [0, 1], never a
sum, so it lies in [0, 1] and does not grow with the number of objects: a crowded image is not favoured for
being crowded. Each detection's weight is its score, its probability of being an object: a model returns a
tail of near-threshold background candidates (more in cluttered images), and weighting by score keeps that
tail from outvoting the real objects. The "max" term is made count-invariant the same way: it is the
score-weighted 90th percentile, which equals the maximum for images with a handful of detections but, unlike
the maximum, does not rise just because an image has more detections to draw from.

Per detection (score s, the model's probability for its class):
- class entropy `H2(s)` in bits, the binary entropy of "this class or not" (exact for one-class models;
  `Instances` carry only the winning class's score), 0 for s = 0 or 1 and 1 for s = 0.5; and `1 - s`;
- mask entropy: the mean binary entropy of the mask head's probabilities over its 28x28 box-relative grid
  (the `mask_logits` field), so a small object weighs as much as a large one;
- TTA disagreement: 1 - the mean, over the other views, of its best mask IoU with a same-label detection of
  that view (0 when none); detections of every view take part, so objects only one view finds count too.

An image without any detection gets `EMPTY_IMAGE_UNCERTAINTY` (1, the highest): the model can say nothing
about it, which is as informative as an annotation can be (the `detections` component shows it).
"""

from __future__ import annotations

import numpy as np
import torch

from instaseg.structures.instances import Instances
from instaseg.structures.masks import mask_iou

EMPTY_IMAGE_UNCERTAINTY = 1.0
# The quantile that stands in for the maximum (see the module docstring).
MAX_QUANTILE = 0.9
_EPS = 1e-6


class MissingCapabilityError(ValueError):
    """The model lacks an output or method a ranking method needs; the message names both."""


def binary_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy in bits of Bernoulli(p): 0 at p in {0, 1}, 1 at p = 0.5."""
    p = probabilities.double().clamp(_EPS, 1 - _EPS)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ w v / Σ w of (N,) values; `EMPTY_IMAGE_UNCERTAINTY` for N = 0."""
    if values.numel() == 0:
        return EMPTY_IMAGE_UNCERTAINTY
    weights = weights.double().clamp_min(_EPS)
    return float((values.double() * weights).sum() / weights.sum())


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The smallest value whose share of the total weight at or below it reaches `q`; empty: 1."""
    if values.numel() == 0:
        return EMPTY_IMAGE_UNCERTAINTY
    order = torch.argsort(values.double())
    cumulative = torch.cumsum(weights.double().clamp_min(_EPS)[order], dim=0)
    position = int(torch.searchsorted(cumulative, q * cumulative[-1]))
    return float(values.double()[order][min(position, values.numel() - 1)])


def detection_components(instances: Instances) -> dict[str, float]:
    """`detections` (count), `mean_entropy`, `max_entropy` (the weighted 90th percentile) and
    `mean_one_minus_score` of one image's detections (scores needed)."""
    if instances.scores is None:
        raise ValueError("uncertainty needs detections with scores")
    scores = instances.scores.detach().cpu().double()
    entropy = binary_entropy(scores)
    return {
        "detections": float(len(instances)),
        "mean_entropy": weighted_mean(entropy, scores),
        "max_entropy": weighted_quantile(entropy, scores, MAX_QUANTILE),
        "mean_one_minus_score": weighted_mean(1 - scores, scores),
    }


def has_mask_logits(instances: Instances) -> bool:
    return "mask_logits" in instances.fields


def mask_entropy(instances: Instances) -> float:
    """Score-weighted mean over detections of the mean pixel entropy of their `mask_logits (N, M, M)`."""
    if not has_mask_logits(instances):
        raise MissingCapabilityError(
            "mask uncertainty needs the model's 'mask_logits' field (N, 28, 28) in its detections; this "
            "model's detect() does not return it"
        )
    logits = instances.fields["mask_logits"].detach().cpu()
    per_detection = binary_entropy(torch.sigmoid(logits)).flatten(1).mean(dim=1)
    return weighted_mean(per_detection, instances.scores.detach().cpu())


def tta_disagreement(views: list[Instances]) -> float:
    """Score-weighted mean over the detections of all views of 1 - their mean best same-label mask IoU with
    each other view (see the module docstring). Views are one image's, mapped back to it (`tta_views`)."""
    if len(views) < 2:
        raise ValueError(f"TTA disagreement needs at least two views, got {len(views)}")
    rles = [view.masks.rles() if view.masks is not None else None for view in views]
    if any(r is None for r in rles):
        raise MissingCapabilityError("TTA disagreement needs masks in every view's detections")
    values, weights = [], []
    for v, view in enumerate(views):
        if not len(view):
            continue
        best = np.zeros((len(view), len(views) - 1))
        others = [w for w in range(len(views)) if w != v]
        for column, w in enumerate(others):
            other = views[w]
            if not len(other):
                continue
            ious = mask_iou(rles[v], rles[w], np.zeros(len(other), dtype=bool))
            same_label = view.labels.cpu().numpy()[:, None] == other.labels.cpu().numpy()[None, :]
            best[:, column] = np.where(same_label, ious, 0.0).max(axis=1)
        values.append(torch.from_numpy(1 - best.mean(axis=1)))
        weights.append(view.scores.detach().cpu().double())
    if not values:
        return EMPTY_IMAGE_UNCERTAINTY
    return weighted_mean(torch.cat(values), torch.cat(weights))
