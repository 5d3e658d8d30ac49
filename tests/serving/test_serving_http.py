"""The real service on a loopback port, spoken to over HTTP: every route, every error code, the prediction
contents against the library, metrics against the requests sent, sampling, drift, canary, promote, rollback.

One server for the module (uvicorn in a thread, tiny random-weight Mask R-CNN checkpoints). The tests run in
file order; the canary / promote / rollback test is last because it changes what serves.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from instaseg.cli import models as models_cli
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.inference.tiling import TilingOptions
from instaseg.models import build, save_weights
from instaseg.serving.app import create_app
from instaseg.serving.auth import add_api_key
from instaseg.serving.config import (
    AuthConfig,
    BatchingConfig,
    DriftConfig,
    LimitsConfig,
    SamplingConfig,
    ServingConfig,
)
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.registration import register_model
from instaseg.serving.registry import ModelVersion
from instaseg.serving.served import ImageJob, ServedModel
from instaseg.serving.server import BackgroundServer
from instaseg.structures.masks import decode_rle, polygons_to_rle

# A tiny Mask R-CNN: 64-pixel inputs and 3 detections per image keep a request around 0.1 s on a CPU core.
TINY = {
    "num_classes": 2,
    "min_size": 64,
    "max_size": 64,
    "box_detections_per_img": 3,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 20,
    "fpn_channels": 64,
}
FAIL_WIDTH = 13  # images this wide make the served model raise (see FlakyModel)


def tiny_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_weights(build("maskrcnn_resnet18_fpn", **TINY), path)
    return path


def png(height: int, width: int, low: int = 0, high: int = 256, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(low, high, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class FlakyModel(ServedModel):
    """The real model, except that it fails on images FAIL_WIDTH pixels wide (a model error to survive)."""

    def _run_batch(self, jobs: list[ImageJob]) -> list:
        if any(int(job.tensor.shape[-1]) == FAIL_WIDTH for job in jobs):
            raise RuntimeError("injected model failure")
        return super()._run_batch(jobs)


def load_model(entry: ModelVersion, config: ServingConfig, metrics: ServingMetrics) -> ServedModel:
    """`load_served_model`, with `FlakyModel` in place of `ServedModel`."""
    served = FlakyModel.load(
        entry, config, lambda n, s: metrics.observe_batch(entry.name, str(entry.version), n, s)
    )
    served.warm_up()
    return served


@dataclass
class Env:
    url: str
    client: httpx.Client
    key: str
    limited_key: str
    registry: Path
    root: Path
    samples: Path
    checkpoint: Path
    log: list[logging.LogRecord]

    def post(self, path: str, key: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        headers.update(kwargs.pop("headers", {}))
        return self.client.post(path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.get(path, headers={"X-API-Key": self.key}, **kwargs)

    def upload(self, data: bytes, query: str = "", name: str = "cells.png") -> httpx.Response:
        return self.post(f"/v1/predict{query}", files={"image": (name, data, "image/png")})

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = self.client.get("/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def models_command(registry: Path, *args: str) -> None:
    """Run `instaseg models ...` as the CLI does (parse, then call the command's function)."""
    parser = argparse.ArgumentParser(prog="instaseg")
    models_cli.add_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["models", *args, "--registry", str(registry)])
    assert parsed.func(parsed) == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("serving")
    reference = tmp / "reference"
    reference.mkdir()
    for i in range(4):  # dark validation images: the brighter test images below must register as drift
        (reference / f"ref{i}.png").write_bytes(png(48, 64, 0, 60, seed=100 + i))
    registry = tmp / "registry"
    first = tiny_checkpoint(tmp / "v1.pt", seed=0)
    register_model(registry, "nuclei", first, [reference], class_names=["nucleus"], description="first")
    register_model(registry, "nuclei", tiny_checkpoint(tmp / "v2.pt", seed=1), class_names=["nucleus"])
    root = tmp / "images"
    (root / "cells").mkdir(parents=True)
    (root / "cells" / "a.png").write_bytes(png(40, 50, seed=7))
    (tmp / "secret.png").write_bytes(png(10, 10))
    keys = tmp / "keys.json"
    key = add_api_key(keys, "tester", requests_per_minute=1_000_000)
    limited = add_api_key(keys, "limited", requests_per_minute=1)
    config = ServingConfig(
        registry=str(registry),
        port=0,
        default_model="nuclei",
        path_root=str(root),
        request_timeout_s=60.0,
        registry_poll_s=0.1,
        tile_size=48,
        tile_overlap=16,
        torch_threads=1,
        batching=BatchingConfig(window_ms=20.0, max_batch_size=8),
        limits=LimitsConfig(max_body_bytes=1_000_000, max_image_pixels=300_000, max_batch_images=4),
        auth=AuthConfig(enabled=True, keys_file=str(keys), requests_per_minute=600, burst=2),
        sampling=SamplingConfig(share=1.0, folder=str(tmp / "samples"), include_images=True),
        drift=DriftConfig(window=50, min_samples=3, every=1, psi_threshold=0.25),
    )
    log: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = log.append  # every record of the serving package, from the server's threads too
    logging.getLogger("instaseg.serving").addHandler(handler)
    logging.getLogger("instaseg.serving").setLevel(logging.INFO)
    try:
        with BackgroundServer(config, lambda c: create_app(c, load_model)) as server:
            client = httpx.Client(base_url=server.url, timeout=60.0)
            wait_for(lambda: client.get("/readyz").status_code == 200, 120, "the models to load")
            yield Env(server.url, client, key, limited, registry, root, tmp / "samples", first, log)
            client.close()
    finally:
        logging.getLogger("instaseg.serving").removeHandler(handler)


def test_health_readiness_and_openapi(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}  # no key needed for probes
    ready = env.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert [(m["name"], m["version"], m["role"]) for m in ready.json()["models"]] == [
        ("nuclei", 1, "production")
    ]
    schema = env.client.get("/openapi.json").json()
    assert {
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/models",
        "/v1/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "image_base64" in schema["components"]["schemas"]["ImageInput"]["properties"]
    assert {"401", "413", "415", "429", "503"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])
    # The query string is PredictOptions plus the model: one definition for both ways of sending options.
    query = {p["name"] for p in schema["paths"]["/v1/predict"]["post"]["parameters"] if p["in"] == "query"}
    assert query == {"model", "score_threshold", "max_detections", "mask_format", "tiling"}
    instance = schema["components"]["schemas"]["InstanceOut"]["properties"]
    assert instance["class_id"]["deprecated"] and "deprecated" not in instance["category_id"]


def test_predict_upload_matches_the_library(env: Env) -> None:
    data = png(48, 64, seed=1)
    response = env.upload(data, "?score_threshold=0.3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "nuclei", "version": 1, "role": "production"}
    assert response.headers["x-instaseg-version"] == "1" and response.headers["x-instaseg-model"] == "nuclei"
    assert body["image_size"] == {"height": 48, "width": 64} and body["name"] == "cells.png"
    assert body["timing"]["batch_size"] == 1 and body["timing"]["model_ms"] > 0
    assert body["timing"]["total_ms"] >= body["timing"]["model_ms"]

    categories = [{"id": 1, "name": "nucleus"}]
    library = Predictor(
        env.checkpoint,
        tiling=None,
        postprocess=PostprocessOptions(score_threshold=0.3),
        categories=categories,
    ).predict(np.asarray(Image.open(io.BytesIO(data))))
    instances = body["instances"]
    assert len(instances) == len(library) > 0
    assert [i["score"] for i in instances] == pytest.approx(library.scores.tolist(), abs=1e-5)
    assert np.allclose([i["box"] for i in instances], library.boxes.numpy(), atol=1e-3)
    masks = decode_rle([{"size": i["mask"]["size"], "counts": i["mask"]["counts"]} for i in instances])
    assert np.array_equal(masks, library.masks.bitmaps().numpy())
    assert [i["area"] for i in instances] == masks.sum(axis=(1, 2)).tolist()
    assert all(i["category_id"] == 1 and i["category_name"] == "nucleus" for i in instances)
    # The old names, kept for one release (deprecated in the OpenAPI schema).
    assert all((i["class_id"], i["class_name"]) == (1, "nucleus") for i in instances)
    assert body["thresholds"] == {"score_threshold": 0.3, "mask_threshold": 0.5}
    assert [i["score"] for i in instances] == sorted((i["score"] for i in instances), reverse=True)


def test_polygons_threshold_and_max_detections(env: Env) -> None:
    data = png(48, 64, seed=2)
    everything = env.upload(data, "?score_threshold=0").json()["instances"]
    assert len(everything) == 3  # the model keeps 3 detections per image
    polygons = env.upload(data, "?score_threshold=0&mask_format=polygon").json()["instances"]
    for rle_instance, polygon_instance in zip(everything, polygons, strict=True):
        assert polygon_instance["mask"]["format"] == "polygon"
        rasterised = decode_rle([polygons_to_rle(polygon_instance["mask"]["polygons"], 48, 64)])[0]
        rle_mask = decode_rle([{"size": [48, 64], "counts": rle_instance["mask"]["counts"]}])[0]
        assert np.array_equal(rasterised, rle_mask | rasterised) and (rasterised & ~rle_mask).sum() == 0
    cut = sorted(i["score"] for i in everything)[1]
    above = env.upload(data, f"?score_threshold={cut}").json()["instances"]
    assert [i["score"] for i in above] == [i["score"] for i in everything if i["score"] >= cut]
    assert len(env.upload(data, "?score_threshold=0&max_detections=1").json()["instances"]) == 1


def test_without_a_threshold_the_models_operating_point_is_used(env: Env) -> None:
    """These tiny models carry no recommended operating point, so it is score 0.05 and mask 0.5 (the bundled
    model's 0.7 / 0.6: tests/cli/test_cli_serve.py); the response says so."""
    data = png(48, 64, seed=2)
    body = env.upload(data).json()
    assert body["thresholds"] == {"score_threshold": 0.05, "mask_threshold": 0.5}
    everything = env.upload(data, "?score_threshold=0").json()["instances"]
    assert [i["score"] for i in body["instances"]] == [i["score"] for i in everything if i["score"] >= 0.05]
    given = env.post(
        "/v1/predict", json={"image": {"path": "cells/a.png"}, "options": {"score_threshold": 0.2}}
    )
    assert given.json()["thresholds"]["score_threshold"] == 0.2


def test_tiling_on_request(env: Env) -> None:
    data = png(64, 100, seed=11)
    response = env.upload(data, "?score_threshold=0&tiling=true")
    assert response.status_code == 200, response.text
    tiling = TilingOptions(tile_size=48, overlap=16, min_image_side=48)
    library = Predictor(
        env.checkpoint,
        tiling=tiling,
        postprocess=PostprocessOptions(score_threshold=0.0),
        categories=[{"id": 1, "name": "nucleus"}],
    ).predict(np.asarray(Image.open(io.BytesIO(data))))
    instances = response.json()["instances"]
    assert len(instances) == len(library) > 3  # merged from 6 tiles of up to 3 detections each
    assert [i["score"] for i in instances] == pytest.approx(library.scores.tolist(), abs=1e-5)
    masks = decode_rle([i["mask"] for i in instances])
    assert np.array_equal(masks, library.masks.bitmaps().numpy())
    untiled = env.upload(data, "?score_threshold=0").json()["instances"]
    assert len(untiled) == 3  # without tiling: one model pass, 3 detections at most


def test_json_inputs_base64_and_path(env: Env) -> None:
    data = png(40, 50, seed=7)
    encoded = base64.b64encode(data).decode()
    by_bytes = env.post(
        "/v1/predict?score_threshold=0.9",
        json={
            "image": {"image_base64": encoded, "name": "from-bytes"},
            "options": {"score_threshold": 0.0},  # the body wins over the query string
        },
    )
    assert by_bytes.status_code == 200, by_bytes.text
    by_path = env.post(
        "/v1/predict", json={"image": {"path": "cells/a.png"}, "options": {"score_threshold": 0}}
    )
    assert by_path.status_code == 200, by_path.text
    assert by_bytes.json()["name"] == "from-bytes"
    assert by_bytes.json()["input_sha256"] == by_path.json()["input_sha256"]  # the very same file
    assert (
        by_bytes.json()["instances"] == by_path.json()["instances"] and len(by_path.json()["instances"]) == 3
    )


def test_batch_route(env: Env) -> None:
    sizes = [(40, 50), (48, 64), (30, 30)]
    files = [("images", (f"{i}.png", png(h, w, seed=i), "image/png")) for i, (h, w) in enumerate(sizes)]
    response = env.post("/v1/predict/batch?score_threshold=0", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["version"] == 1
    assert [(r["image_size"]["height"], r["image_size"]["width"]) for r in body["results"]] == sizes
    assert [r["name"] for r in body["results"]] == ["0.png", "1.png", "2.png"]
    assert all(r["timing"]["batch_size"] == 3 for r in body["results"])  # one model call for the request
    as_json = env.post(
        "/v1/predict/batch",
        json={
            "images": [
                {"image_base64": base64.b64encode(png(h, w, seed=i)).decode()}
                for i, (h, w) in enumerate(sizes)
            ],
            "options": {"score_threshold": 0, "mask_format": "polygon"},
        },
    )
    assert as_json.status_code == 200, as_json.text
    for uploaded, encoded in zip(body["results"], as_json.json()["results"], strict=True):
        assert uploaded["input_sha256"] == encoded["input_sha256"]
        assert [i["score"] for i in uploaded["instances"]] == [i["score"] for i in encoded["instances"]]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1000, 1000), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="GIF")
    return buffer.getvalue()


GOOD = png(20, 20, seed=3)
ERROR_CASES = {
    "empty upload": ({"files": {"image": ("e.png", b"", "image/png")}}, 400, "empty_image"),
    "truncated": ({"files": {"image": ("t.png", GOOD[: len(GOOD) // 2], "image/png")}}, 400, "corrupt_image"),
    "not an image": ({"files": {"image": ("x.png", b"hello world", "image/png")}}, 415, "not_an_image"),
    "gif": ({"files": {"image": ("x.gif", gif(), "image/gif")}}, 415, "unsupported_format"),
    "pixel bomb": ({"files": {"image": ("b.png", bomb(), "image/png")}}, 413, "too_many_pixels"),
    "body too large": (
        {"files": {"image": ("big.png", b"\0" * 1_100_000, "image/png")}},
        413,
        "body_too_large",
    ),
    "wrong field": ({"files": {"picture": ("a.png", GOOD, "image/png")}}, 400, "missing_image"),
    "content type": (
        {"content": b"raw", "headers": {"content-type": "image/png"}},
        415,
        "unsupported_content_type",
    ),
    "bad json": ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "bad_json"),
    "both sources": (
        {"json": {"image": {"path": "cells/a.png", "image_base64": "AA=="}}},
        400,
        "invalid_request",
    ),
    "bad base64": ({"json": {"image": {"image_base64": "***"}}}, 400, "bad_base64"),
    "path escape": ({"json": {"image": {"path": "../secret.png"}}}, 400, "path_outside_root"),
    "missing path": ({"json": {"image": {"path": "cells/none.png"}}}, 400, "path_not_found"),
    "path too long": ({"json": {"image": {"path": "x" * 300}}}, 400, "bad_path"),
    "bad option": (
        {"json": {"image": {"path": "cells/a.png"}, "options": {"score_threshold": 2}}},
        400,
        "invalid_request",
    ),
    "unknown model": ({"json": {"image": {"path": "cells/a.png"}, "model": "tissue"}}, 404, "unknown_model"),
    "model failure": ({"files": {"image": ("f.png", png(20, FAIL_WIDTH), "image/png")}}, 503, "model_error"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_codes(env: Env, case: str) -> None:
    kwargs, status, kind = ERROR_CASES[case]
    response = env.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["status"], error["kind"]) == (status, kind)
    assert len(error["message"]) > 10


def test_query_validation_batch_limit_and_chunked_body(env: Env) -> None:
    response = env.upload(GOOD, "?mask_format=bitmap")
    assert response.status_code == 400 and "mask_format" in response.json()["error"]["message"]
    response = env.upload(GOOD, "?score_thresh=0.99")  # misspelt: refused, not ignored
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "query.score_thresh: Extra inputs are not permitted"
    files = [("images", (f"{i}.png", GOOD, "image/png")) for i in range(5)]
    response = env.post("/v1/predict/batch", files=files)
    assert response.status_code == 413 and response.json()["error"]["kind"] == "batch_too_large"
    chunks = (b"x" * 100_000 for _ in range(12))  # no Content-Length: counted while streaming
    response = env.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["kind"] == "body_too_large"
    assert env.client.get("/v1/nothing-here").status_code == 404


def test_api_keys_and_rate_limit(env: Env) -> None:
    assert env.client.post("/v1/predict", files={"image": ("a.png", GOOD)}).status_code == 401
    wrong = env.post("/v1/predict", key="isk_wrong", files={"image": ("a.png", GOOD)})
    assert wrong.status_code == 401 and wrong.json()["error"]["kind"] == "invalid_api_key"
    assert env.client.get("/v1/models").status_code == 401
    statuses = [
        env.post("/v1/predict", key=env.limited_key, files={"image": ("a.png", GOOD)}) for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]  # a burst of 2, then 1 per minute
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60
    assert statuses[2].json()["error"]["kind"] == "rate_limited"


def test_a_failing_model_does_not_take_the_process_down(env: Env) -> None:
    failed = env.upload(png(20, FAIL_WIDTH))
    message = failed.json()["error"]["message"]
    assert failed.status_code == 503 and "RuntimeError; details in the server log" in message
    assert "injected model failure" not in message  # the exception's text names internals: logged, not sent
    assert failed.headers["x-instaseg-version"] == "1"  # errors, too, say which version answered
    assert env.client.get("/healthz").status_code == 200
    assert env.upload(png(20, 20)).status_code == 200


def test_models_routes(env: Env) -> None:
    listed = env.get("/v1/models").json()
    assert listed["default_model"] == "nuclei"
    by_name = {m["name"]: m for m in listed["models"]}
    assert set(by_name) == {"nuclei"}
    nuclei = env.get("/v1/models/nuclei").json()
    assert nuclei == by_name["nuclei"] | {"versions": nuclei["versions"]}
    assert (nuclei["production_version"], nuclei["canary_version"]) == (1, None)
    assert nuclei["input_limits"] == {
        "max_body_bytes": 1_000_000,
        "max_image_pixels": 300_000,
        "max_batch_images": 4,
        "formats": ["PNG", "JPEG", "TIFF", "WEBP"],
    }
    first, second = nuclei["versions"]
    assert (first["version"], first["role"], first["state"]) == (1, "production", "serving")
    assert (second["version"], second["role"], second["state"]) == (2, "inactive", "not_loaded")
    assert first["categories"] == [{"id": 1, "name": "nucleus"}] and first["description"] == "first"
    assert first["classes"] == first["categories"]  # the old name, kept for one release
    assert first["has_drift_reference"] and not second["has_drift_reference"]
    assert first["architecture"]["min_size"] == 64 and first["architecture"]["num_classes"] == 2
    assert first["live"]["requests"] > 0 and second["live"] is None
    missing = env.get("/v1/models/tissue")
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "unknown_model"
    assert missing.json()["error"]["message"] == "no model named 'tissue'; registered: ['nuclei']"


def test_metrics_agree_with_the_requests_sent(env: Env) -> None:
    before = env.metrics()
    version = (("model", "nuclei"), ("version", "1"))
    sizes = [(20, 30), (40, 50), (48, 64)]
    returned = 0
    for index, (height, width) in enumerate(sizes):
        response = env.upload(png(height, width, seed=20 + index), "?score_threshold=0")
        assert response.status_code == 200
        returned += len(response.json()["instances"])
    assert env.upload(b"garbage").status_code == 415
    assert env.upload(b"\0" * 1_100_000).status_code == 413  # refused from Content-Length, nothing read
    after = env.metrics()

    def delta(name: str, labels: tuple) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = (("route", "/v1/predict"),)
    assert delta("instaseg_requests_total", (*version, *route, ("status", "200"))) == 3
    assert delta("instaseg_requests_total", (*version, *route, ("status", "415"))) == 1
    assert delta("instaseg_request_seconds_count", (*version, *route)) == 4
    assert delta("instaseg_errors_total", (("kind", "not_an_image"), *version)) == 1
    no_version = (("model", ""), ("version", ""))  # refused before a model was chosen
    assert delta("instaseg_requests_total", (*no_version, *route, ("status", "413"))) == 1
    assert delta("instaseg_errors_total", (("kind", "body_too_large"), *no_version)) == 1
    assert delta("instaseg_instances_per_image_count", version) == 3
    assert delta("instaseg_instances_per_image_sum", version) == returned
    assert delta("instaseg_instance_scores_count", version) == returned
    assert delta("instaseg_image_pixels_sum", version) == sum(h * w for h, w in sizes)
    assert delta("instaseg_queue_seconds_count", version) == 3
    assert (
        delta("instaseg_batch_size_sum", version) == 3 and delta("instaseg_model_seconds_count", version) == 3
    )
    assert (
        after[("instaseg_model_loaded", (("model", "nuclei"), ("role", "production"), ("version", "1")))] == 1
    )
    assert after[("instaseg_canary_share", (("model", "nuclei"),))] == 0.0


def test_drift_metric_and_warning(env: Env) -> None:
    for seed in range(4):  # bright images against a dark reference
        assert env.upload(png(48, 64, 180, 256, seed=40 + seed)).status_code == 200
    values = env.metrics()
    brightness = values[
        ("instaseg_drift_psi", (("feature", "brightness"), ("model", "nuclei"), ("version", "1")))
    ]
    size = values[("instaseg_drift_psi", (("feature", "size"), ("model", "nuclei"), ("version", "1")))]
    assert brightness > 0.25 and size < brightness
    warnings = [r.getMessage() for r in env.log if r.levelno == logging.WARNING]
    assert any("drift: nuclei v1 feature 'brightness' has PSI" in message for message in warnings)


def test_sampled_prediction_log(env: Env) -> None:
    data = png(30, 30, seed=99)
    response = env.upload(data, "?score_threshold=0")
    digest = response.json()["input_sha256"]
    records = [
        json.loads(line)
        for segment in sorted(env.samples.glob("predictions-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]
    mine = [r for r in records if r["input_sha256"] == digest]
    assert len(mine) == 1
    record = mine[0]
    assert record["model"] == {"name": "nuclei", "version": 1, "role": "production"}
    assert record["instances"] == response.json()["instances"] and record["options"]["score_threshold"] == 0
    assert (env.samples / record["image_file"]).read_bytes() == data
    assert {"queue_ms", "model_ms", "total_ms"} <= set(record["timing"])


def test_canary_split_then_promote_and_rollback_without_restart(env: Env) -> None:
    models_command(env.registry, "set-canary", "nuclei", "2", "--share", "0.5")
    wait_for(
        lambda: env.get("/v1/models/nuclei").json()["versions"][1]["state"] == "serving", 60, "the canary"
    )
    before = env.metrics()
    data = png(24, 24, seed=5)

    batch_sizes = []

    def one(_: int) -> tuple[int, str]:
        response = env.upload(data)
        assert response.status_code == 200, response.text
        body = response.json()["model"]
        assert response.headers["x-instaseg-version"] == str(body["version"])
        batch_sizes.append(response.json()["timing"]["batch_size"])
        return body["version"], body["role"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        served = list(pool.map(one, range(40)))
    assert max(batch_sizes) > 1  # concurrent single-image requests shared model calls
    canary = sum(1 for version, role in served if (version, role) == (2, "canary"))
    production = sum(1 for version, role in served if (version, role) == (1, "production"))
    assert canary + production == 40
    # Share 0.5 of 40: 20 expected, binomial sd 3.2 (test_serving_deployments checks the share precisely).
    assert 8 <= canary <= 32
    after = env.metrics()
    for version, count in (("1", production), ("2", canary)):
        key = (
            "instaseg_requests_total",
            (("model", "nuclei"), ("route", "/v1/predict"), ("status", "200"), ("version", version)),
        )
        assert after.get(key, 0) - before.get(key, 0) == count
    live = {v["version"]: v["live"] for v in env.get("/v1/models/nuclei").json()["versions"]}
    assert live[2]["requests"] == canary and live[2]["errors"] == 0

    models_command(env.registry, "promote", "nuclei")
    wait_for(lambda: one(0) == (2, "production"), 60, "the promotion")
    assert {one(0) for _ in range(5)} == {(2, "production")}
    assert env.get("/v1/models/nuclei").json()["versions"][0]["role"] == "inactive"

    models_command(env.registry, "rollback", "nuclei")
    wait_for(lambda: one(0) == (1, "production"), 60, "the rollback")
    assert {one(0) for _ in range(5)} == {(1, "production")}
    assert env.client.get("/readyz").status_code == 200
