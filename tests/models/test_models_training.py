"""Training mode: the five losses, their gradients, negative images, and overfitting one synthetic image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from instaseg.models import MaskRCNN, build
from instaseg.models.inputs import Target
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These ~100 px images are too small for a second thread to pay off; on a busy two-core machine the
    threads' synchronisation made these tests 5-10x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_sample(height: int = 96, width: int = 128) -> tuple[torch.Tensor, Instances]:
    """A dark image with a bright disc (class 1) and a bright square (class 2), with their masks."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (ys - 40) ** 2 + (xs - 36) ** 2 <= 20**2
    square = (ys >= 30) & (ys < 70) & (xs >= 80) & (xs < 116)
    image = torch.full((3, height, width), 0.1)
    image[0][disc] = 0.9
    image[2][square] = 0.8
    masks = torch.stack([disc, square])
    boxes = torch.tensor([[16.0, 20.0, 57.0, 61.0], [80.0, 30.0, 116.0, 70.0]])
    return image, Instances((height, width), boxes, torch.tensor([1, 2]), masks=Masks.from_bitmaps(masks))


def small_model(**overrides: object) -> MaskRCNN:
    """ResNet-18 (group norm, all layers trainable) at ~100 px, sampling 32 RoIs per image instead of 512:
    the mask head's cost grows with the positive RoIs, and these tests only need the losses to move."""
    torch.manual_seed(0)
    settings = {
        "num_classes": 3,
        "min_size": 96,
        "max_size": 128,
        "box_batch_size_per_image": 64,
        "rpn_post_nms_top_n_train": 300,
        **overrides,
    }
    return build("maskrcnn_resnet18_fpn", **settings).train()


def test_training_returns_the_five_finite_losses_with_gradients() -> None:
    model = small_model(norm="frozen_bn", trainable_layers=3)
    image, target = synthetic_sample()
    losses = model([image, image.flip(-1)[:, :, :80]], [target, negative_target((96, 80))])
    assert set(losses) == LOSS_NAMES
    assert all(loss.dim() == 0 and torch.isfinite(loss) and loss > 0 for loss in losses.values())
    sum(losses.values()).backward()
    for module in (
        model.rpn.head,
        model.roi_heads.box_predictor,
        model.roi_heads.mask_predictor,
        model.backbone.fpn,
        model.backbone.body.layer4,
    ):
        gradients = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in gradients)
        assert any(g.abs().sum() > 0 for g in gradients)
    assert all(p.grad is None for p in model.backbone.body.layer1.parameters()), "layer1 is frozen"


def negative_target(image_size: tuple[int, int]) -> Instances:
    empty_masks = Masks.from_bitmaps(torch.zeros(0, *image_size, dtype=torch.bool))
    return Instances(image_size, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), masks=empty_masks)


def test_images_without_objects_only_teach_background() -> None:
    model = small_model()
    losses = model([torch.rand(3, 64, 64)], [negative_target((64, 64))])
    assert set(losses) == LOSS_NAMES
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0
    assert losses["loss_objectness"] > 0 and losses["loss_classifier"] > 0
    sum(losses.values()).backward()


def test_ground_truth_boxes_are_added_to_the_proposals() -> None:
    model = small_model()
    target = Target(torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.tensor([2]), None)
    (samples,) = model.roi_heads.sample_proposals([torch.zeros(0, 4)], [target])
    assert samples.labels.tolist() == [2]
    torch.testing.assert_close(samples.proposals, target.boxes)
    torch.testing.assert_close(samples.regression_targets, torch.zeros(1, 4))


def test_roi_sampling_follows_batch_size_and_positive_fraction() -> None:
    model = small_model(box_batch_size_per_image=512)
    torch.manual_seed(0)
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    jitter = torch.rand(2000, 4) * 4 - 2
    near = gt + jitter[:1000]  # IoU > 0.5 with the ground truth
    far = torch.tensor([[60.0, 60.0, 90.0, 90.0]]) + jitter[1000:]
    (samples,) = model.roi_heads.sample_proposals(
        [torch.cat([near, far])], [Target(gt, torch.tensor([1]), None)]
    )
    assert len(samples.labels) == 512
    assert int((samples.labels == 1).sum()) == 128 and int((samples.labels == 0).sum()) == 384


@pytest.mark.slow
def test_losses_decrease_when_overfitting_one_image_long() -> None:
    assert overfit(steps=40) < 0.3


def test_losses_decrease_when_overfitting_one_image() -> None:
    assert overfit(steps=8) < 0.8


def overfit(steps: int) -> float:
    """Train on one synthetic image; returns the final total loss as a fraction of the first."""
    model = small_model()
    image, target = synthetic_sample()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    totals = []
    for _ in range(steps):
        losses = model([image], [target])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    return sum(totals[-3:]) / 3 / totals[0]


def test_training_continues_after_an_inference_mode_evaluation() -> None:
    """Validation inside a training run uses inference mode; tensors cached then (anchors) must not break
    the next backward pass."""
    model = small_model()
    image, target = synthetic_sample()
    model.eval()
    with torch.inference_mode():
        (instances,) = model([image])
    assert instances.image_size == (96, 128)
    model.train()
    losses = model([image], [target])
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad is not None
