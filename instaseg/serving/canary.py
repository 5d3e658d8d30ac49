"""Automatic canary analysis: a model's canary is compared with its production version over sliding windows
of their outcomes; a canary that breaches a limit is rolled back, a healthy one may be promoted.

The windows are each loaded version's `RollingSummary` (`ServedModel.summary`: the last
`canary.window_requests` outcomes; the canary's include its shadow calls, which carry the agreement with
production). After every outcome of a canary (a request it served, a shadow call it made), `observe` asks
for a check of that model; checks run one at a time in the analyst's own thread, so nothing here waits on
the request path. A check, once both windows hold `canary.min_requests` outcomes (`judge`):

1. error rate: the canary's share of failed outcomes exceeds production's by more than
   `max_error_rate_increase`;
2. latency: the canary's p95 exceeds `max_p95_ratio` x production's;
3. agreement: with at least `min_requests` shadow comparisons, their mean is below `min_agreement`.

The first breach rolls the canary back through the registry (`ModelRegistry.rollback_canary`: it ends the
canary only if it still is this version, never production, and stores the decision in the same
transaction), so every replica follows within `registry_poll_s`, `GET /v1/models` and `instaseg models
list` show why, `instaseg_canary_rollbacks_total{reason}` counts it and the `InstasegCanaryRolledBack`
alert fires. Each replica judges its own windows; when several decide at once the first write wins and
the others find the canary gone and change nothing. A failed registry write is logged, counted as
`instaseg_errors_total{kind="registry"}` and tried again at the canary's next outcome.

With `auto_promote_after` > 0, a canary judged healthy once it has had that many outcomes in this process
goes through the golden-set gate (`golden.check_promotion`, when the model has a golden set; here, in the
analyst's thread) and is promoted on a pass (`ModelRegistry.promote_canary`); a refusal is stored as the
decision and the canary keeps its share until someone acts.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from instaseg.serving.config import CanaryConfig
from instaseg.serving.deployments import ActiveModel, DeploymentManager
from instaseg.serving.golden import GateError, check_promotion
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registry import ModelRegistry
from instaseg.serving.served import ServedModel

__all__ = ["CANARY_REASONS", "CanaryAnalyst", "CanaryDecision", "Verdict", "judge"]

_log = logging.getLogger(__name__)
# The `reason` label of instaseg_canary_rollbacks_total, in the order the limits are checked.
CANARY_REASONS = ("error_rate", "latency", "agreement")


@dataclass(frozen=True)
class Verdict:
    """A canary compared with production: `judged` once both windows hold `min_requests` outcomes;
    `breach` the first limit broken (one of `CANARY_REASONS`, None: none); `message` the numbers."""

    judged: bool
    breach: str | None
    message: str


def judge(canary: Mapping[str, Any], production: Mapping[str, Any], limits: CanaryConfig) -> Verdict:
    """Compare two `RollingSummary.summary()` windows against the limits of `limits`."""
    minimum = limits.min_requests
    if canary["requests"] < minimum or production["requests"] < minimum:
        return Verdict(
            False,
            None,
            f"too few outcomes to judge: canary {canary['requests']}, production {production['requests']} "
            f"(need {minimum} each)",
        )
    errors = (
        f"error rate {canary['error_rate']:.3f} vs production {production['error_rate']:.3f} "
        f"(allowed increase {limits.max_error_rate_increase:g})"
    )
    if canary["error_rate"] - production["error_rate"] > limits.max_error_rate_increase:
        return Verdict(True, "error_rate", errors)
    latency = (
        f"p95 latency {canary['latency_p95_ms']:.1f} ms vs production {production['latency_p95_ms']:.1f} ms "
        f"(allowed ratio {limits.max_p95_ratio:g})"
    )
    if canary["latency_p95_ms"] > limits.max_p95_ratio * production["latency_p95_ms"]:
        return Verdict(True, "latency", latency)
    measured = canary["agreements"] >= minimum
    agreement = (
        f"agreement {canary['agreement']:.3f} over {canary['agreements']} shadow comparisons "
        f"(minimum {limits.min_agreement:g})"
        if measured
        else f"agreement not measured ({canary['agreements']} shadow comparisons)"
    )
    if measured and canary["agreement"] < limits.min_agreement:
        return Verdict(True, "agreement", agreement)
    return Verdict(True, None, f"{errors}; {latency}; {agreement}")


@dataclass(frozen=True)
class CanaryDecision:
    """What the analysis did with canary `version` of `name` (stored with the version in the registry):
    `action` rolled_back / promoted / promotion_refused, `reason` (one of `CANARY_REASONS`, `healthy` or
    `quality_gate`), the numbers in words (`message`) and both windows (`RollingSummary.summary()`)."""

    name: str
    version: int
    production_version: int
    action: str
    reason: str
    message: str
    canary: dict[str, Any]
    production: dict[str, Any]
    decided_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CanaryAnalyst:
    """Judges every model's canary after its outcomes and acts on the registry; see the module docstring.

    `device` is where the golden-set gate predicts before an automatic promotion.
    """

    def __init__(
        self,
        config: CanaryConfig,
        registry: ModelRegistry,
        deployments: DeploymentManager,
        metrics: ServingMetrics,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.registry = registry
        self.deployments = deployments
        self.metrics = metrics
        self.device = device
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="canary-analysis")
        self._lock = threading.Lock()
        self._queued: set[str] = set()  # models with a check waiting: one is enough
        self._closed = False
        # Per loaded canary (a version set as canary again later is loaded and judged afresh): those rolled
        # back or promoted (or changed meanwhile), and those whose promotion was tried (not retried).
        self._done: weakref.WeakSet[ServedModel] = weakref.WeakSet()
        self._promotion_tried: weakref.WeakSet[ServedModel] = weakref.WeakSet()

    def observe(self, name: str) -> None:
        """A canary of `name` has a new outcome: check it soon, off the calling thread."""
        with self._lock:
            if self._closed or name in self._queued:
                return
            self._queued.add(name)
            self._executor.submit(self._check_queued, name)

    def close(self) -> None:
        """Drop the checks still waiting, let a running one finish; later outcomes are not checked."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    def check(self, name: str) -> CanaryDecision | None:
        """Judge the canary of `name` now and act on a breach or a due promotion; the decision, if any."""
        active = self.deployments.active().get(name)
        if active is None or active.canary is None or active.production is None:
            return None
        if active.canary in self._done:
            return None
        canary, production = active.canary.summary.summary(), active.production.summary.summary()
        verdict = judge(canary, production, self.config)
        if verdict.breach is not None:
            return self._roll_back(active, verdict, canary, production)
        after = self.config.auto_promote_after
        tried = active.canary in self._promotion_tried
        due = after > 0 and active.canary.summary.total >= after and not tried
        if verdict.judged and due:
            return self._promote(active, verdict, canary, production)
        return None

    def _check_queued(self, name: str) -> None:
        with self._lock:
            self._queued.discard(name)
        try:
            self.check(name)
        except Exception:  # a check that fails must not stop later ones; the next outcome tries again
            _log.exception("canary analysis of %s failed", name)

    def _decision(
        self, active: ActiveModel, action: str, reason: str, message: str, canary: dict, production: dict
    ) -> CanaryDecision:
        return CanaryDecision(
            name=active.name,
            version=active.canary.version,
            production_version=active.production.version,
            action=action,
            reason=reason,
            message=message,
            canary=canary,
            production=production,
            decided_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def _roll_back(
        self, active: ActiveModel, verdict: Verdict, canary: dict, production: dict
    ) -> CanaryDecision | None:
        decision = self._decision(active, "rolled_back", verdict.breach, verdict.message, canary, production)
        changed = self._write(decision, self.registry.rollback_canary)
        if changed is None:
            return None
        self._done.add(active.canary)
        if changed:
            self.metrics.canary_rolled_back(decision.name, str(decision.version), decision.reason)
            _log.warning(
                "canary %s v%d rolled back automatically (%s): %s",
                decision.name,
                decision.version,
                decision.reason,
                decision.message,
            )
            self._sync()
        return decision if changed else None

    def _promote(
        self, active: ActiveModel, verdict: Verdict, canary: dict, production: dict
    ) -> CanaryDecision | None:
        name, version = active.name, active.canary.version
        self._promotion_tried.add(active.canary)
        try:
            gate = check_promotion(self.registry, name, version, device=self.device)
        except GateError as exc:  # a refusal (GateRefused) or a gate that cannot evaluate: no promotion
            decision = self._decision(
                active, "promotion_refused", "quality_gate", str(exc), canary, production
            )
            _log.warning("canary %s v%d not promoted automatically: %s", name, version, exc)
            self._write(decision, self._record_only)
            return decision
        message = verdict.message + (f"; quality gate: {gate.message()}" if gate is not None else "")
        decision = self._decision(active, "promoted", "healthy", message, canary, production)
        changed = self._write(decision, self.registry.promote_canary)
        if changed is None:
            self._promotion_tried.discard(active.canary)  # the registry failed, not the canary: retry
            return None
        self._done.add(active.canary)
        if changed:
            self.metrics.canary_promoted(name, str(version))
            _log.info("canary %s v%d promoted automatically: %s", name, version, message)
            self._sync()
        return decision if changed else None

    def _record_only(self, name: str, version: int, decision: dict[str, Any]) -> bool:
        self.registry.record_canary_decision(name, version, decision)
        return True

    def _write(
        self, decision: CanaryDecision, write: Callable[[str, int, dict[str, Any]], bool]
    ) -> bool | None:
        """`write(name, version, decision dict)` on the registry: whether it changed the deployment, or None
        when the registry failed (logged, counted; the canary is judged again at its next outcome)."""
        key = (decision.name, decision.version)
        try:
            changed = write(decision.name, decision.version, decision.to_dict())
        except Exception as exc:  # a locked or unreachable registry leaves the deployment as it was
            _log.error(
                "canary %s v%d: storing the decision %s failed: %s: %s",
                *key,
                decision.action,
                type(exc).__name__,
                exc,
            )
            self.metrics.error("registry", decision.name, str(decision.version))
            return None
        if not changed:
            _log.info("canary %s v%d was changed meanwhile (another replica or an operator)", *key)
        return changed

    def _sync(self) -> None:
        """Take the change up now rather than at the next poll (the follower thread retries on failure)."""
        try:
            self.deployments.sync()
        except Exception as exc:
            _log.warning("re-reading the registry after a canary decision failed: %s", exc)
