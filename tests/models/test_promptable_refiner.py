"""The promptable model's second stage: clicks drawn on the RoI grid where they are, boxes grown from coarse
masks, refined masks confined to their boxes, the predictor and the service cache carrying its features,
and the refiner-only training stage updating the refiner alone."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from instaseg.models.config import ConfigError
from instaseg.models.default_model import bundled_model_source
from instaseg.models.model_file import ModelFile
from instaseg.models.promptable import (
    PromptableConfig,
    build_promptable,
    load_promptable_refiner_weights,
)
from instaseg.models.promptable.model import REFINED_PROBABILITY_EPS
from instaseg.models.promptable.refiner import click_maps
from instaseg.models.sam.predictor import SamPredictor
from instaseg.serving.prompting import CachedEmbedding
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

REFINED = PromptableConfig(image_size=64, refine_masks=True, refine_min_size=64, refine_max_size=96)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_promptable(REFINED)


def test_clicks_are_drawn_on_their_cells_by_label():
    boxes = torch.tensor([[0.0, 0.0, 14.0, 14.0], [10.0, 10.0, 38.0, 38.0]])
    coords = torch.tensor([[[3.5, 7.5], [10.5, 2.5]], [[17.0, 31.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])  # -1: a padding point, drawn nowhere
    maps = click_maps(boxes, coords, labels)
    assert maps.shape == (2, 2, 14, 14)
    positive, negative = maps[0, 0], maps[0, 1]
    assert divmod(int(positive.argmax()), 14) == (7, 3) and positive.max() == pytest.approx(1.0)
    assert divmod(int(negative.argmax()), 14) == (2, 10)
    # Box 2 is 28 px for 14 cells: (17, 31) lands in cell column 3, row 10; its padding point adds nothing.
    assert divmod(int(maps[1, 0].argmax()), 14) == (10, 3)
    assert maps[1, 1].max() == 0
    assert click_maps(boxes, coords[:, :0], labels[:, :0]).abs().sum() == 0


def test_coarse_masks_grow_into_clipped_boxes(model):
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 5:15, 10:20] = True  # 10 x 10 in the middle
    masks[1, 0:4, 0:4] = True  # at the corner: growth is clipped
    rois = model.refiner.mask_rois(masks)
    grow = (REFINED.refine_box_expansion - 1) / 2 * 10
    torch.testing.assert_close(rois[0], torch.tensor([10 - grow, 5 - grow, 20 + grow, 15 + grow]))
    assert rois[1, :2].tolist() == [0.0, 0.0] and rois[1, 2] > 4
    assert rois[2].tolist() == [0.0, 0.0, 0.0, 0.0]  # an empty mask has no box


def test_refined_masks_stay_in_their_boxes_and_empty_coarse_masks_are_kept(model, image):
    detail = model.encode_detail(torch.from_numpy(image).permute(2, 0, 1))
    assert detail.original_size == (48, 80) and set(detail.levels) == {"0", "1", "2", "3"}
    coarse = torch.full((2, 1, 48, 80), -5.0)
    coarse[0, 0, 10:20, 10:30] = 5.0  # the second prompt's coarse mask is empty
    iou = torch.tensor([[0.9], [0.8]])
    refined, scores = model.refine_masks(detail, coarse, iou, None, None)
    assert refined.shape == coarse.shape and scores.shape == iou.shape
    torch.testing.assert_close(refined[1], coarse[1])
    assert scores[1] == iou[1] and 0 <= scores[0] <= iou[0]  # rescored by the refined mask's stability
    rois = model.refiner.mask_rois(coarse[:1, 0] > 0)[0]
    x1, y1, x2, y2 = rois.floor().int().tolist()
    outside = torch.ones(48, 80, dtype=torch.bool)
    outside[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = False  # the paste pads one 28-cell
    floor = float(torch.logit(torch.tensor(REFINED_PROBABILITY_EPS), eps=REFINED_PROBABILITY_EPS))
    assert torch.all(refined[0, 0][outside] <= floor + 1e-3)
    # A box prompt is refined in the prompt's own box, whatever the coarse mask.
    boxed, _ = model.refine_masks(detail, coarse[:1], iou[:1], torch.tensor([[40.0, 20.0, 70.0, 40.0]]), None)
    assert torch.all(boxed[0, 0, :, :38] <= floor + 1e-3)


def test_the_predictor_and_the_service_cache_carry_the_detail_features(model, image):
    sure = copy.deepcopy(model)
    with torch.no_grad():  # a refiner that fills every box: its answers are recognisable
        sure.refiner.mask_predictor.mask_fcn_logits.bias += 30.0
    predictor = SamPredictor(sure)
    predictor.set_image(image)
    assert predictor.detail is not None
    box = [20, 10, 50, 30]
    first = predictor.predict(boxes=[box], multimask=False).masks.bitmaps()[0]
    inside, near = torch.zeros(2, 48, 80, dtype=torch.bool)
    inside[10:30, 20:50] = True
    near[8:32, 18:52] = True  # the paste's one-cell padding may spill a pixel
    assert first[inside].all() and not first[~near].any()
    sizes = predictor.original_size, predictor.input_size
    entry = CachedEmbedding(predictor.embedding, *sizes, predictor.detail)
    assert entry.nbytes == predictor.embedding.nelement() * 4 + predictor.detail.nbytes
    other = SamPredictor(sure)
    other.set_embedding(entry.embedding, entry.original_size, entry.input_size, entry.detail)
    assert torch.equal(other.predict(boxes=[box], multimask=False).masks.bitmaps()[0], first)
    # Without the detail features the same embedding answers with the decoder's masks alone.
    other.set_embedding(entry.embedding, entry.original_size, entry.input_size)
    assert not torch.equal(other.predict(boxes=[box], multimask=False).masks.bitmaps()[0], first)


def test_refiner_settings_are_checked():
    with pytest.raises(ConfigError, match="trained_stage: refiner needs refine_masks: true"):
        PromptableConfig(trained_stage="refiner")
    with pytest.raises(ConfigError, match="trained_stage: 'neck' is not one of decoder, refiner"):
        PromptableConfig(trained_stage="neck")
    with pytest.raises(ConfigError, match="refine_box_expansion: 0.5 must be >= 1"):
        PromptableConfig(refine_box_expansion=0.5)
    with pytest.raises(ConfigError, match="refine_masks must be true or false, got 1"):
        PromptableConfig.from_dict({"refine_masks": 1})


def test_each_stage_trains_only_its_own_weights(image, two_objects):
    torch.manual_seed(0)
    decoder_stage = build_promptable(REFINED)
    assert not any(p.requires_grad for p in decoder_stage.refiner.parameters())
    assert all(p.requires_grad for p in decoder_stage.mask_decoder.parameters())
    refiner_stage = build_promptable(dataclasses.replace(REFINED, trained_stage="refiner"))
    trainable = {name for name, p in refiner_stage.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("refiner.") for name in trainable)
    target = two_objects
    refiner_stage.train()
    picture = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    losses = refiner_stage([picture], [target])
    assert losses["loss_iou"] == 0 and losses["loss_mask_dice"] > 0
    sum(losses.values()).backward()
    grads = {name: p.grad for name, p in refiner_stage.named_parameters() if p.requires_grad}
    assert grads["refiner.mask_predictor.mask_fcn_logits.weight"].abs().sum() > 0
    assert grads["refiner.click_maps.weight"] is not None
    refiner_stage.eval()
    ious = refiner_stage.prompt_ious([picture], [target])
    assert ious.shape == (1 + REFINED.corrective_clicks, 2) and torch.all((ious >= 0) & (ious <= 1))


def test_the_refiner_starts_from_the_detectors_mask_head():
    detector = ModelFile.read(bundled_model_source("nuclei_maskrcnn"))
    model = build_promptable(dataclasses.replace(REFINED, image_size=256))
    load_promptable_refiner_weights(model, bundled_model_source("nuclei_maskrcnn"))
    weights = model.refiner.state_dict()
    for name in ("mask_head.0.0.weight", "mask_predictor.mask_fcn_logits.bias"):
        torch.testing.assert_close(weights[name], detector.state_dict[f"roi_heads.{name}"].float())
    assert weights["click_maps.weight"].abs().sum() == 0  # still the zero start
    with pytest.raises(ConfigError, match="has no refiner"):
        load_promptable_refiner_weights(build_promptable(PromptableConfig(image_size=64)), "unused.pt")


def test_refiner_training_boxes_are_the_full_resolution_boxes(image, monkeypatch):
    """With no jitter, a box prompt's refiner RoI is the object's exact box in image pixels, not a box
    taken from the 32 x 32 low-res truth (off by up to a low-res cell)."""
    torch.manual_seed(0)
    config = dataclasses.replace(
        REFINED, trained_stage="refiner", box_prompt_probability=1.0, box_noise=0.0, corrective_clicks=0
    )
    model = build_promptable(config).train()
    masks = torch.zeros(1, 48, 80, dtype=torch.bool)
    masks[0, 9:23, 11:29] = True  # not on the low-res grid's 2.5-pixel cells
    box = torch.tensor([[11.0, 9, 29, 23]])
    target = Instances((48, 80), box, torch.ones(1, dtype=torch.int64), masks=Masks.from_bitmaps(masks))
    seen = []
    box_logits = model.refiner.box_logits

    def recording(detail, boxes, clicks=None):
        seen.append(boxes.clone())
        return box_logits(detail, boxes, clicks)

    monkeypatch.setattr(model.refiner, "box_logits", recording)
    model([torch.from_numpy(image).permute(2, 0, 1).float() / 255], [target])
    torch.testing.assert_close(seen[0], box)
