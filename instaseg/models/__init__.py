"""Models built from plain constructors, behind one inference contract and one model-file format.

Start here: `protocol.py` (`SegmentationModel`: what inference needs from any model; `DetectOptions`,
`OperatingPoint`), `model_file.py` (the one file format), `loading.py` (`load_model(source)` for every
source). Mask R-CNN, in data-path order: `inputs.py` (checks) -> `transform.py` (resize, normalise, pad) ->
`resnet.py` or `efficientnet_lite.py` + `norm.py` -> `fpn.py` -> `backbone.py` -> `rpn.py` ->
`roi_heads.py` (`box_head.py`, `mask_head.py`, `matching.py`) -> `mask_rcnn.py` (the composition);
`config.py` and `build.py` describe and construct it; `onnx_runtime.py` runs its exported graph.
"""

from instaseg.models.build import MODEL_CONFIGS, build, build_model, load_weights, save_weights
from instaseg.models.config import ConfigError, MaskRCNNConfig
from instaseg.models.inputs import ModelInputError
from instaseg.models.loading import load_model, load_promptable
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.models.model_file import ModelFile, WeightsError
from instaseg.models.protocol import DetectOptions, OperatingPoint, SegmentationModel

__all__ = [
    "MODEL_CONFIGS",
    "ConfigError",
    "DetectOptions",
    "MaskRCNN",
    "MaskRCNNConfig",
    "ModelFile",
    "ModelInputError",
    "OperatingPoint",
    "SegmentationModel",
    "WeightsError",
    "build",
    "build_model",
    "load_model",
    "load_promptable",
    "load_weights",
    "save_weights",
]
