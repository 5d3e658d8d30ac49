"""Panoptic and semantic outputs from a model's predictions.

Things are the instances without an `isthing` field or with `isthing` True; stuff the instances with it
False (one per stuff class and image: what a Mask R-CNN with a semantic head, Panoptic FPN, outputs). The
merge (detectron2's rule for Panoptic FPN, with its defaults) gives each pixel to at most one segment:

1. things by decreasing score, those scoring at least `score_threshold`: a thing whose mask lies more than
   `overlap_threshold` on pixels already claimed is dropped; otherwise it takes its unclaimed pixels, and is
   dropped when fewer than `min_area` remain;
2. then each stuff region takes its still-unclaimed pixels when they number at least `stuff_area_threshold`;
3. every other pixel stays unlabelled (segment id 0).

For an instance-only model (as nuclei segmentation is usually scored) the result is a non-overlapping
instance set: step 1 alone. Masks are handled one instance crop at a time, so memory grows with the
objects, not with N x image size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from instaseg.io.atomic import atomic_write
from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import MaskCrop, crops_from_masks
from instaseg.structures.panoptic import MAX_SEGMENT_ID, PanopticSegmentation, Segment


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
    instances: Instances, options: PanopticOptions = PanopticOptions()
) -> PanopticSegmentation:
    """Merge one image's things and stuff (labels are category ids, as `Predictor` returns them) into a
    `PanopticSegmentation` (see the module docstring)."""
    height, width = instances.image_size
    if len(instances) and instances.masks is None:
        raise ValueError("panoptic output needs instance masks; these instances have none")
    segment_ids = np.zeros((height, width), dtype=np.int32)
    segments: list[Segment] = []
    if not len(instances):
        return PanopticSegmentation(segment_ids, segments)
    isthing = instances.fields.get("isthing", torch.ones(len(instances), dtype=torch.bool)).bool().numpy()
    scores = instances.scores.numpy()
    crops = crops_from_masks(instances.masks)
    things = [
        i for i in np.argsort(-scores, kind="stable") if isthing[i] and scores[i] >= options.score_threshold
    ]
    for index in things:
        crop = crops[index]
        window = segment_ids[crop.window()]
        claimed = (window > 0) & crop.bitmap
        if crop.area == 0 or claimed.sum() / crop.area > options.overlap_threshold:
            continue
        _claim(segments, window, crop, crop.bitmap & ~claimed, options.min_area, instances, index, True)
    for index in np.flatnonzero(~isthing):
        crop = crops[index]
        window = segment_ids[crop.window()]
        free = crop.bitmap & (window == 0)
        _claim(segments, window, crop, free, max(1, options.stuff_area_threshold), instances, index, False)
    return PanopticSegmentation(segment_ids, segments)


def _claim(
    segments: list[Segment],
    window: np.ndarray,
    crop: MaskCrop,
    free: np.ndarray,
    min_area: int,
    instances: Instances,
    index: int,
    isthing: bool,
) -> None:
    """Give the `free` pixels of `crop` (inside `window`, the segment-id map under the crop) to a new segment
    for instance `index`, unless fewer than `min_area` (and at least one) are free."""
    area = int(free.sum())
    if area == 0 or area < min_area:
        return
    segment_id = _next_id(segments)
    window[free] = segment_id
    rows, cols = np.nonzero(free)
    bbox = (
        float(crop.x0 + cols.min()),
        float(crop.y0 + rows.min()),
        float(cols.max() + 1 - cols.min()),
        float(rows.max() + 1 - rows.min()),
    )
    score = float(instances.scores[index])
    segments.append(Segment(segment_id, int(instances.labels[index]), isthing, area, bbox, score=score))


def _next_id(segments: list[Segment]) -> int:
    segment_id = len(segments) + 1
    if segment_id > MAX_SEGMENT_ID:
        raise ValueError(f"more than {MAX_SEGMENT_ID} segments in one image do not fit a COCO panoptic PNG")
    return segment_id


@dataclass
class PanopticResults:
    """Accumulates COCO panoptic predictions: `save()` writes `panoptic.json` (`images`, `annotations` with
    each image's PNG `file_name` and `segments_info`, `categories` with `isthing`) into `folder`; the PNGs
    themselves are written per image by the caller (`PanopticSegmentation.to_rgb`)."""

    folder: Path
    categories: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def add(self, image_id: int, file_name: str, png_name: str, segmentation: PanopticSegmentation) -> None:
        height, width = segmentation.image_size
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        self.annotations.append(
            {"image_id": image_id, "file_name": png_name, "segments_info": segmentation.segments_info()}
        )

    def save(self) -> None:
        """Write `panoptic.json` atomically; a category is a thing unless it was only ever seen as stuff."""
        stuff = {
            segment["category_id"]
            for annotation in self.annotations
            for segment in annotation["segments_info"]
            if not segment["isthing"]
        }
        categories = [
            {**category, "isthing": int(category["id"] not in stuff)} for category in self.categories
        ]
        payload = {"images": self.images, "annotations": self.annotations, "categories": categories}
        with atomic_write(self.folder / "panoptic.json", "w") as stream:
            json.dump(payload, stream)


def semantic_map(segmentation: PanopticSegmentation) -> np.ndarray:
    """`(H, W)` map of the segments' category ids (uint8, or uint16 for ids above 255); 0 = unclaimed."""
    ids = {segment.category_id for segment in segmentation.segments}
    return segmentation.semantic_map({category: category for category in ids}, unlabelled=0)
