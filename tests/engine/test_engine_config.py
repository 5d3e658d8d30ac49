"""The training config file: sections, overrides, messages naming keys, round trip of the resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest

from instaseg.engine.config import ConfigError, apply_overrides, load_config, save_config
from instaseg.models.condinst.config import CondInstConfig
from instaseg.models.promptable import PromptableConfig

EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

MINIMAL = """
output_dir: runs/a
data:
  train: {path: train.json}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        MINIMAL + "optim: {lr: 1e-3, name: adamw}\nschedule: {iterations: 100, milestones: [50, 80]}\n"
    )
    return path


def test_defaults_overrides_and_round_trip(config_file, tmp_path):
    config = load_config(
        config_file,
        ["train.batch_size=4", "model.settings.norm=gn", "augment.crop_size=[64, 64]", "data.val=null"],
    )
    assert config.optim.lr == 1e-3 and config.optim.name == "adamw"
    assert config.schedule.milestones == (50, 80)
    assert config.train.batch_size == 4
    assert config.model.settings == {"norm": "gn"}
    assert config.augment.crop_size == (64, 64)
    assert config.data.val is None
    assert config.model.model_config(num_classes=3).num_classes == 3
    saved = tmp_path / "resolved.yaml"
    save_config(config, saved)
    assert load_config(saved) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr_x=1"], "config key 'optim.lr_x' is unknown; expected one of betas, grad_clip_norm, lr,"),
        (["optim.lr=fast"], "config key 'optim.lr' must be a number; got str 'fast'"),
        (["train.batch_size=2.5"], "config key 'train.batch_size' must be an integer; got float 2.5"),
        (
            ["trian.batch_size=2"],
            "config key 'trian' is unknown; expected one of augment, data, model, optim,",
        ),
        (["model.settings.nrom=gn"], "settings: unknown key 'nrom'"),
        (["model.settings.min_size=[480, 512.5]"], "min_size must be an integer"),
        (["model.name=maskrcnn_resnet7"], "unknown model 'maskrcnn_resnet7'"),
        (["model.name=runs/a/best.pt"], "put the checkpoint runs/a/best.pt under 'weights'"),
        (["data.train.format=voc"], "'format' must be one of coco, mask-folders, label-maps, yolo"),
        (["schedule.milestones=[200]"], "'milestones' must lie in (0, iterations=100)"),
        (["train.device=tpu"], "config key 'train.device' must be one of 'auto', 'cpu', 'cuda'"),
        (["train.seed=-1"], "'seed' must be >= 0; got -1"),
        (["optim.lr"], "override 'optim.lr' must look like section.key=value"),
        (["optim.lr.x=1"], "'optim.lr' is not a section"),
        (["data.train=null"], "config key 'data.train' must be a mapping of its options; got NoneType"),
    ],
)
def test_bad_overrides_name_the_key(config_file, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(config_file, overrides)
    assert message in str(info.value)


def test_missing_required_keys_and_files(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="config key 'output_dir' is required"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    path.write_text("output_dir: x\ndata: {train: {path: [1}\n")
    with pytest.raises(ConfigError, match="empty.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="training config not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_do_not_touch_the_input():
    data = {"optim": {"lr": 0.1}}
    result = apply_overrides(data, ["optim.lr=0.2", "train.seed=3"])
    assert data == {"optim": {"lr": 0.1}}
    assert result == {"optim": {"lr": 0.2}, "train": {"seed": 3}}


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda path: path.name)
def test_example_configs_are_valid(path):
    config = load_config(path)
    model = config.model.model_config(None)
    if isinstance(model, PromptableConfig):
        return  # no detections: the promptable family answers prompts
    limit = model.detections_per_img if isinstance(model, CondInstConfig) else model.box_detections_per_img
    # COCO AP must count every detection the model may return.
    assert config.train.eval_max_detections == limit


def test_nuclei_config_targets_dense_small_objects():
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "nuclei_r18.yaml")
    model = config.model.model_config(num_classes=2)
    assert model.anchor_sizes == (8, 16, 32, 64, 128)
    assert model.box_detections_per_img == 500 and model.rpn_post_nms_top_n_test == 2000
    assert model.norm == "gn" and model.trainable_layers == 5
    assert min(model.min_size) >= 512 and max(model.min_size) <= 640
