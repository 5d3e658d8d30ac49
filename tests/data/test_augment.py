"""Augmentation keeps image, boxes and masks consistent: checked against NumPy flips / rotations / slicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.data.augment import (
    AffineMap,
    AugmentConfig,
    augment,
    change_modality,
    copy_paste,
    jitter_colors,
    jitter_stain,
)
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

H, W = 40, 60


def _sample(rle_form: bool = False) -> tuple[np.ndarray, Instances, np.ndarray]:
    """A random image with three instances (one touching the right border) and their (3, H, W) bitmaps."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    bitmaps = np.zeros((3, H, W), dtype=bool)
    bitmaps[0, 5:15, 10:30] = True
    bitmaps[1, 20:38, 44:60] = True
    bitmaps[2, 2:9, 40:47] = True
    bitmaps[2, 4, 47:50] = True  # a non-convex bit
    masks = Masks.from_bitmaps(bitmaps)
    if rle_form:
        masks = Masks.from_rles(masks.rles(), (H, W))
    target = Instances(
        (H, W), masks.boxes(), torch.tensor([1, 2, 1]), masks=masks, iscrowd=torch.tensor([0, 0, 0])
    )
    return image, target, bitmaps


def _check_consistent(target: Instances) -> None:
    """Boxes are the tight boxes of the masks (the targets the model trains on must agree)."""
    torch.testing.assert_close(target.boxes, target.masks.boxes())


@pytest.mark.parametrize("rle_form", [False, True])
@pytest.mark.parametrize(
    ("config", "image_op", "mask_op"),
    [
        (AugmentConfig(hflip=1.0), lambda a: a[:, ::-1], lambda m: m[:, :, ::-1]),
        (AugmentConfig(vflip=1.0), lambda a: a[::-1], lambda m: m[:, ::-1]),
        (AugmentConfig(hflip=1.0, vflip=1.0), lambda a: a[::-1, ::-1], lambda m: m[:, ::-1, ::-1]),
    ],
)
def test_flips_match_numpy(config, image_op, mask_op, rle_form):
    image, target, bitmaps = _sample(rle_form)
    out_image, out = augment(image, target, config, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image_op(image))
    np.testing.assert_array_equal(out.masks.bitmaps().numpy(), mask_op(bitmaps))
    _check_consistent(out)
    assert out.labels.tolist() == [1, 2, 1] and out.fields["iscrowd"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rot90_matches_numpy(quarter_turns):
    image, target, bitmaps = _sample()
    transform = AffineMap.identity(H, W).rot90(quarter_turns)
    out_image, out = transform.apply(image, target, min_visible=0.25)
    np.testing.assert_array_equal(out_image, np.rot90(image, quarter_turns))
    np.testing.assert_array_equal(out.masks.bitmaps().numpy(), np.rot90(bitmaps, quarter_turns, axes=(1, 2)))
    assert out.image_size == out_image.shape[:2]
    _check_consistent(out)


def test_crop_clips_instances_and_drops_mostly_hidden_ones():
    image, target, bitmaps = _sample()
    # Window rows 0..29, columns 25..54: instance 0 keeps columns 25..29 (25% of it), instance 1 keeps
    # rows 20..29 x columns 44..54 (10 x 11 of 18 x 16 = 38%), instance 2 stays whole.
    transform = AffineMap.identity(H, W).crop(0, 25, 30, 30)
    out_image, out = transform.apply(image, target, min_visible=0.3)
    np.testing.assert_array_equal(out_image, image[0:30, 25:55])
    np.testing.assert_array_equal(out.masks.bitmaps().numpy(), bitmaps[1:, 0:30, 25:55])
    assert out.labels.tolist() == [2, 1]
    torch.testing.assert_close(out.boxes[0], torch.tensor([19.0, 20.0, 30.0, 30.0]))
    _check_consistent(out)
    _, lenient = transform.apply(image, target, min_visible=0.2)
    assert lenient.labels.tolist() == [1, 2, 1]


def test_crop_window_larger_than_the_image_pads_with_black():
    image, target, bitmaps = _sample()
    config = AugmentConfig(crop_size=(50, 70))
    out_image, out = augment(image, target, config, np.random.default_rng(0))
    assert out_image.shape == (50, 70, 3)
    np.testing.assert_array_equal(out_image[:H, :W], image)
    assert not out_image[H:].any() and not out_image[:, W:].any()
    np.testing.assert_array_equal(out.masks.bitmaps().numpy()[:, :H, :W], bitmaps)
    assert out.image_size == (50, 70)


def test_scale_jitter_scales_areas_and_keeps_boxes_on_masks():
    image, target, bitmaps = _sample()
    config = AugmentConfig(scale_range=(2.0, 2.0), crop_size=(80, 120))  # the whole doubled image
    out_image, out = augment(image, target, config, np.random.default_rng(0))
    assert out_image.shape == (80, 120, 3)
    np.testing.assert_allclose(out.masks.area().numpy(), 4 * bitmaps.sum(axis=(1, 2)), rtol=0.08)
    torch.testing.assert_close(out.boxes, target.boxes * 2)
    _check_consistent(out)


def test_boxes_without_masks_follow_the_geometry():
    image, target, _ = _sample()
    boxes_only = Instances(target.image_size, target.boxes, target.labels)
    _, flipped = augment(image, boxes_only, AugmentConfig(hflip=1.0), np.random.default_rng(0))
    expected = target.boxes.clone()
    expected[:, [0, 2]] = W - target.boxes[:, [2, 0]]
    torch.testing.assert_close(flipped.boxes, expected)
    _, cropped = AffineMap.identity(H, W).crop(0, 25, 30, 30).apply(image, boxes_only, min_visible=0.3)
    assert cropped.labels.tolist() == [2, 1]
    torch.testing.assert_close(cropped.boxes[0], torch.tensor([19.0, 20.0, 30.0, 30.0]))


def test_empty_targets_pass_through_every_transform():
    image, target, _ = _sample()
    empty = target[torch.zeros(3, dtype=torch.bool)]
    config = AugmentConfig(hflip=1.0, rot90=1.0, scale_range=(0.5, 1.5), crop_size=(32, 32), brightness=0.3)
    out_image, out = augment(image, empty, config, np.random.default_rng(1))
    assert out_image.shape == (32, 32, 3) and len(out) == 0 and out.masks is not None


def test_same_seed_same_result_other_seed_other_result():
    image, target, _ = _sample()
    config = AugmentConfig(
        hflip=0.5,
        vflip=0.5,
        rot90=0.5,
        scale_range=(0.7, 1.4),
        crop_size=(32, 32),
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
    )
    first = augment(image, target, config, np.random.default_rng(5))
    again = augment(image, target, config, np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], again[0])
    torch.testing.assert_close(first[1].boxes, again[1].boxes)
    others = [augment(image, target, config, np.random.default_rng(seed))[0] for seed in range(6, 10)]
    assert any(not np.array_equal(first[0], other) for other in others)


def test_color_jitter_formulas():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert jitter_colors(image, np.random.default_rng(0), 0, 0, 0) is image
    factor = np.random.default_rng(3).uniform(0.5, 1.5)
    bright = jitter_colors(image, np.random.default_rng(3), 0.5, 0, 0)
    np.testing.assert_array_equal(bright, np.rint(np.clip(image.astype(np.float32) * factor, 0, 255)))
    gray = np.repeat(image[..., :1], 3, axis=2)
    np.testing.assert_array_equal(jitter_colors(gray, np.random.default_rng(0), 0, 0, 0.9), gray)
    flat = np.full((4, 4, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(jitter_colors(flat, np.random.default_rng(0), 0, 0.9, 0), flat)


def test_copy_paste_occludes_and_adds_instances():
    image, target, bitmaps = _sample()
    source_image = np.full_like(image, 255)
    source_masks = np.zeros((2, H, W), dtype=bool)
    source_masks[0, 0:20, 0:43] = True  # covers all of target instance 0 and 21 of 52 pixels of instance 2
    source_masks[1, 30:40, 0:10] = True
    source = Instances(
        (H, W),
        Masks.from_bitmaps(source_masks).boxes(),
        torch.tensor([2, 1]),
        masks=Masks.from_bitmaps(source_masks),
        iscrowd=torch.tensor([0, 1]),
    )
    out_image, out = copy_paste(
        image, target, source_image, source, np.random.default_rng(0), min_visible=0.7
    )
    # The crowd instance is never pasted, so the only candidate (source 0) is pasted.
    assert out.labels.tolist() == [2, 2]
    np.testing.assert_array_equal(out_image[source_masks[0]], 255)
    np.testing.assert_array_equal(out_image[~source_masks[0]], image[~source_masks[0]])
    np.testing.assert_array_equal(out.masks.bitmaps().numpy(), np.stack([bitmaps[1], source_masks[0]]))
    _check_consistent(out)
    _, kept = copy_paste(image, target, source_image, source, np.random.default_rng(0), min_visible=0.3)
    assert kept.labels.tolist() == [2, 1, 2]
    visible = bitmaps[2] & ~source_masks[0]
    torch.testing.assert_close(kept.masks.bitmaps()[1], torch.from_numpy(visible))
    _check_consistent(kept)


def test_copy_paste_through_augment_uses_the_drawn_source():
    image, target, _ = _sample()
    calls = []

    def draw():
        calls.append(1)
        return image.copy(), target

    config = AugmentConfig(copy_paste=1.0, crop_size=(30, 30))
    _, out = augment(image, target, config, np.random.default_rng(2), draw_paste_source=draw)
    assert calls == [1] and out.image_size == (30, 30)
    _check_consistent(out)
    with pytest.raises(ValueError, match="needs draw_paste_source"):
        augment(image, target, config, np.random.default_rng(2))


def test_copy_paste_needs_masks():
    image, target, _ = _sample()
    boxes_only = Instances(target.image_size, target.boxes, target.labels)
    with pytest.raises(ValueError, match="needs instance masks"):
        copy_paste(image, boxes_only, image, target, np.random.default_rng(0), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hflip": 1.5}, "'hflip' must be in"),
        ({"brightness": 1.0}, "'brightness' must be in"),
        ({"scale_range": (0.5, 2.0)}, "'scale_range' needs 'crop_size'"),
        ({"scale_range": (2.0, 1.0), "crop_size": (8, 8)}, "0 < lo <= hi"),
        ({"crop_size": (0, 8)}, "positive sides"),
        ({"invert": 2.0}, "'invert' must be in"),
        ({"stain": 1.0}, "'stain' must be in"),
        ({"blur_sigma": (0.0, 1.0)}, "'blur_sigma' must be"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_inversion_and_grayscale_are_exact_and_leave_the_target_alone():
    image, target, bitmaps = _sample()
    inverted, out = augment(image, target, AugmentConfig(invert=1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(inverted, 255 - image)
    np.testing.assert_array_equal(out.masks.bitmaps().numpy(), bitmaps)
    gray = change_modality(image, AugmentConfig(grayscale=1.0), np.random.default_rng(0))
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0].astype(np.float64) - luma).max() <= 0.5 + 1e-6
    assert (gray == gray[..., :1]).all()


def test_blur_smooths_and_keeps_the_mean():
    image = _sample()[0]
    blurred = change_modality(image, AugmentConfig(blur=1.0, blur_sigma=(1.0, 1.0)), np.random.default_rng(0))
    assert blurred.shape == image.shape and blurred.dtype == np.uint8
    assert np.diff(blurred.astype(float), axis=1).std() < 0.6 * np.diff(image.astype(float), axis=1).std()
    assert abs(blurred.mean() - image.mean()) < 2.0


def test_stain_jitter_round_trips_and_changes_colour_only_within_its_strength():
    image = np.random.default_rng(1).integers(30, 230, (H, W, 3), dtype=np.uint8)
    # alpha = 1, beta = 0: scikit-image's deconvolution and reconstruction give the image back
    identity = jitter_stain(image, np.random.default_rng(0), 0.0)
    assert np.abs(identity.astype(int) - image).max() <= 1
    jittered = jitter_stain(image, np.random.default_rng(0), 0.1)
    change = np.abs(jittered.astype(int) - image)
    assert change.max() > 1 and change.mean() < 40
    again = change_modality(image, AugmentConfig(stain=0.1), np.random.default_rng(0))
    np.testing.assert_array_equal(again, jittered)  # the same draws, the same image


def test_modality_options_off_draw_no_random_numbers():
    image = _sample()[0]
    rng = np.random.default_rng(0)
    assert change_modality(image, AugmentConfig(), rng) is image
    assert rng.random() == np.random.default_rng(0).random()
