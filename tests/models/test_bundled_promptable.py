"""The bundled promptable model: what `instaseg segment`, `eval-prompts` and the service use without a SAM
checkpoint. It loads by default, is small enough to ship, and finds the nucleus a click or a box points at on
bundled images it never saw in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instaseg.cli.main import main
from instaseg.data.mask_folders import read_mask_folders
from instaseg.data.records import image_record_to_instances
from instaseg.evaluation.interactive import box_prompt_ious, mask_ious
from instaseg.io.images import load_image
from instaseg.models import load_model, load_promptable
from instaseg.models.default_model import bundled_model_source, held_out_samples_path
from instaseg.models.promptable import PromptableSam
from instaseg.models.promptable.prompt_simulation import error_region_click
from instaseg.models.sam.automatic_masks import SamEverythingModel
from instaseg.models.sam.predictor import SamPredictor


@pytest.fixture(scope="module")
def sample():
    """The first bundled held-out image and its nuclei as `(N, H, W)` bool masks."""
    dataset = read_mask_folders(held_out_samples_path(), category_name="nucleus", strict=True)
    record = dataset.images[0]
    truths = image_record_to_instances(record).masks.bitmaps().numpy().astype(bool)
    return load_image(dataset.image_path(record)), truths, dataset.image_path(record)


@pytest.fixture(scope="module")
def predictor():
    return SamPredictor(load_promptable())


def test_the_default_promptable_model_is_the_bundled_one_and_small() -> None:
    model = load_promptable()
    assert isinstance(model, PromptableSam)
    assert model.categories == [{"id": 1, "name": "nucleus"}]
    assert bundled_model_source("nuclei_promptable").stat().st_size <= 20e6  # the limit
    assert isinstance(load_model("nuclei_promptable"), SamEverythingModel)


def test_one_click_at_a_nucleus_centre_finds_that_nucleus(predictor, sample) -> None:
    image, truths, _ = sample
    predictor.set_image(image)
    clicks = [error_region_click(np.zeros_like(truth), truth) for truth in truths]
    found = predictor.predict(points=[[[c.x, c.y]] for c in clicks], labels=[[1]] * len(clicks))
    best = found.scores.reshape(len(truths), 3).argmax(dim=1).numpy()
    masks = found.masks.bitmaps().numpy().reshape(len(truths), 3, *truths.shape[1:])
    ious = mask_ious(masks[np.arange(len(truths)), best], truths)
    # Measured 2026-12-02 (see docs/models.md): well above these floors, which an untrained model misses.
    assert np.median(ious) > 0.5, np.median(ious)
    assert (ious > 0.3).mean() > 0.8, ious


def test_a_box_gives_the_nucleus_inside_it(predictor, sample) -> None:
    image, truths, _ = sample
    predictor.set_image(image)
    ious = box_prompt_ious(predictor, truths)
    assert np.median(ious) > 0.6, np.median(ious)


def test_segment_command_uses_the_bundled_model_without_model(sample, tmp_path: Path) -> None:
    _, truths, path = sample
    click = error_region_click(np.zeros_like(truths[0]), truths[0])
    out = tmp_path / "seg"
    assert main(["segment", str(path), "--points", f"{click.x},{click.y}", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 3  # the three multimask answers of one click
    assert all(0.0 <= r["score"] <= 1.5 for r in results)
