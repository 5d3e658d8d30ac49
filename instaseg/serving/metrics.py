"""Prometheus metrics of the service (prometheus-client), labelled with the model version that served.

Collectors live in a `CollectorRegistry` of their own (not the process-global one), so several apps in one
process (tests, embedding) keep separate counts; the registry also carries prometheus-client's `process_*`
metrics (start time, resident memory, CPU), which the restart / OOM alerts of `instaseg.serving.slo` read.
Latency quantiles come from the histograms, e.g.
`histogram_quantile(0.95, sum by (le, version) (rate(instaseg_request_seconds_bucket[5m])))`.

`RollingSummary` keeps the last outcomes of one model version in memory (its requests, and its shadow calls
with their agreement with production): the sliding window that the automatic canary analysis
(`instaseg.serving.canary`) compares and `GET /v1/models/{name}` shows as `live`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["RollingSummary", "ServingMetrics"]

# Upper bounds (seconds) of the latency histograms; an SLO latency threshold must be one of them.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_INSTANCE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_AGREEMENT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_COUNT_DIFFERENCE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100)
_PIXEL_BUCKETS = tuple(float(side * side) for side in (64, 128, 256, 512, 1024, 2048, 4096, 8192))


class ServingMetrics:
    """All collectors of one service instance; `render()` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        model = ("model", "version")
        self.requests = Counter(
            "instaseg_requests",
            "HTTP requests by route, status code and serving model version",
            ("route", "status", *model),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "instaseg_request_seconds",
            "Wall time from request arrival to response, by route",
            ("route", *model),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "instaseg_model_seconds",
            "Wall time of one model call (a whole batch)",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "instaseg_queue_seconds",
            "Time an image waited in the batching queue before its model call started",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "instaseg_batch_size",
            "Images per model call",
            model,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.instances = Histogram(
            "instaseg_instances_per_image",
            "Instances returned per image (after the request's score threshold)",
            model,
            buckets=_INSTANCE_BUCKETS,
            registry=self.registry,
        )
        self.scores = Histogram(
            "instaseg_instance_scores",
            "Scores of the returned instances",
            model,
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.image_pixels = Histogram(
            "instaseg_image_pixels",
            "Input image size, width x height in pixels",
            model,
            buckets=_PIXEL_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "instaseg_errors",
            "Failed requests and internal failures by kind",
            ("kind", *model),
            registry=self.registry,
        )
        self.drift = Gauge(
            "instaseg_drift_psi",
            "Population stability index of the recent inputs / scores against the model's reference",
            (*model, "feature"),
            registry=self.registry,
        )
        self.loaded = Gauge(
            "instaseg_model_loaded",
            "1 for each model version loaded and serving, with its role (production or canary)",
            (*model, "role"),
            registry=self.registry,
        )
        self.canary_share = Gauge(
            "instaseg_canary_share",
            "Share of a model's traffic routed to its canary",
            ("model",),
            registry=self.registry,
        )
        self.canary_rollbacks = Counter(
            "instaseg_canary_rollbacks",
            "Canaries this replica rolled back automatically, by reason (error_rate, latency, agreement)",
            ("model", "version", "reason"),
            registry=self.registry,
        )
        self.canary_promotions = Counter(
            "instaseg_canary_promotions",
            "Canaries this replica promoted automatically after enough healthy requests",
            model,
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "instaseg_shadow_requests",
            "Images of production requests also run on the shadow version and compared (its version)",
            model,
            registry=self.registry,
        )
        self.shadow_skipped = Counter(
            "instaseg_shadow_skipped",
            "Images meant for the shadow version but skipped because too many shadow calls were pending",
            model,
            registry=self.registry,
        )
        self.shadow_agreement = Histogram(
            "instaseg_shadow_agreement",
            "Per image: matched-instance mask IoU of the shadow version's instances with production's",
            model,
            buckets=_AGREEMENT_BUCKETS,
            registry=self.registry,
        )
        self.shadow_count_difference = Histogram(
            "instaseg_shadow_count_difference",
            "Per image: |instances of the shadow version - instances of production|",
            model,
            buckets=_COUNT_DIFFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.embedding_lookups = Counter(
            "instaseg_embedding_cache_lookups",
            "Lookups of image embeddings in the promptable routes' cache, by result (hit, miss)",
            ("result",),
            registry=self.registry,
        )
        self.embedding_evictions = Counter(
            "instaseg_embedding_cache_evictions",
            "Embeddings dropped from the cache (least recently used) to stay under its byte cap",
            registry=self.registry,
        )
        self.embedding_bytes = Gauge(
            "instaseg_embedding_cache_bytes",
            "Bytes of embeddings held in the promptable routes' cache",
            registry=self.registry,
        )
        self.prompt_seconds = Histogram(
            "instaseg_prompt_model_seconds",
            "Wall time of one promptable model call, by stage (encode: the image, decode: a call's prompts)",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def observe_request(self, route: str, status: int, model: str, version: str, seconds: float) -> None:
        self.requests.labels(route, str(status), model, version).inc()
        self.request_seconds.labels(route, model, version).observe(seconds)

    def observe_batch(self, model: str, version: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, version).observe(size)
        self.model_seconds.labels(model, version).observe(seconds)

    def observe_image(
        self, model: str, version: str, queue_seconds: float, pixels: int, scores: Sequence[float]
    ) -> None:
        """One predicted image: its queue wait, size, instance count and scores."""
        self.queue_seconds.labels(model, version).observe(queue_seconds)
        self.image_pixels.labels(model, version).observe(pixels)
        self.instances.labels(model, version).observe(len(scores))
        histogram = self.scores.labels(model, version)
        for score in scores:
            histogram.observe(score)

    def observe_shadow(self, model: str, version: str, agreement: float, count_difference: int) -> None:
        """One image compared between the shadow version (`model`, `version`) and production."""
        self.shadow_requests.labels(model, version).inc()
        self.shadow_agreement.labels(model, version).observe(agreement)
        self.shadow_count_difference.labels(model, version).observe(count_difference)

    def shadow_skip(self, model: str, version: str) -> None:
        self.shadow_skipped.labels(model, version).inc()

    def embedding_lookup(self, hit: bool) -> None:
        self.embedding_lookups.labels("hit" if hit else "miss").inc()

    def embedding_cache_changed(self, held_bytes: int, evicted: int) -> None:
        self.embedding_bytes.set(held_bytes)
        if evicted:
            self.embedding_evictions.inc(evicted)

    def observe_prompt_stage(self, stage: str, seconds: float) -> None:
        self.prompt_seconds.labels(stage).observe(seconds)

    def canary_rolled_back(self, model: str, version: str, reason: str) -> None:
        self.canary_rollbacks.labels(model, version, reason).inc()

    def canary_promoted(self, model: str, version: str) -> None:
        self.canary_promotions.labels(model, version).inc()

    def error(self, kind: str, model: str = "", version: str = "") -> None:
        self.errors.labels(kind, model, version).inc()

    def set_drift(self, model: str, version: str, values: Mapping[str, float]) -> None:
        for feature, value in values.items():
            self.drift.labels(model, version, feature).set(value)

    def set_serving(
        self, serving: Sequence[tuple[str, str, str]], canary_shares: Mapping[str, float]
    ) -> None:
        """Replace the loaded versions (`(model, version, role)` triples) and each model's canary share."""
        self.loaded.clear()
        for model, version, role in serving:
            self.loaded.labels(model, version, role).set(1)
        self.canary_share.clear()
        for model, share in canary_shares.items():
            self.canary_share.labels(model).set(share)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class _Outcome:
    seconds: float
    ok: bool
    mean_score: float | None
    agreement: float | None
    shadow: bool


class RollingSummary:
    """The last `size` outcomes of one model version: its requests (latency from arrival to answer) and, for
    a shadow version, its shadow calls (latency from queueing the image to the result, with the agreement
    with production when the call succeeded). `total` counts every outcome since the version was loaded."""

    def __init__(self, size: int = 1000) -> None:
        self._items: deque[_Outcome] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._total = 0

    def add(
        self,
        seconds: float,
        ok: bool,
        mean_score: float | None = None,
        agreement: float | None = None,
        shadow: bool = False,
    ) -> None:
        with self._lock:
            self._items.append(_Outcome(seconds, ok, mean_score, agreement, shadow))
            self._total += 1

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def summary(self) -> dict[str, float | int | None]:
        """requests (outcomes in the window, shadow calls included), errors, error_rate, latency_p50_ms,
        latency_p95_ms, mean_score, shadow_requests, agreements (how many were measured), agreement (their
        mean); None where unknown."""
        with self._lock:
            items = list(self._items)
        if not items:
            return {
                "requests": 0,
                "errors": 0,
                "error_rate": None,
                "latency_p50_ms": None,
                "latency_p95_ms": None,
                "mean_score": None,
                "shadow_requests": 0,
                "agreements": 0,
                "agreement": None,
            }
        seconds = np.array([item.seconds for item in items])
        errors = sum(not item.ok for item in items)
        scores = [item.mean_score for item in items if item.mean_score is not None]
        agreements = [item.agreement for item in items if item.agreement is not None]
        return {
            "requests": len(items),
            "errors": errors,
            "error_rate": errors / len(items),
            "latency_p50_ms": float(np.percentile(seconds, 50) * 1000),
            "latency_p95_ms": float(np.percentile(seconds, 95) * 1000),
            "mean_score": float(np.mean(scores)) if scores else None,
            "shadow_requests": sum(item.shadow for item in items),
            "agreements": len(agreements),
            "agreement": float(np.mean(agreements)) if agreements else None,
        }
