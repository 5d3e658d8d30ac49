"""instaseg's promptable model: SamPredictor runs it, its encoder starts from a detector, its model file
round-trips, the simulated training prompts and the losses behave on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instaseg.models import build, load_model, load_promptable
from instaseg.models.build import save_weights
from instaseg.models.model_file import WeightsError
from instaseg.models.promptable import (
    PromptableConfig,
    PromptableSam,
    build_promptable,
    load_promptable_encoder_weights,
    promptable_model_file,
)
from instaseg.models.promptable.model import corrective_clicks, mask_losses
from instaseg.models.promptable.prompt_simulation import jittered_boxes, random_points
from instaseg.models.sam.automatic_masks import SamEverythingModel
from instaseg.models.sam.predictor import PromptError, SamPredictor

TINY = PromptableConfig(image_size=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_promptable(TINY)


def test_sam_predictor_runs_the_promptable_model(model):
    predictor = SamPredictor(model)
    image = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    assert predictor.embedding.shape == (1, 256, 8, 8)  # 64 frame, stride 8
    found = predictor.predict(points=[[10, 20]], labels=[1])
    assert len(found) == 3 and found.image_size == (48, 80)
    assert found.masks.bitmaps().shape == (3, 48, 80)
    assert found.fields["low_res_logits"].shape == (3, 32, 32)
    boxes = predictor.predict(boxes=[[0, 0, 20, 20], [30, 10, 70, 40]], multimask=False)
    assert len(boxes) == 2 and boxes.fields["prompt_index"].tolist() == [0, 1]
    refined = predictor.predict(
        points=[[10, 20], [12, 22]],
        labels=[1, 0],
        mask_input=found.fields["low_res_logits"][:1],
        multimask=False,
    )
    assert len(refined) == 1
    with pytest.raises(PromptError, match="points: .* outside the 80x48 image"):
        predictor.predict(points=[[90, 20]], labels=[1])


@pytest.mark.slow
def test_encoder_starts_from_a_detector(tmp_path):
    detector_path = tmp_path / "detector.pt"
    torch.manual_seed(1)
    detector = build("maskrcnn_efficientnet_lite0_fpn", num_classes=2)
    save_weights(detector, detector_path)
    fresh = build_promptable(TINY)
    load_promptable_encoder_weights(fresh, detector_path)
    for name, value in detector.backbone.state_dict().items():
        torch.testing.assert_close(fresh.image_encoder.backbone.state_dict()[name], value)
    save_weights(build("maskrcnn_resnet18_fpn", num_classes=2, min_size=64), tmp_path / "r18.pt")
    with pytest.raises(WeightsError, match="efficientnet_lite0 backbone"):
        load_promptable_encoder_weights(fresh, tmp_path / "r18.pt")


def test_model_files_round_trip(tmp_path):
    torch.manual_seed(1)
    fresh = build_promptable(TINY)
    fresh.categories = [{"id": 7, "name": "nucleus"}]
    path = tmp_path / "promptable.pt"
    promptable_model_file(fresh, {"iteration": 0}).save(path)
    loaded = load_promptable(path)
    assert isinstance(loaded, PromptableSam)
    assert loaded.config == TINY and loaded.categories == [{"id": 7, "name": "nucleus"}]
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    # As a detector (load_model), a promptable model segments everything, class-agnostic.
    everything = load_model(path)
    assert isinstance(everything, SamEverythingModel) and everything.sam.config == TINY


def test_a_promptable_file_with_more_categories_than_classes_is_refused(tmp_path):
    fresh = build_promptable(TINY)  # num_classes 2: background + one category
    fresh.categories = [{"id": 1, "name": "nucleus"}, {"id": 2, "name": "cell"}]
    path = tmp_path / "promptable.pt"
    promptable_model_file(fresh, {"iteration": 0}).save(path)
    for load in (load_promptable, load_model):
        with pytest.raises(WeightsError, match="promptable.pt: 2 categories for a model with 1 classes"):
            load(path)


def test_load_promptable_refuses_a_detector_file(tiny_model_checkpoint):
    with pytest.raises(WeightsError, match="not a promptable model"):
        load_promptable(tiny_model_checkpoint)


def test_simulated_points_and_boxes_stay_on_their_objects():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:10, 5:12] = True
    masks[1, 20:30, 0:3] = True
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        points = random_points(masks, generator).long()
        assert masks[0, points[0, 1], points[0, 0]] and masks[1, points[1, 1], points[1, 0]]
    # Uniform over each mask's pixels: 4,000 draws from a 4-pixel mask land about 1,000 times on each.
    corners = torch.zeros(4000, 8, 8, dtype=torch.bool)
    corners[:, [1, 6], [2, 5]] = True
    corners[:, [1, 6], [5, 2]] = True
    drawn = random_points(corners, generator).long()
    assert corners[torch.arange(4000), drawn[:, 1], drawn[:, 0]].all()
    _, counts = torch.unique(drawn, dim=0, return_counts=True)
    assert len(counts) == 4 and counts.min() > 850 and counts.max() < 1150
    with pytest.raises(ValueError, match="mask 1 is empty"):
        random_points(torch.stack([masks[0], torch.zeros_like(masks[0])]))
    exact = jittered_boxes(masks, 0.0, 0.0)
    torch.testing.assert_close(exact, torch.tensor([[5.0, 4, 12, 10], [0, 20, 3, 30]]))
    noisy = jittered_boxes(masks, 0.5, 3.0, generator)
    assert (noisy[:, 2:] >= noisy[:, :2]).all() and noisy.min() >= 0 and noisy.max() <= 32
    assert (noisy - exact).abs().max() <= 3.0 and not torch.equal(noisy, exact)


def test_corrective_clicks_and_losses_of_a_round():
    truth = torch.zeros(2, 16, 16, dtype=torch.bool)
    truth[:, 4:12, 4:12] = True
    empty = torch.zeros_like(truth)
    coords, labels = corrective_clicks(empty, truth)
    assert labels.tolist() == [1, 1] and ((coords >= 4) & (coords < 12)).all()
    # already exact: a positive click at the object's centre, never a crash
    coords, labels = corrective_clicks(truth, truth)
    assert labels.tolist() == [1, 1]

    good = truth.float() * 20 - 10  # logits: +10 inside, -10 outside
    logits = torch.stack([-good, good, -good], dim=1)  # only output 1 is right
    predicted = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    losses, ious, previous = mask_losses(logits, predicted, truth, TINY)
    assert losses[0] < 1e-3 and losses[1] < 1e-2  # the right output was chosen
    torch.testing.assert_close(ious, torch.ones(2))
    torch.testing.assert_close(previous[:, 0], good)
    # IoU target: outputs 0 and 2 have IoU 0, output 1 IoU 1
    expected = ((predicted - torch.tensor([0.0, 1.0, 0.0])) ** 2).mean() * TINY.iou_weight
    torch.testing.assert_close(losses[2], expected)


def test_prompt_maps_draw_clicks_and_boxes_where_they_are():
    from instaseg.models.promptable.prompt_maps import PromptMapEncoder

    encoder = PromptMapEncoder((8, 8), (64, 64))  # low-res grid 32 x 32, 2 input pixels per cell
    coords = torch.tensor([[[20.0, 40.0], [50.0, 10.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])  # positive, negative, padding (not drawn)
    boxes = torch.tensor([[8.0, 12.0, 24.0, 20.0]])
    maps = encoder.maps((coords, labels), boxes)
    assert maps.shape == (1, 3, 32, 32)
    positive, negative, box = maps[0]
    # pixel (20, 40) has its centre at (20.5, 40.5) = low-res (10.25, 20.25): cell row 20, column 10
    assert divmod(int(positive.argmax()), 32) == (20, 10) and positive.max() > 0.9
    assert divmod(int(negative.argmax()), 32) == (5, 25)
    assert positive[0, 0] < 1e-3 and negative[0, 0] < 1e-3  # the padding point left no mark
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[6:10, 4:12] = True  # cell centres 4.5..11.5 in [4, 12] and 6.5..9.5 in [6, 10]
    assert torch.equal(box.bool(), inside)
    assert encoder((coords, labels), boxes).shape == (1, 256, 8, 8)
    assert encoder.maps(None, boxes)[0, :2].abs().sum() == 0
