"""`load_model(source)`: the one way to get a `SegmentationModel` from anything that names one.

Sources, tried in this order:
- a model object that implements the protocol: returned as it is;
- None, or a bundled model's name (`BUNDLED_MODELS`: `nuclei_maskrcnn`, the default, `nuclei_condinst`): the
  model file shipped in the package (`instaseg.models.default_model`);
- a name of `MODEL_CONFIGS` (Mask R-CNN) or of `CONDINST_CONFIGS` (CondInst), or a Mask R-CNN model-config
  file (`.yaml` / `.yml` / `.json`): random weights, for tests,
  timing and training starts;
- an `.onnx` file written by `instaseg export`: run on ONNX Runtime (`OnnxMaskRCNN`, `OnnxCondInst`);
- a model file (`instaseg.models.model_file`, training checkpoints included; old version-1 files too);
- an official (or repackaged) Segment Anything / MobileSAM checkpoint, or a promptable model file (the
  bundled `nuclei_promptable` among them): automatic mask generation (`SamEverythingModel`, class-agnostic);
- a torchvision-layout Mask R-CNN state dict (torchvision's published COCO weights): COCO's categories when
  it has COCO's 91 classes.
Every model comes back in eval mode on the CPU, with its `categories` and `operating_point` set.

`load_promptable(source)` is the same for promptable models, the ones `SamPredictor` runs on clicks and boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instaseg.models.build import CONFIG_SUFFIXES, MODEL_CONFIGS, build, load_weights, resolve_config
from instaseg.models.coco_names import COCO_CATEGORY_NAMES
from instaseg.models.condinst.build import CONDINST_CONFIGS, build_condinst, load_condinst_weights
from instaseg.models.condinst.config import CondInstConfig
from instaseg.models.condinst.model import CondInst
from instaseg.models.config import MaskRCNNConfig
from instaseg.models.default_model import BUNDLED_MODELS, DEFAULT_PROMPTABLE_MODEL, bundled_model_source
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.models.model_file import ModelFile, WeightsError, read_weights
from instaseg.models.promptable import PromptableConfig, PromptableSam, build_promptable
from instaseg.models.protocol import SegmentationModel
from instaseg.models.sam import Sam, is_sam_checkpoint, load_sam
from instaseg.models.sam.automatic_masks import SamEverythingModel
from instaseg.models.sam.onnx_sam import OnnxSam

ModelSource = SegmentationModel | str | Path | None
PromptableModel = Sam | OnnxSam
PromptableSource = PromptableModel | str | Path | None
# The classifier weight of a torchvision-layout state dict: its first dimension is the number of classes.
_CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"


def load_model(source: ModelSource = None) -> SegmentationModel:
    """The model `source` names (see the module docstring). Raises `FileNotFoundError` for a missing file,
    `WeightsError` / `ConfigError` / `OnnxModelError` (all `ValueError`s) naming the file and the problem."""
    if isinstance(source, SegmentationModel):
        return source
    source = bundled_model_source(source)
    if isinstance(source, str) and source in MODEL_CONFIGS:
        return build(source)
    if isinstance(source, str) and source in CONDINST_CONFIGS:
        return build_condinst(source)
    path = Path(source)
    if path.suffix in CONFIG_SUFFIXES:
        return build(resolve_config(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"model {str(source)!r} is neither a file nor a model name "
            f"({', '.join([*BUNDLED_MODELS, *MODEL_CONFIGS, *CONDINST_CONFIGS])})"
        )
    if path.suffix == ".onnx":
        # onnxruntime only when an ONNX file is asked for
        from instaseg.models.onnx_condinst import OnnxCondInst, onnx_family
        from instaseg.models.onnx_runtime import OnnxMaskRCNN

        if onnx_family(path) == "condinst":
            return OnnxCondInst(path)
        return OnnxMaskRCNN(path)
    data = read_weights(path)
    if "config" in data:
        return model_from_file(ModelFile.from_dict(data, str(path)), str(path))
    if is_sam_checkpoint(data):  # official or repackaged SAM / MobileSAM: "segment everything"
        return SamEverythingModel(load_sam(data))
    return _torchvision_state_dict(data, path)


def model_from_file(model_file: ModelFile, source: str = "model file") -> SegmentationModel:
    """Build the family's model from a `ModelFile`, load its weights strictly, set categories and operating
    point. The one place that knows which constructor each family's file needs."""
    if model_file.family == "mask_rcnn":
        config = MaskRCNNConfig.from_dict(model_file.config, source=f"{source} (config)")
        model = build(config)
        load_weights(model, model_file.state_dict, source)
    elif model_file.family == "condinst":
        model = build_condinst(CondInstConfig.from_dict(model_file.config, source=f"{source} (config)"))
        load_condinst_weights(model, model_file.state_dict, source)
    elif model_file.family == "promptable":  # clicks and boxes; as a detector it segments everything
        return SamEverythingModel(promptable_from_file(model_file, source)).eval()
    else:  # ModelFile refuses unknown families; a new family adds its branch here
        raise WeightsError(f"{source}: no constructor for model family {model_file.family!r}")
    _set_labels(model, model_file, source)
    return model.eval()


def load_promptable(source: PromptableSource = None, device: str = "cpu") -> PromptableModel:
    """The promptable model `source` names, for `SamPredictor`, in eval mode on `device`:
    - a `Sam` (SAM, MobileSAM, `PromptableSam`) or an `OnnxSam`: returned as it is;
    - None or `nuclei_promptable`: the bundled promptable model (trained by instaseg on nuclei);
    - an `.onnx` SAM export (`instaseg export --model SAM.pth`): `OnnxSam`, ONNX Runtime on the CPU;
    - an instaseg model file of family "promptable": `PromptableSam`;
    - an official (or repackaged) SAM / MobileSAM checkpoint: `Sam`.
    `FileNotFoundError` for a missing file; `WeightsError` / `SamCheckpointError` name the file and the
    problem."""
    if isinstance(source, Sam | OnnxSam):
        return source
    source = bundled_model_source(DEFAULT_PROMPTABLE_MODEL if source is None else source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"promptable model {str(source)!r} is neither a file nor the bundled {DEFAULT_PROMPTABLE_MODEL!r}"
        )
    if path.suffix == ".onnx":
        return OnnxSam(path)
    data = read_weights(path)
    if "config" not in data:
        return load_sam(data, device, source=str(path))
    model_file = ModelFile.from_dict(data, str(path))
    if model_file.family != "promptable":
        raise WeightsError(
            f"{path}: a {model_file.family} model file, not a promptable model (an instaseg promptable model "
            "file or a SAM / MobileSAM checkpoint)"
        )
    return promptable_from_file(model_file, str(path)).to(device)


def promptable_from_file(model_file: ModelFile, source: str) -> PromptableSam:
    """A `PromptableSam` with the weights, categories and operating point of a promptable model file."""
    model = build_promptable(PromptableConfig.from_dict(model_file.config, source=f"{source} (config)"))
    load_weights(model, model_file.state_dict, source)
    _set_labels(model, model_file, source)
    return model.eval()


def _set_labels(model: MaskRCNN | CondInst | PromptableSam, model_file: ModelFile, source: str) -> None:
    """Give `model` its file's categories and operating point, refusing a category list that does not fit
    the model's classes."""
    if model_file.categories is not None and len(model_file.categories) != model.num_classes - 1:
        raise WeightsError(
            f"{source}: {len(model_file.categories)} categories for a model with {model.num_classes - 1} "
            "classes (plus background)"
        )
    model.categories = model_file.categories
    model.operating_point = model_file.operating_point


def _torchvision_state_dict(state_dict: dict[str, Any], path: Path) -> MaskRCNN:
    if _CLASSIFIER_KEY not in state_dict:
        raise WeightsError(
            f"{path}: neither an instaseg model file (no 'config') nor a torchvision-layout Mask R-CNN state "
            f"dict (no {_CLASSIFIER_KEY!r})"
        )
    num_classes = int(state_dict[_CLASSIFIER_KEY].shape[0])
    model = build("maskrcnn_resnet50_fpn", weights=state_dict, num_classes=num_classes)
    if num_classes == len(COCO_CATEGORY_NAMES):
        # torchvision's COCO models predict the COCO category id itself as the class (91 slots, some unused).
        model.categories = [{"id": i, "name": name} for i, name in enumerate(COCO_CATEGORY_NAMES) if i > 0]
    return model
