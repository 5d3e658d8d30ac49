"""Predict on many files and write the outputs: what `instaseg predict INPUT...` does.

One bad input never stops the rest: an unreadable file, a model error on one image or a failed per-image
output becomes a failure entry (file and reason) and the run goes on. results.json / images.json are
rewritten every `save_every` seconds and at the end, even when the run is interrupted, so they always hold
every finished image.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from instaseg.inference.inputs import InputFailure, expand_inputs
from instaseg.inference.outputs import (
    OutputWriteError,
    ResultsFile,
    encode_png,
    ensure_writable_folder,
    geojson,
    label_map,
    write_bytes,
    write_json,
)
from instaseg.inference.overlay import draw_overlay
from instaseg.inference.panoptic import PanopticOptions, PanopticResults, instances_to_panoptic, semantic_map
from instaseg.inference.predictor import Predictor
from instaseg.io.images import load_image, to_tensor
from instaseg.structures.instances import Instances

# Errors that belong to one image (unreadable file, model input checks, out of memory, a failed write);
# anything else is a bug and stops the run (after saving what is finished).
PER_IMAGE_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)


@dataclass(frozen=True)
class OutputOptions:
    """Which per-image files to write besides results.json / images.json. `overlay_labels`: text on the
    overlays (None: only where it fits; see `draw_overlay`). `semantic`: `semantic/<stem>.png` maps of
    category ids (0 where nothing is), `panoptic`: COCO panoptic `panoptic/<stem>.png` + `panoptic.json`,
    both from the panoptic merge of the predictions (`instaseg.inference.panoptic`, `panoptic_options`)."""

    overlay: bool = False
    overlay_labels: bool | None = None
    label_maps: bool = False
    polygons: bool = False
    semantic: bool = False
    panoptic: bool = False
    panoptic_options: PanopticOptions = PanopticOptions()


@dataclass
class PredictionSummary:
    """What a run did: finished images, instances found, failures (input and reason), wall time, and the
    score and mask thresholds the predictions used."""

    out_dir: Path
    thresholds: dict[str, float] = field(default_factory=dict)
    images: int = 0
    instances: int = 0
    failures: list[InputFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"{self.images} images, {self.instances} instances in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s); results in {self.out_dir / 'results.json'}"
        ]
        if self.thresholds:
            used = ", ".join(f"{name} {value:g}" for name, value in self.thresholds.items())
            lines.append(f"thresholds: {used}")
        if self.failures:
            lines.append(f"{len(self.failures)} failed:")
            lines.extend(f"  {failure.source}: {failure.reason}" for failure in self.failures)
        return "\n".join(lines)


def predict_files(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    predictor: Predictor,
    outputs: OutputOptions | None = None,
    image_ids: Mapping[str, int] | None = None,
    progress: bool | None = None,
    save_every: float = 10.0,
) -> PredictionSummary:
    """Predict every image named by `inputs` (files, folders, glob patterns) and write results into `out_dir`.

    `image_ids` maps file names (the path as found, or its base name) to COCO image ids, e.g. from the ground
    truth the results will be evaluated against (images not in it fail); otherwise ids count from 1 in input
    order. `progress`: a progress bar on stderr (None: only when stderr is a terminal). Raises
    `OutputWriteError` when `out_dir` cannot be written; per-image problems end up in the summary instead.
    """
    outputs = outputs or OutputOptions()
    out_dir = Path(out_dir)
    ensure_writable_folder(out_dir)
    files, failures = expand_inputs(inputs)
    if not inputs:
        failures.append(InputFailure("(no inputs)", "no files, folders or patterns were given"))
    for name, wanted in (
        ("overlays", outputs.overlay),
        ("label_maps", outputs.label_maps),
        ("polygons", outputs.polygons),
        ("semantic", outputs.semantic),
        ("panoptic", outputs.panoptic),
    ):
        if wanted:
            ensure_writable_folder(out_dir / name)

    thresholds = used_thresholds(predictor)
    results = ResultsFile(out_dir, categories=predictor.categories, thresholds=thresholds)
    panoptic = PanopticResults(out_dir, predictor.categories) if outputs.panoptic else None
    for failure in failures:
        results.add_failure(failure.source, failure.reason)
    summary = PredictionSummary(out_dir, thresholds=thresholds, failures=list(failures))
    used_stems: set[str] = set()
    position = {path: index for index, path in enumerate(files)}
    start = time.perf_counter()
    last_save = start
    bar = tqdm(
        total=len(files), unit="img", disable=not (sys.stderr.isatty() if progress is None else progress)
    )
    id_owners: dict[int, str] = {}
    try:
        for first in range(0, len(files), predictor.batch_size):
            batch = files[first : first + predictor.batch_size]
            for path, instances, image, error in _predict_batch(predictor, batch):
                bar.update(1)
                image_id = _image_id(path, position[path] + 1, image_ids)
                if error is None and image_id is None:
                    error = "file name not found in the image-id mapping (--coco-gt)"
                elif error is None and image_id in id_owners:  # two files matched one name of --coco-gt
                    error = f"image id {image_id} (--coco-gt) already belongs to {id_owners[image_id]}"
                if error is None:
                    id_owners[image_id] = str(path)
                if error is not None:
                    summary.failures.append(InputFailure(str(path), error))
                    results.add_failure(str(path), error)
                    continue
                results.add(image_id, str(path), instances)
                summary.images += 1
                summary.instances += len(instances)
                problem = _write_image_outputs(
                    out_dir,
                    path,
                    image,
                    instances,
                    predictor,
                    outputs,
                    used_stems,
                    results.images[-1],
                    panoptic,
                )
                if problem is not None:
                    summary.failures.append(InputFailure(str(path), problem))
                    results.add_failure(str(path), problem)
            if time.perf_counter() - last_save >= save_every:
                _save(results, panoptic)
                last_save = time.perf_counter()
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        _save(results, panoptic)
    return summary


def _save(results: ResultsFile, panoptic: PanopticResults | None) -> None:
    results.save()
    if panoptic is not None:
        panoptic.save()


def used_thresholds(predictor: Predictor) -> dict[str, float]:
    """`{"score_threshold", "mask_threshold"}` the predictor applies: the options given, else the model's
    recommended operating point (the `Predictor` resolves them)."""
    options = predictor.postprocess_options
    return {"score_threshold": options.score_threshold, "mask_threshold": options.mask_threshold}


def _predict_batch(
    predictor: Predictor, paths: list[Path]
) -> Iterator[tuple[Path, Instances | None, np.ndarray | None, str | None]]:
    """(path, instances, image, error) per path; a failing batch is retried image by image to isolate it."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except PER_IMAGE_ERRORS as exc:
            yield path, None, None, _reason(exc)
    if not loaded:
        return
    try:
        outputs = predictor.predict_tensors([to_tensor(image) for _, image in loaded])
    except PER_IMAGE_ERRORS as exc:
        if len(loaded) == 1:
            yield loaded[0][0], None, None, _reason(exc)
            return
        for path, image in loaded:
            try:
                instances = predictor.predict_tensors([to_tensor(image)])[0]
            except PER_IMAGE_ERRORS as single_exc:
                yield path, None, None, _reason(single_exc)
                continue
            yield path, instances, image, None
        return
    for (path, image), instances in zip(loaded, outputs, strict=True):
        yield path, instances, image, None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return f"out of memory ({exc})"
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def _image_id(path: Path, default: int, image_ids: Mapping[str, int] | None) -> int | None:
    if image_ids is None:
        return default
    for key in (str(path), path.as_posix(), path.name):
        if key in image_ids:
            return int(image_ids[key])
    return None


def _write_image_outputs(
    out_dir: Path,
    path: Path,
    image: np.ndarray,
    instances: Instances,
    predictor: Predictor,
    outputs: OutputOptions,
    used_stems: set[str],
    record: dict,
    panoptic: PanopticResults | None = None,
) -> str | None:
    """Write the requested per-image files; returns a failure reason, or None when all were written."""
    if not (
        outputs.overlay or outputs.label_maps or outputs.polygons or outputs.semantic or outputs.panoptic
    ):
        return None
    stem = _unused_stem(path.stem, record["id"], used_stems)
    used_stems.add(stem)
    try:
        if outputs.overlay:
            target = out_dir / "overlays" / f"{stem}.png"
            drawn = draw_overlay(image, instances, predictor.class_names, labels=outputs.overlay_labels)
            write_bytes(target, encode_png(drawn))
            record["overlay"] = str(target.relative_to(out_dir))
        if outputs.label_maps:
            target = out_dir / "label_maps" / f"{stem}.png"
            write_bytes(target, encode_png(label_map(instances)))
            record["label_map"] = str(target.relative_to(out_dir))
        if outputs.polygons:
            target = out_dir / "polygons" / f"{stem}.geojson"
            write_json(target, geojson(instances, predictor.class_names))
            record["polygons"] = str(target.relative_to(out_dir))
        if outputs.semantic or outputs.panoptic:
            segmentation = instances_to_panoptic(instances, outputs.panoptic_options)
        if outputs.semantic:
            target = out_dir / "semantic" / f"{stem}.png"
            write_bytes(target, encode_png(semantic_map(segmentation)))
            record["semantic"] = str(target.relative_to(out_dir))
        if panoptic is not None:
            target = out_dir / "panoptic" / f"{stem}.png"
            write_bytes(target, encode_png(segmentation.to_rgb()))
            record["panoptic"] = str(target.relative_to(out_dir))
            panoptic.add(record["id"], record["file_name"], target.name, segmentation)
    except (OutputWriteError, ValueError) as exc:
        return f"results kept, but an output file failed: {exc}"
    return None


def _unused_stem(stem: str, image_id: int, used: set[str]) -> str:
    """`stem`, else `stem_<id>`, else `stem_<id>_2`, ...: the first name no earlier image took (a file
    named `a_3.png` may already own `a_3`)."""
    numbered = (f"{stem}_{image_id}_{n}" for n in itertools.count(2))
    candidates = itertools.chain((stem, f"{stem}_{image_id}"), numbered)
    return next(candidate for candidate in candidates if candidate not in used)
