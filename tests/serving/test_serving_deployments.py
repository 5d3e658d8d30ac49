"""DeploymentManager: follows the registry, keeps serving when a new version fails, splits canary traffic.

The loader here returns a light stand-in for `ServedModel` (the manager only uses name, version and close),
so these tests exercise the routing and reload logic without building networks; the HTTP tests run the
real models.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.errors import BadInput, NotFound, Unavailable
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registry import ModelRegistry, ModelVersion

CLASSES = [{"id": 1, "name": "nucleus"}]


class Loaded:
    def __init__(self, entry: ModelVersion) -> None:
        self.name, self.version = entry.name, entry.version
        self.closed = False

    def close(self, timeout_s: float | None = None) -> None:
        self.closed = True


class Loader:
    def __init__(self) -> None:
        self.loaded: list[Loaded] = []
        self.broken: set[tuple[str, int]] = set()

    def __call__(self, entry: ModelVersion) -> Loaded:
        if entry.key in self.broken:
            raise RuntimeError(f"cannot load {entry.key}")
        model = Loaded(entry)
        self.loaded.append(model)
        return model


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "reg")
    for _ in range(3):
        registry.register("nuclei", checkpoint, CLASSES, {})
    registry.register("cells", checkpoint, CLASSES, {})
    return registry


def test_sync_loads_production_and_routes_by_name(registry: ModelRegistry) -> None:
    loader = Loader()
    manager = DeploymentManager(registry, loader, ServingMetrics())
    assert manager.is_ready() == (False, "models are loading")
    manager.sync()
    assert manager.is_ready() == (True, None)
    model, role = manager.route("nuclei")
    assert (model.name, model.version, role) == ("nuclei", 1, "production")
    assert manager.route("cells")[0].name == "cells"
    with pytest.raises(NotFound, match="no deployed model named 'tissue'") as unknown:
        manager.route("tissue")
    assert unknown.value.status == 404
    with pytest.raises(BadInput, match="several models are deployed \\(cells, nuclei\\)"):
        manager.route(None)
    assert (
        DeploymentManager(registry, loader, ServingMetrics(), default_model="cells").default_name({})
        == "cells"
    )


def test_canary_share_is_respected(registry: ModelRegistry) -> None:
    registry.set_canary("nuclei", 2, 0.3)
    manager = DeploymentManager(registry, Loader(), ServingMetrics(), rng=random.Random(1))
    manager.sync()
    draws = 20_000
    canary = sum(manager.route("nuclei")[1] == "canary" for _ in range(draws))
    assert abs(canary / draws - 0.3) < 0.015  # 4.6 binomial standard deviations
    assert {manager.route("nuclei")[0].version for _ in range(100)} == {1, 2}


def test_promote_and_rollback_switch_and_unload(registry: ModelRegistry) -> None:
    loader = Loader()
    manager = DeploymentManager(registry, loader, ServingMetrics())
    manager.sync()
    first = manager.route("nuclei")[0]
    registry.set_canary("nuclei", 3, 0.5)
    manager.sync()
    registry.promote("nuclei")
    manager.sync()
    assert manager.route("nuclei") == (loader.loaded[-1], "production") and loader.loaded[-1].version == 3
    assert first.closed  # v1 is no longer wanted: unloaded after its queue drained
    registry.rollback("nuclei")
    manager.sync()
    model, role = manager.route("nuclei")
    assert (model.version, role) == (1, "production") and not model.closed
    assert loader.loaded[-2].closed  # v3 unloaded in turn
    assert manager.states()[("nuclei", 1)] == "serving" and ("nuclei", 3) not in manager.states()


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(registry: ModelRegistry) -> None:
    loader = Loader()
    metrics = ServingMetrics()
    manager = DeploymentManager(registry, loader, metrics)
    manager.sync()
    loader.broken.add(("nuclei", 2))
    registry.promote("nuclei", 2)
    manager.sync()
    model, role = manager.route("nuclei")
    assert (model.version, role) == (1, "production") and not model.closed
    assert manager.states()[("nuclei", 2)] == "failed"
    payload, _ = metrics.render()
    assert b'instaseg_errors_total{kind="model_load",model="nuclei",version="2"} 1.0' in payload
    # Not retried on every poll, only after the next registry change.
    attempts = len(loader.loaded)
    manager.sync(registry.revision())
    loader.broken.clear()
    manager.sync(registry.revision())
    assert len(loader.loaded) == attempts
    registry.set_canary("nuclei", 3, 0.1)  # any change: loading v2 is tried again
    manager.sync()
    assert manager.route("nuclei")[0].version in (2, 3) and manager.states()[("nuclei", 2)] == "serving"


def test_not_ready_while_a_production_version_cannot_load(registry: ModelRegistry) -> None:
    loader = Loader()
    loader.broken.add(("cells", 1))
    manager = DeploymentManager(registry, loader, ServingMetrics())
    manager.sync()
    assert manager.is_ready() == (False, "no production version serving for cells")
    with pytest.raises(Unavailable, match="'cells' is not loaded") as error:
        manager.route("cells")
    assert error.value.status == 503


def test_follower_thread_notices_registry_changes(registry: ModelRegistry) -> None:
    manager = DeploymentManager(registry, Loader(), ServingMetrics(), poll_s=0.05)
    manager.start()
    try:
        assert manager.wait_synced(10)
        assert manager.route("nuclei")[0].version == 1
        registry.promote("nuclei", 2)  # another process (the CLI) writes the registry
        deadline = time.monotonic() + 10
        while manager.route("nuclei")[0].version != 2:
            assert time.monotonic() < deadline, "the manager did not pick up the promotion"
            time.sleep(0.02)
    finally:
        manager.stop()
    assert manager.active() == {}


def test_a_configured_shadow_version_is_loaded_published_and_unloaded(registry: ModelRegistry) -> None:
    loader = Loader()
    metrics = ServingMetrics()
    manager = DeploymentManager(registry, loader, metrics, shadow_versions={"nuclei": 3})
    manager.sync()
    shadow = manager.shadow_of("nuclei")
    assert (shadow.name, shadow.version) == ("nuclei", 3) and manager.shadow_of("cells") is None
    assert {manager.route("nuclei")[0].version for _ in range(50)} == {1}  # no traffic of its own
    loaded = b'instaseg_model_loaded{model="nuclei",role="shadow",version="3"} 1.0'
    assert loaded in metrics.render()[0]
    registry.set_canary("nuclei", 2, 0.5)  # the named version stays the shadow; the canary is beside it
    manager.sync()
    assert manager.shadow_of("nuclei") is shadow and manager.active()["nuclei"].canary.version == 2
    registry.promote("nuclei", 3)  # the shadow became production: nothing left to compare with
    manager.sync()
    assert manager.shadow_of("nuclei") is None and not shadow.closed  # it serves now, as production
    assert loaded not in metrics.render()[0]


def test_without_a_named_version_the_canary_is_the_shadow(registry: ModelRegistry) -> None:
    manager = DeploymentManager(registry, Loader(), ServingMetrics(), shadow_versions={})
    manager.sync()
    assert manager.shadow_of("nuclei") is None  # no canary: nothing to shadow
    registry.set_canary("nuclei", 2, 0.0)
    manager.sync()
    assert manager.shadow_of("nuclei") is manager.active()["nuclei"].canary
    assert manager.shadow_of("nuclei").version == 2
    without = DeploymentManager(registry, Loader(), ServingMetrics())  # shadow traffic off
    without.sync()
    assert without.active()["nuclei"].canary.version == 2 and without.shadow_of("nuclei") is None
