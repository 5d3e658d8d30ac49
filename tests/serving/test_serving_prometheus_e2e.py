"""End to end: the real Prometheus scrapes a running `instaseg serve` on loopback, evaluates the generated
rules, and an injected error burst makes the availability burn-rate alert fire (read through Prometheus'
HTTP API).

Bounded in time: the rules are generated with `time_scale=120` (`instaseg slo rules --time-scale 120`), so
the 1 h / 5 min page windows become 30 s / 2.5 s (the burn factors stay 14.4 and 6), and Prometheus scrapes
and evaluates every 0.5 s. The alert fires a few seconds after the burst starts; the test gives it 60 s.
The served model is the tiny `FlakyModel` of test_serving_http.py, which fails on images 13 pixels wide.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from test_serving_http import FAIL_WIDTH, load_model, png, tiny_checkpoint, wait_for
from test_serving_prometheus import prometheus_tool

from instaseg.serving.app import create_app
from instaseg.serving.config import BatchingConfig, ModelSlo, ServingConfig, SloConfig
from instaseg.serving.registration import register_model
from instaseg.serving.server import BackgroundServer
from instaseg.serving.slo import prometheus_rules, rules_yaml

pytestmark = pytest.mark.slow
TIME_SCALE = 120
ALERT = "InstasegAvailabilityBudgetBurn"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Prometheus:
    """A `prometheus` process on a free loopback port, scraping `target` every 0.5 s with `rules`."""

    def __init__(self, folder: Path, target: str, rules: str) -> None:
        self.binary = prometheus_tool("prometheus")
        (folder / "rules.yml").write_text(rules, encoding="utf-8")
        config = {
            "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "instaseg", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.folder = folder
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.folder / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            cwd=self.folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ready, 60, "Prometheus to start")

    def ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.output()
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]

    def query(self, expr: str) -> list[dict]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.log.close()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Prometheus]]:
    registry = tmp_path / "registry"
    register_model(registry, "nuclei", tiny_checkpoint(tmp_path / "v1.pt", seed=0), class_names=["nucleus"])
    config = ServingConfig(
        registry=str(registry),
        port=0,
        torch_threads=1,
        batching=BatchingConfig(window_ms=1.0, max_batch_size=1),
        # 99% availability: the 14.4x page condition is an error ratio above 14.4%; latency within 10 s.
        slo=SloConfig(models={"nuclei": ModelSlo(availability=0.99, latency_p95_s=10.0)}),
    )
    rules = rules_yaml(prometheus_rules(config, ["nuclei"], time_scale=TIME_SCALE))
    with BackgroundServer(config, lambda c: create_app(c, load_model)) as server:
        client = httpx.Client(base_url=server.url, timeout=60.0)
        wait_for(lambda: client.get("/readyz").status_code == 200, 120, "the model to load")
        prometheus = Prometheus(tmp_path, server.url.removeprefix("http://"), rules)
        try:
            prometheus.start()
            yield client, prometheus
        finally:
            prometheus.stop()
            client.close()


def predict(client: httpx.Client, width: int) -> int:
    return client.post("/v1/predict", files={"image": ("x.png", png(20, width), "image/png")}).status_code


def test_an_error_burst_fires_the_burn_rate_alert(served: tuple[httpx.Client, Prometheus]) -> None:
    client, prometheus = served
    wait_for(lambda: prometheus.query('up{job="instaseg"} == 1') != [], 30, "the first scrape")
    # Healthy traffic for a while (two short windows): the recorded burn rate is 0, no alert.
    healthy_until = time.monotonic() + 6.0
    while time.monotonic() < healthy_until:
        assert predict(client, 24) == 200
    wait_for(
        lambda: prometheus.query('instaseg:slo_availability:burn_rate30s{model="nuclei"}') != [],
        30,
        "the recording rules",
    )
    burn = prometheus.query('instaseg:slo_availability:burn_rate30s{model="nuclei"}')
    assert float(burn[0]["value"][1]) == 0.0
    assert prometheus.alerts(ALERT) == []

    # The burst: every request fails (503, model error) until the alert fires.
    started = time.monotonic()
    firing: list[dict] = []
    while not firing:
        assert time.monotonic() - started < 60, f"{ALERT} did not fire within 60 s:\n{prometheus.output()}"
        for _ in range(5):
            assert predict(client, FAIL_WIDTH) == 503
        firing = [a for a in prometheus.alerts(ALERT) if a["state"] == "firing"]
    assert firing[0]["labels"] == {
        "alertname": ALERT,
        "model": "nuclei",
        "severity": "page",
        "slo": "availability",
    }
    short = prometheus.query('instaseg:slo_availability:burn_rate2500ms{model="nuclei"}')
    assert float(short[0]["value"][1]) > 14.4
    # Latency stayed within its objective: that alert is not even pending.
    assert prometheus.alerts("InstasegLatencyBudgetBurn") == []
