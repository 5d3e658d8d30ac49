"""Promptable segmentation with SAM / MobileSAM: embed an image once, then answer any number of prompts.

```python
predictor = SamPredictor("mobile_sam.pt")
predictor.set_image("photo.jpg")                       # the embedding is computed once and cached
found = predictor.predict(points=[[320, 240]], labels=[1])           # 3 candidate masks of one click
boxes = predictor.predict(boxes=[[10, 20, 200, 180], [220, 40, 400, 300]], multimask=False)  # 2 at once
```

Prompt coordinates are original-image pixels, x then y (pixel corners: the centre of pixel column 3 is
x = 3.5; the official SAM API takes the same numbers). A call with B prompts (B point sets, B boxes, or B
boxes each with its point set) is decoded as one batch; the result is one `Instances` of `B * C` masks, C = 3
with `multimask=True` (the three disambiguating answers) else 1, ordered prompt by prompt. Fields:
`scores` = predicted IoU (rescored by a model with a second stage, `Sam.refine_masks`), `stability_score`
(IoU of the masks at logit thresholds +1 and -1), `low_res_logits (B * C, 256, 256)` (feed one back as
`mask_input`), `prompt_index (B * C,)`; `labels` are 1 (SAM is class-agnostic); boxes are the masks' tight
boxes x1y1x2y2 in original pixels (x2, y2 exclusive).
`refine(detections)` turns another model's boxes (e.g. Mask R-CNN's `Instances`) into SAM masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instaseg.io.images import ImageSource, load_image
from instaseg.models.sam import MASK_THRESHOLD, Sam, load_sam
from instaseg.models.sam.common import stability_score
from instaseg.models.sam.onnx_sam import OnnxSam
from instaseg.models.sam.transforms import (
    postprocess_masks,
    resize_image,
    scale_boxes,
    scale_coords,
    unscale_coords,
)
from instaseg.structures.boxes import clip_boxes, mask_boxes
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

__all__ = ["PromptError", "SamPredictor"]

ArrayLike = torch.Tensor | np.ndarray | Sequence
SAM_LABEL = 1


class PromptError(ValueError):
    """A prompt that SAM cannot take; the message names the argument and what is wrong."""


class SamPredictor:
    """A SAM model with the embedding of the current image cached (`set_image`), answering `predict` calls.

    `model` is a `Sam`, an `OnnxSam` (the exported graphs on ONNX Runtime), or a checkpoint path (official
    `sam_vit_*.pth`, `mobile_sam.pt`, or a repackaged one); `expected_arch` (e.g. `"vit_t"`) refuses a
    checkpoint of another architecture. `batch_size` caps how many prompts one decoder pass takes (memory:
    ~40 MB per prompt plus the full-size masks).
    """

    def __init__(
        self,
        model: Sam | OnnxSam | str | Path,
        device: str | torch.device = "cpu",
        expected_arch: str | None = None,
        batch_size: int = 64,
    ) -> None:
        if isinstance(model, Sam | OnnxSam):
            if expected_arch is not None and model.arch != expected_arch:
                raise PromptError(f"model: is a {model.arch} SAM, expected {expected_arch}")
            if isinstance(model, OnnxSam) and torch.device(device).type != "cpu":
                raise PromptError(f"an OnnxSam runs on the CPU (ONNX Runtime), not {device}")
            self.model = model.to(device).eval() if isinstance(model, Sam) else model
        else:
            self.model = load_sam(model, map_location=device, expected_arch=expected_arch)
        if batch_size < 1:
            raise PromptError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._embedding: torch.Tensor | None = None
        self.detail: Any = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def set_image(self, image: ImageSource) -> None:
        """Embed `image` (path, PIL image or array: `instaseg.io.load_image`), replacing the previous one."""
        rgb = load_image(image)
        self._embedding = self.detail = None
        resized = resize_image(rgb, self.model.image_size)
        tensor = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        self._embedding = self.model.encode_image(tensor)
        self.detail = self.model.encode_detail(torch.from_numpy(rgb).permute(2, 0, 1))
        self.original_size = (rgb.shape[0], rgb.shape[1])
        self.input_size = (resized.shape[0], resized.shape[1])

    def set_embedding(
        self,
        embedding: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
        detail: Any = None,
    ) -> None:
        """Use a precomputed `(1, 256, h, w)` embedding (e.g. cached; `(h, w)` is the model's
        `embedding_size`, 64 x 64 for SAM) of an image of `original_size`, with the `detail` features
        `set_image` made with it (`model.encode_detail`; None for SAM)."""
        expected = (1, 256, *self.model.embedding_size)
        if tuple(embedding.shape) != expected:
            raise PromptError(f"embedding must have shape {expected}, got {tuple(embedding.shape)}")
        self._embedding = embedding.to(self.device, torch.float32)
        self.detail = detail
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))

    @property
    def embedding(self) -> torch.Tensor:
        """The cached `(1, 256, h, w)` embedding of the current image."""
        if self._embedding is None:
            raise RuntimeError("SamPredictor: no image set; call set_image(image) first")
        return self._embedding

    @torch.no_grad()
    def predict(
        self,
        points: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        boxes: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask: bool = True,
    ) -> Instances:
        """Masks for B prompts of the current image (see the module docstring for shapes and fields).

        points `(N, 2)` (one set) or `(B, N, 2)` x, y in original pixels, with labels `(N,)` / `(B, N)`:
        1 foreground, 0 background; boxes `(4,)` or `(B, 4)` x1y1x2y2; mask_input `(1, 256, 256)` or
        `(B, 1, 256, 256)` low-res logits from an earlier call. One point set or mask is shared by B boxes.
        """
        embedding = self.embedding
        prompts = self._check_prompts(points, labels, boxes, mask_input)
        coords, point_labels, box_tensor, masks_in, count = prompts
        results = []
        for start in range(0, count, self.batch_size):
            chunk = slice(start, min(start + self.batch_size, count))
            results.append(
                self._decode(embedding, coords, point_labels, box_tensor, masks_in, chunk, count, multimask)
            )
        return Instances.cat(results)

    @torch.no_grad()
    def refine(self, detections: Instances) -> Instances:
        """A detector's instances of the current image with SAM masks: every box is a prompt (one batched
        call, one mask each). Boxes, labels, scores and fields stay the detector's, less `mask_logits`;
        `masks` are replaced by SAM's, and `sam_iou` / `sam_stability_score` are added. Detections of an
        image of another size than the current one are refused."""
        if detections.image_size != self.original_size:
            raise PromptError(
                f"detections: image size {detections.image_size}, the current image is {self.original_size}"
            )
        height, width = self.original_size
        # `mask_logits` describe the detector's masks; kept, they would let a re-threshold undo SAM's.
        fields = {name: value for name, value in detections.fields.items() if name != "mask_logits"}
        if len(detections) == 0:
            masks = Masks.from_bitmaps(torch.zeros(0, height, width, dtype=torch.bool))
            iou = stability = torch.zeros(0)
        else:
            boxes = clip_boxes(detections.boxes, self.original_size)  # boxes may overhang the image
            found = self.predict(boxes=boxes, multimask=False)
            masks, iou, stability = found.masks, found.scores, found.fields["stability_score"]
        return Instances(
            detections.image_size,
            detections.boxes,
            detections.labels,
            detections.scores,
            masks.to(detections.device),
            **fields,
            sam_iou=iou.to(detections.device),
            sam_stability_score=stability.to(detections.device),
        )

    def _decode(
        self,
        embedding: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks_in: torch.Tensor | None,
        chunk: slice,
        count: int,
        multimask: bool,
    ) -> Instances:
        size = chunk.stop - chunk.start

        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            if tensor.shape[0] == 1 and count > 1:
                return tensor.expand(size, *tensor.shape[1:])
            return tensor[chunk]

        points = None if coords is None else (take(coords), take(labels))
        frame_boxes, prompt_boxes, clicks = self._second_stage_prompts(points, take(boxes))
        low_res, iou = self.model.decode(embedding, points, frame_boxes, take(masks_in), multimask)
        logits = postprocess_masks(low_res, self.input_size, self.original_size, self.model.image_size)
        if self.detail is not None:
            logits, iou = self.model.refine_masks(self.detail, logits, iou, prompt_boxes, clicks)
        per_prompt = low_res.shape[1]
        logits = logits.flatten(0, 1)
        bitmaps = logits > MASK_THRESHOLD
        prompt_index = torch.arange(chunk.start, chunk.stop).repeat_interleave(per_prompt)
        return Instances(
            self.original_size,
            mask_boxes(bitmaps),
            torch.full((bitmaps.shape[0],), SAM_LABEL, dtype=torch.int64),
            iou.flatten(),
            Masks.from_bitmaps(bitmaps),
            stability_score=stability_score(logits),
            low_res_logits=low_res.flatten(0, 1),
            prompt_index=prompt_index,
        )

    def _second_stage_prompts(
        self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """For a model with a second stage (`detail`): the decoder's boxes in the input frame, with a box
        derived from the clicks (`Sam.click_boxes`) where the prompts have none, and the boxes and clicks
        in original pixels for `Sam.refine_masks`. Without one: the boxes as given, no others."""
        if self.detail is None or (boxes is None and points is None):
            return boxes, None, None
        sizes = (self.original_size, self.input_size)
        clicks = None if points is None else (unscale_coords(points[0], *sizes), points[1])
        if boxes is not None:
            return boxes, unscale_coords(boxes, *sizes), clicks
        derived = self.model.click_boxes(self.detail, clicks)
        if derived is None:
            return None, None, clicks
        return scale_boxes(derived, self.original_size, self.model.image_size), derived, clicks

    def _check_prompts(
        self,
        points: ArrayLike | None,
        labels: ArrayLike | None,
        boxes: ArrayLike | None,
        mask_input: ArrayLike | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
        """Validated prompts in the model's input frame and the number of prompts B."""
        height, width = self.original_size
        if points is None and labels is not None:
            raise PromptError("labels given without points")
        if points is None and boxes is None and mask_input is None:
            raise PromptError("predict needs points (with labels), boxes or mask_input")
        coords = point_labels = box_tensor = masks_in = None
        counts = {}
        if points is not None:
            if labels is None:
                raise PromptError("points: labels are required with points (1 foreground, 0 background)")
            coords = _as_float(points, "points")
            if coords.ndim == 2:
                coords = coords[None]
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise PromptError(f"points must have shape (N, 2) or (B, N, 2), got {tuple(coords.shape)}")
            if coords.shape[0] == 0 or coords.shape[1] == 0:
                raise PromptError("points is empty; give at least one (x, y) point or leave points out")
            _check_inside(coords.reshape(-1, 2), width, height, "points")
            point_labels = _as_float(labels, "labels")
            if point_labels.ndim == 1:
                point_labels = point_labels[None]
            if tuple(point_labels.shape) != tuple(coords.shape[:2]):
                raise PromptError(
                    f"labels must have shape {tuple(coords.shape[:2])} to match points, "
                    f"got {tuple(point_labels.shape)}"
                )
            bad = ~((point_labels == 0) | (point_labels == 1))
            if bad.any():
                raise PromptError(
                    f"labels must be 0 (background) or 1 (foreground), got {point_labels[bad][0]}"
                )
            coords = scale_coords(coords, self.original_size, self.model.image_size).to(self.device)
            point_labels = point_labels.to(self.device, torch.int64)
            counts["points"] = coords.shape[0]
        if boxes is not None:
            box_tensor = _as_float(boxes, "boxes")
            if box_tensor.ndim == 1:
                box_tensor = box_tensor[None]
            if box_tensor.ndim != 2 or box_tensor.shape[1] != 4:
                raise PromptError(f"boxes must have shape (4,) or (B, 4), got {tuple(box_tensor.shape)}")
            if box_tensor.shape[0] == 0:
                raise PromptError("boxes is empty; give at least one x1, y1, x2, y2 box or leave boxes out")
            _check_inside(box_tensor.reshape(-1, 2), width, height, "boxes")
            inverted = (box_tensor[:, 2] < box_tensor[:, 0]) | (box_tensor[:, 3] < box_tensor[:, 1])
            if inverted.any():
                index = int(torch.nonzero(inverted)[0])
                raise PromptError(f"boxes[{index}] = {box_tensor[index].tolist()} has x2 < x1 or y2 < y1")
            box_tensor = scale_boxes(box_tensor, self.original_size, self.model.image_size).to(self.device)
            counts["boxes"] = box_tensor.shape[0]
        if mask_input is not None:
            masks_in = _as_float(mask_input, "mask_input")
            expected = self.model.mask_input_size
            if masks_in.ndim == 3:
                masks_in = masks_in[None]
            if masks_in.ndim != 4 or tuple(masks_in.shape[1:]) != (1, *expected):
                raise PromptError(
                    f"mask_input must have shape (1, {expected[0]}, {expected[1]}) or "
                    f"(B, 1, {expected[0]}, {expected[1]}) low-res logits, got {tuple(masks_in.shape)}"
                )
            masks_in = masks_in.to(self.device, torch.float32)
            counts["mask_input"] = masks_in.shape[0]
        count = max(counts.values())
        for name, value in counts.items():
            if value not in (1, count):
                described = ", ".join(f"{key}: {n}" for key, n in counts.items())
                raise PromptError(f"{name}: prompt counts differ ({described}); give 1 or {count} of each")
        return coords, point_labels, box_tensor, masks_in, count


def _as_float(value: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().to(torch.float64)
    else:
        try:
            tensor = torch.from_numpy(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise PromptError(f"{name}: not a numeric array ({exc})") from exc
    if not torch.isfinite(tensor).all():
        raise PromptError(f"{name}: contains NaN or infinite values")
    return tensor


def _check_inside(coords: torch.Tensor, width: int, height: int, name: str) -> None:
    """(M, 2) x, y must lie in the image, borders included: [0, W] x [0, H]."""
    outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    if outside.any():
        x, y = coords[int(torch.nonzero(outside)[0])].tolist()
        raise PromptError(f"{name}: ({x:g}, {y:g}) lies outside the {width}x{height} image")
