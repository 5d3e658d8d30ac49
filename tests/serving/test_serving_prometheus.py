"""The generated rules checked by the real Prometheus tools: `promtool check rules` on the rule file, and
`promtool test rules` with one unit test per alert (a series that must fire it, and a time at which it must
not fire yet or no longer).

Without `promtool` on PATH (Debian package `prometheus`) the tests skip naming it; under CI
(`INSTASEG_REQUIRE_PROMETHEUS=1`, set by `.ci/run`, or `CI` set) they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from instaseg.serving.config import ModelSlo, ServingConfig, SloConfig
from instaseg.serving.slo import alert_names, prometheus_rules, rules_yaml

REQUIRE_PROMETHEUS = os.environ.get("INSTASEG_REQUIRE_PROMETHEUS") == "1" or bool(os.environ.get("CI"))


def prometheus_tool(name: str) -> str:
    """The path of `promtool` or `prometheus`; skips (fails under CI) when it is not installed."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found on PATH (Debian package 'prometheus': apt-get install prometheus)"
        if REQUIRE_PROMETHEUS:
            pytest.fail(f"{message}; required under CI", pytrace=False)
        pytest.skip(message)
    return found


def run_promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [prometheus_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


CONFIG = ServingConfig(
    registry="/srv/registry",
    request_timeout_s=30.0,
    slo=SloConfig(models={"nuclei": ModelSlo(availability=0.999, latency_p95_s=0.5)}),
)
PREDICT = 'route="/v1/predict",model="nuclei",version="1"'


def case(
    alert: str, series: dict[str, str], fires_at: str, fires: list[dict[str, str]], quiet_at: str
) -> dict[str, Any]:
    """One promtool test group: `series` (selector -> promtool value notation, one sample a minute), the
    alert expected with the labels in `fires` at `fires_at`, and not at all at `quiet_at`."""
    return {
        "alert": alert,
        "series": series,
        "checks": [(quiet_at, []), (fires_at, fires)],
    }


CASES = [
    case(
        "InstasegAvailabilityBudgetBurn",
        {
            f'instaseg_requests_total{{{PREDICT},status="200"}}': "0+600x150",
            # No errors for an hour, then 1 request in 7 fails: 140x the 0.1% budget.
            f'instaseg_requests_total{{{PREDICT},status="503"}}': "0x60 0+100x90",
        },
        "130m",
        [{"model": "nuclei", "severity": "page", "slo": "availability"}],
        "50m",
    ),
    case(
        "InstasegLatencyBudgetBurn",
        {
            # All requests within 0.5 s for an hour, then 5 in 6 slower: 16.7x the 5% budget.
            f'instaseg_request_seconds_bucket{{{PREDICT},le="0.5"}}': "0+600x60 36100+100x89",
            f"instaseg_request_seconds_count{{{PREDICT}}}": "0+600x150",
        },
        "130m",
        [{"model": "nuclei", "severity": "page", "slo": "latency"}],
        "50m",
    ),
    case(
        "InstasegDown",
        {'up{job="instaseg",instance="a:8000"}': "1x10 0x20"},
        "20m",
        [{"job": "instaseg", "instance": "a:8000", "severity": "page"}],
        "5m",
    ),
    case(
        "InstasegRestarted",
        {'process_start_time_seconds{job="instaseg",instance="a:8000"}': "100x20 1300x30"},
        "25m",
        [{"job": "instaseg", "instance": "a:8000", "severity": "ticket"}],
        "45m",
    ),
    case(
        "InstasegModelErrors",
        {'instaseg_errors_total{kind="model_error",model="nuclei",version="2"}': "0x10 0+5x30"},
        "30m",
        [{"model": "nuclei", "version": "2", "severity": "ticket"}],
        "15m",
    ),
    case(
        "InstasegQueueSaturated",
        {'instaseg_errors_total{kind="overloaded",model="nuclei",version="1"}': "0x10 0+10x30"},
        "30m",
        [{"model": "nuclei", "severity": "page"}],
        "13m",
    ),
    case(
        "InstasegQueueSaturated",
        {
            # One image in ten waits at most 10 s, the others up to 30 s: p95 about 29 s > 15 s (half the
            # 30 s request timeout).
            'instaseg_queue_seconds_bucket{model="nuclei",version="1",le="10.0"}': "0+1x40",
            'instaseg_queue_seconds_bucket{model="nuclei",version="1",le="30.0"}': "0+10x40",
            'instaseg_queue_seconds_bucket{model="nuclei",version="1",le="+Inf"}': "0+10x40",
        },
        "30m",
        [{"model": "nuclei", "severity": "page"}],
        "3m",
    ),
    case(
        "InstasegInputDrift",
        {'instaseg_drift_psi{model="nuclei",version="1",feature="brightness"}': "0.05x10 0.5x40"},
        "45m",
        [{"model": "nuclei", "version": "1", "feature": "brightness", "severity": "ticket"}],
        "30m",
    ),
    case(
        "InstasegBadInputFlood",
        {
            f'instaseg_requests_total{{{PREDICT},status="200"}}': "0+10x50",
            f'instaseg_requests_total{{{PREDICT},status="415"}}': "0x10 0+100x40",
        },
        "40m",
        [{"model": "nuclei", "severity": "ticket"}],
        "15m",
    ),
    case(
        "InstasegRegistryUnavailable",
        {'instaseg_errors_total{kind="registry",model="",version=""}': "0x10 0+1x30"},
        "30m",
        [{"severity": "ticket"}],
        "13m",
    ),
    case(
        "InstasegModelLoadFailed",
        {'instaseg_errors_total{kind="model_load",model="nuclei",version="3"}': "0x10 1x40"},
        "15m",
        [{"model": "nuclei", "version": "3", "severity": "ticket"}],
        "40m",
    ),
    case(
        "InstasegCanaryRolledBack",
        {'instaseg_canary_rollbacks_total{model="nuclei",version="2",reason="error_rate"}': "0x10 1x40"},
        "15m",
        [{"model": "nuclei", "version": "2", "reason": "error_rate", "severity": "ticket"}],
        "5m",
    ),
    case(
        "InstasegNoProductionModel",
        {'instaseg_model_loaded{model="nuclei",version="1",role="production"}': "1x10 _x30"},
        "30m",
        [{"model": "nuclei", "role": "production", "severity": "page"}],
        "5m",
    ),
]


def expand(template: str, labels: dict[str, str]) -> str:
    """`{{ $labels.name }}` replaced by the label's value, as Prometheus renders an annotation."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def promtool_tests(rules: dict[str, Any], rule_file: str) -> dict[str, Any]:
    annotations = {
        rule["alert"]: rule["annotations"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    groups = []
    for item in CASES:
        tests = []
        for at, fired in item["checks"]:
            expected = [
                {
                    "exp_labels": labels,
                    "exp_annotations": {k: expand(v, labels) for k, v in annotations[item["alert"]].items()},
                }
                for labels in fired
            ]
            tests.append({"eval_time": at, "alertname": item["alert"], "exp_alerts": expected})
        groups.append(
            {
                "name": item["alert"],
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in item["series"].items()],
                "alert_rule_test": tests,
            }
        )
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": groups}


@pytest.fixture()
def rule_file(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    rules = prometheus_rules(CONFIG, ["nuclei"])
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml(rules), encoding="utf-8")
    return rules, path


def test_promtool_accepts_the_generated_rules(rule_file: tuple[dict[str, Any], Path]) -> None:
    rules, path = rule_file
    output = run_promtool("check", "rules", str(path), cwd=path.parent)
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert f"SUCCESS: {count} rules found" in output


def test_promtool_accepts_time_scaled_rules(tmp_path: Path) -> None:
    rules = prometheus_rules(CONFIG, ["nuclei"], time_scale=120)
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml(rules), encoding="utf-8")
    assert "instaseg:slo_availability:burn_rate30s" in path.read_text()  # 1 h / 120
    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_every_alert_has_a_promtool_unit_test() -> None:
    rules = prometheus_rules(CONFIG, ["nuclei"])
    assert sorted(alert_names(rules)) == sorted({item["alert"] for item in CASES})


def test_promtool_unit_tests_of_every_alert(rule_file: tuple[dict[str, Any], Path]) -> None:
    rules, path = rule_file
    tests = path.parent / "tests.yml"
    tests.write_text(yaml.safe_dump(promtool_tests(rules, path.name), sort_keys=False), encoding="utf-8")
    output = run_promtool("test", "rules", tests.name, cwd=path.parent)
    assert "SUCCESS" in output


def test_promtool_unit_tests_can_fail(rule_file: tuple[dict[str, Any], Path]) -> None:
    """A wrong expectation (the availability alert quiet while errors burn the budget) is reported."""
    rules, path = rule_file
    document = promtool_tests(rules, path.name)
    burn = document["tests"][0]
    burn["alert_rule_test"][1]["exp_alerts"] = []
    document["tests"] = [burn]
    tests = path.parent / "tests.yml"
    tests.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    done = subprocess.run(
        [prometheus_tool("promtool"), "test", "rules", tests.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "InstasegAvailabilityBudgetBurn" in done.stdout + done.stderr


def test_the_example_prometheus_config_is_valid_with_generated_rules(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
    (tmp_path / "prometheus.yml").write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "instaseg-rules.yml").write_text(rules_yaml(prometheus_rules(CONFIG, ["nuclei"])))
    output = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output
