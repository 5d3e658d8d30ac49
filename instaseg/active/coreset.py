"""Diversity by core-set: k-center greedy selection on pooled backbone features (Sener & Savarese, 2018).

Each step picks the pool image farthest (Euclidean, on L2-normalised features) from every image already
chosen or already labelled, so the chosen set covers the pool's feature space; that distance is the image's
score. Written with torch (a few lines of pairwise distances) rather than a library: scikit-learn has no
k-center greedy, and the selection needs the labelled images as fixed centres.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class FeatureModel(Protocol):
    """The optional capability core-set needs: `image_features((3, H, W) images) -> (B, C)` pooled features
    (`MaskRCNN` and `CondInst` have it; an exported ONNX model does not)."""

    def image_features(self, images: list[Tensor]) -> Tensor: ...


def k_center_greedy(
    features: Tensor, count: int, labelled: Tensor | None = None
) -> tuple[list[int], list[float]]:
    """Pick `count` rows of `features (N, C)` by k-center greedy, given already `labelled (L, C)` centres.

    Returns the picked row indices in selection order and each one's distance to the nearest centre when it
    was picked. Without labelled centres the first pick is the row farthest from the features' mean (a
    deterministic start). Ties go to the lowest index.
    """
    if features.ndim != 2:
        raise ValueError(f"k_center_greedy expects (N, C) features, got shape {tuple(features.shape)}")
    if not 0 <= count <= features.shape[0]:
        raise ValueError(f"k_center_greedy: cannot pick {count} of {features.shape[0]} rows")
    points = torch.nn.functional.normalize(features.double(), dim=1)
    if labelled is not None and labelled.shape[0]:
        centres = torch.nn.functional.normalize(labelled.double(), dim=1)
        nearest = torch.cdist(points, centres).min(dim=1).values
    else:  # the mean is only a starting point, not a centre: it is replaced by the first pick
        nearest = torch.full((points.shape[0],), float("inf"), dtype=torch.float64)
        start = torch.linalg.vector_norm(points - points.mean(dim=0), dim=1)
    picked: list[int] = []
    distances: list[float] = []
    for _ in range(count):
        first_without_centres = not picked and bool(torch.isinf(nearest).all())
        index = int(torch.argmax(start if first_without_centres else nearest))
        picked.append(index)
        distances.append(float(start[index] if first_without_centres else nearest[index]))
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(points - points[index], dim=1))
        nearest[index] = -1.0  # never picked twice
    return picked, distances
