"""Panoptic FPN: Mask R-CNN with a semantic head learns stuff next to things and outputs stuff segments."""

from __future__ import annotations

import pytest
import torch

from instaseg.export import ExportError, export_onnx
from instaseg.models import build
from instaseg.models.semantic_head import IGNORE, SemanticFPNHead, semantic_targets
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SMALL = {
    "num_classes": 2,
    "min_size": 64,
    "max_size": 64,
    "num_stuff_classes": 2,
    "semantic_head_channels": 32,
}


def scene() -> tuple[torch.Tensor, Instances]:
    """A 64x64 image: a bright square (thing, class 1) on a top band (stuff 2) and a bottom band (stuff 3)."""
    image = torch.zeros(3, 64, 64)
    image[:, :32] = 0.3
    image[:, 32:] = 0.7
    thing = torch.zeros(64, 64, dtype=torch.bool)
    thing[20:40, 20:40] = True
    image[:, thing] = 1.0
    top = torch.zeros(64, 64, dtype=torch.bool)
    top[:32] = True
    bottom = ~top
    masks = torch.stack([thing, top & ~thing, bottom & ~thing])
    target = Instances(
        (64, 64),
        torch.tensor([[20, 20, 40, 40], [0, 0, 64, 32], [0, 32, 64, 64]], dtype=torch.float32),
        torch.tensor([1, 2, 3]),
        masks=Masks.from_bitmaps(masks),
    )
    return image, target


def test_semantic_targets_mark_things_stuff_and_unlabelled_pixels():
    masks = torch.zeros((2, 4, 4), dtype=torch.uint8)
    masks[0, :2] = 1
    masks[1, 2:, :2] = 1
    targets = semantic_targets([masks], [torch.tensor([1, 3])], num_things=1, padded_size=(4, 6))
    assert targets[0, 0].tolist() == [0, 0, 0, 0, IGNORE, IGNORE]  # thing -> 0, padding ignored
    assert targets[0, 3].tolist() == [2, 2, IGNORE, IGNORE, IGNORE, IGNORE]  # stuff class 3 -> 2


def test_head_shapes_follow_the_fpn():
    head = SemanticFPNHead(16, num_stuff=3, channels=32)
    features = {str(i): torch.rand(2, 16, 64 // 2**i, 96 // 2**i) for i in range(4)}
    assert head(features).shape == (2, 4, 64, 96)


@pytest.mark.slow
def test_training_learns_the_stuff_regions():
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", **SMALL).train()
    image, target = scene()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(40):
        losses = model([image], [target])
        total = sum(losses.values())
        first = float(losses["loss_sem_seg"]) if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert float(losses["loss_sem_seg"]) < 0.3 * first
    model.eval()
    with torch.no_grad():
        (result,) = model.detect([image])
    stuff = result[~result.fields["isthing"]]
    assert sorted(stuff.labels.tolist()) == [2, 3]
    top = stuff.masks.bitmaps()[stuff.labels == 2][0]
    truth = target.masks.bitmaps()[1]
    assert (top & truth).sum() / (top | truth).sum() > 0.8


def test_inference_outputs_things_and_stuff_with_isthing_and_logits():
    torch.manual_seed(0)
    model = build("maskrcnn_resnet18_fpn", box_score_thresh=0.0, **SMALL)
    assert model.num_classes == 4 and model.num_box_classes == 2
    image, target = scene()
    losses = model.train()([image], [target])
    assert set(losses) >= {"loss_sem_seg", "loss_mask"} and torch.isfinite(losses["loss_sem_seg"])
    with torch.no_grad():
        (result,) = model.eval().detect([image])
    isthing = result.fields["isthing"]
    assert result.fields["mask_logits"].shape == (len(result), 28, 28)
    assert set(result.labels[isthing].tolist()) <= {1} and set(result.labels[~isthing].tolist()) <= {2, 3}
    assert int((~isthing).sum()) >= 1  # the stuff head covers every pixel with some class


def test_semantic_models_refuse_onnx_export(tmp_path):
    model = build("maskrcnn_resnet18_fpn", **SMALL)
    with pytest.raises(ExportError, match="semantic head"):
        export_onnx(model, tmp_path / "m.onnx")
