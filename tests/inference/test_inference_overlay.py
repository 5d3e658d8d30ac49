"""Overlays: masks tinted, outlines and labels visible on dark and on light images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.inference.overlay import contrast_ratio, draw_overlay, instance_colour, text_colour
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SIZE = (120, 160)


def scene(track_ids: list[int] | None = None) -> Instances:
    bitmaps = np.zeros((2, *SIZE), dtype=bool)
    bitmaps[0, 40:80, 20:60] = True
    bitmaps[1, 50:100, 90:140] = True
    masks = Masks.from_bitmaps(torch.from_numpy(bitmaps))
    fields = {} if track_ids is None else {"track_ids": torch.tensor(track_ids)}
    return Instances(SIZE, masks.boxes(), torch.tensor([1, 2]), torch.tensor([0.93, 0.51]), masks, **fields)


@pytest.mark.parametrize("background", [0, 255])
def test_readable_on_dark_and_light_images(background):
    image = np.full((*SIZE, 3), background, dtype=np.uint8)
    out = draw_overlay(image, scene(), {1: "cell", 2: "dust"})
    assert out.shape == image.shape and out.dtype == np.uint8
    # Inside a mask (away from its outline and label) the colour is tinted towards the instance colour.
    inside = out[65, 40].astype(int)
    assert np.abs(inside - background).sum() > 60
    # Far from every instance nothing changes.
    assert (out[5:30, 140:158] == background).all()
    # The outline ring has a dark halo: visible on white, and the coloured line inside it is visible on black.
    ring = out[40:80, 18:23].reshape(-1, 3).astype(int)
    assert ring.min() < 60 if background == 255 else ring.max() > 150
    # Labels: a box in the instance colour above the object, with text of high contrast on it.
    label_area = out[25:40, 20:60].reshape(-1, 3)
    colours = {tuple(int(v) for v in pixel) for pixel in label_area}
    box_colour = instance_colour(0)
    assert box_colour in colours
    assert tuple(text_colour(box_colour)) in colours
    assert contrast_ratio(box_colour, text_colour(box_colour)) >= 4.5


def test_colours_follow_track_ids():
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    by_track = draw_overlay(image, scene(track_ids=[5, 9]), draw_labels=False)
    swapped = draw_overlay(image, scene(track_ids=[9, 5]), draw_labels=False)
    assert not np.array_equal(by_track[65, 40], swapped[65, 40])
    again = draw_overlay(image, scene(track_ids=[5, 9]), draw_labels=False)
    assert np.array_equal(by_track, again)


def test_text_colour_contrasts_with_every_palette_colour():
    for key in range(50):
        colour = instance_colour(key)
        assert contrast_ratio(colour, text_colour(colour)) >= 4.5


def test_size_mismatch_and_bad_image_are_refused():
    with pytest.raises(ValueError, match=r"instances are for an image of size \(120, 160\)"):
        draw_overlay(np.zeros((10, 10, 3), dtype=np.uint8), scene())
    with pytest.raises(ValueError, match="uint8 image"):
        draw_overlay(np.zeros((*SIZE, 3), dtype=np.float32), scene())


def test_no_instances_leaves_the_image_unchanged():
    image = np.random.default_rng(0).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
    assert np.array_equal(draw_overlay(image, scene()[:0]), image)
