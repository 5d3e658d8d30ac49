"""instaseg's own promptable model: SAM's prompt encoder and mask decoder on the bundled detector's
EfficientNet-Lite0 FPN features, trained here on the nuclei data (`configs/nuclei_promptable.yaml`).

Files: `config.py` (`PromptableConfig`), `model.py` (`PromptableSam`, `LiteFPNEncoder`, the training
losses), `prompt_maps.py` (clicks and boxes drawn as dense maps), `prompt_simulation.py` (simulated clicks
and boxes, shared with `instaseg.evaluation.interactive`), `refiner.py` (the second stage: masks
re-predicted in their boxes at the detector's scale), `click_box.py` (a click prompt's box, regressed
from its first click), `build.py` (names, construction, weights, model files).
"""

from instaseg.models.promptable.build import (
    PROMPTABLE_CONFIGS,
    build_promptable,
    extend_promptable,
    load_promptable_encoder_weights,
    load_promptable_refiner_weights,
    load_promptable_weights,
    promptable_model_file,
    resolve_promptable_config,
)
from instaseg.models.promptable.click_box import ClickBoxHead
from instaseg.models.promptable.config import PromptableConfig
from instaseg.models.promptable.model import LOSS_KEYS, PromptableSam, loss_keys
from instaseg.models.promptable.refiner import DetailFeatures, RoIMaskRefiner

__all__ = [
    "LOSS_KEYS",
    "ClickBoxHead",
    "DetailFeatures",
    "PROMPTABLE_CONFIGS",
    "PromptableConfig",
    "PromptableSam",
    "RoIMaskRefiner",
    "build_promptable",
    "extend_promptable",
    "loss_keys",
    "load_promptable_encoder_weights",
    "load_promptable_refiner_weights",
    "load_promptable_weights",
    "promptable_model_file",
    "resolve_promptable_config",
]
