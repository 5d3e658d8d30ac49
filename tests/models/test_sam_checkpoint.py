"""Loading SAM / MobileSAM checkpoints: official key layouts, repackaged files, clear errors, detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instaseg.models.sam import (
    VIT_B,
    VIT_H,
    VIT_L,
    SamCheckpointError,
    ViTConfig,
    detect_architecture,
    load_sam,
    mobile_sam,
    sam_vit,
)
from instaseg.models.sam.tiny_vit import WindowAttention

TINY = ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in state.items()}


@pytest.mark.parametrize(("arch", "config"), [("vit_b", VIT_B), ("vit_l", VIT_L), ("vit_h", VIT_H)])
def test_official_key_layouts_match_and_are_detected(
    fixtures_dir: Path, arch: str, config: ViTConfig
) -> None:
    official = json.loads((fixtures_dir / "sam" / "official_sam_keys.json").read_text())[arch]
    with torch.device("meta"):
        model = sam_vit(config, arch)
    assert shapes(model.state_dict()) == official
    meta_state = {name: torch.empty(shape, device="meta") for name, shape in official.items()}
    assert detect_architecture(meta_state) == (arch, config)


def test_mobile_sam_layout_matches_the_recipe(fixtures_dir: Path) -> None:
    spec = json.loads((fixtures_dir / "sam" / "mobile_sam_weights_spec.json").read_text())
    with torch.device("meta"):
        model = mobile_sam()
    assert shapes(model.state_dict()) == {name: t["shape"] for name, t in spec["tensors"].items()}
    assert detect_architecture(model.state_dict())[0] == "vit_t"


def test_small_config_is_detected_from_shapes(fixtures_dir: Path) -> None:
    spec = json.loads((fixtures_dir / "sam" / "sam_small_weights_spec.json").read_text())
    state = {name: torch.empty(t["shape"], device="meta") for name, t in spec["tensors"].items()}
    assert detect_architecture(state) == ("vit_custom", ViTConfig(192, 4, 3, (1, 3)))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = sam_vit(TINY)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return model.state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: state,
        lambda state: {"model": state, "epoch": 3},
        lambda state: {"model_state": {"sam." + name: value for name, value in state.items()}},
        lambda state: {"state_dict": {"module." + name: value for name, value in state.items()}},
    ],
    ids=["bare", "model", "model_state-sam-prefix", "state_dict-module-prefix"],
)
def test_repackaged_checkpoints_load_strictly(tmp_path: Path, tiny_state: dict, wrap) -> None:
    path = tmp_path / "sam.pth"
    torch.save(wrap(tiny_state), path)
    model = load_sam(path)
    assert model.arch == "vit_custom"
    for name, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[name]), name


def test_unexpected_missing_and_misshapen_keys_are_named(tiny_state: dict) -> None:
    extra = dict(tiny_state, **{"mask_decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(SamCheckpointError, match=r"unexpected key 'mask_decoder.extra.weight'"):
        load_sam(extra)
    missing = {k: v for k, v in tiny_state.items() if k != "mask_decoder.iou_token.weight"}
    with pytest.raises(SamCheckpointError, match=r"missing key 'mask_decoder.iou_token.weight'"):
        load_sam(missing)
    wrong = dict(tiny_state, **{"mask_decoder.iou_token.weight": torch.zeros(1, 128)})
    with pytest.raises(SamCheckpointError, match=r"'mask_decoder.iou_token.weight' has shape \(1, 128\)"):
        load_sam(wrong)


def test_other_architectures_are_refused_by_name(maskrcnn_like_state, tiny_state: dict) -> None:
    with pytest.raises(SamCheckpointError, match="not a SAM checkpoint"):
        load_sam(maskrcnn_like_state)
    with pytest.raises(SamCheckpointError, match="is a vit_custom checkpoint, expected vit_t"):
        load_sam(tiny_state, expected_arch="vit_t")


@pytest.fixture
def maskrcnn_like_state() -> dict[str, torch.Tensor]:
    """Keys of a Mask R-CNN state dict (the names are enough: detection fails before shapes matter)."""
    return {
        "backbone.body.conv1.weight": torch.zeros(1),
        "roi_heads.box_predictor.cls_score.weight": torch.zeros(1),
    }


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_sam(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match="garbage.pth: cannot be read"):
        load_sam(garbage)


def test_tiny_vit_attention_uses_the_biases_loaded_after_eval() -> None:
    """The official module caches `attention_biases[:, idxs]` on `.eval()`; a model put in eval mode before
    its weights are loaded (as `build_sam_vit_t` does) would keep zeros. Here the table is gathered from the
    current parameters, so loading after `.eval()` takes effect."""
    torch.manual_seed(0)
    attention = WindowAttention(dim=8, num_heads=2, window=3).eval()
    x = torch.randn(1, 9, 8)
    before = attention(x)
    attention.load_state_dict(dict(attention.state_dict(), attention_biases=torch.randn(2, 9)))
    after = attention(x)
    assert (after - before).abs().max() > 1e-3
