"""`ClickBoxHead`: the box of the object under a click, regressed from the refiner's FPN features.

Why: the refiner (`refiner.py`) can only fix what its box holds, and for a first click that box was the
decoder's coarse mask's, which for 28% of the first clicks on 10 validation images took in a neighbour or
was a fragment (docs/models.md, "Promptable model"); the bundled detector's box under the click did much
better. This head regresses such a box from the click alone, as FCOS regresses a box at a point (the
distances from the click to the object's four sides); `PromptableSam.click_boxes` turns it into a box
prompt that the decoder and the refiner answer with the clicks.

    DetailFeatures (P2..P5 at the detector's resize), clicks (N, 2) x, y in original pixels
    -> per level a WINDOW x WINDOW window of cells centred on the click (RoIAlign; P2's covers 28 resized
       pixels, P5's 224), the same two convs on each -> concatenated -> MLP
    -> (N, 4) log distances (left, top, right, bottom) in resized pixels
    -> (N, 4) x1y1x2y2 boxes in original pixels
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from instaseg.models.fpn import FPN_LEVEL_NAMES, FPN_LEVEL_STRIDES
from instaseg.models.promptable.refiner import DetailFeatures
from instaseg.models.transform import resize_boxes
from instaseg.ops import roi_align

WINDOW = 7
LEVELS = 4
# Distances are predicted as log(d / DISTANCE_UNIT) in resized pixels: a zero output is a 32-pixel box.
DISTANCE_UNIT = 16.0
# Smallest distance a target may have (a click on the box's edge pixel is half a pixel from the side).
MIN_DISTANCE = 0.5


class ClickBoxHead(nn.Module):
    """See the module docstring. `channels`: the FPN's width; `hidden`: the MLP's."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        cells = math.ceil(WINDOW / 2) ** 2
        self.mlp = nn.Sequential(
            nn.Linear(LEVELS * 32 * cells, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def log_distances(self, detail: DetailFeatures, centres: Tensor) -> Tensor:
        """`(N, 2)` x, y click centres in resized pixels -> `(N, 4)` predicted log(distance / unit)."""
        pooled = []
        for name, stride in zip(FPN_LEVEL_NAMES[:LEVELS], FPN_LEVEL_STRIDES[:LEVELS], strict=True):
            half = WINDOW * stride / 2
            windows = torch.cat([centres - half, centres + half], dim=1)
            cells = roi_align(detail.levels[name], [windows], WINDOW, 1 / stride, sampling_ratio=2)
            pooled.append(self.convs(cells).flatten(1))
        return self.mlp(torch.cat(pooled, dim=1))

    def forward(self, detail: DetailFeatures, clicks: Tensor) -> Tensor:
        """`(N, 2)` x, y clicked pixels in original pixels -> `(N, 4)` x1y1x2y2 boxes in original pixels."""
        centres = click_centres(detail, clicks)
        return distances_to_boxes(detail, centres, self.log_distances(detail, centres))

    def losses(self, detail: DetailFeatures, clicks: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """`(N, 2)` clicks and their objects' `(N, 4)` boxes, both in original pixels -> `(N,)` L1 between
        predicted and target log distances (summed over the four sides) and the `(N, 4)` predicted boxes."""
        centres = click_centres(detail, clicks)
        resized = resize_boxes(boxes, detail.original_size, detail.resized_size)
        targets = torch.cat([centres - resized[:, :2], resized[:, 2:] - centres], dim=1)
        log_targets = (targets.clamp(min=MIN_DISTANCE) / DISTANCE_UNIT).log()
        predicted = self.log_distances(detail, centres)
        l1 = F.l1_loss(predicted, log_targets, reduction="none").sum(dim=1)
        return l1, distances_to_boxes(detail, centres, predicted)


def distances_to_boxes(detail: DetailFeatures, centres: Tensor, log_distances: Tensor) -> Tensor:
    """`(N, 2)` centres and `(N, 4)` log distances in the resized frame -> `(N, 4)` boxes in original
    pixels."""
    distances = log_distances.exp() * DISTANCE_UNIT
    boxes = torch.cat([centres - distances[:, :2], centres + distances[:, 2:]], dim=1)
    return resize_boxes(boxes, detail.resized_size, detail.original_size)


def click_centres(detail: DetailFeatures, clicks: Tensor) -> Tensor:
    """`(N, 2)` clicked pixels (x, y, as prompts give them) -> their centres in the resized frame."""
    centres = (clicks + 0.5).repeat(1, 2)
    return resize_boxes(centres, detail.original_size, detail.resized_size)[:, :2]
