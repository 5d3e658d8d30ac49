"""MaskRCNNConfig: YAML / JSON round trips and precise errors for bad files and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from instaseg.models import ConfigError, MaskRCNNConfig


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_round_trips_through_files(tmp_path: Path, suffix: str) -> None:
    config = MaskRCNNConfig(
        num_classes=2,
        backbone_depth=18,
        norm="gn",
        min_size=(480, 512),
        anchor_sizes=(16, 32, 64, 128, 256),
        box_score_thresh=0.3,
        box_detections_per_img=300,
    )
    path = tmp_path / f"model{suffix}"
    config.save(path)
    assert MaskRCNNConfig.load(path) == config
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "the atomic write leaves no temporary file"


def test_to_dict_is_plain_data_and_from_dict_restores_tuples() -> None:
    data = MaskRCNNConfig(min_size=(600, 800)).to_dict()
    assert data["min_size"] == [600, 800] and data["anchor_sizes"] == [32, 64, 128, 256, 512]
    restored = MaskRCNNConfig.from_dict(data)
    assert restored.min_size == (600, 800) and restored.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert MaskRCNNConfig.from_dict({}) == MaskRCNNConfig()


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text("num_classes: 3\nbox_score_treshold: 0.5\n")
    with pytest.raises(ConfigError, match=r"model.yaml: unknown key 'box_score_treshold'"):
        MaskRCNNConfig.load(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_classes": "three"}, "num_classes must be an integer, got 'three'"),
        ({"num_classes": 2.5}, "num_classes must be an integer"),
        ({"box_score_thresh": True}, "box_score_thresh must be a number"),
        ({"anchor_sizes": 32}, "anchor_sizes must be a list"),
        ({"norm": 1}, "norm must be a string"),
        ({"norm": "layer"}, "norm: 'layer' is not one of frozen_bn, bn, gn"),
        ({"backbone_depth": 42}, "backbone_depth: 42 is not one of"),
        ({"num_classes": 1}, "num_classes: 1 must be at least 2"),
        ({"box_nms_thresh": 1.5}, r"box_nms_thresh: 1.5 must be within \[0, 1\]"),
        ({"anchor_sizes": [32, 64]}, "anchor_sizes: need one size per pyramid level"),
        ({"trainable_layers": 7}, "trainable_layers: 7 must be between 0 and 5"),
    ],
)
def test_bad_values_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MaskRCNNConfig.from_dict(data)


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{num_classes: 3")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        MaskRCNNConfig.load(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of settings, got list"):
        MaskRCNNConfig.load(listing)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        MaskRCNNConfig.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must end in .yaml, .yml or .json"):
        MaskRCNNConfig().save(tmp_path / "model.txt")


def test_model_yaml_reads_numbers_like_training_yaml(tmp_path):
    """One YAML loader for every config: `1e-3` is a number in a model config, as in a training config."""
    path = tmp_path / "model.yaml"
    path.write_text("backbone_depth: 18\nfrozen_bn_eps: 1e-3\n")
    assert MaskRCNNConfig.load(path).frozen_bn_eps == 1e-3


def test_one_config_error_for_model_training_and_serving_configs():
    from instaseg.engine import config as training_config
    from instaseg.io import config_schema
    from instaseg.serving import config as serving_config

    assert ConfigError is config_schema.ConfigError is training_config.ConfigError
    assert serving_config.ConfigError is ConfigError
