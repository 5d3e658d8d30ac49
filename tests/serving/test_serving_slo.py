"""SLOs in the serving config and the Prometheus rules generated from them (`instaseg.serving.slo`,
`instaseg slo rules`); promtool and the real Prometheus check them in test_serving_prometheus*.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from instaseg.cli.main import main
from instaseg.serving.config import (
    ConfigError,
    ModelSlo,
    ServingConfig,
    SloConfig,
    load_serving_config,
)
from instaseg.serving.registration import register_model
from instaseg.serving.slo import (
    PAGE_WINDOWS,
    alert_names,
    format_duration,
    prometheus_rules,
    rules_yaml,
)


def write_config(tmp_path: Path, slo: str, registry: str = "/srv/registry") -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(f"registry: {registry}\nslo:\n{slo}", encoding="utf-8")
    return path


def test_slo_section_reads_per_model_objectives(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "  period_days: 28\n  models:\n    nuclei: {availability: 0.995, latency_p95_s: 2.5}\n"
        "    cells: {}\n",
    )
    slo = load_serving_config(path).slo
    assert slo.period_days == 28.0
    assert slo.models == {"nuclei": ModelSlo(0.995, 2.5), "cells": ModelSlo(0.999, 1.0)}


@pytest.mark.parametrize(
    ("slo", "message"),
    [
        ("  models: {nuclei: {availability: 1.5}}\n", r"slo\.models\.nuclei\.availability .*got 1\.5"),
        ("  models: {nuclei: {availability: 1}}\n", r"slo\.models\.nuclei\.availability .*between 0 and 1"),
        ("  models: {nuclei: {availability: 0}}\n", r"slo\.models\.nuclei\.availability"),
        ("  models: {nuclei: {latency_p95_s: -0.5}}\n", r"slo\.models\.nuclei\.latency_p95_s .*got -0\.5"),
        ("  models: {nuclei: {latency_p95_s: 0}}\n", r"slo\.models\.nuclei\.latency_p95_s must be > 0"),
        ("  models: {nuclei: {latency_p95: 1}}\n", r"'slo\.models\.nuclei\.latency_p95' is unknown"),
        ("  models: {nuclei: {availability: high}}\n", r"'slo\.models\.nuclei\.availability' must be a num"),
        ("  models: {nuclei: 0.99}\n", r"'slo\.models\.nuclei' must be a mapping"),
        ("  period_days: -1\n", r"slo\.period_days must be > 0"),
    ],
)
def test_impossible_slos_are_config_errors_naming_the_key(tmp_path: Path, slo: str, message: str) -> None:
    path = write_config(tmp_path, slo)
    with pytest.raises(ConfigError, match=message) as raised:
        load_serving_config(path)
    assert str(path) in str(raised.value)


def config(**models: ModelSlo) -> ServingConfig:
    return ServingConfig(registry="/srv/registry", slo=SloConfig(models=models))


def test_burn_factors_are_the_workbooks_for_a_30_day_period() -> None:
    assert [round(w.factor(30 * 86400.0), 9) for w in PAGE_WINDOWS] == [14.4, 6.0]
    rules = prometheus_rules(config(nuclei=ModelSlo(0.999, 0.5)), ["nuclei"])
    burn = next(
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "InstasegAvailabilityBudgetBurn"
    )
    assert burn["expr"] == (
        '(instaseg:slo_availability:burn_rate1h{model="nuclei"} > 14.4 and '
        'instaseg:slo_availability:burn_rate5m{model="nuclei"} > 14.4) or '
        '(instaseg:slo_availability:burn_rate6h{model="nuclei"} > 6 and '
        'instaseg:slo_availability:burn_rate30m{model="nuclei"} > 6)'
    )
    records = {r["record"]: r["expr"] for r in rules["groups"][0]["rules"]}
    assert records["instaseg:slo_availability:burn_rate1h"] == (
        'instaseg:slo_errors:ratio_rate1h{model="nuclei"} / 0.001'
    )
    assert (
        records["instaseg:slo_latency:burn_rate1h"] == 'instaseg:slo_slow:ratio_rate1h{model="nuclei"} / 0.05'
    )
    assert 'le="0.5"' in records["instaseg:slo_slow:ratio_rate5m"]
    assert 'status=~"5.."' in records["instaseg:slo_errors:ratio_rate5m"]


def test_one_set_of_rules_per_model_with_its_own_objectives() -> None:
    rules = prometheus_rules(config(a=ModelSlo(0.99, 1.0), b=ModelSlo(0.9999, 0.25)), ["a", "b", "c"])
    recording = rules["groups"][0]["rules"]
    assert len(recording) == 2 * 4 * 2 * 2  # models x windows x SLIs x (ratio, burn rate)
    assert {r["labels"]["model"] for r in recording} == {"a", "b"}
    text = rules_yaml(rules)
    assert "/ 0.01\n" in text and "/ 0.0001\n" in text and 'le="0.25"' in text and 'le="1.0"' in text
    assert alert_names(rules).count("InstasegAvailabilityBudgetBurn") == 1
    assert sum(r.get("alert") == "InstasegAvailabilityBudgetBurn" for r in rules["groups"][1]["rules"]) == 2


def test_time_scale_shortens_every_window_and_keeps_the_factors() -> None:
    rules = prometheus_rules(config(nuclei=ModelSlo(0.99, 0.5)), ["nuclei"], time_scale=120)
    text = rules_yaml(rules)
    for window in ("2500ms", "15s", "30s", "3m"):  # 5 min, 30 min, 1 h, 6 h divided by 120
        assert f"burn_rate{window}" in text
    assert "burn_rate1h" not in text and "> 14.4 and" in text
    assert "for: 1s" in text  # InstasegDown: 2 min / 120


def test_a_model_that_is_not_deployed_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"slo\.models\.cells: model 'cells' is not deployed.*\['nuclei'\]"):
        prometheus_rules(config(cells=ModelSlo()), ["nuclei"])


def test_a_latency_threshold_between_buckets_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"slo\.models\.nuclei\.latency_p95_s must be a bucket bound.*0\.3"):
        prometheus_rules(config(nuclei=ModelSlo(0.999, 0.3)), ["nuclei"])


def test_no_slos_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no SLOs"):
        prometheus_rules(config(), ["nuclei"])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "1h"), (300, "5m"), (30, "30s"), (2.5, "2500ms"), (86400 * 3, "3d"), (90, "90s")],
)
def test_prometheus_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_slo_rules_command(
    tmp_path: Path, tiny_model_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    registry = tmp_path / "registry"
    register_model(registry, "nuclei", tiny_model_checkpoint, class_names=["nucleus"])
    path = write_config(
        tmp_path, "  models: {nuclei: {availability: 0.99, latency_p95_s: 0.5}}\n", str(registry)
    )
    assert main(["slo", "rules", "--config", str(path)]) == 0
    rules = yaml.safe_load(capsys.readouterr().out)
    assert [g["name"] for g in rules["groups"]] == [
        "instaseg-slo-recording",
        "instaseg-slo-alerts",
        "instaseg-service-alerts",
    ]
    assert 'instaseg:slo_errors:ratio_rate1h{model="nuclei"} / 0.01' in yaml.safe_dump(rules, width=1000)
    out = tmp_path / "rules.yml"
    assert main(["slo", "rules", "--config", str(path), "--out", str(out), "--job", "seg"]) == 0
    assert 'up{job="seg"} == 0' in out.read_text()

    bad = write_config(tmp_path, "  models: {cells: {}}\n", str(registry))
    assert main(["slo", "rules", "--config", str(bad)]) == 2
    assert "slo.models.cells: model 'cells' is not deployed" in capsys.readouterr().err
