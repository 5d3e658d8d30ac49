"""Metrics: the Prometheus exposition of the serving collectors, and the rolling per-version summary."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from instaseg.serving.metrics import RollingSummary, ServingMetrics


def samples(metrics: ServingMetrics) -> dict[tuple[str, tuple], float]:
    payload, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(payload.decode())
        for sample in family.samples
    }


def test_collectors_carry_model_and_version() -> None:
    metrics = ServingMetrics()
    metrics.observe_request("/v1/predict", 200, "nuclei", "2", 0.03)
    metrics.observe_request("/v1/predict", 200, "nuclei", "2", 0.2)
    metrics.observe_batch("nuclei", "2", 4, 0.1)
    metrics.observe_image("nuclei", "2", 0.01, 256 * 256, [0.95, 0.55])
    metrics.error("timeout", "nuclei", "2")
    metrics.set_drift("nuclei", "2", {"brightness": 0.31})
    metrics.set_serving([("nuclei", "1", "production"), ("nuclei", "2", "canary")], {"nuclei": 0.1})
    found = samples(metrics)
    version = (("model", "nuclei"), ("version", "2"))
    requests = (
        "instaseg_requests_total",
        (("model", "nuclei"), ("route", "/v1/predict"), ("status", "200"), ("version", "2")),
    )
    assert found[requests] == 2.0
    assert (
        found[
            (
                "instaseg_request_seconds_bucket",
                (("le", "0.05"), *version[:1], ("route", "/v1/predict"), version[1]),
            )
        ]
        == 1.0
    )
    assert found[("instaseg_batch_size_sum", version)] == 4.0
    assert found[("instaseg_instances_per_image_sum", version)] == 2.0
    assert found[("instaseg_instance_scores_count", version)] == 2.0
    assert found[("instaseg_image_pixels_sum", version)] == 65536.0
    assert found[("instaseg_errors_total", (("kind", "timeout"), *version))] == 1.0
    assert found[("instaseg_drift_psi", (("feature", "brightness"), *version))] == pytest.approx(0.31)
    assert (
        found[("instaseg_model_loaded", (("model", "nuclei"), ("role", "canary"), ("version", "2")))] == 1.0
    )
    assert found[("instaseg_canary_share", (("model", "nuclei"),))] == pytest.approx(0.1)
    # Replacing the serving set drops versions that are gone.
    metrics.set_serving([("nuclei", "2", "production")], {"nuclei": 0.0})
    assert (
        "instaseg_model_loaded",
        (("model", "nuclei"), ("role", "canary"), ("version", "2")),
    ) not in samples(metrics)


def test_separate_apps_keep_separate_counts() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.error("timeout")
    assert ("instaseg_errors_total", (("kind", "timeout"), ("model", ""), ("version", ""))) in samples(first)
    assert not any(name == "instaseg_errors_total" for name, _ in samples(second))


def test_rolling_summary_for_canary_comparison() -> None:
    summary = RollingSummary(size=4)
    assert summary.summary()["requests"] == 0 and summary.summary()["error_rate"] is None
    for seconds, ok, score in [
        (9.0, True, 0.1),
        (0.1, True, 0.8),
        (0.2, False, None),
        (0.3, True, 0.6),
        (0.4, True, None),
    ]:
        summary.add(seconds, ok, score)
    result = summary.summary()  # the first (9 s) fell out of the window of 4
    assert result["requests"] == 4 and result["errors"] == 1 and result["error_rate"] == 0.25
    assert result["latency_p50_ms"] == pytest.approx(250.0)
    assert result["mean_score"] == pytest.approx(0.7)


def test_rolling_summary_counts_shadow_calls_and_their_agreement() -> None:
    summary = RollingSummary(size=3)
    summary.add(0.1, True, 0.9)  # a request
    summary.add(0.2, True, 0.8, agreement=0.5, shadow=True)
    summary.add(0.3, False, shadow=True)  # a failed shadow call: no agreement
    summary.add(0.4, True, 0.7, agreement=0.9, shadow=True)
    result = summary.summary()  # the request fell out of the window of 3
    assert summary.total == 4 and result["requests"] == 3 and result["shadow_requests"] == 3
    assert result["errors"] == 1 and result["agreements"] == 2 and result["agreement"] == pytest.approx(0.7)
    empty = RollingSummary().summary()
    assert (empty["shadow_requests"], empty["agreements"], empty["agreement"]) == (0, 0, None)


def test_shadow_and_canary_decision_metrics() -> None:
    metrics = ServingMetrics()
    metrics.observe_shadow("nuclei", "3", 0.85, 2)
    metrics.observe_shadow("nuclei", "3", 0.35, 0)
    metrics.shadow_skip("nuclei", "3")
    metrics.canary_rolled_back("nuclei", "3", "agreement")
    metrics.canary_promoted("nuclei", "4")
    found = samples(metrics)
    version = (("model", "nuclei"), ("version", "3"))
    assert found[("instaseg_shadow_requests_total", version)] == 2
    assert found[("instaseg_shadow_skipped_total", version)] == 1
    assert found[("instaseg_shadow_agreement_bucket", (("le", "0.4"), *version))] == 1
    assert found[("instaseg_shadow_agreement_sum", version)] == pytest.approx(1.2)
    assert found[("instaseg_shadow_count_difference_bucket", (("le", "0.0"), *version))] == 1
    assert found[("instaseg_shadow_count_difference_sum", version)] == 2
    rollbacks = (
        "instaseg_canary_rollbacks_total",
        (("model", "nuclei"), ("reason", "agreement"), ("version", "3")),
    )
    assert found[rollbacks] == 1
    assert found[("instaseg_canary_promotions_total", (("model", "nuclei"), ("version", "4")))] == 1
