"""A contact sheet: the top-ranked images with their predictions drawn on, in a grid with captions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from instaseg.inference.overlay import draw_overlay
from instaseg.structures.instances import Instances

_CAPTION_HEIGHT = 22
_GAP = 4
_BACKGROUND = (32, 32, 32)


def contact_sheet(
    images: Sequence[np.ndarray],
    instances: Sequence[Instances],
    captions: Sequence[str],
    category_names: Mapping[int, str] | None = None,
    tile: int = 256,
    columns: int = 4,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB sheet: each (h, w, 3) uint8 image with its instances drawn (`draw_overlay`),
    scaled to fit a `tile` x `tile` cell (aspect kept), its caption in a bar above it; `columns` per row."""
    if not (len(images) == len(instances) == len(captions)) or not images:
        raise ValueError(
            f"contact_sheet needs as many images, instances and captions (at least one), got "
            f"{len(images)}, {len(instances)}, {len(captions)}"
        )
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_h, cell_w = tile + _CAPTION_HEIGHT, tile
    sheet = np.full(
        (rows * (cell_h + _GAP) + _GAP, columns * (cell_w + _GAP) + _GAP, 3), _BACKGROUND, dtype=np.uint8
    )
    for index, (image, found, caption) in enumerate(zip(images, instances, captions, strict=True)):
        drawn = draw_overlay(image, found, category_names)
        scale = tile / max(drawn.shape[:2])
        size = (max(1, round(drawn.shape[1] * scale)), max(1, round(drawn.shape[0] * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
        resized = cv2.resize(drawn, size, interpolation=interpolation)
        top = _GAP + (index // columns) * (cell_h + _GAP)
        left = _GAP + (index % columns) * (cell_w + _GAP)
        sheet[top + _CAPTION_HEIGHT : top + _CAPTION_HEIGHT + size[1], left : left + size[0]] = resized
        cv2.putText(
            sheet,
            _fit(caption, tile),
            (left + 3, top + _CAPTION_HEIGHT - 7),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return sheet


def _fit(text: str, width: int) -> str:
    """`text`, or its start and end around '...', whichever is longest and fits `width` pixels."""

    def fits(candidate: str) -> bool:
        return cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] <= width - 6

    if fits(text):
        return text
    for keep in range(len(text) // 2, 0, -1):
        candidate = text[:keep] + "..." + text[-keep:]
        if fits(candidate):
            return candidate
    return "..."
