"""Which loaded model versions serve which model name, kept in step with the registry while running.

A background thread polls the registry's revision counter every `poll_s` seconds. When it changes, the
versions now wanted (each name's production version, canary and shadow) that are not loaded yet are loaded
and warmed up in that thread, while requests keep going to the versions already serving; then the routing
table is switched in one assignment, and versions no longer wanted finish their queued images and are
unloaded. A
version that fails to load is logged and counted (`instaseg_errors_total{kind="model_load"}`), and the
previous production version keeps serving; loading is tried again at the next registry change.

With shadow traffic configured (`shadow_versions` not None), each model also has a shadow version: the one
`shadow_versions` names for it (loaded beside production and the canary, and unloaded like them), else its
canary. The shadow gets no traffic of its own; `instaseg.serving.shadow` copies production requests to it.

Checkpoints are fetched through the registry (`ModelRegistry.fetch_checkpoint`: a shared registry copies them
into this replica's cache and checks their sha256). When the registry cannot be read (a database down, a
network cut), the loaded versions keep serving and `is_ready` says not ready, with the reason, until a poll
succeeds again.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from instaseg.serving.errors import BadInput, NotFound, Unavailable
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registry import Deployment, ModelRegistry, ModelVersion, RegistryError
from instaseg.serving.served import ServedModel

__all__ = ["ActiveModel", "DeploymentManager"]

_log = logging.getLogger(__name__)
Key = tuple[str, int]


@dataclass(frozen=True)
class ActiveModel:
    """What serves one model name right now: a production version and, optionally, a canary with its share
    and a shadow version (the canary itself, or another loaded version) that production requests are
    copied to."""

    name: str
    production: ServedModel | None
    canary: ServedModel | None
    canary_share: float
    shadow: ServedModel | None = None


class DeploymentManager:
    """Loads the deployed versions of every registered model and routes requests between them.

    `load(entry)` builds a warmed-up `ServedModel` (injected, so tests and embedders can wrap it).
    `shadow_versions`: None without shadow traffic; else model name -> the version to shadow (a model not
    named shadows its canary).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        load: Callable[[ModelVersion], ServedModel],
        metrics: ServingMetrics,
        poll_s: float = 1.0,
        default_model: str | None = None,
        unload_timeout_s: float = 30.0,
        rng: random.Random | None = None,
        shadow_versions: Mapping[str, int] | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.poll_s = poll_s
        self.default_model = default_model
        self._load = load
        self._unload_timeout_s = unload_timeout_s
        self._rng = rng or random.Random()
        self._shadow_versions = None if shadow_versions is None else dict(shadow_versions)
        self._active: dict[str, ActiveModel] = {}
        self._deployments: dict[str, Deployment] = {}
        self._loaded: dict[Key, ServedModel] = {}
        self._states: dict[Key, str] = {}  # "loading" | "serving" | "failed"
        self._failed_at: dict[Key, int] = {}  # revision at which loading failed
        self._revision: int | None = None
        self._registry_problem: str | None = None  # why the last poll failed; None after a good one
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._sync_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the deployed versions and follow the registry, both in a background thread."""
        self._thread = threading.Thread(target=self._follow, name="registry-follower", daemon=True)
        self._thread.start()

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        """Block until the first sync finished or failed (True), or `timeout_s` passed (False)."""
        return self._synced.wait(timeout_s)

    def stop(self) -> None:
        """Stop following the registry; every loaded version finishes its queued images and is unloaded."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._sync_lock:
            for served in self._loaded.values():
                served.close(self._unload_timeout_s)
            self._loaded.clear()
            self._active = {}
        self.registry.close()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                revision = self.registry.revision()
                if revision != self._revision:
                    self.sync(revision)
                if self._registry_problem is not None:
                    _log.warning("the model registry %s is readable again", self.registry.location)
                self._registry_problem = None
            except Exception as exc:  # a locked or unreachable registry must not end the follower: retry
                if self._registry_problem is None:  # logged once per outage, not at every poll
                    _log.error("reading the model registry failed: %s: %s", type(exc).__name__, exc)
                self._registry_problem = str(exc) if isinstance(exc, RegistryError) else repr(exc)
                self.metrics.error("registry")
            finally:
                self._synced.set()
            self._stop.wait(self.poll_s)

    def sync(self, revision: int | None = None) -> None:
        """Bring the loaded versions and the routing table in line with the registry now."""
        with self._sync_lock:
            revision = self.registry.revision() if revision is None else revision
            deployments = {d.name: d for d in self.registry.deployments()}
            wanted = [(d.name, v) for d in deployments.values() for v in self._wanted_versions(d)]
            for key in wanted:
                self._ensure_loaded(key, revision)
            active = {name: self._activate(deployment) for name, deployment in deployments.items()}
            self._active = active  # the switch: one assignment, seen whole by request handlers
            self._deployments = deployments
            self._revision = revision
            in_use = {
                (served.name, served.version)
                for entry in active.values()
                for served in (entry.production, entry.canary, entry.shadow)
                if served is not None
            }
            for key in [key for key in self._loaded if key not in in_use]:
                _log.info("unloading %s v%d", *key)
                self._loaded.pop(key).close(self._unload_timeout_s)
            for key in [key for key in self._states if key not in self._loaded and key not in wanted]:
                del self._states[key]
            self._publish()
        self._synced.set()

    def _wanted_versions(self, deployment: Deployment) -> list[int]:
        """Production, the canary, and a shadow version of its own when one is configured for the model."""
        versions = deployment.serving_versions()
        shadow = self._shadow_version(deployment)
        return versions + [shadow] if shadow is not None and shadow not in versions else versions

    def _shadow_version(self, deployment: Deployment) -> int | None:
        """The version production requests of this model are copied to (None: no shadow traffic)."""
        if self._shadow_versions is None:
            return None
        version = self._shadow_versions.get(deployment.name, deployment.canary)
        return None if version == deployment.production else version

    def _ensure_loaded(self, key: Key, revision: int) -> None:
        if key in self._loaded or self._failed_at.get(key) == revision:
            return
        self._states[key] = "loading"
        try:
            entry = self.registry.get(*key)
            self.registry.fetch_checkpoint(entry)
            served = self._load(entry)
        except (
            Exception
        ) as exc:  # any load failure (bad file, wrong classes, warm-up error) keeps the old one
            _log.error("cannot load model %s v%d: %s: %s", key[0], key[1], type(exc).__name__, exc)
            self.metrics.error("model_load", key[0], str(key[1]))
            self._states[key] = "failed"
            self._failed_at[key] = revision
            return
        self._loaded[key] = served
        self._states[key] = "serving"
        self._failed_at.pop(key, None)
        _log.info("serving %s v%d", *key)

    def _activate(self, deployment: Deployment) -> ActiveModel:
        name = deployment.name
        production = self._loaded.get((name, deployment.production)) if deployment.production else None
        if production is None and name in self._active:
            production = self._active[name].production  # the wanted version failed: keep the previous one
        canary = self._loaded.get((name, deployment.canary)) if deployment.canary else None
        shadow_version = self._shadow_version(deployment)
        shadow = self._loaded.get((name, shadow_version)) if shadow_version is not None else None
        if shadow is not None and shadow is production:
            shadow = None  # the previous production kept serving and is the shadow's version: no comparison
        return ActiveModel(name, production, canary, deployment.canary_share if canary else 0.0, shadow)

    def _publish(self) -> None:
        serving = []
        for entry in self._active.values():
            if entry.production is not None:
                serving.append((entry.name, str(entry.production.version), "production"))
            if entry.canary is not None:
                serving.append((entry.name, str(entry.canary.version), "canary"))
            if entry.shadow is not None and entry.shadow is not entry.canary:
                serving.append((entry.name, str(entry.shadow.version), "shadow"))
        self.metrics.set_serving(serving, {name: e.canary_share for name, e in self._active.items()})

    # Requests --------------------------------------------------------------------------------------------

    def route(self, name: str | None) -> tuple[ServedModel, str]:
        """The version that serves this request and its role ("production" or "canary").

        Raises `NotFound` for a model name that is not deployed, `Unavailable` while it is not loaded.
        """
        active = self._active
        if name is None:
            name = self.default_name(active)
        entry = active.get(name)
        if entry is None:
            raise NotFound(
                f"no deployed model named {name!r}; deployed: {sorted(active) or 'none'}", "unknown_model"
            )
        if entry.canary is not None and self._rng.random() < entry.canary_share:
            return entry.canary, "canary"
        if entry.production is None:
            raise Unavailable(f"model {name!r} is not loaded yet (or failed to load)", "model_not_loaded")
        return entry.production, "production"

    def shadow_of(self, name: str) -> ServedModel | None:
        """The version production requests of model `name` are copied to now, if any."""
        entry = self._active.get(name)
        return entry.shadow if entry is not None else None

    def default_name(self, active: dict[str, ActiveModel] | None = None) -> str:
        active = self._active if active is None else active
        if self.default_model is not None:
            return self.default_model
        if len(active) == 1:
            return next(iter(active))
        if not active:
            raise Unavailable("no model is deployed yet", "no_model")
        raise BadInput(
            f"several models are deployed ({', '.join(sorted(active))}); name one with 'model'",
            "model_required",
        )

    def is_ready(self) -> tuple[bool, str | None]:
        """Ready when the first load is done, the registry's last poll succeeded and every deployed model
        has a production version serving."""
        if not self._synced.is_set():
            return False, "models are loading"
        if self._registry_problem is not None:
            return (
                False,
                f"the model registry cannot be read (loaded models keep serving): {self._registry_problem}",
            )
        if not self._deployments:
            return False, "no model is deployed in the registry"
        missing = [
            name
            for name in self._deployments
            if self._active.get(name) is None or self._active[name].production is None
        ]
        if missing:
            return False, f"no production version serving for {', '.join(sorted(missing))}"
        return True, None

    def states(self) -> dict[Key, str]:
        """(name, version) -> "loading" / "serving" / "failed" for every version loaded or tried."""
        return dict(self._states)

    def deployments(self) -> dict[str, Deployment]:
        return dict(self._deployments)

    def active(self) -> dict[str, ActiveModel]:
        return dict(self._active)
