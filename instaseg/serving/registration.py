"""Register a checkpoint as a new model version: check that it loads, find its classes, and compute the drift
reference statistics of its validation images (inputs and the model's scores on them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from instaseg.inference.inputs import expand_inputs
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.io.images import load_image
from instaseg.serving.drift import ReferenceStats, image_statistics
from instaseg.serving.registry import ModelVersion, RegistryError, open_registry

__all__ = ["register_model"]

_log = logging.getLogger(__name__)


def register_model(
    registry_root: str | Path,
    name: str,
    checkpoint: str | Path,
    reference_images: Sequence[str | Path] = (),
    class_names: Sequence[str] | None = None,
    description: str = "",
    reference_limit: int = 200,
    device: str = "cpu",
) -> ModelVersion:
    """Add `checkpoint` to the registry at `registry_root` (a folder or a `postgresql://` URL, see
    `open_registry`; created if needed) as the next version of `name`.

    Classes come from `class_names` (ids 1..K), else from the checkpoint's `categories`, else are named
    `class_<k>`. `reference_images` (files, folders or glob patterns; the first `reference_limit` images in
    sorted order) give the drift reference; without them the version is served with no drift metrics.
    """
    if reference_limit < 1:
        raise ValueError(f"reference_limit must be >= 1, got {reference_limit}")
    registry = open_registry(registry_root)  # first: a bad location or an unreachable database fails fast
    checkpoint = Path(checkpoint)
    keep_all = PostprocessOptions(score_threshold=0.0)
    predictor = Predictor(checkpoint, device=device, postprocess=keep_all, tiling=None)
    model = predictor.model
    classes = _classes(checkpoint, model.num_classes, predictor.categories, class_names)
    reference = None
    if reference_images:
        reference = _reference(predictor, reference_images, reference_limit).to_dict()
    info = dict(model.summary())
    info["operating_point"] = model.operating_point.to_dict() if model.operating_point else None
    return registry.register(name, checkpoint, classes, info, reference, description)


def _classes(
    checkpoint: Path, num_classes: int, from_checkpoint: list[dict], class_names: Sequence[str] | None
) -> list[dict]:
    if class_names is not None:
        if len(class_names) != num_classes - 1:
            raise RegistryError(
                f"{len(class_names)} class names given, but {checkpoint} has {num_classes - 1} classes "
                "(plus background)"
            )
        return [{"id": index, "name": str(name)} for index, name in enumerate(class_names, start=1)]
    if from_checkpoint:
        return from_checkpoint
    return [{"id": index, "name": f"class_{index}"} for index in range(1, num_classes)]


def _reference(predictor: Predictor, sources: Sequence[str | Path], limit: int) -> ReferenceStats:
    files, failures = expand_inputs(list(sources))
    for failure in failures:
        _log.warning("reference images: %s: %s", failure.source, failure.reason)
    if not files:
        raise ValueError(f"no reference images found in {', '.join(map(str, sources))}")
    stats, scores = [], []
    for path in files[:limit]:
        image = load_image(path)  # raises ImageReadError naming the file: a bad reference set is not skipped
        stats.append(image_statistics(image))
        scores.extend(predictor.predict(image).scores.tolist())
    _log.info("drift reference: %d images, %d predicted instances", len(stats), len(scores))
    return ReferenceStats.from_images(stats, scores)
