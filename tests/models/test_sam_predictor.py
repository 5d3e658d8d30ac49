"""SamPredictor: the cached embedding, batched prompts, the Instances it returns, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.models.sam import ViTConfig, mobile_sam, sam_vit
from instaseg.models.sam.checkpoint import SamCheckpointError
from instaseg.models.sam.common import stability_score
from instaseg.models.sam.predictor import PromptError, SamPredictor
from instaseg.structures.boxes import mask_boxes

TINY = ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=())  # windowed only: cheap


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    """A random-weight MobileSAM decoder on a random embedding of a 60 x 80 image (no encoding)."""
    torch.manual_seed(0)
    predictor = SamPredictor(mobile_sam())
    predictor.set_embedding(torch.randn(1, 256, 64, 64), (60, 80), (768, 1024))
    return predictor


def test_single_and_batched_prompts(predictor: SamPredictor) -> None:
    one = predictor.predict(points=[[10, 20]], labels=[1])
    assert len(one) == 3 and one.image_size == (60, 80)
    assert one.fields["low_res_logits"].shape == (3, 256, 256)
    assert one.fields["prompt_index"].tolist() == [0, 0, 0]
    assert one.labels.tolist() == [1, 1, 1]
    boxes = [[5, 5, 40, 30], [20, 10, 70, 50]]
    batched = predictor.predict(boxes=boxes, multimask=False)
    assert len(batched) == 2 and batched.fields["prompt_index"].tolist() == [0, 1]
    for i, box in enumerate(boxes):  # one call with B boxes = B calls with one box each
        alone = predictor.predict(boxes=box, multimask=False)
        torch.testing.assert_close(alone.scores, batched.scores[i : i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            alone.fields["low_res_logits"], batched.fields["low_res_logits"][i : i + 1], atol=1e-4, rtol=0
        )
    # B boxes each with its own point set, and one shared point set for B boxes
    paired = predictor.predict(points=[[[10, 10]], [[30, 30]]], labels=[[1], [0]], boxes=boxes)
    shared = predictor.predict(points=[[10, 10]], labels=[1], boxes=boxes)
    assert len(paired) == len(shared) == 6
    torch.testing.assert_close(paired.scores[:3], shared.scores[:3], atol=1e-5, rtol=0)


def test_batches_larger_than_batch_size_are_split(predictor: SamPredictor) -> None:
    boxes = [[i, i, i + 10, i + 10] for i in range(3)]
    whole = predictor.predict(boxes=boxes, multimask=False)
    predictor.batch_size = 2
    try:
        split = predictor.predict(boxes=boxes, multimask=False)
    finally:
        predictor.batch_size = 64
    torch.testing.assert_close(split.scores, whole.scores, atol=1e-5, rtol=0)
    assert split.fields["prompt_index"].tolist() == [0, 1, 2]


def test_mask_input_round_trip(predictor: SamPredictor) -> None:
    first = predictor.predict(points=[[10, 20]], labels=[1])
    best = int(first.scores.argmax())
    again = predictor.predict(
        points=[[10, 20]],
        labels=[1],
        mask_input=first.fields["low_res_logits"][best : best + 1],
        multimask=False,
    )
    assert len(again) == 1


def test_instances_fields_are_consistent(predictor: SamPredictor) -> None:
    found = predictor.predict(points=[[10, 20], [50, 40]], labels=[1, 0])
    bitmaps = found.masks.bitmaps()
    torch.testing.assert_close(found.boxes, found.masks.boxes())  # tight boxes, x2/y2 exclusive
    stability = found.fields["stability_score"]
    assert ((stability >= 0) & (stability <= 1) | stability.isnan()).all()
    assert bitmaps.shape == (3, 60, 80)


def test_stability_score_and_mask_boxes() -> None:
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])
    assert stability_score(logits).tolist() == [pytest.approx(1 / 3)]  # 1 pixel > 1, 3 pixels > -1
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert mask_boxes(masks).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs points"),
        ({"points": [[10, 20]]}, "points: labels are required"),
        ({"points": [[10, 20]], "labels": [2]}, "labels must be 0 .* or 1"),
        ({"points": [[10, 20]], "labels": [0.5]}, "labels must be 0"),
        ({"points": [[10, 20]], "labels": [1, 1]}, r"labels must have shape \(1, 1\)"),
        ({"points": [[float("nan"), 20]], "labels": [1]}, "points: contains NaN"),
        ({"points": [[100, 20]], "labels": [1]}, r"points: \(100, 20\) lies outside the 80x60 image"),
        ({"points": [[-1, 20]], "labels": [1]}, "points: .* outside"),
        ({"points": np.zeros((0, 2)), "labels": np.zeros(0)}, "points is empty"),
        ({"points": [1, 2, 3]}, "labels are required"),
        ({"points": [1, 2, 3], "labels": [1]}, r"points must have shape \(N, 2\)"),
        ({"labels": [1]}, "labels given without points"),
        ({"boxes": [[30, 10, 20, 40]]}, r"boxes\[0\] = .* has x2 < x1"),
        ({"boxes": [[10, 10, 20]]}, r"boxes must have shape \(4,\) or \(B, 4\)"),
        ({"boxes": np.zeros((0, 4))}, "boxes is empty"),
        ({"boxes": [[10, 10, 90, 40]]}, "boxes: .* outside"),
        ({"boxes": [[10, 10, float("inf"), 40]]}, "boxes: contains NaN or infinite"),
        ({"mask_input": torch.zeros(1, 64, 64)}, r"mask_input must have shape \(1, 256, 256\)"),
        (
            {"boxes": [[0, 0, 5, 5]] * 3, "points": [[[1, 1]], [[2, 2]]], "labels": [[1], [1]]},
            "prompt counts differ",
        ),
        ({"points": "ten", "labels": [1]}, "points: not a numeric array"),
    ],
)
def test_bad_prompts_name_the_argument(predictor: SamPredictor, kwargs: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        predictor.predict(**kwargs)


def test_prompts_on_the_border_are_accepted(predictor: SamPredictor) -> None:
    assert len(predictor.predict(points=[[80, 60]], labels=[1], boxes=[0, 0, 80, 60], multimask=False)) == 1


def test_predict_before_set_image_and_wrong_architecture() -> None:
    model = sam_vit(TINY)
    fresh = SamPredictor(model)
    with pytest.raises(RuntimeError, match="call set_image"):
        fresh.predict(points=[[1, 1]], labels=[1])
    with pytest.raises(PromptError, match="model: is a vit_custom SAM, expected vit_t"):
        SamPredictor(model, expected_arch="vit_t")
    with pytest.raises(SamCheckpointError, match="is a vit_custom checkpoint, expected vit_b"):
        SamPredictor(_saved(model), expected_arch="vit_b")
    with pytest.raises(PromptError, match=r"embedding must have shape \(1, 256, 64, 64\)"):
        fresh.set_embedding(torch.zeros(1, 256, 32, 32), (10, 10), (1024, 1024))


def _saved(model) -> dict:
    return {"model": model.state_dict()}


def test_a_second_image_replaces_the_embedding() -> None:
    torch.manual_seed(0)
    predictor = SamPredictor(sam_vit(TINY))
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    first = predictor.embedding.clone()
    assert predictor.original_size == (40, 30) and predictor.input_size == (1024, 768)
    predictor.set_image(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    assert predictor.original_size == (30, 50) and predictor.input_size == (614, 1024)
    assert (predictor.embedding - first).abs().max() > 1e-3
    assert len(predictor.predict(points=[[49, 29]], labels=[1])) == 3


def test_refine_replaces_a_detectors_masks_with_sams(predictor: SamPredictor) -> None:
    from instaseg.structures.instances import Instances
    from instaseg.structures.masks import Masks

    detections = Instances(
        (60, 80),
        torch.tensor([[5.0, 5.0, 40.0, 30.0], [-3.0, 10.0, 85.0, 50.0]]),  # the second overhangs the image
        torch.tensor([2, 7]),
        torch.tensor([0.9, 0.4]),
        Masks.from_bitmaps(torch.zeros(2, 60, 80, dtype=torch.bool)),
        mask_logits=torch.zeros(2, 28, 28),
    )
    refined = predictor.refine(detections)
    assert refined.labels.tolist() == [2, 7] and refined.scores.tolist() == pytest.approx([0.9, 0.4])
    torch.testing.assert_close(refined.boxes, detections.boxes)
    expected = predictor.predict(boxes=[[5, 5, 40, 30], [0, 10, 80, 50]], multimask=False)
    assert torch.equal(refined.masks.bitmaps(), expected.masks.bitmaps())
    torch.testing.assert_close(refined.fields["sam_iou"], expected.scores)
    assert "mask_logits" not in refined.fields and "sam_stability_score" in refined.fields
    assert len(predictor.refine(detections[:0])) == 0
    with pytest.raises(PromptError, match=r"detections: image size \(10, 10\)"):
        predictor.refine(detections[:0].replace(image_size=(10, 10), masks=None))


def _saved_sam(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam_vit(TINY).state_dict(), path)  # the official layout: a plain state dict
    return path


def test_a_sam_checkpoint_loads_through_load_model_as_a_segmentation_model(tmp_path) -> None:
    from instaseg.models import SegmentationModel, load_model
    from instaseg.models.sam.automatic_masks import SamEverythingModel

    model = load_model(_saved_sam(tmp_path))
    assert isinstance(model, SamEverythingModel) and isinstance(model, SegmentationModel)
    assert model.summary()["family"] == "sam" and model.categories == [{"id": 1, "name": "object"}]


@pytest.mark.slow
def test_the_predictor_segments_everything_with_a_sam_checkpoint(tmp_path) -> None:
    from instaseg.inference.predictor import Predictor

    predictor = Predictor(_saved_sam(tmp_path), tiling=None)
    assert predictor.postprocess_options.score_threshold == 0.05  # no operating point: every mask
    result = predictor.predict(np.zeros((24, 32, 3), dtype=np.uint8))
    assert result.image_size == (24, 32) and set(result.labels.tolist()) <= {1}
