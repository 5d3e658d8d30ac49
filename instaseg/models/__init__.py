"""Mask R-CNN built from plain constructors; `build(name_or_config, weights=None)` is the front door.

Files in data-path order: `inputs.py` (checks) -> `transform.py` (resize, normalise, pad) -> `resnet.py` or
`efficientnet_lite.py` + `norm.py` -> `fpn.py` -> `backbone.py` -> `rpn.py` -> `roi_heads.py` (`box_head.py`,
`mask_head.py`, `matching.py`) -> `mask_rcnn.py` (the composition). `config.py` and `build.py` describe and
construct it.
"""

from instaseg.models.build import MODEL_CONFIGS, WeightsError, build, build_model, load_weights, save_weights
from instaseg.models.config import ConfigError, MaskRCNNConfig
from instaseg.models.inputs import ModelInputError
from instaseg.models.mask_rcnn import MaskRCNN

__all__ = [
    "MODEL_CONFIGS",
    "ConfigError",
    "MaskRCNN",
    "MaskRCNNConfig",
    "ModelInputError",
    "WeightsError",
    "build",
    "build_model",
    "load_weights",
    "save_weights",
]
