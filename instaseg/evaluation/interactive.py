"""Interactive segmentation metrics: a simulated user clicks until each object's mask is right.

The protocol (as in the interactive-segmentation literature, e.g. RITM and SAM's point evaluation): the first
click is at the centre of the object (the pixel farthest from its boundary); each next click is at the centre
of the largest error region of the current mask (`models.promptable.prompt_simulation.error_region_click`:
positive on missed pixels, negative on wrong ones), with the previous low-res logits as mask input. A single
first click asks for the three multimask outputs and keeps the one with the highest predicted IoU; later
clicks ask for one mask. Masks are compared at full image resolution.

Metrics (`summarize`): `mIoU@k` (k = 1, 3, 5) is the mean IoU after k clicks; `NoC@85` / `NoC@90` the mean
number of clicks until IoU reaches 0.85 / 0.90, counting `max_clicks` (20) for an object that never does;
`box_mIoU` the mean IoU of one mask from each object's tight box. Any model with SAM's predictor interface
(`PromptSegmenter`: `instaseg.models.sam.predictor.SamPredictor` for SAM, MobileSAM or instaseg's own
promptable model) can be scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from instaseg.data.coco import read_coco
from instaseg.data.records import image_record_to_instances
from instaseg.io.images import load_image
from instaseg.models.promptable.prompt_simulation import error_region_click
from instaseg.structures.boxes import mask_boxes
from instaseg.structures.instances import Instances

MAX_CLICKS = 20
IOU_THRESHOLDS = (0.85, 0.90)
REPORTED_CLICKS = (1, 3, 5)


class PromptSegmenter(Protocol):
    """What the metrics need of a model: `SamPredictor`'s `set_image` and `predict`."""

    def set_image(self, image: Any) -> None: ...

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask: bool = True,
    ) -> Instances: ...


def mask_ious(predictions: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """IoU of each pair of `(B, H, W)` bool masks -> `(B,)` (1.0 for two empty masks)."""
    intersection = (predictions & truths).sum(axis=(1, 2))
    union = (predictions | truths).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def simulate_clicks(
    segmenter: PromptSegmenter,
    truths: np.ndarray,
    max_clicks: int = MAX_CLICKS,
    stop_iou: float | None = max(IOU_THRESHOLDS),
    min_clicks: int = max(REPORTED_CLICKS),
) -> np.ndarray:
    """Click on each of the `(B, H, W)` bool `truths` of the image set in `segmenter` -> `(B, max_clicks)`
    IoU after each click. An object stops once it has had `min_clicks` and its IoU reached `stop_iou`, or
    when its mask is exact; its later entries repeat the last IoU (the user stopped clicking)."""
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    count = len(truths)
    ious = np.zeros((count, max_clicks))
    predictions = np.zeros_like(truths, dtype=bool)
    coords = np.zeros((count, 0, 2))
    labels = np.zeros((count, 0))
    low_res: torch.Tensor | None = None
    active = np.arange(count)
    for click in range(max_clicks):
        if len(active) == 0:
            break
        clicks = [error_region_click(predictions[i], truths[i]) for i in active]
        exact = np.array([found is None for found in clicks])
        ious[active[exact], click:] = 1.0  # nothing left to correct
        active, clicks = active[~exact], [found for found in clicks if found is not None]
        if len(active) == 0:
            break
        new_xy = np.array([[found.x, found.y] for found in clicks], dtype=np.float64)[:, None]
        new_labels = np.array([[float(found.positive)] for found in clicks])
        coords = np.concatenate([coords[~exact], new_xy], axis=1)
        labels = np.concatenate([labels[~exact], new_labels], axis=1)
        if low_res is not None:
            low_res = low_res[torch.from_numpy(~exact)]
        result = segmenter.predict(points=coords, labels=labels, mask_input=low_res, multimask=click == 0)
        per_prompt = len(result) // len(active)
        best = result.scores.reshape(len(active), per_prompt).argmax(dim=1)
        chosen = torch.arange(len(active)) * per_prompt + best
        masks = result.masks.bitmaps()[chosen].cpu().numpy()
        low_res = result.fields["low_res_logits"][chosen][:, None]
        predictions[active] = masks
        ious[active, click] = mask_ious(masks, truths[active])
        done = np.zeros(len(active), dtype=bool)
        if stop_iou is not None and click + 1 >= min_clicks:
            done = ious[active, click] >= stop_iou
        ious[active[done], click + 1 :] = ious[active[done], click : click + 1]
        keep = ~done
        active, coords, labels = active[keep], coords[keep], labels[keep]
        low_res = low_res[torch.from_numpy(keep)]
    return ious


def box_prompt_ious(segmenter: PromptSegmenter, truths: np.ndarray) -> np.ndarray:
    """IoU of the one mask predicted from each `(B, H, W)` truth's tight box -> `(B,)`."""
    if len(truths) == 0:
        return np.zeros(0)
    result = segmenter.predict(boxes=mask_boxes(torch.from_numpy(truths)), multimask=False)
    return mask_ious(result.masks.bitmaps().cpu().numpy(), truths)


def number_of_clicks(ious: np.ndarray, threshold: float, max_clicks: int = MAX_CLICKS) -> np.ndarray:
    """`(B, K)` IoU curves -> `(B,)` clicks until IoU >= threshold (1-based), `max_clicks` if never."""
    reached = ious[:, :max_clicks] >= threshold
    first = reached.argmax(axis=1) + 1
    return np.where(reached.any(axis=1), first, max_clicks)


def summarize(click_ious: np.ndarray, box_ious: np.ndarray, max_clicks: int = MAX_CLICKS) -> dict[str, float]:
    """`(B, K)` click curves and `(B,)` box IoUs of all objects -> `mIoU@1/3/5`, `NoC@85`, `NoC@90`,
    `box_mIoU` and `objects` (see the module docstring); NaN when there are no objects."""
    count = len(click_ious)
    metrics: dict[str, float] = {}
    for clicks in REPORTED_CLICKS:
        if clicks <= click_ious.shape[1]:
            metrics[f"mIoU@{clicks}"] = float(click_ious[:, clicks - 1].mean()) if count else float("nan")
    for threshold in IOU_THRESHOLDS:
        values = number_of_clicks(click_ious, threshold, max_clicks)
        metrics[f"NoC@{round(threshold * 100)}"] = float(values.mean()) if count else float("nan")
    metrics["box_mIoU"] = float(box_ious.mean()) if len(box_ious) else float("nan")
    metrics["objects"] = float(count)
    return metrics


def evaluate_prompts(
    segmenter: PromptSegmenter,
    ground_truth: str | Path,
    image_root: str | Path | None = None,
    *,
    max_images: int | None = None,
    max_objects_per_image: int | None = None,
    max_clicks: int = MAX_CLICKS,
    seed: int = 0,
) -> dict[str, Any]:
    """Score `segmenter` on the objects of a COCO ground-truth file (crowd annotations left out).

    `max_images`: the first images only; `max_objects_per_image`: that many objects drawn per image (with
    `seed`), for a quicker estimate. Returns `summarize`'s metrics plus `images` and `per_image` (image id,
    objects, mean 1-click IoU, mean box IoU).
    """
    dataset = read_coco(ground_truth, image_root, decode_images=False)
    records: Sequence = dataset.images[:max_images] if max_images is not None else dataset.images
    rng = np.random.default_rng(seed)
    all_clicks, all_boxes, per_image = [], [], []
    for record in records:
        target = image_record_to_instances(record)
        target = target[target.fields["iscrowd"] == 0]
        truths = target.masks.bitmaps().cpu().numpy().astype(bool)
        truths = truths[truths.reshape(len(truths), -1).any(axis=1)]
        if max_objects_per_image is not None and len(truths) > max_objects_per_image:
            truths = truths[np.sort(rng.choice(len(truths), max_objects_per_image, replace=False))]
        if len(truths) == 0:
            continue
        segmenter.set_image(load_image(dataset.image_path(record)))
        clicks = simulate_clicks(segmenter, truths, max_clicks)
        boxes = box_prompt_ious(segmenter, truths)
        all_clicks.append(clicks)
        all_boxes.append(boxes)
        per_image.append(
            {
                "image_id": record.id,
                "objects": len(truths),
                "mIoU@1": float(clicks[:, 0].mean()),
                "box_mIoU": float(boxes.mean()),
            }
        )
    click_ious = np.concatenate(all_clicks) if all_clicks else np.zeros((0, max_clicks))
    box_ious = np.concatenate(all_boxes) if all_boxes else np.zeros(0)
    return {
        **summarize(click_ious, box_ious, max_clicks),
        "images": len(per_image),
        "max_clicks": max_clicks,
        "per_image": per_image,
    }
