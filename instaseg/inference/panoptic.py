"""Panoptic and semantic outputs from instance predictions (and, when a model has one, a semantic map).

The merge (detectron2's rule for Panoptic FPN, with its defaults) gives each pixel to at most one segment:

1. instances by decreasing score, those scoring at least `score_threshold`: an instance whose mask lies more
   than `overlap_threshold` on pixels already claimed is dropped; otherwise it takes its unclaimed pixels,
   and is dropped when fewer than `min_area` remain;
2. then, with a semantic map, each stuff category takes its still-unclaimed pixels as one segment when they
   number at least `stuff_area_threshold`;
3. every other pixel stays unlabelled (segment id 0).

Without a semantic map (instance-only models, as nuclei segmentation is usually scored) the result is a
non-overlapping instance set: step 1 alone. Masks are handled one instance crop at a time, so memory grows
with the objects, not with N x image size.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from instaseg.inference.mask_crops import crops_from_masks
from instaseg.structures.instances import Instances
from instaseg.structures.panoptic import MAX_SEGMENT_ID, PanopticSegmentation, Segment, segment_bbox


@dataclass(frozen=True)
class PanopticOptions:
    """The merge's thresholds (see the module docstring); the defaults are detectron2's."""

    score_threshold: float = 0.5
    overlap_threshold: float = 0.5
    min_area: int = 0
    stuff_area_threshold: int = 4096

    def __post_init__(self) -> None:
        for name in ("score_threshold", "overlap_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PanopticOptions.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("min_area", "stuff_area_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"PanopticOptions.{name} must be >= 0, got {getattr(self, name)}")


def instances_to_panoptic(
    instances: Instances,
    options: PanopticOptions = PanopticOptions(),
    semantic: np.ndarray | None = None,
    stuff_category_ids: Collection[int] = (),
) -> PanopticSegmentation:
    """Merge one image's `instances` (labels are category ids, as `Predictor` returns them) and optional
    `semantic (H, W)` category-id map into a `PanopticSegmentation`. Only `stuff_category_ids` of the
    semantic map become stuff segments (its thing categories are covered by the instances)."""
    height, width = instances.image_size
    if semantic is not None and semantic.shape != (height, width):
        raise ValueError(
            f"semantic map is {semantic.shape}, but the instances are for an image of {(height, width)}"
        )
    if len(instances) and instances.masks is None:
        raise ValueError("panoptic output needs instance masks; these instances have none")
    segment_ids = np.zeros((height, width), dtype=np.int32)
    segments: list[Segment] = []
    order = np.argsort(-instances.scores.numpy(), kind="stable") if len(instances) else np.zeros(0, int)
    crops = crops_from_masks(instances.masks) if len(instances) else []
    for index in order:
        score = float(instances.scores[index])
        crop = crops[index]
        if score < options.score_threshold or crop.area == 0:
            continue
        window = segment_ids[crop.window()]
        claimed = (window > 0) & crop.bitmap
        if claimed.sum() / crop.area > options.overlap_threshold:
            continue
        free = crop.bitmap & ~claimed
        area = int(free.sum())
        if area == 0 or area < options.min_area:
            continue
        segment_id = _next_id(segments)
        window[free] = segment_id
        rows, cols = np.nonzero(free)
        bbox = (
            float(crop.x0 + cols.min()),
            float(crop.y0 + rows.min()),
            float(cols.max() + 1 - cols.min()),
            float(rows.max() + 1 - rows.min()),
        )
        segments.append(Segment(segment_id, int(instances.labels[index]), True, area, bbox, score=score))
    if semantic is not None:
        for category_id in sorted(set(int(c) for c in stuff_category_ids)):
            free = (semantic == category_id) & (segment_ids == 0)
            area = int(free.sum())
            if area == 0 or area < options.stuff_area_threshold:
                continue
            segment_id = _next_id(segments)
            segment_ids[free] = segment_id
            segments.append(Segment(segment_id, category_id, False, area, segment_bbox(free)))
    return PanopticSegmentation(segment_ids, segments)


def _next_id(segments: list[Segment]) -> int:
    segment_id = len(segments) + 1
    if segment_id > MAX_SEGMENT_ID:
        raise ValueError(f"more than {MAX_SEGMENT_ID} segments in one image do not fit a COCO panoptic PNG")
    return segment_id
