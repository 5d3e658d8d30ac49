"""Build a `PromptableSam` from a name or a `PromptableConfig`; its model file; its encoder's start from a
trained Mask R-CNN's EfficientNet-Lite0 FPN (the bundled detector)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from instaseg.models.build import load_weights
from instaseg.models.config import ConfigError
from instaseg.models.model_file import ModelFile, WeightsError, read_weights, tensors_only
from instaseg.models.promptable.config import PromptableConfig
from instaseg.models.promptable.model import PromptableSam

# Named architectures of the family.
PROMPTABLE_CONFIGS = {"promptable_efficientnet_lite0": PromptableConfig()}
FAMILY = "promptable"


def resolve_promptable_config(name_or_config: str | PromptableConfig | dict[str, Any]) -> PromptableConfig:
    """A name of `PROMPTABLE_CONFIGS`, a `PromptableConfig` or its dict form -> the config (a copy)."""
    if isinstance(name_or_config, PromptableConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return PromptableConfig.from_dict(name_or_config)
    if name_or_config in PROMPTABLE_CONFIGS:
        return dataclasses.replace(PROMPTABLE_CONFIGS[name_or_config])
    raise ConfigError(
        f"unknown promptable model {name_or_config!r}: expected one of {', '.join(PROMPTABLE_CONFIGS)}"
    )


def build_promptable(
    name_or_config: str | PromptableConfig | dict[str, Any], weights: str | Path | dict | None = None
) -> PromptableSam:
    """Compose a `PromptableSam` (random weights, or `weights`: a model file or state dict, loaded
    strictly), in eval mode."""
    model = PromptableSam(resolve_promptable_config(name_or_config))
    if weights is not None:
        load_promptable_weights(model, weights)
    return model.eval()


def load_promptable_weights(model: PromptableSam, weights: str | Path | dict) -> None:
    """Load a model file, checkpoint or state dict strictly; `WeightsError` names the source and keys."""
    source = str(weights) if isinstance(weights, (str, Path)) else "weights"
    state = read_weights(weights) if isinstance(weights, (str, Path)) else weights
    load_weights(model, state, source)


def extend_promptable(
    path: str | Path, new_parts: tuple[str, ...], **changes: Any
) -> tuple[PromptableSam, ModelFile]:
    """The model of the promptable model file `path` with its config changed by `changes` (e.g.
    `click_box=True`) and the file's weights, and the file read. Only the modules named in `new_parts`
    (e.g. `("click_box",)`) may be missing from its weights; they stay as built. `WeightsError` names the
    file and the keys otherwise."""
    source = ModelFile.read(path)
    config = dataclasses.replace(resolve_promptable_config(source.config), **changes)
    model = build_promptable(config)
    missing, unexpected = model.load_state_dict(source.state_dict, strict=False)
    if unexpected or any(key.split(".")[0] not in new_parts for key in missing):
        raise WeightsError(f"{path}: does not fit: missing {missing}, unexpected {unexpected}")
    model.categories, model.operating_point = source.categories, source.operating_point
    return model, source


def load_promptable_encoder_weights(model: PromptableSam, source: str | Path) -> None:
    """Start the encoder's body and FPN from a Mask R-CNN model file with an EfficientNet-Lite0 FPN of the
    same width (e.g. the bundled `nuclei_efficientnet_lite0.pt`), and the refiner (when the config has one)
    from its mask head; the neck and the decoder stay random."""
    tensors = _detector_tensors(model, Path(source))
    load_weights(model.image_encoder.backbone, _prefixed(tensors, "backbone."), f"{source} (backbone)")
    if model.refiner is not None:
        load_promptable_refiner_weights(model, source, tensors)


def load_promptable_refiner_weights(
    model: PromptableSam, source: str | Path, tensors: dict[str, Any] | None = None
) -> None:
    """The refiner's mask head from the Mask R-CNN model file `source` whose FPN the encoder holds
    (`tensors`: its weights, when already read); its click maps are left as they are."""
    if model.refiner is None:
        raise ConfigError("the model has no refiner to load: its config sets refine_masks false")
    tensors = _detector_tensors(model, Path(source)) if tensors is None else tensors
    refiner = model.refiner
    for name, part in (("mask_head", refiner.mask_head), ("mask_predictor", refiner.mask_predictor)):
        load_weights(part, _prefixed(tensors, f"roi_heads.{name}."), f"{source} ({name}, for the refiner)")


def _detector_tensors(model: PromptableSam, path: Path) -> dict[str, Any]:
    """The weights of a Mask R-CNN model file whose backbone fits the model's encoder; `WeightsError`
    otherwise."""
    model_file = ModelFile.from_dict(read_weights(path), str(path))
    backbone = model_file.config.get("backbone")
    channels = model_file.config.get("fpn_channels")
    if model_file.family != "mask_rcnn" or backbone != "efficientnet_lite0":
        raise WeightsError(
            f"{path}: encoder weights must come from a Mask R-CNN with an efficientnet_lite0 backbone; "
            f"this is a {model_file.family} with backbone {backbone!r}"
        )
    if channels != model.config.encoder_channels:
        raise WeightsError(
            f"{path}: its FPN has {channels} channels, the model's encoder_channels is "
            f"{model.config.encoder_channels}"
        )
    return tensors_only(model_file.state_dict, str(path))


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def promptable_model_file(model: PromptableSam, provenance: dict[str, Any]) -> ModelFile:
    """The `ModelFile` of a `PromptableSam`: config, weights, categories, operating point, `provenance`."""
    return ModelFile(
        family=FAMILY,
        config=model.config.to_dict(),
        state_dict=model.state_dict(),
        categories=model.categories,
        operating_point=model.operating_point,
        provenance=provenance,
    )
