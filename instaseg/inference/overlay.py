"""Draw predictions on an image: translucent masks, outlines, boxes, and "class score" labels.

Readable on dark and light images alike: outlines and boxes are drawn as a coloured line over a dark halo, and
labels sit on a filled box in the instance colour with black or white text, whichever contrasts more.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import cv2
import numpy as np

from instaseg.structures.instances import Instances


def instance_colour(key: int) -> tuple[int, int, int]:
    """A bright RGB colour for an instance index or track id; consecutive keys get well-separated hues."""
    hue = (key * 0.618033988749895) % 1.0  # golden-ratio steps spread hues evenly for any count
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio with `background` (RGB)."""
    black, white = (0, 0, 0), (255, 255, 255)
    return black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour, in [0, 1]."""
    channels = []
    for value in rgb:
        c = value / 255.0
        channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio between two sRGB colours, from 1 (same) to 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def label_text(label: int, score: float | None, class_names: Mapping[int, str] | None) -> str:
    name = class_names.get(label, str(label)) if class_names else str(label)
    return name if score is None else f"{name} {score:.2f}"


def draw_overlay(
    image: np.ndarray,
    instances: Instances,
    class_names: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    draw_boxes: bool = True,
    draw_labels: bool = True,
) -> np.ndarray:
    """Return a copy of `image` ((H, W, 3) uint8 RGB) with `instances` drawn on it.

    Colours follow the `track_ids` field when present (stable across video frames), else the instance index.
    Labels show `class_names[label]` (the raw label when unnamed) and the score.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"overlay needs an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    height, width = image.shape[:2]
    if tuple(instances.image_size) != (height, width):
        raise ValueError(
            f"instances are for an image of size {tuple(instances.image_size)}, not {(height, width)}"
        )
    out = image.astype(np.float32)
    n = len(instances)
    keys = instances.fields["track_ids"].tolist() if "track_ids" in instances.fields else list(range(n))
    colours = [instance_colour(int(k)) for k in keys]
    bitmaps = instances.masks.bitmaps().cpu().numpy() if instances.masks is not None and n else None

    if bitmaps is not None:
        for mask, colour in zip(bitmaps, colours, strict=True):
            out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    line = max(1, round(min(height, width) / 400))
    if bitmaps is not None:
        for mask, colour in zip(bitmaps, colours, strict=True):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, (0, 0, 0), line + 2, lineType=cv2.LINE_AA)
            cv2.drawContours(out, contours, -1, colour, line, lineType=cv2.LINE_AA)

    boxes = instances.boxes.detach().cpu().round().int().tolist()
    if draw_boxes:
        for (x1, y1, x2, y2), colour in zip(boxes, colours, strict=True):
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 0), line + 2)
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, line)

    if draw_labels:
        labels = instances.labels.tolist()
        scores = instances.scores.tolist() if instances.scores is not None else [None] * n
        font_scale = max(0.35, min(height, width) / 900)
        for (x1, y1, _, _), colour, label, score in zip(boxes, colours, labels, scores, strict=True):
            _draw_label(out, label_text(label, score, class_names), (x1, y1), colour, font_scale)
    return out


def _draw_label(
    image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int], font_scale: float
) -> None:
    """A filled box in `colour` holding `text`, above the box corner if it fits, else just inside it."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, round(font_scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    pad = 2
    box_h = text_h + baseline + 2 * pad
    height, width = image.shape[:2]
    x = min(max(corner[0], 0), max(width - text_w - 2 * pad, 0))
    y = corner[1] - box_h if corner[1] - box_h >= 0 else min(max(corner[1], 0), max(height - box_h, 0))
    cv2.rectangle(image, (x, y), (x + text_w + 2 * pad, y + box_h), colour, cv2.FILLED)
    cv2.putText(
        image,
        text,
        (x + pad, y + pad + text_h),
        font,
        font_scale,
        text_colour(colour),
        thickness,
        cv2.LINE_AA,
    )
