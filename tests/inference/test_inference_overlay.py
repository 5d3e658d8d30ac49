"""Overlays: filled masks with outlines in the instance colour, labels only where they fit, a legend for
several categories; readable on dark, light and dense images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from instaseg.inference.overlay import contrast_ratio, draw_overlay, instance_colour, text_colour
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SIZE = (120, 160)


def scene(labels: list[int] = (1, 1), track_ids: list[int] | None = None) -> Instances:
    bitmaps = np.zeros((2, *SIZE), dtype=bool)
    bitmaps[0, 40:80, 20:60] = True
    bitmaps[1, 50:100, 90:140] = True
    masks = Masks.from_bitmaps(torch.from_numpy(bitmaps))
    fields = {} if track_ids is None else {"track_ids": torch.tensor(track_ids)}
    scores = torch.tensor([0.93, 0.51])
    return Instances(SIZE, masks.boxes(), torch.tensor(list(labels)), scores, masks, **fields)


def dense_scene(size: int = 256, per_side: int = 10) -> Instances:
    """`per_side`**2 round "nuclei" (radius 10) on a grid 25.6 pixels apart: no room for any label."""
    bitmaps = np.zeros((per_side * per_side, size, size), dtype=np.uint8)
    step = size / per_side
    for index in range(per_side * per_side):
        centre = (round((index % per_side + 0.5) * step), round((index // per_side + 0.5) * step))
        cv2.circle(bitmaps[index], centre, 10, 1, cv2.FILLED)
    masks = Masks.from_bitmaps(torch.from_numpy(bitmaps.astype(bool)))
    n = len(bitmaps)
    return Instances(
        (size, size), masks.boxes(), torch.ones(n, dtype=torch.int64), torch.full((n,), 0.9), masks
    )


def outline_pixels(mask: np.ndarray) -> np.ndarray:
    """(K, 2) row, column of the mask pixels with a background 4-neighbour (cv2.findContours' outline)."""
    eroded = cv2.erode(mask.astype(np.uint8), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))
    return np.argwhere(mask & ~eroded.astype(bool))


@pytest.mark.parametrize("background", [0, 255])
def test_readable_on_dark_and_light_images(background):
    image = np.full((*SIZE, 3), background, dtype=np.uint8)
    out = draw_overlay(image, scene(), {1: "cell"})
    assert out.shape == image.shape and out.dtype == np.uint8
    # Inside a mask (away from its outline and label) the colour is tinted towards the instance colour.
    inside = out[65, 40].astype(int)
    assert np.abs(inside - background).sum() > 60
    # Far from every instance nothing changes.
    assert (out[5:25, 140:158] == background).all()
    # The outline is the instance colour over a dark halo just outside it: visible on white and on black.
    assert tuple(out[40, 40]) == instance_colour(0)
    assert out[39, 40].max() < 60
    # Labels fit above both objects here: a box in the instance colour with text of high contrast on it.
    label_area = out[25:40, 20:60].reshape(-1, 3)
    colours = {tuple(int(v) for v in pixel) for pixel in label_area}
    box_colour = instance_colour(0)
    assert box_colour in colours
    assert tuple(text_colour(box_colour)) in colours
    assert contrast_ratio(box_colour, text_colour(box_colour)) >= 4.5


def test_outline_pixels_have_the_instance_colour_and_masks_are_filled():
    image = np.full((256, 256, 3), 40, dtype=np.uint8)
    instances = dense_scene()
    out = draw_overlay(image, instances)
    bitmaps = instances.masks.bitmaps().numpy()
    for index in (0, 37, 99):
        colour = np.asarray(instance_colour(index))
        ring = outline_pixels(bitmaps[index])
        assert len(ring) > 20
        assert (out[ring[:, 0], ring[:, 1]] == colour).all()
        # The centre is filled: the image blended with the instance colour, not the colour itself.
        row, column = np.argwhere(bitmaps[index]).mean(axis=0).round().astype(int)
        expected = np.clip(0.6 * 40 + 0.4 * colour + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(out[row, column], expected)


def test_no_text_on_a_dense_image_unless_forced():
    image = np.full((256, 256, 3), 40, dtype=np.uint8)
    instances = dense_scene()
    default = draw_overlay(image, instances, {1: "nucleus"})
    assert np.array_equal(default, draw_overlay(image, instances, {1: "nucleus"}, labels=False))
    forced = draw_overlay(image, instances, {1: "nucleus"}, labels=True)
    assert (forced != default).any(axis=-1).sum() > 5000  # a hundred labels cover the nuclei


def test_labels_that_fit_are_drawn_and_those_that_do_not_are_left_out():
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    bitmaps = np.zeros((2, *SIZE), dtype=bool)
    bitmaps[0, 40:80, 20:60] = True  # room above
    bitmaps[1, 0:120, 100:160] = True  # full height, at the right edge: no room above, below or beside
    masks = Masks.from_bitmaps(torch.from_numpy(bitmaps))
    instances = Instances(SIZE, masks.boxes(), torch.tensor([1, 1]), torch.tensor([0.9, 0.8]), masks)
    out = draw_overlay(image, instances, {1: "cell"})
    assert instance_colour(0) in {tuple(int(v) for v in p) for p in out[25:40, 20:60].reshape(-1, 3)}
    unlabelled = draw_overlay(image, instances[1:], {1: "cell"}, labels=False)
    assert np.array_equal(draw_overlay(image, instances[1:], {1: "cell"}), unlabelled)


def test_several_categories_get_category_colours_and_a_legend():
    image = np.full((*SIZE, 3), 128, dtype=np.uint8)
    out = draw_overlay(image, scene(labels=[3, 7]), {3: "cell", 7: "dust"}, labels=False)
    # Colours follow the category (3 and 7), not the instance index.
    assert tuple(out[40, 40]) == instance_colour(3)
    assert tuple(out[50, 115]) == instance_colour(7)
    # The legend in the top-left corner: one swatch per category, in its colour, on a darkened panel.
    legend = {tuple(int(v) for v in p) for p in out[0:30, 0:40].reshape(-1, 3)}
    assert instance_colour(3) in legend and instance_colour(7) in legend
    assert out[1, 1].max() < 128
    # One category: no legend, the corner is untouched.
    single = draw_overlay(image, scene(labels=[3, 3]), {3: "cell"}, labels=False)
    assert (single[0:30, 0:18] == 128).all()


def test_colours_follow_track_ids():
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    by_track = draw_overlay(image, scene(track_ids=[5, 9]), labels=False)
    swapped = draw_overlay(image, scene(track_ids=[9, 5]), labels=False)
    assert tuple(by_track[40, 40]) == instance_colour(5)
    assert tuple(swapped[40, 40]) == instance_colour(9)
    assert np.array_equal(by_track, draw_overlay(image, scene(track_ids=[5, 9]), labels=False))


def test_boxes_on_request_and_for_instances_without_masks():
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    base = scene()
    wider = torch.tensor([[10.0, 30.0, 70.0, 90.0], [80.0, 45.0, 150.0, 110.0]])  # boxes around the masks
    instances = Instances(SIZE, wider, base.labels, base.scores, base.masks)
    assert not draw_overlay(image, instances, labels=False)[60, 69].any()  # off by default
    boxed = draw_overlay(image, instances, labels=False, boxes=True)
    assert tuple(boxed[60, 69]) == instance_colour(0)  # the box's right edge (x2 - 1 = 69)
    without = Instances(SIZE, wider, base.labels, base.scores, None)
    assert tuple(draw_overlay(image, without, labels=False)[60, 69]) == instance_colour(0)


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
