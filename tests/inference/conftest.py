"""A stand-in model for inference tests: exact, fast and deterministic, a `SegmentationModel`.

`ThresholdSegmenter` finds the 8-connected regions of bright pixels (channel mean > 0.5) of each image and
returns them as `Instances` exactly as `MaskRCNN.detect` does: boxes in original-image pixels, label 1,
a score per region, 28x28 `mask_logits` of the region inside its box, and masks pasted from those logits.
Like Mask R-CNN it resizes its input first (`min_size` / `max_size` times `DetectOptions.input_scale`) so
scale TTA has an effect.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions
from instaseg.ops import paste_masks_in_image
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks


class ThresholdSegmenter(nn.Module):
    def __init__(
        self, min_size: int | None = None, max_size: int = 100_000, label: int = 1, num_classes: int = 3
    ) -> None:
        super().__init__()
        self.min_size = min_size or 0
        self.max_size = max_size
        self.label = label
        self._num_classes = num_classes  # background + 2 by default; `label` may lie outside (a bad model)
        self.calls: list[int] = []  # batch size of every call
        self.categories = None
        self.operating_point = None

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def summary(self) -> dict[str, object]:
        return {"family": "threshold", "backbone": None, "num_classes": self.num_classes}

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> tuple[int, int]:
        return image_size

    def forward(self, images: list[torch.Tensor]) -> list[Instances]:
        return self.detect(images)

    def detect(
        self, images: list[torch.Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        self.calls.append(len(images))
        return [self._segment(image, options.input_scale) for image in images]

    def _segment(self, image: torch.Tensor, input_scale: float) -> Instances:
        height, width = image.shape[-2:]
        scale = 1.0
        if self.min_size:
            min_size, max_size = round(self.min_size * input_scale), round(self.max_size * input_scale)
            scale = min(min_size / min(height, width), max_size / max(height, width))
        resized = (
            image if scale == 1.0 else F.interpolate(image[None], scale_factor=scale, mode="bilinear")[0]
        )
        foreground = (resized.mean(dim=0) > 0.5).numpy()
        regions, count = ndimage.label(foreground, structure=np.ones((3, 3)))
        boxes, scores, logits = [], [], []
        for index, (rows, cols) in enumerate(ndimage.find_objects(regions), start=1):
            region = torch.from_numpy(regions[rows, cols] == index).float()
            # Logits of the region resampled to 28x28 over its box, as a mask head would predict it.
            probabilities = F.interpolate(region[None, None], size=(28, 28), mode="bilinear")[0, 0]
            logits.append((probabilities - 0.5) * 20)
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            scores.append(
                0.5 + 0.49 * float(resized.mean(dim=0)[rows, cols][region.bool()].mean()) - 0.001 * index
            )
        box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) / scale
        logit_tensor = torch.stack(logits) if logits else torch.zeros((0, 28, 28))
        masks = paste_masks_in_image(
            logit_tensor.sigmoid()[:, None], box_tensor, (height, width), threshold=0.5
        )
        return Instances(
            (height, width),
            box_tensor,
            torch.full((count,), self.label, dtype=torch.int64),
            torch.tensor(scores, dtype=torch.float32),
            Masks.from_bitmaps(masks[:, 0]),
            mask_logits=logit_tensor,
        )


@pytest.fixture
def make_segmenter() -> type[ThresholdSegmenter]:
    return ThresholdSegmenter


def disc_image(height: int, width: int, discs: list[tuple[float, float, float]]) -> np.ndarray:
    """(H, W, 3) uint8 image: black with white discs given as (centre y, centre x, radius)."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for cy, cx, radius in discs:
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = 255
    return image


@pytest.fixture
def make_disc_image():
    return disc_image
