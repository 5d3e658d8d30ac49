"""The input transform: resize rule, normalisation, padding / batching, the way back to original pixels."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.models.inputs import Target
from instaseg.models.transform import (
    IMAGENET_MEAN,
    ImageTransform,
    batch_images,
    resize_boxes,
    resize_image,
    resize_target,
)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((400, 600), (800, 1200)),  # short side to 800
        ((512, 512), (800, 800)),
        ((256, 320), (800, 1000)),
        ((500, 2000), (333, 1333)),  # long side capped at 1333: scale 1333 / 2000
        ((1600, 1000), (1280, 800)),  # downscaling works the same way
        ((1, 2000), (1, 1333)),  # a side never shrinks to 0 (floor(1 * 0.6665) would)
        ((3000, 2), (1332, 1)),  # the float32 scale 1333 / 3000 floors to 1332, as in torchvision
    ],
)
def test_resize_short_side_to_min_size_long_side_capped(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    resized = resize_image(torch.rand(3, *size), 800.0, 1333.0)
    assert tuple(resized.shape) == (3, *expected)


@pytest.mark.parametrize("size", [(37, 53), (500, 2000), (1600, 1000), (333, 517)])
def test_resize_gives_torchvisions_pixels(size: tuple[int, int]) -> None:
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    sides = torch.tensor(size, dtype=torch.float32)
    scale = torch.minimum(800.0 / sides.min(), 1333.0 / sides.max()).item()
    expected = torch.nn.functional.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]
    assert torch.equal(resize_image(image, 800.0, 1333.0), expected)


def test_resize_keeps_constant_images_constant() -> None:
    resized = resize_image(torch.full((3, 37, 53), 0.25), 100.0, 1000.0)
    assert resized.shape[-2] == 100
    torch.testing.assert_close(resized, torch.full_like(resized, 0.25))


def test_batch_images_pads_bottom_right_to_multiple_of_32() -> None:
    first, second = torch.rand(3, 50, 70), torch.rand(3, 65, 33)
    batch = batch_images([first, second], size_divisible=32)
    assert tuple(batch.shape) == (2, 3, 96, 96)
    torch.testing.assert_close(batch[0, :, :50, :70], first)
    torch.testing.assert_close(batch[1, :, :65, :33], second)
    assert batch[0, :, 50:].abs().sum() == 0 and batch[0, :, :, 70:].abs().sum() == 0
    assert batch[1, :, 65:].abs().sum() == 0 and batch[1, :, :, 33:].abs().sum() == 0


def test_transform_normalises_resizes_and_batches_images_of_different_sizes() -> None:
    transform = ImageTransform(min_size=64, max_size=100).eval()
    mean_image = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1).expand(3, 32, 48).clone()
    batch, targets = transform([mean_image, torch.ones(3, 40, 20)])
    assert targets is None
    assert batch.image_sizes == [(64, 96), (100, 50)]  # (40, 20): 64 / 20 would make the long side 128 > 100
    assert tuple(batch.tensors.shape) == (2, 3, 128, 96)
    assert batch.tensors[0].abs().max() < 1e-6  # the mean colour normalises to zero
    expected_white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor((0.229, 0.224, 0.225))
    torch.testing.assert_close(batch.tensors[1, :, 50, 25], expected_white)


def test_multi_scale_training_picks_each_size_and_inference_uses_the_last() -> None:
    transform = ImageTransform(min_size=(32, 64), max_size=1000)
    image = torch.rand(3, 20, 20)
    torch.manual_seed(0)
    seen = {transform([image])[0].image_sizes[0][0] for _ in range(20)}
    assert seen == {32, 64}
    transform.eval()
    assert {transform([image])[0].image_sizes[0][0] for _ in range(5)} == {64}


def test_resize_boxes_scales_x_and_y_separately_and_round_trips() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 600.0, 400.0]])
    resized = resize_boxes(boxes, (400, 600), (800, 900))
    torch.testing.assert_close(resized, torch.tensor([[15.0, 40.0, 45.0, 120.0], [0.0, 0.0, 900.0, 800.0]]))
    torch.testing.assert_close(resize_boxes(resized, (800, 900), (400, 600)), boxes)


def test_resize_target_scales_boxes_and_nearest_resizes_masks() -> None:
    masks = torch.zeros(2, 10, 20, dtype=torch.uint8)
    masks[0, 2:6, 4:10] = 1
    masks[1, :, 15:] = 1
    target = Target(
        torch.tensor([[4.0, 2.0, 10.0, 6.0], [15.0, 0.0, 20.0, 10.0]]), torch.tensor([1, 2]), masks
    )
    resized = resize_target(target, (10, 20), (30, 60))
    assert resized.masks.dtype == torch.uint8 and tuple(resized.masks.shape) == (2, 30, 60)
    assert set(resized.masks.unique().tolist()) == {0, 1}
    assert int(resized.masks[0].sum()) == 9 * int(masks[0].sum())
    assert resized.masks[0, 6:18, 12:30].all() and not resized.masks[0, :6].any()
    torch.testing.assert_close(resized.boxes, target.boxes * 3)
    assert torch.equal(resized.labels, target.labels)


def test_postprocess_maps_boxes_and_masks_to_the_original_image() -> None:
    transform = ImageTransform(min_size=800, max_size=1333).eval()
    boxes = torch.tensor([[100.0, 200.0, 500.0, 600.0]])  # in the 800x1200 resized image of a 400x600 image
    probabilities = torch.ones(1, 1, 28, 28)
    original_boxes, masks = transform.postprocess(boxes, probabilities, (800, 1200), (400, 600))
    torch.testing.assert_close(original_boxes, torch.tensor([[50.0, 100.0, 250.0, 300.0]]))
    assert masks.dtype == torch.bool and tuple(masks.shape) == (1, 400, 600)
    rows, columns = torch.where(masks[0])
    # the pasted mask covers the box (up to one pixel at the borders) and nothing far outside it
    assert math.isclose(rows.min().item(), 100, abs_tol=1) and math.isclose(rows.max().item(), 299, abs_tol=1)
    assert math.isclose(columns.min().item(), 50, abs_tol=1) and math.isclose(
        columns.max().item(), 249, abs_tol=1
    )
