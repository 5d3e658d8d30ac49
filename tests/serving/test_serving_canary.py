"""Shadow traffic and the automatic canary analysis on a real server over loopback HTTP: a canary that errors
on some inputs, a slow one and one whose masks disagree are rolled back with the matching reason (through
the registry, counted, logged, shown by `/v1/models` and `instaseg models list`); a healthy one is promoted
after N requests only when the config says so, and only past the golden-set gate when the model has one.

The served versions are `ServedModel`s around `FakePredictor` (two squares per image, in ~no time), injected
through `create_app(config, load_model)` as the other serving tests inject theirs, so each test takes a
second or two; the golden-gate test registers real tiny checkpoints, because the gate evaluates those.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_serving_golden import golden_from_predictions
from test_serving_http import models_command, tiny_checkpoint

from instaseg.inference.postprocess import PostprocessOptions
from instaseg.serving.app import create_app
from instaseg.serving.canary import CanaryAnalyst, judge
from instaseg.serving.config import (
    BatchingConfig,
    CanaryConfig,
    SamplingConfig,
    ServingConfig,
    ShadowConfig,
)
from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.golden import define_golden_set
from instaseg.serving.metrics import RollingSummary, ServingMetrics
from instaseg.serving.registry import ModelRegistry, ModelVersion, RegistryUnavailable
from instaseg.serving.served import ServedModel
from instaseg.serving.server import BackgroundServer
from instaseg.serving.shadow import mask_agreement
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

CLASSES = [{"id": 1, "name": "nucleus"}]
SIZE = 24  # request images are SIZE x SIZE or SIZE x (SIZE - 1)
# (row, column) corners of the two 8 x 8 squares a fake finds; DISAGREEING's overlap none of SQUARES'.
SQUARES = ((2, 2), (12, 12))
DISAGREEING = ((2, 13), (13, 2))


@dataclass(frozen=True)
class Behaviour:
    """How a fake version answers: where its squares are, whether it fails on odd-width images, how long
    each model call takes."""

    squares: tuple[tuple[int, int], ...] = SQUARES
    fail_odd_width: bool = False
    sleep_s: float = 0.0


class FakePredictor:
    """Stands in for `Predictor` inside `ServedModel`: one `Instances` of squares per image (category 1)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.model = SimpleNamespace(operating_point=None)
        self.postprocess_options = PostprocessOptions(mask_threshold=0.5)

    def predict_tensors(self, tensors: list[torch.Tensor]) -> list[Instances]:
        time.sleep(self.behaviour.sleep_s)
        if self.behaviour.fail_odd_width and any(int(t.shape[-1]) % 2 for t in tensors):
            raise RuntimeError("injected candidate failure")
        return [self._squares(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]

    def _squares(self, height: int, width: int) -> Instances:
        masks = torch.zeros((len(self.behaviour.squares), height, width), dtype=torch.bool)
        boxes = []
        for i, (row, column) in enumerate(self.behaviour.squares):
            masks[i, row : row + 8, column : column + 8] = True
            boxes.append([column, row, min(column + 8, width), min(row + 8, height)])
        count = len(boxes)
        return Instances(
            (height, width),
            torch.tensor(boxes, dtype=torch.float32).reshape(count, 4),
            torch.ones(count, dtype=torch.int64),
            torch.linspace(0.9, 0.8, count),
            Masks.from_bitmaps(masks),
        )


def fake_loader(
    behaviours: dict[int, Behaviour],
) -> Callable[[ModelVersion, ServingConfig, ServingMetrics], ServedModel]:
    """`create_app`'s `load_model`: version v is a `ServedModel` around `FakePredictor(behaviours[v])`."""

    def load(entry: ModelVersion, config: ServingConfig, metrics: ServingMetrics) -> ServedModel:
        predictor = FakePredictor(behaviours.get(entry.version, Behaviour()))
        served = ServedModel(
            entry,
            predictor,
            predictor,
            config,
            lambda n, s: metrics.observe_batch(entry.name, str(entry.version), n, s),
        )
        served.warm_up()
        return served

    return load


def png(width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Env:
    client: httpx.Client
    registry: ModelRegistry
    root: Path
    log: list[logging.LogRecord] = field(default_factory=list)

    def predict(self, seed: int, width: int = SIZE) -> httpx.Response:
        return self.client.post("/v1/predict", files={"image": ("a.png", png(width, seed), "image/png")})

    def model(self) -> dict:
        return self.client.get("/v1/models/nuclei").json()

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def until(
        self, condition: Callable[[], bool], what: str, requests: int = 300, pause_s: float = 0.0
    ) -> int:
        """Send requests (odd and even widths in turn, `pause_s` apart) until `condition()`; returns how
        many it took."""
        for i in range(requests):
            if condition():
                return i
            self.predict(seed=i, width=SIZE - i % 2)
            time.sleep(pause_s)
        raise AssertionError(f"{what} did not happen within {requests} requests")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        """Poll `condition()` without sending requests."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def models_list(self, *args: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            models_command(self.root / "registry", "list", *args)
        return out.getvalue()


@contextmanager
def serving(
    tmp_path: Path,
    behaviours: dict[int, Behaviour],
    canary_share: float | None = 0.5,
    canary: CanaryConfig | None = None,
    shadow: ShadowConfig | None = None,
    sampling: SamplingConfig | None = None,
    checkpoints: list[Path] | None = None,
) -> Iterator[Env]:
    """A server whose registry holds one version per `behaviours` entry (v1 production; v2 the canary at
    `canary_share` unless None), with the given canary / shadow / sampling config."""
    registry = ModelRegistry(tmp_path / "registry")
    if checkpoints is None:
        dummy = tmp_path / "weights.pt"
        dummy.write_bytes(b"weights served by FakePredictor")
        checkpoints = [dummy] * len(behaviours)
    for checkpoint in checkpoints:
        registry.register("nuclei", checkpoint, CLASSES, {})
    if canary_share is not None:
        registry.set_canary("nuclei", 2, canary_share)
    config = ServingConfig(
        registry=str(tmp_path / "registry"),
        port=0,
        registry_poll_s=0.05,
        request_timeout_s=30.0,
        batching=BatchingConfig(window_ms=0.0, max_batch_size=4),
        canary=canary or CanaryConfig(),
        shadow=shadow or ShadowConfig(),
        sampling=sampling or SamplingConfig(),
    )
    log: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = log.append
    logger = logging.getLogger("instaseg.serving")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with (
            BackgroundServer(config, lambda c: create_app(c, fake_loader(behaviours))) as server,
            httpx.Client(base_url=server.url, timeout=30.0) as client,
        ):
            env = Env(client, registry, tmp_path, log)
            env.wait_for(lambda: client.get("/readyz").status_code == 200 and _all_loaded(client), "loading")
            yield env
    finally:
        logger.removeHandler(handler)


def _all_loaded(client: httpx.Client) -> bool:
    model = client.get("/v1/models/nuclei").json()
    wanted = {model["production_version"], model["canary_version"], model["shadow_version"]} - {None}
    return all(v["state"] == "serving" for v in model["versions"] if v["version"] in wanted)


def analysis(**limits: float) -> CanaryConfig:
    """Canary analysis over small windows: only the limit a test is about is tight, the others open."""
    settings = {
        "enabled": True,
        "window_requests": 50,
        "min_requests": 6,
        "max_error_rate_increase": 1.0,
        "max_p95_ratio": 1000.0,
        "min_agreement": 0.0,
    }
    return CanaryConfig(**{**settings, **limits})


def assert_rolled_back(env: Env, reason: str) -> dict:
    """The canary v2 is gone and production is v1 still; the decision is in /v1/models, the metric, the
    log and `instaseg models list`. Returns the stored decision."""
    deployment = env.registry.deployment("nuclei")
    assert (deployment.production, deployment.canary, deployment.history) == (1, None, (1,))
    assert env.metric("instaseg_canary_rollbacks_total", model="nuclei", version="2", reason=reason) == 1
    decision = env.model()["versions"][1]["canary_decision"]
    assert decision["production_version"] == 1
    assert (decision["action"], decision["reason"]) == ("rolled_back", reason)
    warnings = [r.getMessage() for r in env.log if r.levelno == logging.WARNING]
    assert any(f"canary nuclei v2 rolled back automatically ({reason})" in m for m in warnings)
    listed = env.models_list()
    assert "canary nuclei v2 (" in listed and f"rolled back automatically ({reason})" in listed
    assert json.loads(env.models_list("--json"))[0]["canary_decisions"]["2"]["reason"] == reason
    for seed in range(5):  # production only from now on
        assert env.predict(seed).json()["model"] == {"name": "nuclei", "version": 1, "role": "production"}
    return decision


def test_a_canary_that_errors_on_some_inputs_is_rolled_back(tmp_path: Path) -> None:
    behaviours = {1: Behaviour(), 2: Behaviour(fail_odd_width=True)}
    with serving(tmp_path, behaviours, canary=analysis(max_error_rate_increase=0.2)) as env:
        env.until(lambda: env.model()["canary_version"] is None, "the rollback")
        decision = assert_rolled_back(env, "error_rate")
        assert decision["canary"]["error_rate"] > 0.2 and decision["production"]["error_rate"] == 0.0
        assert decision["canary"]["requests"] >= 6 and decision["production"]["requests"] >= 6
        assert (
            env.metric("instaseg_canary_rollbacks_total", model="nuclei", version="2", reason="latency") == 0
        )


def test_a_slow_canary_is_rolled_back_for_latency(tmp_path: Path) -> None:
    behaviours = {1: Behaviour(), 2: Behaviour(sleep_s=0.25)}
    with serving(tmp_path, behaviours, canary=analysis(max_p95_ratio=3.0)) as env:
        env.until(lambda: env.model()["canary_version"] is None, "the rollback")
        decision = assert_rolled_back(env, "latency")
        assert decision["canary"]["latency_p95_ms"] >= 250 > 3 * decision["production"]["latency_p95_ms"]
        assert decision["canary"]["errors"] == 0


def test_a_shadow_whose_masks_disagree_is_measured_logged_and_rolled_back(tmp_path: Path) -> None:
    """v2 is a canary with no live traffic (share 0): it only gets the shadow copies of every request."""
    behaviours = {1: Behaviour(), 2: Behaviour(squares=DISAGREEING + ((20, 20),))}
    samples = tmp_path / "samples"
    with serving(
        tmp_path,
        behaviours,
        canary_share=0.0,
        canary=analysis(min_agreement=0.5),
        shadow=ShadowConfig(share=1.0),
        sampling=SamplingConfig(share=1.0, folder=str(samples)),
    ) as env:
        assert env.model()["shadow_version"] == 2
        for seed in range(3):  # the shadow's answers are never returned: production's squares only
            body = env.predict(seed).json()
            assert body["model"] == {"name": "nuclei", "version": 1, "role": "production"}
            assert [i["box"] for i in body["instances"]] == [[2, 2, 10, 10], [12, 12, 20, 20]]
        env.until(lambda: env.model()["canary_version"] is None, "the rollback")
        decision = assert_rolled_back(env, "agreement")
        assert decision["canary"]["agreement"] == 0.0 and decision["canary"]["agreements"] >= 6
        assert decision["canary"]["shadow_requests"] == decision["canary"]["requests"]
        compared = env.metric("instaseg_shadow_requests_total", model="nuclei", version="2")
        assert compared >= 6
        assert env.metric("instaseg_shadow_agreement_sum", model="nuclei", version="2") == 0.0
        assert env.metric("instaseg_shadow_agreement_count", model="nuclei", version="2") == compared
        assert env.metric("instaseg_shadow_count_difference_sum", model="nuclei", version="2") == compared
        assert env.metric("instaseg_model_seconds_count", model="nuclei", version="2") >= compared
    records = [
        json.loads(line)
        for segment in sorted(samples.glob("predictions-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]
    shadowed = [r for r in records if r["model"]["role"] == "shadow"]
    assert len(shadowed) >= compared  # comparisons finishing after the metric was read are logged too
    record = shadowed[0]
    assert record["model"] == {"name": "nuclei", "version": 2, "role": "shadow"}
    assert record["production"] == {"name": "nuclei", "version": 1}
    assert record["shadow"]["agreement"] == 0.0 and record["shadow"]["count_difference"] == 1
    assert len(record["shadow"]["instances"]) == 3 and len(record["shadow"]["production_instances"]) == 2
    assert record["shadow"]["shadow_ms"] > 0 and record["shadow"]["production_ms"] > 0
    produced = {r["input_sha256"] for r in records if r["model"]["role"] == "production"}
    assert record["input_sha256"] in produced  # the same image production answered


def test_a_failing_or_busy_shadow_never_reaches_the_client(tmp_path: Path) -> None:
    """A fixed shadow version (not the canary; no analysis): its failures are counted, never returned; with
    one call pending at most, concurrent requests beyond it are skipped and counted."""
    behaviours = {1: Behaviour(), 2: Behaviour(fail_odd_width=True, sleep_s=0.3)}
    shadow = ShadowConfig(share=1.0, versions={"nuclei": 2}, max_pending=1)
    with serving(tmp_path, behaviours, canary_share=None, shadow=shadow) as env:
        model = env.model()
        assert (model["shadow_version"], model["canary_version"]) == (2, None)
        assert env.metric("instaseg_model_loaded", model="nuclei", version="2", role="shadow") == 1
        responses: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda i=i: responses.append(env.predict(i, SIZE - i % 2)))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in responses] == [200] * 8
        assert {r.json()["model"]["version"] for r in responses} == {1}
        labels = {"model": "nuclei", "version": "2"}

        def failed() -> float:
            return env.metric("instaseg_errors_total", kind="shadow_error", **labels)

        def accounted() -> float:
            compared = env.metric("instaseg_shadow_requests_total", **labels)
            return compared + failed() + env.metric("instaseg_shadow_skipped_total", **labels)

        env.wait_for(lambda: accounted() == 8, "every image shadowed, failed or skipped")
        assert env.metric("instaseg_shadow_skipped_total", **labels) >= 1
        before = failed()
        assert env.predict(100, SIZE - 1).status_code == 200  # alone: an odd width, which the shadow fails on
        env.wait_for(lambda: failed() == before + 1, "the shadow's failure to be counted")
        assert env.model()["versions"][1]["live"]["errors"] >= 1
        assert (
            env.metric("instaseg_canary_rollbacks_total", model="nuclei", version="2", reason="error_rate")
            == 0
        )


@pytest.mark.parametrize("auto_promote_after", [12, 0])
def test_a_healthy_canary_is_promoted_after_n_requests_only_when_configured(
    tmp_path: Path, auto_promote_after: int
) -> None:
    behaviours = {1: Behaviour(), 2: Behaviour()}
    limits = analysis(max_error_rate_increase=0.0, max_p95_ratio=50.0, auto_promote_after=auto_promote_after)
    with serving(tmp_path, behaviours, canary=limits) as env:
        if auto_promote_after:
            env.until(lambda: env.model()["production_version"] == 2, "the promotion")
            deployment = env.registry.deployment("nuclei")
            assert (deployment.production, deployment.canary, deployment.history) == (2, None, (1, 2))
            decision = env.model()["versions"][1]["canary_decision"]
            assert (decision["action"], decision["reason"]) == ("promoted", "healthy")
            assert decision["canary"]["requests"] >= auto_promote_after
            assert env.metric("instaseg_canary_promotions_total", model="nuclei", version="2") == 1
            assert "promoted automatically (healthy)" in env.models_list()
        else:
            env.until(lambda: env.model()["versions"][1]["live"]["requests"] >= 30, "30 canary requests")
            time.sleep(0.3)  # the analysis runs in its own thread: give it time to (wrongly) act
            deployment = env.registry.deployment("nuclei")
            assert (deployment.production, deployment.canary) == (1, 2)
            assert env.model()["versions"][1]["canary_decision"] is None
            assert env.metric("instaseg_canary_promotions_total", model="nuclei", version="2") == 0


def test_automatic_promotion_goes_through_the_golden_set_gate(tmp_path: Path) -> None:
    """The golden set is v1's own predictions; the real v2 checkpoint (other weights) regresses on it, so the
    healthy-looking canary is not promoted and the refusal is stored; the canary keeps its share."""
    first = tiny_checkpoint(tmp_path / "v1.pt", seed=0)
    second = tiny_checkpoint(tmp_path / "v2.pt", seed=1)
    gt = golden_from_predictions(first, tmp_path / "golden", count=1)
    behaviours = {1: Behaviour(), 2: Behaviour()}
    limits = analysis(max_p95_ratio=50.0, auto_promote_after=8)
    with serving(tmp_path, behaviours, canary=limits, checkpoints=[first, second]) as env:
        define_golden_set(env.registry, "nuclei", gt, tmp_path / "golden")
        # Requests go on while the gate evaluates (seconds): the analysis is triggered by canary outcomes.
        env.until(
            lambda: env.model()["versions"][1]["canary_decision"] is not None,
            "the gate's decision",
            requests=600,
            pause_s=0.1,
        )
        decision = env.model()["versions"][1]["canary_decision"]
        assert (decision["action"], decision["reason"]) == ("promotion_refused", "quality_gate")
        assert "REFUSED (regression)" in decision["message"]
        assert env.model()["versions"][1]["quality_gate"]["passed"] is False
        deployment = env.registry.deployment("nuclei")
        assert (deployment.production, deployment.canary) == (1, 2)
        assert env.metric("instaseg_canary_promotions_total", model="nuclei", version="2") == 0
        assert "promotion refused automatically (quality_gate)" in env.models_list()


def squares(*corners: tuple[int, int], labels: tuple[int, ...] | None = None) -> Instances:
    """8 x 8 squares at `corners` in a SIZE x SIZE image, category 1 unless `labels` says otherwise."""
    instances = FakePredictor(Behaviour(squares=corners))._squares(SIZE, SIZE)
    if labels is not None:
        instances = Instances(
            instances.image_size, instances.boxes, torch.tensor(labels), instances.scores, instances.masks
        )
    return instances


def test_mask_agreement_matches_one_to_one() -> None:
    assert mask_agreement(squares(*SQUARES), squares(*SQUARES)) == 1.0
    assert mask_agreement(squares(), squares()) == 1.0  # both found nothing: they agree
    assert mask_agreement(squares(*SQUARES), squares()) == 0.0
    assert mask_agreement(squares(*SQUARES), squares(*DISAGREEING)) == 0.0
    # One of two found, the other missed: (1 + 0) / 2; an extra instance counts as unmatched too.
    assert mask_agreement(squares(*SQUARES), squares(SQUARES[0])) == 0.5
    assert mask_agreement(squares(SQUARES[0]), squares(*SQUARES)) == 0.5
    # Shifted by 4 columns: IoU 32 / 96 each.
    assert mask_agreement(squares((2, 2)), squares((2, 6))) == pytest.approx(1 / 3)
    # Columns 0 and 4 against 3 and 7 (IoU of 8-wide squares d columns apart: (8 - d) / (8 + d)). Greedy
    # matching would take the best pair first, 4-3 (7/9), and be left with 0-7 (1/15): 0.84 in all; the
    # Hungarian algorithm finds 0-3 and 4-7 (5/11 each): 0.91.
    assert mask_agreement(squares((2, 0), (2, 4)), squares((2, 3), (2, 7))) == pytest.approx(5 / 11)
    assert mask_agreement(squares(*SQUARES), squares(*SQUARES, labels=(2, 2))) == 0.0  # other category


def window(requests: int, errors: int = 0, p95_ms: float = 10.0, agreements: int = 0, agreement=None):
    """A `RollingSummary.summary()` with the numbers `judge` reads."""
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p95_ms": p95_ms,
        "agreements": agreements,
        "agreement": agreement,
    }


def test_judge_names_the_first_limit_broken() -> None:
    limits = CanaryConfig(
        enabled=True, min_requests=10, max_error_rate_increase=0.05, max_p95_ratio=2.0, min_agreement=0.8
    )
    production = window(100, errors=1)
    too_few = judge(window(9, errors=9), production, limits)
    assert (too_few.judged, too_few.breach) == (False, None) and "need 10 each" in too_few.message
    assert judge(window(20, errors=2), production, limits).breach == "error_rate"  # 0.10 - 0.01 > 0.05
    assert judge(window(20, errors=1), production, limits).breach is None  # 0.05 - 0.01 <= 0.05
    slow = judge(window(20, p95_ms=25.0), production, limits)
    assert slow.breach == "latency" and "p95 latency 25.0 ms vs production 10.0 ms" in slow.message
    assert judge(window(20, errors=5, p95_ms=25.0), production, limits).breach == "error_rate"  # first
    assert judge(window(20, agreements=9, agreement=0.1), production, limits).breach is None  # too few
    assert judge(window(20, agreements=10, agreement=0.79), production, limits).breach == "agreement"
    healthy = judge(window(20, agreements=10, agreement=0.9), production, limits)
    assert (healthy.judged, healthy.breach) == (True, None) and "agreement 0.900" in healthy.message


class Windowed:
    """A loaded version for `DeploymentManager` with only what the analysis reads: its window."""

    def __init__(self, entry: ModelVersion) -> None:
        self.name, self.version = entry.name, entry.version
        self.summary = RollingSummary(50)

    def close(self, timeout_s: float | None = None) -> None:
        """Nothing to unload."""


class FlakyRegistry(ModelRegistry):
    """A registry whose first automatic rollback fails as a database outage would."""

    failures = 1

    def rollback_canary(self, name: str, version: int, decision: dict) -> bool:
        if self.failures:
            self.failures -= 1
            raise RegistryUnavailable("cannot reach the model registry database (injected)")
        return super().rollback_canary(name, version, decision)


def test_a_failed_rollback_leaves_the_deployment_and_is_retried(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"weights")
    registry = FlakyRegistry(tmp_path / "registry")
    for _ in range(2):
        registry.register("nuclei", checkpoint, CLASSES, {})
    registry.set_canary("nuclei", 2, 0.5)
    metrics = ServingMetrics()
    manager = DeploymentManager(registry, Windowed, metrics)
    manager.sync()
    analyst = CanaryAnalyst(analysis(max_error_rate_increase=0.1), registry, manager, metrics)
    active = manager.active()["nuclei"]
    for _ in range(6):
        active.production.summary.add(0.01, True)
        active.canary.summary.add(0.01, False)
    assert analyst.check("nuclei") is None  # the registry failed: nothing changed, counted
    assert registry.deployment("nuclei").canary == 2
    payload = metrics.render()[0]
    assert b'instaseg_errors_total{kind="registry",model="nuclei",version="2"} 1.0' in payload
    decision = analyst.check("nuclei")  # the next outcome's check tries again
    assert (decision.action, decision.reason, decision.production_version) == ("rolled_back", "error_rate", 1)
    assert registry.deployment("nuclei").canary is None and manager.active()["nuclei"].canary is None
    assert analyst.check("nuclei") is None  # nothing left to judge
    analyst.close()
