"""Request timeouts (503, the process goes on) and graceful shutdown (in-flight requests finish), on a real
server whose model is slowed down on purpose for some image widths."""

from __future__ import annotations

import concurrent.futures
import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from instaseg.serving.app import create_app
from instaseg.serving.config import BatchingConfig, ServingConfig
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registration import register_model
from instaseg.serving.registry import ModelVersion
from instaseg.serving.served import ImageJob, ServedModel
from instaseg.serving.server import BackgroundServer

TIMEOUT_S = 2.0
SLOW_WIDTH, SLOW_S = 17, 3.0  # longer than the request timeout
HOLD_WIDTH, HOLD_S = 19, 0.8  # in flight long enough to shut down during it


class SlowModel(ServedModel):
    holding = threading.Event()
    slow_done = threading.Event()

    def _run_batch(self, jobs: list[ImageJob]) -> list:
        widths = {int(job.tensor.shape[-1]) for job in jobs}
        if SLOW_WIDTH in widths:
            time.sleep(SLOW_S)
            SlowModel.slow_done.set()
        if HOLD_WIDTH in widths:
            SlowModel.holding.set()
            time.sleep(HOLD_S)
        return super()._run_batch(jobs)


def load_slow(entry: ModelVersion, config: ServingConfig, metrics: ServingMetrics) -> ServedModel:
    served = SlowModel.load(entry, config)
    served.warm_up()
    return served


def png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(width).integers(0, 256, (20, width, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@pytest.fixture()
def server(tmp_path: Path, tiny_model_checkpoint: Path) -> BackgroundServer:
    register_model(tmp_path / "registry", "nuclei", tiny_model_checkpoint)
    config = ServingConfig(
        registry=str(tmp_path / "registry"),
        port=0,
        request_timeout_s=TIMEOUT_S,
        shutdown_timeout_s=10.0,
        torch_threads=1,
        batching=BatchingConfig(window_ms=5.0, max_batch_size=4),
    )
    server = BackgroundServer(config, lambda c: create_app(c, load_slow)).start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.05)
    yield server
    server.stop(timeout_s=30)


def test_timeout_then_graceful_shutdown(server: BackgroundServer) -> None:
    client = httpx.Client(base_url=server.url, timeout=30.0)
    started = time.monotonic()
    slow = client.post("/v1/predict", files={"image": ("slow.png", png(SLOW_WIDTH), "image/png")})
    waited = time.monotonic() - started
    assert slow.status_code == 503 and slow.json()["error"]["kind"] == "timeout"
    assert "within the request timeout of 2 s" in slow.json()["error"]["message"]
    assert TIMEOUT_S <= waited < SLOW_S  # answered at the deadline, not when the model finished
    assert client.get("/healthz").status_code == 200  # the process is fine meanwhile
    metrics = client.get("/metrics").text
    assert 'instaseg_errors_total{kind="timeout",model="nuclei",version="1"} 1.0' in metrics
    assert SlowModel.slow_done.wait(10)
    assert client.post("/v1/predict", files={"image": ("ok.png", png(24), "image/png")}).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            client.post, "/v1/predict", files={"image": ("hold.png", png(HOLD_WIDTH), "image/png")}
        )
        assert SlowModel.holding.wait(10)  # the request is inside the model call now
        stopper = threading.Thread(target=server.stop, kwargs={"timeout_s": 30})
        stopper.start()
        response = in_flight.result(timeout=30)
    assert response.status_code == 200, response.text  # finished, not cut off
    assert response.json()["model"]["version"] == 1
    stopper.join(30)
    assert not stopper.is_alive() and not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)
