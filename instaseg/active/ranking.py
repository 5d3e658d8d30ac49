"""Rank unlabelled images for annotation: which ones would teach the model most.

Methods (`Method`), each giving every pool image a score, highest first (how the per-image values are made
count-invariant: `instaseg.active.uncertainty`):

- `random`: a seeded uniform draw, the baseline every other method must beat;
- `mean-uncertainty`: score-weighted mean class entropy of the detections;
- `max-uncertainty`: the score-weighted 90th percentile of the class entropies (a count-invariant maximum);
- `mask-uncertainty`: score-weighted mean pixel entropy of the mask logits inside each box;
- `tta-disagreement`: how much the masks of test-time-augmented views (`instaseg.inference.tta`) disagree;
- `coreset`: k-center greedy on pooled backbone features (`instaseg.active.coreset`), starting from the
  images already labelled; the score is the distance to the nearest chosen or labelled image when picked;
- `hybrid`: shortlist the `shortlist_factor * budget` images of highest mean uncertainty, then order the
  shortlist by k-center greedy (score: that distance); the other images follow by uncertainty, score 0.

Detections are taken down to `score_threshold` (0.05 by default, as COCO evaluation does): uncertain
detections are what the methods look for, and the operating point would have dropped them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from instaseg.active.coreset import FeatureModel, k_center_greedy
from instaseg.active.uncertainty import (
    MissingCapabilityError,
    detection_components,
    has_mask_logits,
    mask_entropy,
    tta_disagreement,
)
from instaseg.inference.inputs import InputFailure, expand_inputs
from instaseg.inference.tta import TTAOptions, tta_views
from instaseg.io.images import ImageReadError, load_image, to_tensor
from instaseg.models.protocol import EVALUATION_SCORE_THRESHOLD, DetectOptions, SegmentationModel


class Method(str, Enum):
    """A ranking method (see the module docstring); the value is its command-line name."""

    RANDOM = "random"
    MEAN_UNCERTAINTY = "mean-uncertainty"
    MAX_UNCERTAINTY = "max-uncertainty"
    MASK_UNCERTAINTY = "mask-uncertainty"
    TTA_DISAGREEMENT = "tta-disagreement"
    CORESET = "coreset"
    HYBRID = "hybrid"


# The component each uncertainty method ranks by; the diversity methods score in `_diversity_order`.
_SCORE_KEY = {
    Method.MEAN_UNCERTAINTY: "mean_entropy",
    Method.MAX_UNCERTAINTY: "max_entropy",
    Method.MASK_UNCERTAINTY: "mask_entropy",
    Method.TTA_DISAGREEMENT: "tta_disagreement",
}
_NEEDS_FEATURES = (Method.CORESET, Method.HYBRID)
_NEEDS_DETECTIONS = (
    Method.MEAN_UNCERTAINTY,
    Method.MAX_UNCERTAINTY,
    Method.MASK_UNCERTAINTY,
    Method.TTA_DISAGREEMENT,
    Method.HYBRID,
)


@dataclass(frozen=True)
class RankOptions:
    """score_threshold: lowest detection score taken into account (default 0.05).
    tta: the views for `tta-disagreement` (default: the image and its mirror).
    shortlist_factor: `hybrid` shortlists this many times the budget (default 3).
    seed: the draw of `random` (default 0).
    device: where the model runs (default cpu)."""

    score_threshold: float = EVALUATION_SCORE_THRESHOLD
    tta: TTAOptions = field(default_factory=TTAOptions)
    shortlist_factor: float = 3.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {self.score_threshold}")
        if not self.shortlist_factor >= 1.0:
            raise ValueError(f"shortlist_factor must be >= 1, got {self.shortlist_factor}")
        if len(self.tta.scales) * (2 if self.tta.flip else 1) < 2:
            raise ValueError("TTA disagreement needs at least two views: flip, or two scales")


@dataclass
class RankedImage:
    """One pool image: its rank (1 = annotate first), score, whether it is in the budget, and the per-image
    values behind the score (`components`: detections, mean_entropy, max_entropy, ...)."""

    path: Path
    score: float
    components: dict[str, float]
    rank: int = 0
    selected: bool = False


@dataclass
class Ranking:
    """All readable pool images, best first, and the inputs that gave no image."""

    method: Method
    budget: int
    images: list[RankedImage]
    failures: list[InputFailure]

    @property
    def selected(self) -> list[RankedImage]:
        return [image for image in self.images if image.selected]


def rank_images(
    inputs: Sequence[str | Path],
    model: SegmentationModel,
    method: Method | str,
    budget: int,
    options: RankOptions | None = None,
    labelled: Sequence[str | Path] = (),
    progress: bool | None = None,
) -> Ranking:
    """Score every image that `inputs` (files, folders, globs) name with `method` and rank them.

    `labelled`: images already annotated (files, folders, globs), the fixed centres of `coreset` / `hybrid`.
    Raises `ValueError` for an empty pool, a budget below 1 or larger than the readable pool, and
    `MissingCapabilityError` for a model without what the method needs (pooled features, mask logits).
    An image that cannot be read is listed in `Ranking.failures`, not ranked.
    """
    method = Method(method)
    options = options or RankOptions()
    files, failures = expand_inputs(inputs)
    if not files:
        reasons = "; ".join(f"{f.source}: {f.reason}" for f in failures) or "no inputs were given"
        raise ValueError(f"no images to rank ({reasons})")
    _check_budget(budget, len(files), failures)
    if method in _NEEDS_FEATURES and not isinstance(model, FeatureModel):
        raise MissingCapabilityError(
            f"method {method.value!r} needs pooled backbone features, but the model "
            f"({type(model).__name__}) has no image_features(images) method; PyTorch Mask R-CNN and CondInst "
            "models have it (an exported .onnx model does not): rank with the checkpoint, or use an "
            "uncertainty method"
        )
    labelled_files: list[Path] = []
    if labelled:
        labelled_files, labelled_failures = expand_inputs(labelled)
        if labelled_failures:
            reasons = "; ".join(f"{f.source}: {f.reason}" for f in labelled_failures)
            raise ValueError(f"labelled images: {reasons}")
    model = model.to(options.device).eval()
    rng = np.random.default_rng(options.seed)
    scored: list[RankedImage] = []
    features: list[torch.Tensor] = []
    show = sys.stderr.isatty() if progress is None else progress
    for path in tqdm(files, unit="img", disable=not show, desc="rank"):
        try:
            image = to_tensor(load_image(path)).to(options.device)
        except ImageReadError as exc:
            failures.append(InputFailure(str(path), exc.reason))
            continue
        components = _components(model, image, method, options)
        if method in _NEEDS_FEATURES:
            features.append(_features(model, image))
        if method is Method.RANDOM:
            score = float(rng.random())
        else:
            score = components[_SCORE_KEY[method]] if method in _SCORE_KEY else 0.0
        scored.append(RankedImage(path, score, components))
    _check_budget(budget, len(scored), failures)
    if method in _NEEDS_FEATURES:
        labelled_features = _labelled_features(model, labelled_files, options.device)
        ordered = _diversity_order(scored, torch.stack(features), labelled_features, method, budget, options)
    else:
        ordered = sorted(scored, key=lambda image: -image.score)  # stable: ties keep the input order
    for rank, image in enumerate(ordered, start=1):
        image.rank = rank
        image.selected = rank <= budget
    return Ranking(method, budget, ordered, failures)


def _check_budget(budget: int, pool: int, failures: list[InputFailure]) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of images, got {budget!r}")
    if budget > pool:
        unreadable = f" ({len(failures)} input(s) gave no image)" if failures else ""
        raise ValueError(f"budget {budget} is larger than the pool of {pool} readable image(s){unreadable}")


def _components(
    model: SegmentationModel, image: torch.Tensor, method: Method, options: RankOptions
) -> dict[str, float]:
    """The per-image values the method needs (and the cheap ones that come with them)."""
    if method not in _NEEDS_DETECTIONS:
        return {}
    with torch.inference_mode():
        instances = model.detect([image], DetectOptions(score_threshold=options.score_threshold))[0]
    components = detection_components(instances)
    if has_mask_logits(instances):
        components["mask_entropy"] = mask_entropy(instances)
    elif method is Method.MASK_UNCERTAINTY:
        mask_entropy(instances)  # raises MissingCapabilityError, naming what is missing
    if method is Method.TTA_DISAGREEMENT:
        views = tta_views(model, [image], options.tta)[0]
        components["tta_disagreement"] = tta_disagreement([v.to("cpu") for v in views])
    return components


def _features(model: FeatureModel, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.image_features([image])[0].detach().cpu()


def _labelled_features(model: FeatureModel, files: list[Path], device: str) -> torch.Tensor | None:
    if not files:
        return None
    rows = []
    for path in files:
        try:
            image = to_tensor(load_image(path)).to(device)
        except ImageReadError as exc:
            raise ValueError(f"labelled image {path}: {exc.reason}") from None
        rows.append(_features(model, image))
    return torch.stack(rows)


def _diversity_order(
    scored: list[RankedImage],
    features: torch.Tensor,
    labelled: torch.Tensor | None,
    method: Method,
    budget: int,
    options: RankOptions,
) -> list[RankedImage]:
    """`coreset`: the whole pool in k-center order. `hybrid`: the uncertainty shortlist in k-center order,
    then the rest by uncertainty with score 0 (see the module docstring)."""
    if method is Method.CORESET:
        candidates = list(range(len(scored)))
    else:
        by_uncertainty = sorted(range(len(scored)), key=lambda i: -scored[i].components["mean_entropy"])
        size = min(len(scored), math.ceil(options.shortlist_factor * budget))
        candidates = by_uncertainty[:size]
    picked, distances = k_center_greedy(features[candidates], len(candidates), labelled)
    ordered = []
    for position, distance in zip(picked, distances, strict=True):
        image = scored[candidates[position]]
        image.components["coreset_distance"] = distance
        image.score = distance
        ordered.append(image)
    if method is Method.HYBRID:
        for index in by_uncertainty[len(candidates) :]:
            scored[index].score = 0.0
            ordered.append(scored[index])
    return ordered
