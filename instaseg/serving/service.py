"""The prediction path of one request, between HTTP (app.py) and the model (served.py).

route to a model version -> decode and check each image (limits.py) -> queue it for the dynamic batcher ->
wait, within the request's timeout -> per-request post-processing (`ServedModel.answer`) -> instances as
JSON (COCO RLE via `instaseg.structures.masks`, or polygons) -> metrics, drift window, sampled log -> the
version's outcome window (and, for a canary, a check by the canary analysis, `canary.py`) -> for a share of
production requests, a copy to the model's shadow version (`shadow.py`), after the answer is ready.

Blocking steps (decoding, post-processing, encoding) run in worker threads so the event loop keeps accepting
requests; the model runs in the batcher's own thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from starlette.concurrency import run_in_threadpool

from instaseg.io.images import to_tensor
from instaseg.serving.batching import BatcherClosed, BatchResult, QueueFull
from instaseg.serving.config import ServingConfig
from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.drift import ImageStatistics, image_statistics
from instaseg.serving.errors import Unavailable
from instaseg.serving.limits import DecodedImage, decode_image_bytes
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.sampling import PredictionSampler
from instaseg.serving.schemas import PredictOptions, instances_to_json
from instaseg.serving.served import ImageJob, ServedModel
from instaseg.serving.shadow import ShadowImage, ShadowRunner
from instaseg.structures.instances import Instances

__all__ = ["InferenceService", "RawImage", "Served"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawImage:
    """Image bytes as received, `source` naming them in error messages, `name` the client's label."""

    data: bytes
    source: str
    name: str | None = None


@dataclass(frozen=True)
class Served:
    """Which model version a request went to."""

    model: ServedModel
    role: str

    @property
    def labels(self) -> tuple[str, str]:
        return self.model.name, str(self.model.version)

    def ref(self) -> dict:
        return {"name": self.model.name, "version": self.model.version, "role": self.role}


@dataclass
class _Prepared:
    decoded: DecodedImage
    stats: ImageStatistics | None
    job: ImageJob
    decode_seconds: float


class InferenceService:
    """Runs predictions for the HTTP layer; owns nothing but wiring (models, metrics, drift, log, shadow).

    `shadow` copies a share of production requests to each model's shadow version; `on_canary_outcome(name)`
    is called after every outcome of a canary (the canary analysis' trigger).
    """

    def __init__(
        self,
        config: ServingConfig,
        deployments: DeploymentManager,
        metrics: ServingMetrics,
        sampler: PredictionSampler | None = None,
        shadow: ShadowRunner | None = None,
        on_canary_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.deployments = deployments
        self.metrics = metrics
        self.sampler = sampler
        self.shadow = shadow
        self._on_canary_outcome = on_canary_outcome
        self._drift_alarms: set[tuple[str, int, str]] = set()
        self._drift_lock = threading.Lock()

    def route(self, model_name: str | None) -> Served:
        model, role = self.deployments.route(model_name)
        return Served(model, role)

    async def predict(
        self, served: Served, images: list[RawImage], options: PredictOptions, route: str, started: float
    ) -> tuple[Served, list[dict]]:
        """Predict `images` on `served` (re-routed once if that version was unloaded meanwhile); returns the
        version that answered and one result dict per image (see `schemas.ImageResult`)."""
        prepared = await asyncio.gather(
            *(run_in_threadpool(self._prepare, i, options, served) for i in images)
        )
        try:
            futures = _submit_all(served.model, [p.job for p in prepared])
        except BatcherClosed:  # promote / rollback unloaded this version since routing: take the new one
            served = self.route(served.model.name)
            futures = _submit_all(served.model, [p.job for p in prepared])
        results = await self._wait(served, futures, started)
        outputs = await asyncio.gather(
            *(
                run_in_threadpool(self._finish, p, result, options, served, route, started)
                for p, result in zip(prepared, results, strict=True)
            )
        )
        scores = [i["score"] for output in outputs for i in output["instances"]]
        self._outcome(served, started, True, float(np.mean(scores)) if scores else None)
        shadow = self.deployments.shadow_of(served.model.name) if self.shadow is not None else None
        if shadow is not None and served.role == "production":
            images = [ShadowImage(p.job, r, p.decoded) for p, r in zip(prepared, results, strict=True)]
            self.shadow.offer(served.model, shadow, images, options, route)
        return served, list(outputs)

    def _outcome(self, served: Served, started: float, ok: bool, mean_score: float | None = None) -> None:
        """Add a finished request to its version's window; a canary's is then checked by the analysis."""
        served.model.summary.add(time.perf_counter() - started, ok, mean_score)
        if served.role == "canary" and self._on_canary_outcome is not None:
            self._on_canary_outcome(served.model.name)

    async def _wait(self, served: Served, futures: list, started: float) -> list[BatchResult[Instances]]:
        """The batch results of this request's images, or `Unavailable` (timeout, model failure)."""
        remaining = self.config.request_timeout_s - (time.perf_counter() - started)
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), timeout=max(remaining, 0.001)
            )
        except asyncio.TimeoutError:
            for future in futures:
                future.cancel()  # queued images of this request are skipped by the batcher
            self._outcome(served, started, False)
            raise Unavailable(
                f"no answer from model {served.model.name} v{served.model.version} within the request "
                "timeout "
                f"of {self.config.request_timeout_s:g} s",
                "timeout",
            ) from None
        except Exception as exc:
            for future in futures:
                future.cancel()
            self._outcome(served, started, False)
            # The exception's text stays in the server log (the batcher logs it): it names internals.
            raise Unavailable(
                f"model {served.model.name} v{served.model.version} failed on this request "
                f"({type(exc).__name__}; details in the server log)",
                "model_error",
            ) from None

    def _prepare(self, image: RawImage, options: PredictOptions, served: Served) -> _Prepared:
        began = time.perf_counter()
        decoded = decode_image_bytes(image.data, image.source, self.config.limits)
        stats = image_statistics(decoded.image) if served.model.drift is not None else None
        job = ImageJob(to_tensor(decoded.image), options.tiling)
        return _Prepared(decoded, stats, job, time.perf_counter() - began)

    def _finish(
        self,
        prepared: _Prepared,
        result: BatchResult[Instances],
        options: PredictOptions,
        served: Served,
        route: str,
        started: float,
    ) -> dict:
        began = time.perf_counter()
        # A request that sets no score threshold gets the model's operating point (its masks were cut at
        # the operating point's mask threshold by the served predictor).
        instances, thresholds = served.model.answer(
            result.value, options.score_threshold, options.max_detections
        )
        body_instances = instances_to_json(instances, served.model.class_names, options.mask_format)
        scores = [item["score"] for item in body_instances]
        height, width = prepared.decoded.size
        finished = time.perf_counter()
        timing = {
            "decode_ms": prepared.decode_seconds * 1000,
            "queue_ms": result.queue_seconds * 1000,
            "model_ms": result.model_seconds * 1000,
            "postprocess_ms": (finished - began) * 1000,
            "total_ms": (finished - started) * 1000,
            "batch_size": result.batch_size,
        }
        body = {
            "input_sha256": prepared.decoded.sha256,
            "image_size": {"height": height, "width": width},
            "instances": body_instances,
            "thresholds": {
                "score_threshold": thresholds.score_threshold,
                "mask_threshold": served.model.mask_threshold,
            },
            "timing": timing,
        }
        model, version = served.labels
        self.metrics.observe_image(model, version, result.queue_seconds, height * width, scores)
        if prepared.stats is not None and served.model.drift is not None:
            # Every score the model gave (as the reference holds), not only those above this request's cut.
            self._observe_drift(served.model, prepared.stats, result.value.scores.tolist())
        if self.sampler is not None and self.sampler.wants():
            self._log_sample(prepared.decoded, served, route, options, body)
        return body

    def _observe_drift(self, model: ServedModel, stats: ImageStatistics, scores: list[float]) -> None:
        drift = self.config.drift
        count = model.drift.add(stats, np.asarray(scores))
        if count % drift.every or len(model.drift) < drift.min_samples:
            return
        values = model.drift.psi_scores()
        self.metrics.set_drift(model.name, str(model.version), values)
        with self._drift_lock:
            self._warn_on_drift(model, values)

    def _warn_on_drift(self, model: ServedModel, values: dict[str, float]) -> None:
        """Log once when a feature's PSI crosses the threshold, and once when it is back under it."""
        drift = self.config.drift
        for feature, value in values.items():
            alarm = (model.name, model.version, feature)
            if value > drift.psi_threshold and alarm not in self._drift_alarms:
                self._drift_alarms.add(alarm)
                _log.warning(
                    "drift: %s v%d feature %r has PSI %.3f over the threshold %.3f (last %d images)",
                    model.name,
                    model.version,
                    feature,
                    value,
                    drift.psi_threshold,
                    len(model.drift),
                )
            elif value <= drift.psi_threshold and alarm in self._drift_alarms:
                self._drift_alarms.discard(alarm)
                _log.info(
                    "drift: %s v%d feature %r is back to PSI %.3f", model.name, model.version, feature, value
                )

    def _log_sample(
        self, decoded: DecodedImage, served: Served, route: str, options: PredictOptions, body: dict
    ) -> None:
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "route": route,
            "model": served.ref(),
            "options": options.model_dump(),
            "format": decoded.format,
            **body,
        }
        if not self.sampler.try_write(record, decoded.data, decoded.format):
            self.metrics.error("sampling_write", *served.labels)


def _submit_all(model: ServedModel, jobs: list[ImageJob]) -> list:
    """Queue every job of a request, or none: on failure the ones already queued are cancelled."""
    futures = []
    try:
        for job in jobs:
            futures.append(model.submit(job))
    except (BatcherClosed, QueueFull) as exc:
        for future in futures:
            future.cancel()
        if isinstance(exc, QueueFull):
            raise Unavailable(f"the service is overloaded: {exc}; retry later", "overloaded") from None
        raise
    return futures
