"""SamRefinedModel: a detector's instances with SAM's masks, replace and fuse, through the contract."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from instaseg.cli.main import main
from instaseg.inference.predictor import Predictor
from instaseg.models.protocol import DEFAULT_DETECT_OPTIONS, DetectOptions, SegmentationModel
from instaseg.models.sam import ViTConfig, sam_vit
from instaseg.models.sam.predictor import SamPredictor
from instaseg.models.sam.refined_model import SamRefinedModel
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, mask_iou

HEIGHT, WIDTH = 48, 64
# A one-block windowed ViT SAM: the real encoder's 1024-pixel input at a fraction of MobileSAM's cost.
TINY = ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=())


class BoxDetector(nn.Module):
    """Two fixed instances per image: boxes with rectangular masks, scores 0.9 and 0.6, labels 1 and 2."""

    operating_point = None

    def __init__(self) -> None:
        super().__init__()
        self.categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]

    @property
    def num_classes(self) -> int:
        return 3

    def summary(self) -> dict[str, object]:
        return {"family": "boxes", "backbone": "none", "num_classes": 3}

    def batch_key(self, image_size: tuple[int, int], options: DetectOptions) -> Hashable:
        return image_size

    def detect(
        self, images: Sequence[torch.Tensor], options: DetectOptions = DEFAULT_DETECT_OPTIONS
    ) -> list[Instances]:
        boxes = torch.tensor([[4.0, 4.0, 30.0, 24.0], [34.0, 20.0, 60.0, 44.0]])
        bitmaps = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool)
        for bitmap, (x1, y1, x2, y2) in zip(bitmaps, boxes.int().tolist(), strict=True):
            bitmap[y1:y2, x1:x2] = True
        found = Instances(
            (HEIGHT, WIDTH),
            boxes,
            torch.tensor([1, 2]),
            torch.tensor([0.9, 0.6]),
            Masks.from_bitmaps(bitmaps),
            mask_logits=torch.zeros(2, 28, 28),
        )
        return [found for _ in images]


@pytest.fixture(scope="module")
def sam() -> nn.Module:
    torch.manual_seed(0)
    return sam_vit(TINY)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _detect(model: SegmentationModel, image: np.ndarray) -> Instances:
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return model.detect([tensor])[0]


@pytest.fixture(scope="module")
def replaced(sam: nn.Module, image: np.ndarray) -> Instances:
    return _detect(SamRefinedModel(BoxDetector(), sam), image)


def test_replace_keeps_the_detectors_instances_and_takes_sams_masks(
    sam: nn.Module, image: np.ndarray, replaced: Instances
) -> None:
    model = SamRefinedModel(BoxDetector(), sam)
    assert isinstance(model, SegmentationModel)
    refined = replaced
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    expected = predictor.predict(boxes=[[4, 4, 30, 24], [34, 20, 60, 44]], multimask=False)
    assert refined.labels.tolist() == [1, 2] and refined.scores.tolist() == pytest.approx([0.9, 0.6])
    assert torch.equal(refined.masks.bitmaps(), expected.masks.bitmaps())
    assert "mask_logits" not in refined.fields
    assert model.summary()["refiner"] == "sam_vit_custom" and model.num_classes == 3


def test_fuse_keeps_sams_mask_only_where_it_agrees_with_the_detectors(
    sam: nn.Module, image: np.ndarray, replaced: Instances
) -> None:
    detected = _detect(BoxDetector(), image)
    agreement = [
        float(mask_iou([ours], [theirs], [False])[0, 0])
        for ours, theirs in zip(replaced.masks.rles(), detected.masks.rles(), strict=True)
    ]
    threshold = float(np.mean(agreement))  # between the two unless they are equal: then both pass
    fused = _detect(SamRefinedModel(BoxDetector(), sam, mode="fuse", min_agreement=threshold), image)
    take_sam = [value >= threshold for value in agreement]
    assert fused.fields["sam_refined"].tolist() == take_sam
    for index, from_sam in enumerate(take_sam):
        source = replaced if from_sam else detected
        assert torch.equal(fused.masks.bitmaps()[index], source.masks.bitmaps()[index])


def test_bad_settings_are_refused(sam: nn.Module) -> None:
    with pytest.raises(ValueError, match="refine mode"):
        SamRefinedModel(BoxDetector(), sam, mode="blend")
    with pytest.raises(ValueError, match="min_agreement"):
        SamRefinedModel(BoxDetector(), sam, mode="fuse", min_agreement=1.5)


def test_predictor_runs_a_refined_model(sam: nn.Module, image: np.ndarray) -> None:
    found = Predictor(SamRefinedModel(BoxDetector(), sam), tiling=None).predict(image)
    assert len(found) == 2 and found.image_size == (HEIGHT, WIDTH)


def test_predict_refine_with_on_the_command_line(
    sam: nn.Module,
    image: np.ndarray,
    tiny_model_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), checkpoint)  # the official key layout
    Image.fromarray(image).save(tmp_path / "cells.png")
    args = ["predict", str(tmp_path / "cells.png"), "--model", str(tiny_model_checkpoint), "--no-progress"]
    assert main([*args, "--refine-with", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    detector_only = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert [r["bbox"] for r in results] == [r["bbox"] for r in detector_only]
    capsys.readouterr()
    assert main([*args, "--refine-with", str(tiny_model_checkpoint), "--out", str(tmp_path / "bad")]) == 2
    assert "SAM" in capsys.readouterr().err
