"""Bad and unusual inputs: converted where that is unambiguous, otherwise a clear ModelInputError."""

from __future__ import annotations

import pytest
import torch

from instaseg.models import MaskRCNN, ModelInputError, build
from instaseg.models.inputs import prepare_image, prepare_targets
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

LIMIT = 10_000_000


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    torch.manual_seed(0)
    return build("maskrcnn_resnet18_fpn", num_classes=3, min_size=64, max_size=96, max_image_pixels=20_000)


def target(image_size: tuple[int, int], boxes: list[list[float]], labels: list[int]) -> Instances:
    height, width = image_size
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        mask[int(y1) : int(y2), int(x1) : int(x2)] = True
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels_tensor = torch.tensor(labels, dtype=torch.int64)
    return Instances(image_size, boxes_tensor, labels_tensor, masks=Masks.from_bitmaps(masks))


def test_grayscale_rgba_and_uint8_images_are_converted() -> None:
    gray = torch.rand(1, 5, 6)
    torch.testing.assert_close(prepare_image(gray, 0, LIMIT), gray.expand(3, 5, 6))
    torch.testing.assert_close(prepare_image(gray[0], 0, LIMIT), gray.expand(3, 5, 6))
    gray_alpha = torch.rand(2, 5, 6)
    torch.testing.assert_close(prepare_image(gray_alpha, 0, LIMIT), gray_alpha[:1].expand(3, 5, 6))
    rgba = torch.rand(4, 5, 6)
    torch.testing.assert_close(prepare_image(rgba, 0, LIMIT), rgba[:3])
    as_bytes = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(3, 1, 1)
    torch.testing.assert_close(
        prepare_image(as_bytes, 0, LIMIT), torch.tensor([0.0, 0.2, 1.0]).reshape(3, 1, 1)
    )
    assert prepare_image(torch.rand(3, 4, 4, dtype=torch.float64), 0, LIMIT).dtype == torch.float32


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(32, 32, 3), r"image 0 has 32 channels .* \(channels-last\? permute"),
        (torch.rand(5, 8, 8), "image 0 has 5 channels"),
        (torch.rand(1, 3, 8, 8), r"image 0 has shape \(1, 3, 8, 8\), expected \(3, H, W\)"),
        (torch.rand(3, 0, 8), "image 0 is empty"),
        (torch.rand(3, 200, 200), "200x200 = 40000 pixels, over the limit of 20000"),
        (torch.randint(0, 5, (3, 8, 8)), "dtype torch.int64, expected float"),
        (torch.full((3, 8, 8), float("nan")), "NaN or infinite"),
        ([[0.5]], "is a list, expected a torch.Tensor"),
    ],
)
def test_unusable_images_are_rejected_by_the_model(model: MaskRCNN, image, message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        model([image])


def test_image_lists_are_required(model: MaskRCNN) -> None:
    with pytest.raises(ModelInputError, match="list of .* tensors, got Tensor"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ModelInputError, match="empty list"):
        model([])


def test_grayscale_image_runs_through_the_model(model: MaskRCNN) -> None:
    with torch.no_grad():
        (instances,) = model([torch.rand(1, 30, 40)])
    assert instances.image_size == (30, 40)
    assert instances.masks.bitmaps().shape[1:] == (30, 40)


def test_training_and_inference_modes_check_their_targets(model: MaskRCNN) -> None:
    image = torch.rand(3, 32, 32)
    with pytest.raises(ModelInputError, match="only used in training mode"):
        model([image], [target((32, 32), [[1, 1, 9, 9]], [1])])
    model.train()
    try:
        with pytest.raises(ModelInputError, match="training mode needs targets"):
            model([image])
    finally:
        model.eval()


def check(targets: list[Instances], images: list[torch.Tensor], message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        prepare_targets(targets, images, num_classes=3, need_masks=True)


def test_bad_targets_are_named() -> None:
    image = torch.rand(3, 20, 30)
    good = target((20, 30), [[1, 1, 9, 9]], [1])
    check([good], [image, image], "one target .* per image: 2 images, targets: 1")
    check([good.boxes], [image], "target 0 is a Tensor, expected Instances")
    check(
        [target((20, 31), [[1, 1, 9, 9]], [1])],
        [image],
        r"target 0 has image_size \(20, 31\) but its image is 20x30",
    )
    check(
        [target((20, 30), [[5, 1, 5, 9]], [1])], [image], r"target 0: boxes \[0\] have zero or negative width"
    )
    check(
        [target((20, 30), [[1, 1, 9, 9], [1, 1, 4, 4]], [1, 3])],
        [image],
        r"labels must be model classes 1..2",
    )
    check([target((20, 30), [[1, 1, 9, 9]], [0])], [image], r"0 is background")
    check([Instances((20, 30), good.boxes, good.labels)], [image], "target 0 has no masks")


def test_non_finite_boxes_are_rejected() -> None:
    bad = target((20, 30), [[1, 1, 9, 9]], [1])
    bad.boxes = torch.tensor([[1.0, float("nan"), 9.0, 9.0]])  # bypassing Instances' own check
    check([bad], [torch.rand(3, 20, 30)], r"target 0: boxes \[0\] contain NaN or infinite coordinates")


def test_masks_of_the_wrong_size_are_rejected() -> None:
    image = torch.rand(3, 20, 30)
    mismatched = target((20, 30), [[1, 1, 9, 9]], [1])
    mismatched.masks = Masks.from_bitmaps(torch.zeros(1, 10, 15, dtype=torch.bool))
    check([mismatched], [image], r"target 0: masks are \(10, 15\) but the image is 20x30")
    too_few = target((20, 30), [[1, 1, 9, 9], [2, 2, 5, 5]], [1, 2])
    too_few.masks = Masks.from_bitmaps(torch.zeros(1, 20, 30, dtype=torch.bool))
    check([too_few], [image], r"masks have shape \(1, 20, 30\), expected \(2, 20, 30\)")


def test_good_targets_are_converted() -> None:
    image = torch.rand(3, 20, 30)
    (converted,) = prepare_targets([target((20, 30), [[1, 2, 9, 10]], [2])], [image], 3, need_masks=True)
    assert converted.boxes.dtype == torch.float32 and converted.labels.dtype == torch.int64
    assert converted.masks.dtype == torch.uint8 and int(converted.masks.sum()) == 8 * 8
    (empty,) = prepare_targets([target((20, 30), [], [])], [image], 3, need_masks=True)
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 20, 30)
