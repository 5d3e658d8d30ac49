"""The promptable model's click-box head: boxes regressed about the clicked pixel's centre in original
pixels, click prompts given a box grown to hold their positive clicks, which the predictor hands to the
decoder and the refiner, its training stage updating it alone, and a model file extended with it keeping
every other weight."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from instaseg.models.config import ConfigError
from instaseg.models.model_file import ModelFile, WeightsError
from instaseg.models.promptable import (
    PromptableConfig,
    build_promptable,
    extend_promptable,
    loss_keys,
    promptable_model_file,
)
from instaseg.models.promptable.click_box import DISTANCE_UNIT
from instaseg.models.sam.predictor import SamPredictor
from instaseg.models.sam.transforms import scale_boxes

CLICK_BOX = PromptableConfig(
    image_size=64, refine_masks=True, click_box=True, refine_min_size=64, refine_max_size=96
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_promptable(CLICK_BOX)


@pytest.fixture(scope="module")
def detail(model, image):
    return model.encode_detail(torch.from_numpy(image).permute(2, 0, 1))


def test_an_untrained_head_gives_a_unit_box_about_the_clicked_pixels_centre(model, detail):
    # 48 x 80 is resized to 57 x 96 (the long side's limit, 96, wins over the short side's 64).
    assert detail.resized_size == (57, 96)
    boxes = model.click_box(detail, torch.tensor([[10.0, 20.0], [0.0, 47.0]]))
    # The last layer starts at zero: every side is DISTANCE_UNIT resized pixels from the pixel's centre.
    half_x, half_y = DISTANCE_UNIT * 80 / 96, DISTANCE_UNIT * 48 / 57
    expected = torch.tensor([[10.5 - half_x, 20.5 - half_y, 10.5 + half_x, 20.5 + half_y]])
    torch.testing.assert_close(boxes[:1], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        (boxes[1, :2] + boxes[1, 2:]) / 2, torch.tensor([0.5, 47.5]), atol=1e-3, rtol=0
    )


def test_the_loss_is_zero_for_the_predicted_box_and_grows_away_from_it(model, detail):
    clicks = torch.tensor([[30.0, 20.0]])
    predicted = model.click_box(detail, clicks).detach()
    l1, boxes = model.click_box.losses(detail, clicks, predicted)
    torch.testing.assert_close(boxes, predicted)
    assert float(l1) == pytest.approx(0.0, abs=1e-4)
    wider = predicted + torch.tensor([[-5.0, 0.0, 5.0, 0.0]])
    far, _ = model.click_box.losses(detail, clicks, wider)
    assert float(far) > 0.1


def test_click_prompts_get_the_first_clicks_box_grown_to_hold_every_positive_click(model, detail):
    coords = torch.tensor(
        [[[40.0, 30.0], [0.0, 0.0]], [[40.0, 30.0], [75.0, 5.0]], [[40.0, 30.0], [79.0, 47.0]]]
    )
    labels = torch.tensor([[1, -1], [1, 1], [1, 0]])  # one click (padded); two positives; with a negative
    boxes = model.click_boxes(detail, (coords, labels))
    unit = model.click_box(detail, coords[:, 0])
    torch.testing.assert_close(boxes[[0, 2]], unit[[0, 2]])  # a negative click does not move the box
    # The second positive click (75, 5) lies beyond the first one's box: it grows to 2 px past that pixel,
    # (75 + 1 + 2, 5 - 2), and stays where the first click put it on the other sides.
    torch.testing.assert_close(
        boxes[1], torch.stack([unit[1, 0], torch.tensor(3.0), torch.tensor(78.0), unit[1, 3]])
    )
    assert model.click_boxes(detail, (coords[:, 1:], torch.tensor([[-1], [0], [0]]))) is None
    assert model.click_boxes(None, (coords, labels)) is None


def test_the_predictor_hands_the_click_box_to_the_decoder_and_the_refiner(model, image, monkeypatch):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    seen = {}
    decode, refine = model.decode, model.refine_masks

    def decoding(embedding, points, boxes, mask_input, multimask):
        seen["decoder"] = boxes
        return decode(embedding, points, boxes, mask_input, multimask)

    def refining(detail, logits, iou, boxes, clicks):
        seen["refiner"] = boxes
        return refine(detail, logits, iou, boxes, clicks)

    monkeypatch.setattr(model, "decode", decoding)
    monkeypatch.setattr(model, "refine_masks", refining)
    predictor.predict(points=[[40, 30]], labels=[1])
    expected = model.click_boxes(predictor.detail, (torch.tensor([[[40.0, 30.0]]]), torch.tensor([[1]])))
    torch.testing.assert_close(seen["refiner"], expected)
    torch.testing.assert_close(seen["decoder"], scale_boxes(expected, (48, 80), model.image_size))
    user_box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    predictor.predict(points=[[20, 20]], labels=[1], boxes=user_box)  # a user's box is kept
    torch.testing.assert_close(seen["refiner"], user_box, atol=1e-4, rtol=0)


def test_the_click_box_stage_trains_the_head_alone_and_scores_box_iou(image, two_objects):
    torch.manual_seed(0)
    config = dataclasses.replace(CLICK_BOX, trained_stage="click_box")
    assert loss_keys(config) == ("loss_box_l1", "loss_box_giou")
    stage = build_promptable(config).train()
    trainable = {name for name, p in stage.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("click_box.") for name in trainable)
    target = two_objects
    picture = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    losses = stage([picture], [target])
    assert set(losses) == set(loss_keys(config)) and all(value > 0 for value in losses.values())
    sum(losses.values()).backward()
    assert stage.click_box.mlp[-1].weight.grad.abs().sum() > 0
    ious = stage.eval().prompt_ious([picture], [target])
    assert ious.shape == (1, 2) and torch.all((ious > 0) & (ious <= 1))


def test_click_box_settings_are_checked():
    with pytest.raises(ConfigError, match="click_box: true needs refine_masks: true"):
        PromptableConfig(click_box=True)
    with pytest.raises(ConfigError, match="trained_stage: click_box needs click_box: true"):
        PromptableConfig(refine_masks=True, trained_stage="click_box")
    with pytest.raises(ConfigError, match="centre_click_probability: 2 must be in"):
        PromptableConfig(centre_click_probability=2)


def test_a_model_file_extended_with_the_head_keeps_its_weights(tmp_path):
    torch.manual_seed(0)
    refined = build_promptable(dataclasses.replace(CLICK_BOX, click_box=False))
    path = tmp_path / "refined.pt"
    promptable_model_file(refined, {"note": "test"}).save(path)
    extended, source = extend_promptable(path, ("click_box",), click_box=True)
    assert extended.config.click_box and source.provenance["note"] == "test"
    weights = extended.state_dict()
    for name, tensor in refined.state_dict().items():
        torch.testing.assert_close(weights[name], tensor)
    assert any(name.startswith("click_box.") for name in weights)
    # A part not named as new must come from the file.
    with pytest.raises(WeightsError, match="does not fit: missing"):
        extend_promptable(path, ("refiner",), click_box=True)
    assert ModelFile.read(path).config["click_box"] is False
