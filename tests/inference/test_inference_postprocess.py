"""Every post-processing option on hand-made instances with hand-computed results."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from instaseg.inference.postprocess import PostprocessOptions, postprocess
from instaseg.models.protocol import MASK_THRESHOLD
from instaseg.ops import paste_masks_in_image
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, encode_rle


def square(size: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    bitmap = np.zeros(size, dtype=bool)
    bitmap[y0:y1, x0:x1] = True
    return bitmap


def make(
    bitmaps: list[np.ndarray],
    scores: list[float],
    labels: list[int] | None = None,
    boxes: list[list[float]] | None = None,
) -> Instances:
    masks = Masks.from_bitmaps(torch.from_numpy(np.stack(bitmaps)))
    return Instances(
        masks.image_size,
        torch.tensor(boxes, dtype=torch.float32) if boxes is not None else masks.boxes(),
        torch.tensor(labels if labels is not None else [1] * len(scores)),
        torch.tensor(scores, dtype=torch.float32),
        masks,
    )


def bitmaps(instances: Instances) -> np.ndarray:
    return instances.masks.bitmaps().numpy()


SIZE = (40, 40)
# Box IoU of A = [0, 0, 10, 10] and B = [1, 0, 11, 10]: intersection 90, union 110.
IOU_AB = 90 / 110


def overlapping_pair(labels: list[int]) -> Instances:
    return make([square(SIZE, 0, 0, 10, 10), square(SIZE, 0, 1, 10, 11)], [0.9, 0.8], labels)


def test_defaults_only_drop_scores_below_0_05():
    instances = make([square(SIZE, 0, 0, 5, 5), square(SIZE, 20, 20, 30, 30)], [0.9, 0.04])
    out = postprocess(instances, PostprocessOptions())
    assert out.scores.tolist() == pytest.approx([0.9])
    assert np.array_equal(bitmaps(out)[0], bitmaps(instances)[0])


def test_score_threshold_and_sorting():
    instances = make([square(SIZE, 0, 0, 5, 5)] * 3, [0.3, 0.8, 0.6])
    out = postprocess(instances, PostprocessOptions(score_threshold=0.5))
    assert out.scores.tolist() == pytest.approx([0.8, 0.6])


def test_mask_threshold_repastes_from_mask_logits():
    # Logits rise from left to right inside the box, so a lower threshold gives a wider mask.
    logits = torch.linspace(-4, 4, 28).repeat(28, 1)[None]
    boxes = torch.tensor([[10.0, 10.0, 38.0, 38.0]])
    empty = Masks.from_bitmaps(torch.zeros((1, 50, 50), dtype=torch.bool))
    instances = Instances((50, 50), boxes, torch.tensor([1]), torch.tensor([0.9]), empty, mask_logits=logits)
    areas = {}
    for threshold in (0.3, 0.7):
        out = postprocess(instances, PostprocessOptions(mask_threshold=threshold))
        expected = paste_masks_in_image(logits.sigmoid()[:, None], boxes, (50, 50), threshold=threshold)[:, 0]
        assert torch.equal(out.masks.bitmaps(), expected)
        areas[threshold] = int(expected.sum())
    assert areas[0.3] > areas[0.7] > 0


def test_masks_are_kept_at_the_models_own_threshold():
    # At MASK_THRESHOLD the model has already pasted its masks from these logits, so they are not pasted
    # again: a mask that does not match its logits (empty here) shows which was used.
    logits = torch.full((1, 28, 28), 4.0)
    boxes = torch.tensor([[10.0, 10.0, 38.0, 38.0]])
    empty = Masks.from_bitmaps(torch.zeros((1, 50, 50), dtype=torch.bool))
    instances = Instances((50, 50), boxes, torch.tensor([1]), torch.tensor([0.9]), empty, mask_logits=logits)
    kept = postprocess(instances, PostprocessOptions(mask_threshold=MASK_THRESHOLD))
    assert int(kept.masks.bitmaps().sum()) == 0
    repasted = postprocess(instances, PostprocessOptions(mask_threshold=0.4))
    expected = paste_masks_in_image(logits.sigmoid()[:, None], boxes, (50, 50), threshold=0.4)[:, 0]
    assert torch.equal(repasted.masks.bitmaps(), expected) and int(expected.sum()) >= 28 * 28


def test_hard_nms_per_class_and_class_agnostic():
    instances = make(
        [square(SIZE, 0, 0, 10, 10), square(SIZE, 0, 1, 10, 11), square(SIZE, 0, 1, 10, 11)],
        [0.9, 0.8, 0.7],
        [1, 2, 1],
    )
    per_class = postprocess(instances, PostprocessOptions(nms="hard", nms_iou_threshold=0.5))
    assert per_class.scores.tolist() == pytest.approx([0.9, 0.8])  # C (label 1) suppressed by A
    agnostic = postprocess(
        instances, PostprocessOptions(nms="hard", nms_iou_threshold=0.5, class_agnostic=True)
    )
    assert agnostic.scores.tolist() == pytest.approx([0.9])
    loose = postprocess(instances, PostprocessOptions(nms="hard", nms_iou_threshold=0.9, class_agnostic=True))
    assert loose.scores.tolist() == pytest.approx([0.9, 0.8])  # A-B at 0.82 stay; C duplicates B exactly


def test_soft_nms_gaussian_decay():
    out = postprocess(overlapping_pair([1, 1]), PostprocessOptions(nms="soft-gaussian", soft_nms_sigma=0.5))
    assert out.scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-(IOU_AB**2) / 0.5)], rel=1e-5)
    other_class = postprocess(overlapping_pair([1, 2]), PostprocessOptions(nms="soft-gaussian"))
    assert other_class.scores.tolist() == pytest.approx([0.9, 0.8])  # per class: no interaction
    agnostic = postprocess(
        overlapping_pair([1, 2]), PostprocessOptions(nms="soft-gaussian", class_agnostic=True)
    )
    assert agnostic.scores[1].item() == pytest.approx(0.8 * math.exp(-(IOU_AB**2) / 0.5), rel=1e-5)


def test_soft_nms_linear_decay_and_drop():
    out = postprocess(overlapping_pair([1, 1]), PostprocessOptions(nms="soft-linear", nms_iou_threshold=0.5))
    assert out.scores.tolist() == pytest.approx([0.9, 0.8 * (1 - IOU_AB)], rel=1e-5)
    above = postprocess(overlapping_pair([1, 1]), PostprocessOptions(nms="soft-linear", score_threshold=0.2))
    assert len(above) == 1  # 0.8 * 0.18 = 0.145 falls below the score threshold


def test_matrix_nms_decay():
    instances = overlapping_pair([1, 1])
    out = postprocess(instances, PostprocessOptions(nms="matrix", matrix_nms_sigma=2.0))
    # Mask IoU equals the box IoU here (the masks fill their boxes); A overlaps nothing above it.
    assert out.scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-2.0 * IOU_AB**2)], rel=1e-5)
    dropped = postprocess(instances, PostprocessOptions(nms="matrix", score_threshold=0.3))
    assert len(dropped) == 1


def test_max_detections_keeps_the_best():
    instances = make([square(SIZE, 0, 0, 5, 5)] * 4, [0.2, 0.9, 0.5, 0.7])
    out = postprocess(instances, PostprocessOptions(max_detections=2))
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])


def test_min_mask_area():
    instances = make([square(SIZE, 0, 0, 3, 3), square(SIZE, 10, 10, 20, 20)], [0.9, 0.8])
    out = postprocess(instances, PostprocessOptions(min_mask_area=10))
    assert out.scores.tolist() == pytest.approx([0.8])
    assert int(out.masks.area()[0]) == 100


def test_fill_holes():
    ring = square(SIZE, 5, 5, 25, 25) & ~square(SIZE, 12, 12, 18, 18)
    out = postprocess(make([ring], [0.9]), PostprocessOptions(fill_holes=True))
    assert np.array_equal(bitmaps(out)[0], square(SIZE, 5, 5, 25, 25))


def test_opening_removes_spurs_and_keeps_the_body():
    rows, cols = np.mgrid[0:40, 0:40]
    disc = (rows - 20) ** 2 + (cols - 15) ** 2 <= 64
    spur = np.zeros(SIZE, dtype=bool)
    spur[20, 23:36] = True  # a 1-pixel wide line sticking out of the disc
    out = postprocess(make([disc | spur], [0.9]), PostprocessOptions(opening_radius=2))
    opened = bitmaps(out)[0]
    assert not opened[20, 26:36].any()
    assert opened[disc].mean() > 0.9 and not opened[~disc].any()


def test_largest_component_only():
    small = square(SIZE, 0, 0, 5, 6)
    large = square(SIZE, 20, 20, 30, 30)
    out = postprocess(make([small | large], [0.9]), PostprocessOptions(largest_component_only=True))
    assert np.array_equal(bitmaps(out)[0], large)


def test_non_overlapping_gives_each_pixel_to_the_best_instance():
    a, b = square(SIZE, 0, 0, 20, 20), square(SIZE, 10, 10, 30, 30)
    out = postprocess(make([b, a], [0.8, 0.9]), PostprocessOptions(non_overlapping=True))
    first, second = bitmaps(out)
    assert np.array_equal(first, a)  # the higher score keeps everything
    assert np.array_equal(second, b & ~a)
    assert not (first & second).any()


def test_non_overlapping_then_largest_component_and_min_area():
    bar = square(SIZE, 0, 18, 40, 22)  # cuts the square below into a 15-wide and a 3-wide part
    cut = square(SIZE, 10, 3, 20, 25)
    covered = square(SIZE, 30, 19, 35, 21)  # lies inside the bar entirely
    options = PostprocessOptions(non_overlapping=True, largest_component_only=True, min_mask_area=1)
    out = postprocess(make([bar, cut, covered], [0.9, 0.8, 0.7]), options)
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])
    assert np.array_equal(bitmaps(out)[1], square(SIZE, 10, 3, 20, 18))


def test_rle_masks_give_the_same_pixels_and_stay_rle():
    ring = square(SIZE, 5, 5, 25, 25) & ~square(SIZE, 12, 12, 18, 18)
    other = square(SIZE, 20, 20, 35, 35)
    dense = make([ring, other], [0.9, 0.8])
    rle = dense.replace(masks=Masks.from_rles(encode_rle(np.stack([ring, other])), SIZE))
    options = PostprocessOptions(fill_holes=True, non_overlapping=True)
    out_dense, out_rle = postprocess(dense, options), postprocess(rle, options)
    assert out_rle.masks.form == Masks.RLES
    assert np.array_equal(bitmaps(out_dense), bitmaps(out_rle))


def test_fields_follow_their_instances():
    instances = make([square(SIZE, 0, 0, 5, 5)] * 3, [0.3, 0.9, 0.6]).replace(
        track_ids=torch.tensor([7, 8, 9])
    )
    out = postprocess(instances, PostprocessOptions(score_threshold=0.5))
    assert out.fields["track_ids"].tolist() == [8, 9]


def test_empty_input():
    empty = Instances(
        SIZE,
        torch.zeros((0, 4)),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0),
        Masks.from_bitmaps(torch.zeros((0, *SIZE), dtype=torch.bool)),
    )
    options = PostprocessOptions(nms="soft-gaussian", fill_holes=True, non_overlapping=True, max_detections=3)
    assert len(postprocess(empty, options)) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"nms": "fast"}, "nms must be one of none, hard"),
        ({"score_threshold": 1.5}, "score_threshold must lie in [0, 1]"),
        ({"opening_radius": -1}, "opening_radius must be >= 0"),
        ({"max_detections": -2}, "max_detections must be >= 0"),
    ],
)
def test_bad_options_are_named(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PostprocessOptions(**arguments)


def test_mask_options_without_masks_are_refused():
    boxes_only = Instances(SIZE, torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([1]), torch.tensor([0.9]))
    with pytest.raises(ValueError, match="fill_holes need masks"):
        postprocess(boxes_only, PostprocessOptions(fill_holes=True))
    assert len(postprocess(boxes_only, PostprocessOptions(nms="hard"))) == 1
    with pytest.raises(ValueError, match="no scores"):
        postprocess(
            Instances(SIZE, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64)), PostprocessOptions()
        )
