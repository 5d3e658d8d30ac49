"""Shadow traffic: a share of production requests also runs on a candidate version, off the response path;
the candidate's answers are compared with production's and never returned.

After production has answered a request, `ShadowRunner.offer` queues the request's decoded images on the
shadow version's own batcher (a non-blocking put) and returns. At most `shadow.max_pending` images may be
in the shadow's hands at once; beyond that, or when its batcher's queue is full, an image is skipped and
counted (`instaseg_shadow_skipped_total`), so shadowing never slows production down. When a shadow call
finishes, the runner's worker thread compares it with production's result for the same image:

- both versions' instances as each would have answered the request (its score threshold, else each
  version's operating point; its `max_detections`), via `ServedModel.answer`;
- agreement: instances matched one to one by mask IoU (the Hungarian algorithm, `scipy`, maximising the
  total IoU; only instances of the same category pair), the sum of matched IoUs / max(N_production,
  N_candidate): 1 when both agree exactly (or both found nothing), unmatched instances count 0;
- count difference |N_candidate - N_production|; latency from queueing the image to the shadow's result.

Recorded: `instaseg_shadow_requests_total`, the `instaseg_shadow_agreement` and
`instaseg_shadow_count_difference` histograms (the shadow's model calls are in `instaseg_model_seconds` under
its version), the shadow version's window (`RollingSummary`, read by the canary analysis), and, for a
`sampling.share` of the comparisons, a record in the sampled prediction log. A failing shadow call is
logged and counted (`instaseg_errors_total{kind="shadow_error"}`) and never reaches a client.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from scipy.optimize import linear_sum_assignment

from instaseg.serving.batching import BatcherClosed, BatchResult, QueueFull
from instaseg.serving.config import ShadowConfig
from instaseg.serving.limits import DecodedImage
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.sampling import PredictionSampler
from instaseg.serving.schemas import PredictOptions, instances_to_json
from instaseg.serving.served import ImageJob, ServedModel
from instaseg.structures.instances import Instances
from instaseg.structures.masks import mask_iou

__all__ = ["ShadowImage", "ShadowRunner", "mask_agreement"]

_log = logging.getLogger(__name__)
_STOP = object()


def mask_agreement(production: Instances, candidate: Instances) -> float:
    """Matched-instance mask IoU of two answers for one image, in [0, 1]: instances paired one to one by
    the Hungarian algorithm on mask IoU (same category only), sum of the pairs' IoUs / max(N, M)."""
    if len(production) == 0 and len(candidate) == 0:
        return 1.0
    if len(production) == 0 or len(candidate) == 0:
        return 0.0
    ious = mask_iou(candidate.masks.rles(), production.masks.rles(), np.zeros(len(production), dtype=bool))
    same = candidate.labels.cpu().numpy()[:, None] == production.labels.cpu().numpy()[None, :]
    ious = np.where(same, ious, 0.0)
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return float(ious[rows, cols].sum() / max(len(production), len(candidate)))


@dataclass(frozen=True)
class ShadowImage:
    """One image production has answered: its model input, production's batch result, the decoded upload."""

    job: ImageJob
    result: BatchResult[Instances]
    decoded: DecodedImage


@dataclass(frozen=True)
class _Call:
    production: ServedModel
    shadow: ServedModel
    image: ShadowImage
    options: PredictOptions
    route: str
    future: Future
    started: float


class ShadowRunner:
    """Sends a `config.share` of production requests to their model's shadow version and compares the
    answers in a worker thread; `on_outcome(shadow)` is called after each shadow call is recorded."""

    def __init__(
        self,
        config: ShadowConfig,
        metrics: ServingMetrics,
        sampler: PredictionSampler | None = None,
        on_outcome: Callable[[ServedModel], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.sampler = sampler
        self._on_outcome = on_outcome
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pending = 0
        self._done: queue.Queue = queue.Queue()  # finished shadow calls; at most max_pending in it
        self._worker = threading.Thread(target=self._work, name="shadow-compare", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        """Images handed to shadow versions and not compared yet."""
        with self._lock:
            return self._pending

    def offer(
        self,
        production: ServedModel,
        shadow: ServedModel,
        images: Sequence[ShadowImage],
        options: PredictOptions,
        route: str,
    ) -> None:
        """Shadow this answered production request (with probability `share`); never blocks, never raises
        for the shadow's sake."""
        if not self._rng.random() < self.config.share:
            return
        for image in images:
            if not self._reserve():
                self.metrics.shadow_skip(shadow.name, str(shadow.version))
                continue
            started = time.perf_counter()
            try:
                future = shadow.submit(image.job)
            except (BatcherClosed, QueueFull):  # unloading, or its own queue is full: skip, do not wait
                self._release()
                self.metrics.shadow_skip(shadow.name, str(shadow.version))
                continue
            call = _Call(production, shadow, image, options, route, future, started)
            future.add_done_callback(lambda _, call=call: self._done.put((call, time.perf_counter())))

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the worker after the comparisons already finished are recorded."""
        self._done.put(_STOP)
        self._worker.join(timeout_s)

    def _reserve(self) -> bool:
        with self._lock:
            if self._pending >= self.config.max_pending:
                return False
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _work(self) -> None:
        while (item := self._done.get()) is not _STOP:
            call, finished = item
            try:
                self._record(call, finished - call.started)
            except Exception:  # a comparison that fails must not end the worker: logged and counted
                shadow = call.shadow
                _log.exception("comparing shadow %s v%d with production failed", shadow.name, shadow.version)
                self.metrics.error("shadow_error", call.shadow.name, str(call.shadow.version))
            finally:
                self._release()

    def _record(self, call: _Call, seconds: float) -> None:
        shadow = call.shadow
        labels = shadow.name, str(shadow.version)
        try:
            result = call.future.result()
        except Exception as exc:  # the batcher logged the traceback; the client never sees any of it
            _log.warning("shadow %s v%d failed: %s", shadow.name, shadow.version, type(exc).__name__)
            self.metrics.error("shadow_error", *labels)
            shadow.summary.add(seconds, False, shadow=True)
        else:
            options = call.options
            limits = options.score_threshold, options.max_detections
            ours, _ = call.production.answer(call.image.result.value, *limits)
            theirs, _ = shadow.answer(result.value, *limits)
            agreement = mask_agreement(ours, theirs)
            difference = abs(len(theirs) - len(ours))
            self.metrics.observe_shadow(*labels, agreement, difference)
            scores = theirs.scores.tolist()
            mean_score = float(np.mean(scores)) if scores else None
            shadow.summary.add(seconds, True, mean_score, agreement=agreement, shadow=True)
            if self.sampler is not None and self.sampler.wants():
                self._log_sample(call, ours, theirs, agreement, difference, seconds)
        if self._on_outcome is not None:
            self._on_outcome(shadow)

    def _log_sample(
        self,
        call: _Call,
        ours: Instances,
        theirs: Instances,
        agreement: float,
        difference: int,
        seconds: float,
    ) -> None:
        decoded, production_result = call.image.decoded, call.image.result
        height, width = decoded.size
        mask_format = call.options.mask_format
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "route": call.route,
            "model": {"name": call.shadow.name, "version": call.shadow.version, "role": "shadow"},
            "production": {"name": call.production.name, "version": call.production.version},
            "options": call.options.model_dump(),
            "format": decoded.format,
            "input_sha256": decoded.sha256,
            "image_size": {"height": height, "width": width},
            "shadow": {
                "agreement": agreement,
                "count_difference": difference,
                "shadow_ms": seconds * 1000,
                "production_ms": (production_result.queue_seconds + production_result.model_seconds) * 1000,
                "instances": instances_to_json(theirs, call.shadow.class_names, mask_format),
                "production_instances": instances_to_json(ours, call.production.class_names, mask_format),
            },
        }
        if not self.sampler.try_write(record, decoded.data, decoded.format):
            self.metrics.error("sampling_write", call.shadow.name, str(call.shadow.version))
