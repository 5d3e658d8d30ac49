"""Prometheus rules from the serving config's SLOs: recording rules, multi-window multi-burn-rate alerts, and
the service alerts of the runbooks (docs/operations.md). `instaseg slo rules > rules.yml` prints them.

Two SLIs per model name, both over its predict requests (`PREDICT_ROUTES`) as the service counts them in
`instaseg_requests_total` and `instaseg_request_seconds` (`instaseg.serving.metrics`):

- availability: the share of requests answered without a 5xx;
- latency: the share answered within the model's `latency_p95_s`, whose objective is 95% (a "p95 latency"
  SLO). The threshold must be a bucket bound of the histogram, so that the share is exact.

For each window the recording rules give the bad-request ratio (`instaseg:slo_errors:ratio_rate5m`,
`instaseg:slo_slow:ratio_rate5m`, ...) and the burn rate, that ratio divided by the error budget
(`instaseg:slo_availability:burn_rate5m`, `instaseg:slo_latency:burn_rate5m`, ...): 1 spends the budget in
exactly one SLO period. The alerts are the SRE workbook's multi-window, multi-burn-rate page conditions
(`PAGE_WINDOWS`): a long window says the budget is burning fast enough to matter, a short one (1/12 of it)
that it is still burning now, so the alert stops soon after the errors do. The burn factor of each pair is
the budget share it may spend in its long window: 2% in 1 h and 5% in 6 h of a 30-day period give the
workbook's 14.4 and 6.

`time_scale` divides every window and duration (and the period, so the burn factors stay the same): a drill
or a test can see an alert fire in seconds instead of hours.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from instaseg.serving.config import ConfigError, ModelSlo, ServingConfig
from instaseg.serving.metrics import LATENCY_BUCKETS

__all__ = [
    "LATENCY_OBJECTIVE",
    "PAGE_WINDOWS",
    "PREDICT_ROUTES",
    "BurnWindow",
    "alert_names",
    "format_duration",
    "prometheus_rules",
    "rules_yaml",
]

PREDICT_ROUTES = ("/v1/predict", "/v1/predict/batch")
# "p95 latency within the threshold": 95% of the requests are, so 5% may be slower.
LATENCY_OBJECTIVE = 0.95
RUNBOOKS = "docs/operations.md"
# Service alerts that are not burn rates: a share of 4xx among predict requests that means a client floods
# the service with bad input, and how long a queue wait may be, as a share of the request timeout.
BAD_INPUT_SHARE = 0.5
QUEUE_WAIT_SHARE_OF_TIMEOUT = 0.5


@dataclass(frozen=True)
class BurnWindow:
    """One page condition: the burn rate over `long_s` and over `short_s` seconds both above the rate that
    spends `budget_share` of the period's error budget in `long_s`."""

    long_s: float
    short_s: float
    budget_share: float

    def factor(self, period_s: float) -> float:
        return self.budget_share * period_s / self.long_s


# The SRE workbook (chapter 5, "Alerting on SLOs"): 2% of the budget in 1 h (5 min to confirm), 5% in 6 h
# (30 min to confirm); both page.
PAGE_WINDOWS = (BurnWindow(3600.0, 300.0, 0.02), BurnWindow(21600.0, 1800.0, 0.05))


def format_duration(seconds: float) -> str:
    """A Prometheus duration (`1h`, `30s`, `2500ms`): whole milliseconds in the largest unit dividing them."""
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"a Prometheus duration must be at least 1 ms, got {seconds} s")
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def prometheus_rules(
    config: ServingConfig,
    deployed: Collection[str],
    job: str = "instaseg",
    time_scale: float = 1.0,
    windows: tuple[BurnWindow, ...] = PAGE_WINDOWS,
) -> dict[str, Any]:
    """The rule file (`{"groups": [...]}`) for `config.slo`, checked against the `deployed` model names.

    job: the Prometheus job that scrapes the service (its `up` and `process_*` series).
    Raises `ConfigError` naming `slo.models.NAME` for a model that is not deployed or a latency threshold
    that is not a bucket bound, and when the config has no SLOs.
    """
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    slo = config.slo
    if not slo.models:
        raise ConfigError("the serving config has no SLOs: add slo.models.NAME (see docs/operations.md)")
    for name, objective in slo.models.items():
        if name not in deployed:
            raise ConfigError(
                f"slo.models.{name}: model {name!r} is not deployed in registry {config.registry}; "
                f"deployed: {sorted(deployed) or 'none'}"
            )
        if objective.latency_p95_s not in LATENCY_BUCKETS:
            raise ConfigError(
                f"slo.models.{name}.latency_p95_s must be a bucket bound of instaseg_request_seconds "
                f"({', '.join(f'{b:g}' for b in LATENCY_BUCKETS)}), got {objective.latency_p95_s:g}"
            )

    def duration(seconds: float) -> str:
        return format_duration(seconds / time_scale)

    period_s = slo.period_days * 86_400.0
    lengths = sorted({w for window in windows for w in (window.short_s, window.long_s)})
    recording: list[dict[str, Any]] = []
    slo_alerts: list[dict[str, Any]] = []
    for name, objective in sorted(slo.models.items()):
        recording += _recording_rules(name, objective, [duration(s) for s in lengths])
        for sli in ("availability", "latency"):
            slo_alerts.append(_burn_alert(name, sli, objective, windows, period_s, duration))
    return {
        "groups": [
            {"name": "instaseg-slo-recording", "rules": recording},
            {"name": "instaseg-slo-alerts", "rules": slo_alerts},
            {"name": "instaseg-service-alerts", "rules": _service_alerts(config, job, duration)},
        ]
    }


def rules_yaml(rules: dict[str, Any]) -> str:
    """The rule file as YAML text, keys in the order written (Prometheus' own layout)."""
    return yaml.safe_dump(rules, sort_keys=False, width=120)


def alert_names(rules: dict[str, Any]) -> list[str]:
    """The distinct alert names of a rule file, in order."""
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    return list(dict.fromkeys(names))


def _selector(name: str, *extra: str) -> str:
    routes = "|".join(PREDICT_ROUTES)
    return "{" + ",".join([f'model="{name}"', f'route=~"{routes}"', *extra]) + "}"


def _recording_rules(name: str, objective: ModelSlo, lengths: list[str]) -> list[dict[str, Any]]:
    requests = _selector(name)
    errors = _selector(name, 'status=~"5.."')
    fast = _selector(name, f'le="{floatToGoString(objective.latency_p95_s)}"')
    budgets = {"availability": 1.0 - objective.availability, "latency": 1.0 - LATENCY_OBJECTIVE}
    rules: list[dict[str, Any]] = []
    for window in lengths:
        total = f"sum by (model) (rate(instaseg_requests_total{requests}[{window}]))"
        # `or ... * 0`: a model without a single 5xx yet has no error series; its ratio is 0, not absent.
        failed = f"(sum by (model) (rate(instaseg_requests_total{errors}[{window}])) or {total} * 0)"
        within = f"sum by (model) (rate(instaseg_request_seconds_bucket{fast}[{window}]))"
        timed = f"sum by (model) (rate(instaseg_request_seconds_count{requests}[{window}]))"
        ratios = {
            "availability": (f"instaseg:slo_errors:ratio_rate{window}", f"{failed} / {total}"),
            "latency": (f"instaseg:slo_slow:ratio_rate{window}", f"1 - {within} / {timed}"),
        }
        for sli, (record, expr) in ratios.items():
            rules.append({"record": record, "expr": expr, "labels": {"model": name}})
            rules.append(
                {
                    "record": f"instaseg:slo_{sli}:burn_rate{window}",
                    "expr": f'{record}{{model="{name}"}} / {_number(budgets[sli])}',
                    "labels": {"model": name},
                }
            )
    return rules


def _burn_alert(
    name: str,
    sli: str,
    objective: ModelSlo,
    windows: tuple[BurnWindow, ...],
    period_s: float,
    duration: Callable[[float], str],
) -> dict[str, Any]:
    conditions = []
    for window in windows:
        factor = _number(window.factor(period_s))
        long_rate = f'instaseg:slo_{sli}:burn_rate{duration(window.long_s)}{{model="{name}"}}'
        short_rate = f'instaseg:slo_{sli}:burn_rate{duration(window.short_s)}{{model="{name}"}}'
        conditions.append(f"({long_rate} > {factor} and {short_rate} > {factor})")
    if sli == "availability":
        what = f"availability {objective.availability:.4g} (server errors)"
    else:
        what = f"95% of requests within {objective.latency_p95_s:g} s"
    title = sli.capitalize()
    return {
        "alert": f"Instaseg{title}BudgetBurn",
        "expr": " or ".join(conditions),
        "labels": {"severity": "page", "slo": sli, "model": name},
        "annotations": {
            "summary": f"{name}: the {sli} error budget is burning fast ({what})",
            "description": (
                f"{name} spends its error budget ({what} over {period_s / 86400:g} days) at more than "
                f"{_number(windows[-1].factor(period_s))}x the sustainable rate. Dashboard panel: "
                "'Error budget burn'."
            ),
            "runbook_url": f"{RUNBOOKS}#error-budget-burn",
        },
    }


def _service_alerts(
    config: ServingConfig, job: str, duration: Callable[[float], str]
) -> list[dict[str, Any]]:
    routes = "|".join(PREDICT_ROUTES)
    queue_wait = QUEUE_WAIT_SHARE_OF_TIMEOUT * config.request_timeout_s

    def alert(name: str, expr: str, for_s: float, severity: str, summary: str, runbook: str) -> dict:
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        if for_s:
            rule["for"] = duration(for_s)
        rule["labels"] = {"severity": severity}
        rule["annotations"] = {"summary": summary, "runbook_url": f"{RUNBOOKS}#{runbook}"}
        return rule

    production = [
        alert(
            "InstasegNoProductionModel",
            f'absent(instaseg_model_loaded{{model="{name}",role="production"}})',
            300,
            "page",
            f"no replica serves a production version of {name}",
            "registry-unavailable",
        )
        for name in sorted(config.slo.models)
    ]
    return [
        alert(
            "InstasegDown",
            f'up{{job="{job}"}} == 0',
            120,
            "page",
            "{{ $labels.instance }} does not answer /metrics",
            "oom",
        ),
        alert(
            "InstasegRestarted",
            f'changes(process_start_time_seconds{{job="{job}"}}[{duration(900)}]) > 0',
            0,
            "ticket",
            "{{ $labels.instance }} restarted (OOM kill or crash) in the last 15 minutes",
            "oom",
        ),
        alert(
            "InstasegModelErrors",
            f'sum by (model, version) (rate(instaseg_errors_total{{kind="model_error"}}[{duration(300)}]))'
            " > 0",
            600,
            "ticket",
            "{{ $labels.model }} v{{ $labels.version }}: model calls fail (GPU out of memory, bad weights)",
            "oom",
        ),
        alert(
            "InstasegQueueSaturated",
            f'sum by (model) (rate(instaseg_errors_total{{kind="overloaded"}}[{duration(300)}])) > 0 or '
            f"histogram_quantile(0.95, sum by (model, le) "
            f"(rate(instaseg_queue_seconds_bucket[{duration(300)}]))) > {_number(queue_wait)}",
            300,
            "page",
            "{{ $labels.model }}: the batching queue is full or images wait too long for a model call",
            "queue-saturation",
        ),
        alert(
            "InstasegInputDrift",
            f"max by (model, version, feature) (instaseg_drift_psi) > {_number(config.drift.psi_threshold)}",
            1800,
            "ticket",
            "{{ $labels.model }} v{{ $labels.version }}: the {{ $labels.feature }} of its inputs drifted "
            f"(PSI above {_number(config.drift.psi_threshold)})",
            "drift",
        ),
        alert(
            "InstasegBadInputFlood",
            f"sum by (model) (rate(instaseg_requests_total"
            f'{{route=~"{routes}",status=~"4.."}}[{duration(300)}]))'
            f' / sum by (model) (rate(instaseg_requests_total{{route=~"{routes}"}}[{duration(300)}]))'
            f" > {_number(BAD_INPUT_SHARE)}",
            600,
            "ticket",
            "more than half of the predict requests are refused as bad input (4xx)",
            "bad-input-flood",
        ),
        alert(
            "InstasegRegistryUnavailable",
            f'sum (increase(instaseg_errors_total{{kind="registry"}}[{duration(300)}])) > 0',
            300,
            "ticket",
            "the service cannot read the model registry (it keeps serving the versions it has)",
            "registry-unavailable",
        ),
        alert(
            "InstasegModelLoadFailed",
            f'sum by (model, version) (increase(instaseg_errors_total{{kind="model_load"}}[{duration(900)}]))'
            " > 0",
            0,
            "ticket",
            "{{ $labels.model }} v{{ $labels.version }} failed to load (the previous version keeps serving)",
            "model-regression",
        ),
        alert(
            "InstasegCanaryRolledBack",
            f"sum by (model, version, reason) (increase(instaseg_canary_rollbacks_total[{duration(900)}]))"
            " > 0",
            0,
            "ticket",
            "{{ $labels.model }} v{{ $labels.version }}: canary rolled back ({{ $labels.reason }})",
            "canary-rolled-back",
        ),
        *production,
    ]


def _number(value: float) -> str:
    """A float as PromQL reads it, without float noise (`0.0010000000000000009` -> `0.001`)."""
    return f"{value:.6g}"
