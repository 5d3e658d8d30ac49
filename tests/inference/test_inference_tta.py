"""Test-time augmentation: view geometry, weighted box voting and probability averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.inference.predictor import Predictor
from instaseg.inference.tta import TTAOptions, flip_instances, fuse_views
from instaseg.models import build
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SIZE = (20, 30)


def view(
    boxes: list[list[float]], scores: list[float], labels: list[int] | None = None, logit: float = 10.0
) -> Instances:
    count = len(boxes)
    return Instances(
        SIZE,
        torch.tensor(boxes, dtype=torch.float32).reshape(count, 4),
        torch.tensor(labels or [1] * count, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float32),
        mask_logits=torch.full((count, 28, 28), logit),
    )


def test_flip_mirrors_boxes_logits_and_masks():
    logits = torch.arange(28.0).repeat(28, 1)[None]
    masks = Masks.from_bitmaps(
        torch.zeros((1, *SIZE), dtype=torch.bool).index_fill_(2, torch.tensor([0]), True)
    )
    instances = Instances(
        SIZE,
        torch.tensor([[2.0, 3.0, 10.0, 8.0]]),
        torch.tensor([1]),
        torch.tensor([0.5]),
        masks,
        mask_logits=logits,
    )
    flipped = flip_instances(instances)
    assert flipped.boxes.tolist() == [[20.0, 3.0, 28.0, 8.0]]
    assert torch.equal(flipped.fields["mask_logits"][0, :, 0], logits[0, :, -1])
    assert flipped.masks.bitmaps()[0, :, -1].all() and not flipped.masks.bitmaps()[0, :, 0].any()
    twice = flip_instances(flipped)
    assert torch.equal(twice.boxes, instances.boxes) and torch.equal(twice.masks.bitmaps(), masks.bitmaps())


def test_weighted_box_voting_and_score():
    fused = fuse_views([view([[0, 0, 10, 10]], [0.9]), view([[2, 0, 12, 10]], [0.6])], 0.55, 0.5)
    assert len(fused) == 1
    # Box: score-weighted mean (0.9 * A + 0.6 * B) / 1.5; score: summed over the two views, divided by 2.
    assert fused.boxes[0].tolist() == pytest.approx([0.8, 0.0, 10.8, 10.0], abs=1e-5)
    assert fused.scores.item() == pytest.approx(0.75)


def test_mask_probabilities_are_averaged_then_thresholded():
    views = [view([[0, 0, 10, 10]], [0.9]), view([[4, 0, 14, 10]], [0.8])]
    # Box IoU is 6 / 14, so join at 0.4. In A only or B only the mean probability is ~0.5, in both ~1.
    low = fuse_views(views, 0.4, mask_threshold=0.4).masks.bitmaps()[0]
    high = fuse_views(views, 0.4, mask_threshold=0.6).masks.bitmaps()[0]
    assert low[5, 1] and low[5, 12] and low[5, 7]
    assert not high[5, 1] and not high[5, 12] and high[5, 7]
    assert (high <= low).all()


def test_one_detection_per_view_and_label_per_cluster():
    same_view = fuse_views([view([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])], 0.55, 0.5)
    assert len(same_view) == 2
    other_label = fuse_views(
        [view([[0, 0, 10, 10]], [0.9], [1]), view([[0, 0, 10, 10]], [0.9], [2])], 0.55, 0.5
    )
    assert sorted(other_label.labels.tolist()) == [1, 2]
    seen_once = fuse_views([view([[0, 0, 10, 10]], [0.9]), view([[20, 10, 28, 18]], [0.4])], 0.55, 0.5)
    assert seen_once.scores.tolist() == pytest.approx([0.45, 0.2])  # each seen by one view of two


def test_fuse_refuses_views_without_logits():
    with pytest.raises(ValueError, match="view 1 needs scores and the 'mask_logits' field"):
        fuse_views(
            [
                view([[0, 0, 5, 5]], [0.9]),
                Instances(SIZE, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64)),
            ],
            0.5,
            0.5,
        )


def test_flip_tta_agrees_with_a_flip_equivariant_model(make_segmenter, make_disc_image):
    image = make_disc_image(80, 120, [(30, 30, 12), (50, 90, 9)])
    plain = Predictor(make_segmenter(), tiling=None).predict(image)
    model = make_segmenter()
    tta = Predictor(model, tiling=None, tta=TTAOptions(flip=True)).predict(image)
    assert model.calls == [2]  # the image and its mirror in one batch
    assert len(tta) == len(plain) == 2
    order = [int(torch.argmin((plain.boxes - box).abs().sum(dim=1))) for box in tta.boxes]
    assert torch.allclose(tta.boxes, plain.boxes[order], atol=1e-4)
    assert torch.allclose(tta.scores, plain.scores[order], atol=1e-6)  # found in both views
    for mask, other in zip(tta.masks.bitmaps().numpy(), plain.masks.bitmaps().numpy()[order], strict=True):
        assert (mask & other).sum() / (mask | other).sum() > 0.95


def test_scale_tta_runs_one_call_per_scale(make_segmenter, make_disc_image):
    image = make_disc_image(80, 120, [(40, 60, 15)])
    model = make_segmenter(min_size=80, max_size=1000)
    result = Predictor(model, tiling=None, tta=TTAOptions(flip=False, scales=(0.5, 2.0))).predict(image)
    assert model.calls == [1, 1]
    assert len(result) == 1
    truth = make_disc_image(80, 120, [(40, 60, 15)])[:, :, 0] > 0
    mask = result.masks.bitmaps()[0].numpy()
    assert (mask & truth).sum() / (mask | truth).sum() > 0.85


def test_scales_must_be_positive():
    with pytest.raises(ValueError, match="scales must be positive"):
        TTAOptions(scales=(1.0, 0.0))


def test_scale_tta_leaves_a_shared_mask_rcnn_unchanged():
    """Scale TTA passes the scale per call: a second predictor sharing the model sees the model as built."""
    model = build("maskrcnn_resnet18_fpn", min_size=64, max_size=96, num_classes=2, box_score_thresh=0.0)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    plain = Predictor(model, tiling=None)
    before = plain.predict(image)
    Predictor(model, tiling=None, tta=TTAOptions(flip=False, scales=(0.5, 1.5))).predict(image)
    after = plain.predict(image)
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    assert torch.equal(before.boxes, after.boxes) and torch.equal(before.scores, after.scores)


def test_no_detections_in_any_view(make_segmenter):
    black = np.zeros((40, 40, 3), dtype=np.uint8)
    result = Predictor(make_segmenter(), tiling=None, tta=TTAOptions(flip=True)).predict(black)
    assert len(result) == 0 and result.masks is not None
