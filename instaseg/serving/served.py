"""`ServedModel`: one registered model version, loaded, warmed up, behind its own dynamic batcher.

Predictions come from `instaseg.inference.Predictor` (two of them sharing one set of weights: one never tiles,
one tiles images larger than the service's `tile_size`, for requests that ask for tiling). Per-request score
thresholds and detection limits are applied afterwards by the service, so the predictors keep every
detection the model makes (`score_threshold=0`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from instaseg.export.onnx_export import model_source_for_backend
from instaseg.inference.postprocess import PostprocessOptions, postprocess
from instaseg.inference.predictor import Predictor
from instaseg.inference.tiling import TilingOptions
from instaseg.io.files import file_sha256
from instaseg.models.loading import load_model
from instaseg.models.protocol import OperatingPoint
from instaseg.serving.batching import BatchResult, DynamicBatcher
from instaseg.serving.config import ServingConfig
from instaseg.serving.drift import DriftMonitor, ReferenceStats
from instaseg.serving.metrics import RollingSummary
from instaseg.serving.registry import ModelVersion, RegistryError
from instaseg.structures.instances import Instances

__all__ = ["ImageJob", "ServedModel"]

_log = logging.getLogger(__name__)
# Keep everything the model outputs; each request applies its own threshold afterwards.
_KEEP_ALL = PostprocessOptions(score_threshold=0.0)
_WARM_UP_SIZE = 64


@dataclass(frozen=True)
class ImageJob:
    """One image for the model: `tensor` (3, H, W) float32 in [0, 1]; `tiling` asks for tiled inference."""

    tensor: torch.Tensor
    tiling: bool = False


class ServedModel:
    """A loaded model version: `submit` an `ImageJob`, get a future of its `Instances` (category ids as
    labels, boxes and masks in original-image pixels, sorted by decreasing score)."""

    def __init__(
        self,
        entry: ModelVersion,
        predictor: Predictor,
        tiled_predictor: Predictor,
        config: ServingConfig,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.version = entry.version
        self.class_names = {int(c["id"]): str(c["name"]) for c in entry.classes}
        self._predictor = predictor
        self._tiled_predictor = tiled_predictor
        self.drift = (
            DriftMonitor(
                ReferenceStats.from_dict(
                    entry.reference, f"drift reference of {entry.name} v{entry.version}"
                ),
                config.drift.window,
            )
            if entry.reference is not None
            else None
        )
        self.summary = RollingSummary(config.canary.window_requests)
        self._batcher: DynamicBatcher[ImageJob, Instances] = DynamicBatcher(
            self._run_batch,
            window_s=config.batching.window_ms / 1000.0,
            max_batch_size=config.batching.max_batch_size,
            max_queue=config.batching.max_queue,
            name=f"batcher-{entry.name}-v{entry.version}",
            on_batch=on_batch,
        )

    @classmethod
    def load(
        cls, entry: ModelVersion, config: ServingConfig, on_batch: Callable[[int, float], None] | None = None
    ) -> ServedModel:
        """Check the checkpoint's hash against the registry, build the model on `config.device`, wrap it."""
        if not entry.checkpoint.is_file():
            raise RegistryError(f"checkpoint of {entry.name} v{entry.version} is missing: {entry.checkpoint}")
        digest = file_sha256(entry.checkpoint)
        if digest != entry.sha256:
            raise RegistryError(
                f"checkpoint {entry.checkpoint} of {entry.name} v{entry.version} has changed since "
                "registration "
                f"(sha256 {digest[:12]}..., registered {entry.sha256[:12]}...)"
            )
        model = load_model(model_source_for_backend(entry.checkpoint, config.backend))
        batch = config.batching.max_batch_size
        tiling = TilingOptions(
            tile_size=config.tile_size,
            overlap=config.tile_overlap,
            min_image_side=config.tile_size,
            batch_size=batch,
        )
        common = {
            "device": config.device,
            "postprocess": _KEEP_ALL,
            "categories": entry.classes,
            "batch_size": batch,
        }
        return cls(
            entry,
            Predictor(model, tiling=None, **common),
            Predictor(model, tiling=tiling, **common),
            config,
            on_batch,
        )

    def warm_up(self, timeout_s: float = 300.0) -> float:
        """Run one small image through the whole path (first calls allocate memory); returns seconds."""
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        image = torch.rand((3, _WARM_UP_SIZE, _WARM_UP_SIZE), generator=generator)
        self.submit(ImageJob(image)).result(timeout=timeout_s)
        return time.perf_counter() - started

    def submit(self, job: ImageJob) -> Future[BatchResult[Instances]]:
        """Queue one image; raises `BatcherClosed` once this version is being unloaded, `QueueFull` when
        overloaded."""
        return self._batcher.submit(job)

    @property
    def operating_point(self) -> OperatingPoint | None:
        """The model file's recommended thresholds: a request that sets no score threshold gets its."""
        return self._predictor.model.operating_point

    @property
    def mask_threshold(self) -> float:
        """The mask probability this version's masks are cut at (the operating point's, else 0.5)."""
        return float(self._predictor.postprocess_options.mask_threshold)

    def answer(
        self, raw: Instances, score_threshold: float | None, max_detections: int
    ) -> tuple[Instances, PostprocessOptions]:
        """What this version returns for a request: its `raw` batch result cut at the request's score
        threshold (None: this version's operating point) and detection limit, without the extra fields (the
        predictor already turned `mask_logits` into masks); also the resolved thresholds."""
        thresholds = PostprocessOptions(
            score_threshold=score_threshold, max_detections=max_detections
        ).resolved(self.operating_point)
        bare = Instances(raw.image_size, raw.boxes, raw.labels, raw.scores, raw.masks)
        return postprocess(bare, thresholds), thresholds

    @property
    def pending(self) -> int:
        return self._batcher.pending

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the queued images, then stop the batcher."""
        self._batcher.close(timeout_s)

    def _run_batch(self, jobs: list[ImageJob]) -> list[Instances]:
        results: list[Instances | None] = [None] * len(jobs)
        for tiling, predictor in ((False, self._predictor), (True, self._tiled_predictor)):
            indices = [i for i, job in enumerate(jobs) if job.tiling == tiling]
            if indices:
                outputs = predictor.predict_tensors([jobs[i].tensor for i in indices])
                for index, output in zip(indices, outputs, strict=True):
                    results[index] = output
        return results
