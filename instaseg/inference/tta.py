"""Test-time augmentation: run the model on flipped and rescaled views, map back, fuse the detections.

Views are every scale in `scales` (each with and without a horizontal flip when `flip`). A scale changes the
size the model resizes its input to (`DetectOptions.input_scale`, passed per call: the model is not
changed, so predictors sharing it are unaffected); a flip mirrors the image, and its detections (boxes and
the 28x28 `mask_logits`) are mirrored back.

Fusion (weighted box voting): detections of all views, by decreasing score, join the best-overlapping cluster
of their label (box IoU with the cluster's fused box >= `box_iou`, at most one detection per view and
cluster) or start one. A cluster's box is the score-weighted mean of its boxes, its score the sum of its
scores over the number of views (a detection seen in one view of four keeps a quarter of its score), and its
mask the mean of its members' mask probabilities (each pasted from its own box and logits) thresholded at
`mask_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from instaseg.models.protocol import DetectOptions, SegmentationModel
from instaseg.ops import paste_masks_in_image
from instaseg.structures.boxes import box_iou
from instaseg.structures.instances import Instances
from instaseg.structures.mask_crops import MaskCrop, masks_from_crops
from instaseg.structures.masks import Masks


@dataclass(frozen=True)
class TTAOptions:
    """Which views to run and how to fuse them.

    flip: add the horizontal mirror of every scale (default True).
    scales: input scales relative to the model's own resize (default (1.0,); e.g. (0.8, 1.0, 1.2)).
    box_iou: box IoU with a cluster's fused box for a detection to join it (default 0.55).
    """

    flip: bool = True
    scales: tuple[float, ...] = (1.0,)
    box_iou: float = 0.55

    def __post_init__(self) -> None:
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"TTAOptions.scales must be positive numbers, got {self.scales}")
        if not 0.0 < self.box_iou <= 1.0:
            raise ValueError(f"TTAOptions.box_iou must lie in (0, 1], got {self.box_iou}")


def flip_instances(instances: Instances) -> Instances:
    """Mirror detections left-right: boxes x -> W - x, and the `mask_logits` field and masks flipped."""
    width = instances.image_size[1]
    x1, y1, x2, y2 = instances.boxes.unbind(dim=1)
    changes: dict[str, object] = {"boxes": torch.stack([width - x2, y1, width - x1, y2], dim=1)}
    if "mask_logits" in instances.fields:
        changes["mask_logits"] = instances.fields["mask_logits"].flip(-1)
    if instances.masks is not None:
        changes["masks"] = Masks.from_bitmaps(instances.masks.bitmaps().flip(-1))
    return instances.replace(**changes)


def predict_tta(
    model: SegmentationModel, images: list[torch.Tensor], options: TTAOptions, mask_threshold: float
) -> list[Instances]:
    """Run every view of each (3, H, W) image through `model` (eval mode) and fuse them per image."""
    return [
        fuse_views(image_views, options.box_iou, mask_threshold)
        for image_views in tta_views(model, images, options)
    ]


def tta_views(
    model: SegmentationModel, images: list[torch.Tensor], options: TTAOptions
) -> list[list[Instances]]:
    """Per (3, H, W) image, the detections of each of its views mapped back to the image (not fused), in
    view order: for each scale, the image, then its mirror when `options.flip`."""
    views: list[list[Instances]] = [[] for _ in images]
    for scale in options.scales:
        batch = list(images) + ([image.flip(-1) for image in images] if options.flip else [])
        with torch.inference_mode():
            outputs = model.detect(batch, DetectOptions(input_scale=scale))
        for index in range(len(images)):
            views[index].append(outputs[index])
            if options.flip:
                views[index].append(flip_instances(outputs[len(images) + index]))
    return views


def fuse_views(views: list[Instances], box_iou_threshold: float, mask_threshold: float) -> Instances:
    """Fuse the detections of several views of one image (see the module docstring).

    Each view needs scores and the `mask_logits` field (N, M, M); the result has masks and no extra fields.
    """
    image_size = views[0].image_size
    for index, view in enumerate(views):
        if view.image_size != image_size:
            raise ValueError(
                f"fuse_views: view {index} is for image size {view.image_size}, view 0 {image_size}"
            )
        if view.scores is None or "mask_logits" not in view.fields:
            raise ValueError(f"fuse_views: view {index} needs scores and the 'mask_logits' field")
    boxes = torch.cat([view.boxes.detach().cpu().float() for view in views])
    scores = torch.cat([view.scores.detach().cpu().float() for view in views])
    labels = torch.cat([view.labels.cpu() for view in views])
    logits = torch.cat([view.fields["mask_logits"].detach().cpu().float() for view in views])
    view_of = torch.cat([torch.full((len(view),), i) for i, view in enumerate(views)])

    clusters = _cluster(boxes, scores, labels, view_of, box_iou_threshold)
    fused_boxes, fused_scores, fused_labels, crops = [], [], [], []
    for members in clusters:
        weights = scores[members]
        fused_boxes.append((boxes[members] * weights[:, None]).sum(dim=0) / weights.sum())
        fused_scores.append(weights.sum() / len(views))
        fused_labels.append(labels[members[0]])
        crops.append(_mean_mask(boxes[members], logits[members], image_size, mask_threshold))
    if not clusters:
        return Instances(
            image_size,
            torch.zeros((0, 4)),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0),
            masks_from_crops([], image_size),
        )
    fused = Instances(
        image_size,
        torch.stack(fused_boxes),
        torch.stack(fused_labels),
        torch.stack(fused_scores),
        masks_from_crops(crops, image_size),
    )
    return fused[torch.argsort(fused.scores, descending=True, stable=True)]


def _cluster(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, view_of: torch.Tensor, threshold: float
) -> list[torch.Tensor]:
    """Greedy clusters (lists of detection indices, best first) as described in the module docstring."""
    members: list[list[int]] = []
    fused: list[torch.Tensor] = []
    weight: list[float] = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        best, best_iou = -1, threshold
        if fused:
            ious = box_iou(boxes[i : i + 1], torch.stack(fused))[0]
            for c in torch.argsort(ious, descending=True).tolist():
                if ious[c] < best_iou:
                    break
                taken = any(view_of[m] == view_of[i] for m in members[c])
                if labels[members[c][0]] == labels[i] and not taken:
                    best = c
                    break
        if best < 0:
            members.append([i])
            fused.append(boxes[i].clone())
            weight.append(float(scores[i]))
        else:
            members[best].append(i)
            total = weight[best] + float(scores[i])
            fused[best] = (fused[best] * weight[best] + boxes[i] * float(scores[i])) / total
            weight[best] = total
    return [torch.tensor(m) for m in members]


def _mean_mask(
    boxes: torch.Tensor, logits: torch.Tensor, image_size: tuple[int, int], threshold: float
) -> MaskCrop:
    """Mean of the members' pasted mask probabilities, thresholded, as a crop of the image."""
    height, width = image_size
    # Paste into the members' union box, grown by the paste padding (one 28th of a box side per side) and two
    # pixels, instead of into the whole image: the same values, a fraction of the work.
    margin = (boxes[:, 2:] - boxes[:, :2]).max() / logits.shape[-1] + 2
    x0 = int(max(0, np.floor(float(boxes[:, 0].min() - margin))))
    y0 = int(max(0, np.floor(float(boxes[:, 1].min() - margin))))
    x1 = int(min(width, np.ceil(float(boxes[:, 2].max() + margin))))
    y1 = int(min(height, np.ceil(float(boxes[:, 3].max() + margin))))
    if x1 <= x0 or y1 <= y0:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    probabilities = paste_masks_in_image(torch.sigmoid(logits)[:, None], shifted, (y1 - y0, x1 - x0))
    mean = probabilities[:, 0].mean(dim=0)
    return MaskCrop(y0, x0, (mean > threshold).numpy()).tightened()
