"""Post-processing of one image's predictions: every filtering and mask clean-up option, in one place.

`postprocess(instances, options)` applies, in this order:

1. `score_threshold`: instances scoring below it are dropped;
2. masks: when the instances carry `mask_logits` (N, 28, 28) (the model's raw mask-head output for each box)
   and `mask_threshold` is not the model's own (`MASK_THRESHOLD`, at which its masks were pasted from those
   logits), masks are re-pasted from them with `paste_masks_in_image` and binarised at `mask_threshold`;
3. `nms`: none, greedy ("hard"), Soft-NMS ("soft-gaussian", "soft-linear") or Matrix NMS ("matrix"), per
   class or class-agnostic; Soft/Matrix NMS lower scores, and instances whose lowered score falls below
   `score_threshold` are dropped;
4. per instance, by decreasing score: morphological opening (`opening_radius`), hole filling (`fill_holes`),
   keeping the largest connected component (`largest_component_only`), then, with `non_overlapping`,
   removing the pixels already claimed by a higher-scoring instance (and keeping the largest component
   again when asked);
5. `min_mask_area`: instances whose final mask has fewer pixels are dropped;
6. `max_detections`: the highest-scoring ones are kept.

Boxes stay the detector's boxes (mask clean-up does not move them). The result is sorted by decreasing score.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from scipy import ndimage

from instaseg.models.protocol import EVALUATION_SCORE_THRESHOLD, MASK_THRESHOLD, OperatingPoint
from instaseg.ops import batched_nms, matrix_nms, nms, paste_masks_in_image, soft_nms
from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import DENSE_MASK_LIMIT, MaskCrop, crops_from_masks, masks_from_crops
from instaseg.structures.masks import Masks

NMS_KINDS = ("none", "hard", "soft-gaussian", "soft-linear", "matrix")
# Matrix NMS builds an (N, H*W) matrix: masks are subsampled so their longer side is at most this many pixels.
MATRIX_NMS_MAX_SIDE = 256


@dataclass(frozen=True)
class PostprocessOptions:
    """Filtering and mask clean-up applied to a model's predictions. The defaults change nothing a
    torchvision-style Mask R-CNN has not already done, except dropping scores below 0.05.

    score_threshold: drop instances scoring below this (default None: the model's recommended operating
        point when the `Predictor` knows one, else 0.05, as COCO evaluation does). Ask for 0.05 explicitly
        where every detection counts (AP).
    mask_threshold: probability above which a pixel belongs to the mask (default None: the operating
        point's, else 0.5).
    nms: "none" (default: the model already ran per-class NMS), "hard", "soft-gaussian", "soft-linear" or
        "matrix".
    nms_iou_threshold: IoU above which "hard" suppresses and "soft-linear" decays (default 0.5).
    soft_nms_sigma: Gaussian Soft-NMS width, decay exp(-iou^2 / sigma) (default 0.5).
    matrix_nms_sigma: Matrix NMS Gaussian kernel, decay exp(-sigma * iou^2) (default 2.0).
    class_agnostic: NMS across classes instead of within each class (default False).
    max_detections: keep at most this many instances, best first (default None: no limit).
    min_mask_area: drop instances whose final mask has fewer pixels (default 0: keep all).
    fill_holes: fill background regions enclosed by a mask (default False).
    opening_radius: morphological opening with a disc of this radius in pixels, removing thin spurs and
        specks (default 0: off).
    largest_component_only: keep only each mask's largest 8-connected component (default False).
    non_overlapping: give each pixel only to the highest-scoring instance claiming it (default False).
    """

    score_threshold: float | None = None
    mask_threshold: float | None = None
    nms: str = "none"
    nms_iou_threshold: float = 0.5
    soft_nms_sigma: float = 0.5
    matrix_nms_sigma: float = 2.0
    class_agnostic: bool = False
    max_detections: int | None = None
    min_mask_area: int = 0
    fill_holes: bool = False
    opening_radius: int = 0
    largest_component_only: bool = False
    non_overlapping: bool = False

    def __post_init__(self) -> None:
        for name in ("score_threshold", "mask_threshold", "nms_iou_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"PostprocessOptions.{name} must lie in [0, 1], got {value}")
        if self.nms not in NMS_KINDS:
            raise ValueError(
                f"PostprocessOptions.nms must be one of {', '.join(NMS_KINDS)}; got {self.nms!r}"
            )
        for name in ("soft_nms_sigma", "matrix_nms_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PostprocessOptions.{name} must be > 0, got {getattr(self, name)}")
        if self.max_detections is not None and self.max_detections < 0:
            raise ValueError(f"PostprocessOptions.max_detections must be >= 0, got {self.max_detections}")
        for name in ("min_mask_area", "opening_radius"):
            if getattr(self, name) < 0:
                raise ValueError(f"PostprocessOptions.{name} must be >= 0, got {getattr(self, name)}")

    def resolved(self, operating_point: OperatingPoint | None) -> PostprocessOptions:
        """These options with the thresholds left None filled in: from `operating_point` when given, else
        0.05 (score) and 0.5 (mask)."""
        score = EVALUATION_SCORE_THRESHOLD if operating_point is None else operating_point.score_threshold
        mask = MASK_THRESHOLD if operating_point is None else operating_point.mask_threshold
        return replace(
            self,
            score_threshold=score if self.score_threshold is None else self.score_threshold,
            mask_threshold=mask if self.mask_threshold is None else self.mask_threshold,
        )

    @property
    def edits_masks(self) -> bool:
        """Whether step 4 or 5 has anything to do."""
        return (
            self.fill_holes
            or self.opening_radius > 0
            or self.largest_component_only
            or self.non_overlapping
            or self.min_mask_area > 0
        )


def postprocess(instances: Instances, options: PostprocessOptions) -> Instances:
    """Apply `options` to one image's `instances` (see the module docstring for the order of the steps).

    Needs `scores`. Mask options need masks (a `ValueError` says which option when there are none). The output
    keeps every field of the kept instances; masks come back dense when the input's were and the image is
    small enough, as RLE otherwise.
    Thresholds left None are 0.05 and 0.5 here (a `Predictor` fills them from the model's operating point).
    """
    options = options.resolved(None)
    if instances.scores is None:
        raise ValueError("postprocess needs scored instances (predictions); these have no scores")
    if instances.masks is None and "mask_logits" not in instances.fields:
        needing_masks = [
            name
            for name, on in (
                ("nms='matrix'", options.nms == "matrix"),
                ("fill_holes", options.fill_holes),
                ("opening_radius", options.opening_radius > 0),
                ("largest_component_only", options.largest_component_only),
                ("non_overlapping", options.non_overlapping),
                ("min_mask_area", options.min_mask_area > 0),
            )
            if on
        ]
        if needing_masks:
            raise ValueError(f"postprocess: {', '.join(needing_masks)} need masks; these instances have none")

    # Score filter first: re-pasting masks costs per instance, and dropped instances need none.
    instances = instances[instances.scores >= options.score_threshold]
    instances = binarize_masks(instances, options.mask_threshold)
    instances = _suppress(instances, options)
    instances = instances[torch.argsort(instances.scores, descending=True, stable=True)]
    if instances.masks is not None and options.edits_masks:
        instances = _edit_masks(instances, options)
    if options.max_detections is not None:
        instances = instances[: options.max_detections]
    return instances


def binarize_masks(instances: Instances, mask_threshold: float) -> Instances:
    """Masks re-pasted from the `mask_logits` field (N, M, M) and thresholded at `mask_threshold`.

    Returned unchanged: instances without that field (their masks are already binary), and instances with
    masks when `mask_threshold` is `MASK_THRESHOLD`: a model's output (`MaskRCNN`, the ONNX backend) carries
    masks pasted from its `mask_logits` at that threshold already, and pasting costs per instance and pixel.
    """
    if "mask_logits" not in instances.fields:
        return instances
    if instances.masks is not None and mask_threshold == MASK_THRESHOLD:
        return instances
    logits = instances.fields["mask_logits"]
    if logits.ndim != 3 or logits.shape[1] != logits.shape[2]:
        raise ValueError(f"postprocess: field 'mask_logits' must be (N, M, M), got {tuple(logits.shape)}")
    masks = paste_masks_in_image(
        torch.sigmoid(logits.float())[:, None],
        instances.boxes.float(),
        instances.image_size,
        threshold=mask_threshold,
    )
    return instances.replace(masks=Masks.from_bitmaps(masks[:, 0]))


def _suppress(instances: Instances, options: PostprocessOptions) -> Instances:
    """Step 3: the chosen NMS; soft and matrix variants rescore, then drop scores below the threshold."""
    if options.nms == "none" or len(instances) == 0:
        return instances
    boxes, scores, labels = instances.boxes.float(), instances.scores, instances.labels
    if options.nms == "hard":
        keep = (
            nms(boxes, scores, options.nms_iou_threshold)
            if options.class_agnostic
            else batched_nms(boxes, scores, labels, options.nms_iou_threshold)
        )
        return instances[keep]
    if options.nms == "matrix":
        height, width = instances.image_size
        step = max(1, -(-max(height, width) // MATRIX_NMS_MAX_SIDE))
        small = instances.masks.bitmaps()[:, ::step, ::step]
        decayed = matrix_nms(
            small,
            scores,
            None if options.class_agnostic else labels,
            kernel="gaussian",
            sigma=options.matrix_nms_sigma,
        )
        rescored = instances.replace(scores=decayed)
        return rescored[decayed >= options.score_threshold]
    method = "gaussian" if options.nms == "soft-gaussian" else "linear"
    # Soft-NMS has no per-class variant in ops; it is serial anyway, so run it once per class (or once).
    groups = (
        [torch.arange(len(instances))]
        if options.class_agnostic
        else [torch.nonzero(labels == label).reshape(-1) for label in torch.unique(labels)]
    )
    kept, rescored = [], []
    for members in groups:
        keep, decayed = soft_nms(
            boxes[members],
            scores[members],
            options.nms_iou_threshold,
            options.soft_nms_sigma,
            method,
            score_threshold=options.score_threshold,
        )
        kept.append(members[keep])
        rescored.append(decayed)
    return instances[torch.cat(kept)].replace(scores=torch.cat(rescored))


def _edit_masks(instances: Instances, options: PostprocessOptions) -> Instances:
    """Steps 4 and 5 on instances sorted by decreasing score."""
    height, width = instances.image_size
    dense = instances.masks.form == Masks.BITMAPS and len(instances) * height * width <= DENSE_MASK_LIMIT
    claimed = np.zeros((height, width), dtype=bool) if options.non_overlapping else None
    kept_positions, kept_crops = [], []
    for position, crop in enumerate(crops_from_masks(instances.masks)):
        crop = _clean(crop, options)
        if claimed is not None:
            rows, cols = crop.window()
            crop = MaskCrop(crop.y0, crop.x0, crop.bitmap & ~claimed[rows, cols])
            if options.largest_component_only:
                crop = MaskCrop(crop.y0, crop.x0, _largest_component(crop.bitmap))
            crop = crop.tightened()
        if crop.area < options.min_mask_area:
            continue
        if claimed is not None:
            claimed[crop.window()] |= crop.bitmap
        kept_positions.append(position)
        kept_crops.append(crop)
    kept = instances[torch.tensor(kept_positions, dtype=torch.int64)]
    return kept.replace(masks=masks_from_crops(kept_crops, instances.image_size, dense, instances.device))


def _clean(crop: MaskCrop, options: PostprocessOptions) -> MaskCrop:
    """Opening, hole filling and largest component on one mask crop."""
    if crop.bitmap.size == 0:
        return crop
    bitmap = crop.bitmap
    if options.opening_radius > 0:
        # Pad with background so the crop edge erodes like open space (the crop is the mask's tight box).
        r = options.opening_radius
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        padded = np.pad(bitmap, r).astype(np.uint8)
        bitmap = cv2.morphologyEx(padded, cv2.MORPH_OPEN, disc)[r:-r, r:-r].astype(bool)
    if options.fill_holes:
        bitmap = ndimage.binary_fill_holes(bitmap)
    if options.largest_component_only:
        bitmap = _largest_component(bitmap)
    return MaskCrop(crop.y0, crop.x0, bitmap).tightened()


def _largest_component(bitmap: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component of `bitmap` (ties: the first in raster order)."""
    if not bitmap.any():
        return bitmap
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bitmap.astype(np.uint8), connectivity=8)
    if count <= 2:
        return bitmap
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest
