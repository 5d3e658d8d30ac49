"""deploy/grafana/instaseg.json queries only what the service exports, and docs/operations.md's runbooks name
alerts the rules define and panels the dashboard has.

Every metric a panel queries must be a series of the service's /metrics (`ServingMetrics`, rendered after
each of its observation methods ran once, so every labelled family has samples) or a recording rule of
`instaseg slo rules`; every label it matches or groups by must be a label of those series (or one that
Prometheus adds: job, instance). promtool, where installed, checks that each expression is valid PromQL.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_serving_prometheus import CONFIG, prometheus_tool, run_promtool

from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.slo import alert_names, prometheus_rules, rules_yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "instaseg.json"
OPERATIONS = REPO / "docs" / "operations.md"
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus itself makes: the alert state of the rules.
BUILTIN = {"ALERTS": {"alertname", "alertstate", "severity", "model", "version", "slo"}}

# Written by hand: no well-kept PromQL parser exists for Python (Prometheus 2.42's own /api/v1/parse_query
# is not there yet); promtool validates the same expressions below, so the shapes read here are valid PromQL.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names of `expr` with the labels each one's matchers name, and the grouping labels."""
    text = _RANGE.sub("", _STRING.sub('""', expr))
    grouping = {label.strip() for match in _GROUPING.finditer(text) for label in match.group(1).split(",")}
    text = _GROUPING.sub(" ", text)
    metrics: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(text):
        labels = {m.split("=")[0].split("!")[0].strip() for m in match.group(2).split(",") if m.strip()}
        metrics.setdefault(match.group(1) or "", set()).update(labels)
    text = _SELECTOR.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in _KEYWORDS:
            metrics.setdefault(match.group(), set())
    return metrics, grouping - {""}


def exported() -> dict[str, set[str]]:
    """Every series name the service exports, with its labels (each method of ServingMetrics run once)."""
    metrics = ServingMetrics()
    metrics.observe_request("/v1/predict", 200, "nuclei", "1", 0.2)
    metrics.observe_batch("nuclei", "1", 2, 0.1)
    metrics.observe_image("nuclei", "1", 0.01, 4096, [0.9])
    metrics.error("overloaded", "nuclei", "1")
    metrics.set_drift("nuclei", "1", {"brightness": 0.1})
    metrics.set_serving([("nuclei", "1", "production")], {"nuclei": 0.1})
    metrics.canary_rolled_back("nuclei", "2", "error_rate")
    metrics.canary_promoted("nuclei", "2")
    metrics.observe_shadow("nuclei", "2", 0.8, 1)
    metrics.shadow_skip("nuclei", "2")
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels, TARGET_LABELS)
    for group in prometheus_rules(CONFIG, ["nuclei"])["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                series.setdefault(rule["record"], set()).update(rule["labels"], TARGET_LABELS)
    return {**series, **BUILTIN}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every query, the alert annotations included."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    found += [("annotation " + a["name"], a["expr"]) for a in dashboard["annotations"]["list"]]
    return found


def test_the_parser_reads_metrics_and_labels() -> None:
    metrics, grouping = selectors(
        'sum by (le, version) (rate(a_bucket{model="$model",route=~"/v1/{x}|b"}[5m])) / on(model) b'
        ' and c{kind="x"} > 1'
    )
    assert metrics == {"a_bucket": {"model", "route"}, "b": set(), "c": {"kind"}}
    assert grouping == {"le", "version", "model"}


def test_every_metric_and_label_of_the_dashboard_is_exported() -> None:
    series = exported()
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    for title, expr in expressions:
        metrics, grouping = selectors(expr)
        assert metrics, f"panel {title!r}: no metric in {expr}"
        for name, labels in metrics.items():
            assert name in series, f"panel {title!r} queries {name!r}, which the service does not export"
            assert labels <= series[name], f"panel {title!r}: {name} has no label {labels - series[name]}"
        available = set().union(*(series[name] for name in metrics))
        assert grouping <= available, f"panel {title!r} groups by {grouping - available}, not a label"


def test_a_query_of_an_unknown_metric_would_be_caught() -> None:
    series = exported()
    metrics, _ = selectors('rate(instaseg_request_total{model="$model"}[5m])')  # "request", not "requests"
    assert not set(metrics) <= set(series)
    metrics, _ = selectors('instaseg_drift_psi{model="$model",feture="size"}')
    assert not metrics["instaseg_drift_psi"] <= series["instaseg_drift_psi"]


def test_the_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    prometheus_tool("promtool")
    grafana = {"$model": "nuclei", "$job": "instaseg", "$__rate_interval": "1m"}
    rules = []
    for i, (_, expr) in enumerate(dashboard_expressions()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "dashboard.yml"
    path.write_text(rules_yaml({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool("check", "rules", path.name, cwd=tmp_path)


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {panel["title"] for panel in dashboard["panels"]}
    for needed in (
        "Latency percentiles",
        "Error rate",
        "Error budget burn",
        "Throughput",
        "Batch sizes",
        "Queue",
        "Drift",
        "Per-version traffic",
        "Canary rollbacks",
        "Canary / shadow agreement",
        "Shadow traffic",
    ):
        assert needed in titles
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "model"}


def test_the_canary_and_shadow_panels_query_the_analysis_metrics() -> None:
    """The agreement panel is no placeholder: it and its neighbours read what the shadow runner and the
    canary analysis record."""
    queried: dict[str, set[str]] = {}
    for title, expr in dashboard_expressions():
        queried.setdefault(title, set()).update(selectors(expr)[0])
    assert queried["Canary / shadow agreement"] == {
        "instaseg_shadow_agreement_sum",
        "instaseg_shadow_agreement_count",
        "instaseg_shadow_agreement_bucket",
        "instaseg_shadow_count_difference_sum",
        "instaseg_shadow_count_difference_count",
    }
    assert queried["Shadow traffic"] == {
        "instaseg_shadow_requests_total",
        "instaseg_shadow_skipped_total",
        "instaseg_errors_total",
    }
    assert queried["Canary rollbacks"] == {
        "instaseg_canary_rollbacks_total",
        "instaseg_canary_promotions_total",
    }


def test_runbooks_name_real_alerts_and_panels() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    alerts = set(alert_names(prometheus_rules(CONFIG, ["nuclei"])))
    named = set(re.findall(r"\bInstaseg[A-Z][A-Za-z]+\b", text))
    assert named - alerts == set(), f"operations.md names alerts the rules lack: {named - alerts}"
    assert alerts - named == set(), f"alerts without a runbook: {alerts - named}"
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]}
    # *Title* names a panel (**x** is emphasis); Markdown may wrap a title across lines.
    panels = {" ".join(t.split()) for t in re.findall(r"(?<!\*)\*([A-Z][^*]+)\*(?!\*)", text)}
    assert panels and panels <= titles, f"operations.md names panels the dashboard lacks: {panels - titles}"
    for anchor in set(
        re.findall(
            r"runbook_url: docs/operations.md#([a-z-]+)", rules_yaml(prometheus_rules(CONFIG, ["nuclei"]))
        )
    ):
        heading = anchor.replace("-", " ")
        assert re.search(rf"^### {heading}$", text, re.IGNORECASE | re.MULTILINE), f"no runbook #{anchor}"
