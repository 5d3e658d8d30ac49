"""Two `instaseg serve` replicas on loopback around one PostgreSQL registry (a real server, conftest.py):
changes reach both within 2 s, canary shares hold across them, a damaged checkpoint in the shared store is
refused while the version they had keeps serving, and losing the database leaves them serving but not ready
until it is back. Plus the DeploymentManager's side of a registry outage, without a server."""

from __future__ import annotations

import argparse
import io
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from instaseg.cli import models as models_cli
from instaseg.serving.config import ServingConfig
from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registration import register_model
from instaseg.serving.registry import RegistryUnavailable, open_registry
from instaseg.serving.server import BackgroundServer

POLL_S = 1.0  # the default registry_poll_s: changes must show within 2 s with it


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def _models(url: str, *args: str) -> None:
    """`instaseg models ... --registry URL` as the CLI runs it."""
    parser = argparse.ArgumentParser(prog="instaseg")
    models_cli.add_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["models", *args, "--registry", url])
    assert parsed.func(parsed) == 0


@dataclass
class Replicas:
    url: str  # the registry URL the CLI uses
    store: Path
    clients: list[httpx.Client]

    def predict(self, client: httpx.Client, seed: int = 0) -> httpx.Response:
        return client.post("/v1/predict", files={"image": ("a.png", _png(seed), "image/png")})

    def versions(self) -> list[str]:
        return [self.predict(c).headers["X-Instaseg-Version"] for c in self.clients]


@pytest.fixture(scope="module")
def replicas(
    postgres_server, tmp_path_factory: pytest.TempPathFactory, tiny_model_checkpoint: Path
) -> Iterator[Replicas]:
    """Two replicas of one registry (v1 production, v2 registered), shared by the tests of this file: each
    test starts from whatever the one before left serving."""
    postgres_url = postgres_server.new_database()
    tmp_path = tmp_path_factory.mktemp("replicas")
    store = tmp_path / "store"
    url = f"{postgres_url}?checkpoints={store}"
    register_model(url, "nuclei", tiny_model_checkpoint, class_names=["nucleus"])
    register_model(url, "nuclei", tiny_model_checkpoint, class_names=["nucleus"])
    servers = []
    try:
        for name in ("a", "b"):
            config = ServingConfig(
                registry=f"{postgres_url}?checkpoint_cache={tmp_path / name}",
                port=0,
                registry_poll_s=POLL_S,
                torch_threads=1,
                request_timeout_s=60.0,
            )
            servers.append(BackgroundServer(config).start())
        clients = [httpx.Client(base_url=s.url, timeout=60.0) for s in servers]
        for client in clients:
            _wait_for(lambda c=client: c.get("/readyz").status_code == 200, 120, "the replicas to load")
        yield Replicas(url, store, clients)
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.stop()


def _serving(client: httpx.Client) -> set[tuple[int, str]]:
    """(version, role) of what the replica routes to now, from its readiness probe."""
    return {(m["version"], m["role"]) for m in client.get("/readyz").json()["models"]}


def _canary_share(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return float(
        next(line for line in text.splitlines() if line.startswith("instaseg_canary_share{")).split()[-1]
    )


def test_changes_reach_every_replica_within_two_seconds(replicas: Replicas) -> None:
    a, b = replicas.clients
    assert replicas.versions() == ["1", "1"]
    # A new version is loaded and warmed up in the background before traffic moves: seconds on a busy CPU.
    _models(replicas.url, "set-canary", "nuclei", "2", "--share", "0.5")
    for client in (a, b):
        _wait_for(lambda c=client: (2, "canary") in _serving(c), 60.0, "the canary to load")
    roles = [replicas.predict(c, i).headers["X-Instaseg-Role"] for i in range(20) for c in (a, b)]
    # 40 requests split 50/50 over two replicas: each role at least 8 times (fails with odds below 1e-4).
    assert roles.count("canary") >= 8 and roles.count("production") >= 8
    # Changes among loaded versions: every replica routes by them within 2 s of the command.
    for command, reached in (
        (("set-canary", "nuclei", "2", "--share", "0.2"), lambda c: _canary_share(c) == 0.2),
        (("promote", "nuclei"), lambda c: _serving(c) == {(2, "production")}),
    ):
        started = time.monotonic()
        _models(replicas.url, *command)
        for client in (a, b):
            _wait_for(lambda c=client, r=reached: r(c), 2.0 - (time.monotonic() - started), " ".join(command))
    assert replicas.versions() == ["2", "2"]


def test_a_damaged_checkpoint_in_the_store_is_refused_and_the_old_version_serves(
    replicas: Replicas, tmp_path: Path, tiny_model_checkpoint: Path
) -> None:
    other = tmp_path / "other.pt"  # a different file (another sha256) that never gets served
    shutil.copyfile(tiny_model_checkpoint, other)
    with open(other, "ab") as stream:
        stream.write(b"\0" * 16)
    registry = open_registry(replicas.url)
    first = registry.get("nuclei", 1)
    had = replicas.versions()
    entry = registry.register("nuclei", other, first.classes, first.model_info)
    stored = replicas.store / f"{entry.sha256}.pt"
    stored.write_bytes(stored.read_bytes()[:1000])  # truncated in the shared store
    registry.promote("nuclei", entry.version)
    for client in replicas.clients:
        _wait_for(
            lambda c=client: any(
                v["version"] == entry.version and v["state"] == "failed"
                for v in c.get("/v1/models/nuclei").json()["versions"]
            ),
            10.0,
            "the damaged version to fail loading",
        )
        assert client.get("/readyz").status_code == 200
        errors = f'instaseg_errors_total{{kind="model_load",model="nuclei",version="{entry.version}"}} 1.0'
        assert errors in client.get("/metrics").text
    assert replicas.versions() == had  # what they had
    registry.close()


def test_losing_the_database_keeps_serving_but_not_ready_then_recovers(
    replicas: Replicas, postgres_server
) -> None:
    had = replicas.versions()
    postgres_server.stop()
    try:
        for client in replicas.clients:
            _wait_for(lambda c=client: c.get("/readyz").status_code == 503, 5.0, "not ready")
            reason = client.get("/readyz").json()["reason"]
            assert "model registry cannot be read" in reason and f":{postgres_server.port}/" in reason
            response = replicas.predict(client)
            assert response.status_code == 200
        assert replicas.versions() == had  # the loaded models keep serving
    finally:
        postgres_server.start()
    for client in replicas.clients:
        _wait_for(lambda c=client: c.get("/readyz").status_code == 200, 10.0, "ready again")
    # Following the registry again: a promotion (of a version not loaded yet: loaded first) reaches both.
    _models(replicas.url, "promote", "nuclei", "--version", "1")
    for client in replicas.clients:
        _wait_for(lambda c=client: _serving(c) == {(1, "production")}, 60.0, "v1")


class _FlakyRegistry:
    """Stands for a registry whose database goes away: `revision()` raises while `down` is set."""

    location = "postgresql://db.example/registry"

    def __init__(self) -> None:
        self.down = False

    def revision(self) -> int:
        if self.down:
            raise RegistryUnavailable(f"cannot reach the model registry database {self.location}: refused")
        return 0

    def deployments(self) -> list:
        return []

    def close(self) -> None:
        pass


def test_the_manager_reports_a_registry_outage_and_its_end() -> None:
    registry = _FlakyRegistry()
    manager = DeploymentManager(registry, lambda entry: None, ServingMetrics(), poll_s=0.02)
    manager.start()
    try:
        _wait_for(manager.wait_synced, 5.0, "the first sync")
        assert manager.is_ready() == (False, "no model is deployed in the registry")
        registry.down = True
        _wait_for(lambda: "cannot be read" in (manager.is_ready()[1] or ""), 5.0, "the outage")
        assert "db.example/registry: refused" in manager.is_ready()[1]
        registry.down = False
        _wait_for(lambda: "cannot be read" not in (manager.is_ready()[1] or ""), 5.0, "the recovery")
    finally:
        manager.stop()
