"""The bundled default model: Mask R-CNN with an EfficientNet-Lite0 backbone, trained by instaseg on the 2018
Data Science Bowl nuclei (one class, "nucleus"). Model card, training command and accuracy: docs/models.md.

It ships inside the package (`instaseg/assets/models/`), so `instaseg predict image.png` and `Predictor()`
work offline right after `pip install`; so do three annotated nuclei images it never saw in training
(`instaseg/assets/samples/`, see its SOURCE.md), which `instaseg demo` evaluates it on.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FILE = "nuclei_efficientnet_lite0.pt"
# The models that ship in the package, by the name `load_model`, `--model` and the service accept. The default
# is `nuclei_maskrcnn`; `nuclei_condinst` is the single-stage model: several times faster, less accurate;
# `nuclei_promptable` segments the object a click or a box points at (model cards in docs/models.md).
BUNDLED_MODELS = {
    "nuclei_maskrcnn": DEFAULT_MODEL_FILE,
    "nuclei_condinst": "nuclei_condinst_efficientnet_lite0.pt",
    "nuclei_promptable": "nuclei_promptable_efficientnet_lite0.pt",
}
# The promptable model (clicks and boxes to masks) that `load_promptable`, `instaseg segment` and the
# service's promptable routes use when no SAM checkpoint is named; `load_model` runs it as "segment
# everything".
DEFAULT_PROMPTABLE_MODEL = "nuclei_promptable"


def default_model_path() -> Path:
    """Path of the bundled checkpoint; `FileNotFoundError` if the installation lacks it."""
    path = _asset("models", DEFAULT_MODEL_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from this installation ({path}); reinstall instaseg "
            "or name a model with --model"
        )
    return path


def bundled_model_source(source: str | Path | None) -> str | Path:
    """The file behind a bundled model name (None: the default model); any other source unchanged."""
    if source is None:
        return default_model_path()
    if isinstance(source, str) and source in BUNDLED_MODELS:
        path = _asset("models", BUNDLED_MODELS[source])
        if not path.is_file():
            raise FileNotFoundError(f"bundled model {source!r} is missing from this installation ({path})")
        return path
    return source


def held_out_samples_path() -> Path:
    """Folder of the bundled held-out nuclei samples, in the DSB mask-folder layout
    (`instaseg.data.read_mask_folders`); `FileNotFoundError` if the installation lacks it."""
    path = _asset("samples", "dsb2018")
    if not path.is_dir():
        raise FileNotFoundError(f"the bundled sample images are missing from this installation ({path})")
    return path


def _asset(*parts: str) -> Path:
    return Path(str(resources.files("instaseg").joinpath("assets", *parts)))
