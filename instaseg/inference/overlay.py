"""Draw predictions on an image: translucent filled masks with outlines, text only where it fits, a legend.

Readable on dark and light images alike, and on dense ones (a hundred nuclei in 256x256 pixels):

- every mask is filled with its colour at `alpha` and outlined with a 1-pixel line of that colour over a dark
  halo; all halos are drawn before any outline, so touching objects keep their own outline;
- colours: one per instance (the `track_ids` field when present, stable across video frames) when one category
  is shown; one per category, explained in a legend, when the instances have several;
- "category score" labels (a filled box in the colour, black or white text, whichever contrasts more) are
  drawn by default only where they fit: beside the object, inside the image, covering no object and no other
  label (`labels=True` draws every one, `labels=False` none). Boxes are off by default: outlines show each
  object, and boxes on a dense image would hide it (`boxes=True`; instances without masks always get boxes).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import cv2
import numpy as np

from instaseg.structures.instances import Instances

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HALO = (0, 0, 0)


def instance_colour(key: int) -> tuple[int, int, int]:
    """A bright RGB colour for an instance index, track id or category; consecutive keys get well-separated
    hues."""
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


def label_text(label: int, score: float | None, category_names: Mapping[int, str] | None) -> str:
    name = category_names.get(label, str(label)) if category_names else str(label)
    return name if score is None else f"{name} {score:.2f}"


def draw_overlay(
    image: np.ndarray,
    instances: Instances,
    category_names: Mapping[int, str] | None = None,
    alpha: float = 0.4,
    boxes: bool = False,
    labels: bool | None = None,
) -> np.ndarray:
    """Return a copy of `image` ((H, W, 3) uint8 RGB) with `instances` drawn on it (see the module docstring).

    `instances.labels` are the keys of `category_names` (the raw label is shown when unnamed). `labels`: None
    draws a label only where it fits, True every label, False none.
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
    n = len(instances)
    if n == 0:
        return image.copy()
    categories = instances.labels.tolist()
    by_category = len(set(categories)) > 1
    if by_category:
        keys = categories
    elif "track_ids" in instances.fields:
        keys = instances.fields["track_ids"].tolist()
    else:
        keys = list(range(n))
    colours = [instance_colour(int(k)) for k in keys]
    bitmaps = instances.masks.bitmaps().cpu().numpy() if instances.masks is not None else None

    out = image.astype(np.float32)
    if bitmaps is not None:
        for mask, colour in zip(bitmaps, colours, strict=True):
            out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    line = max(1, round(min(height, width) / 400))
    if bitmaps is not None:
        outlines = [
            cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
            for mask in bitmaps
        ]
        for contours in outlines:
            cv2.drawContours(out, contours, -1, _HALO, line + 2, lineType=cv2.LINE_8)
        for contours, colour in zip(outlines, colours, strict=True):
            cv2.drawContours(out, contours, -1, colour, line, lineType=cv2.LINE_8)

    corners = instances.boxes.detach().cpu().round().int().tolist()
    if boxes or bitmaps is None:
        for (x1, y1, x2, y2), colour in zip(corners, colours, strict=True):
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), _HALO, line + 2)
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, line)

    font_scale = max(0.35, min(height, width) / 900)
    if labels is not False:
        # Pixels a label may not cover: every object, then every label already placed.
        taken = bitmaps.any(axis=0) if bitmaps is not None else np.zeros((height, width), dtype=bool)
        scores = instances.scores.tolist() if instances.scores is not None else [None] * n
        for box, colour, label, score in zip(corners, colours, categories, scores, strict=True):
            text = label_text(label, score, category_names)
            place = _label_place(text, box, font_scale, taken, force=bool(labels))
            if place is not None:
                _draw_text_box(out, text, place, colour, font_scale)
                x, y, w, h = place
                taken[y : y + h, x : x + w] = True
    if by_category:
        present = sorted(set(categories))
        _draw_legend(out, [(label_text(c, None, category_names), instance_colour(c)) for c in present])
    return out


def _text_size(text: str, font_scale: float) -> tuple[int, int, int]:
    """(width, height, thickness) of the filled box that `_draw_text_box` draws for `text`."""
    thickness = max(1, round(font_scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    return text_w + 4, text_h + baseline + 4, thickness


def _label_place(
    text: str, box: list[int], font_scale: float, taken: np.ndarray, force: bool
) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the label box of an object with box `box` (x1, y1, x2, y2): just above the box, else
    just below it, whichever lies in the image and covers no `taken` pixel; None if neither does. With
    `force`, the first of the two that lies in the image (else the box's top-left corner, clamped)."""
    height, width = taken.shape
    w, h, _ = _text_size(text, font_scale)
    x1, y1, _, y2 = box
    x = min(max(x1, 0), max(width - w, 0))
    for y in (y1 - h - 1, y2 + 1):  # one pixel apart from the box: the outline's halo stays visible
        inside = y >= 0 and y + h <= height and x + w <= width
        if inside and (force or not taken[y : y + h, x : x + w].any()):
            return x, y, w, h
    if force:
        return x, min(max(y1, 0), max(height - h, 0)), w, h
    return None


def _draw_text_box(
    image: np.ndarray, text: str, place: tuple[int, int, int, int], colour: tuple[int, int, int], scale: float
) -> None:
    x, y, w, h = place
    _, _, thickness = _text_size(text, scale)
    (_, text_h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, cv2.FILLED)
    cv2.putText(
        image, text, (x + 2, y + 2 + text_h), _FONT, scale, text_colour(colour), thickness, cv2.LINE_AA
    )


def _draw_legend(image: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    """One line per category in the top-left corner: a swatch of its colour and its name, on a dark panel.
    Lines that do not fit the image's height are summarised as "+N more"."""
    height, width = image.shape[:2]
    scale = max(0.35, min(height, width) / 900)
    thickness = max(1, round(scale * 1.5))
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    row = text_h + baseline + 4
    fits = max(1, (height - 4) // row)
    if len(entries) > fits:
        entries = [*entries[: fits - 1], (f"+{len(entries) - fits + 1} more", (255, 255, 255))]
    panel_w = 8 + text_h + max(cv2.getTextSize(t, _FONT, scale, thickness)[0][0] for t, _ in entries)
    panel_w = min(panel_w + 4, width)
    panel_h = min(row * len(entries) + 4, height)
    region = image[:panel_h, :panel_w].astype(np.float32)
    image[:panel_h, :panel_w] = (region * 0.35 + 0.5).astype(np.uint8)  # darken, keep a hint of the image
    for index, (text, colour) in enumerate(entries):
        top = 2 + index * row
        cv2.rectangle(image, (4, top + 2), (4 + text_h, top + 2 + text_h), colour, cv2.FILLED)
        origin = (8 + text_h, top + 2 + text_h)
        cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
