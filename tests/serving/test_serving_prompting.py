"""POST /v1/embeddings and /v1/segment on a loopback server: the cache (hits, eviction, metrics), prompts
against an id, an uploaded image and a multipart body, masks equal to the library's, and every bad input."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from instaseg.models import build, save_weights
from instaseg.models.sam import ViTConfig, sam_vit
from instaseg.models.sam.predictor import SamPredictor
from instaseg.serving.app import create_app
from instaseg.serving.auth import add_api_key
from instaseg.serving.config import EMBEDDING_BYTES, AuthConfig, PromptableConfig, ServingConfig
from instaseg.serving.registration import register_model
from instaseg.serving.server import BackgroundServer
from instaseg.structures.masks import decode_rle

# A one-block windowed ViT SAM: the real 1024-pixel encoder input at a fraction of MobileSAM's cost.
TINY_SAM = ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=())
TINY_DETECTOR = {"num_classes": 2, "min_size": 64, "max_size": 64, "box_detections_per_img": 3}


def png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Env:
    client: httpx.Client
    key: str
    sam: torch.nn.Module

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.post(path, headers={"X-API-Key": self.key}, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


def _registry(tmp: Path) -> Path:
    torch.manual_seed(0)
    checkpoint = tmp / "detector.pt"
    save_weights(build("maskrcnn_resnet18_fpn", **TINY_DETECTOR), checkpoint)
    registry = tmp / "registry"
    register_model(registry, "nuclei", checkpoint, class_names=["nucleus"])
    return registry


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("prompting")
    torch.manual_seed(0)
    sam = sam_vit(TINY_SAM)
    checkpoint = tmp / "sam_tiny.pth"
    torch.save(sam.state_dict(), checkpoint)  # the official key layout
    keys = tmp / "keys.json"
    key = add_api_key(keys, "tester", requests_per_minute=1_000_000)
    config = ServingConfig(
        registry=str(_registry(tmp)),
        port=0,
        torch_threads=1,
        auth=AuthConfig(enabled=True, keys_file=str(keys)),
        promptable=PromptableConfig(checkpoint=str(checkpoint), cache_bytes=2 * EMBEDDING_BYTES),
    )
    with BackgroundServer(config, create_app) as server:
        client = httpx.Client(base_url=server.url, timeout=120.0)
        yield Env(client, key, sam)
        client.close()


def _library_masks(sam: torch.nn.Module, image: bytes, **prompts: object) -> np.ndarray:
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(Image.open(io.BytesIO(image)).convert("RGB")))
    return predictor.predict(**prompts).masks.bitmaps().numpy()


def test_embedding_is_cached_by_the_uploaded_bytes(env: Env) -> None:
    image = png(40, 60, seed=1)
    misses = env.metric("instaseg_embedding_cache_lookups_total", result="miss")
    first = env.post("/v1/embeddings", files={"image": ("a.png", image, "image/png")})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["embedding_id"] == hashlib.sha256(image).hexdigest() and body["cached"] is False
    assert body["image_size"] == {"height": 40, "width": 60} and body["model"]["arch"] == "vit_custom"
    assert body["timing"]["encode_ms"] > 0
    again = env.post("/v1/embeddings", json={"image": {"image_base64": base64.b64encode(image).decode()}})
    assert again.json()["cached"] is True and again.json()["timing"]["encode_ms"] == 0
    assert env.metric("instaseg_embedding_cache_lookups_total", result="miss") == misses + 1
    assert env.metric("instaseg_embedding_cache_bytes") >= EMBEDDING_BYTES


def test_segment_against_an_id_matches_the_library(env: Env) -> None:
    image = png(40, 60, seed=1)
    embedding_id = env.post("/v1/embeddings", files={"image": ("a.png", image, "image/png")}).json()
    boxes = [[2, 3, 30, 20], [25, 10, 58, 38]]
    answer = env.post(
        "/v1/segment",
        json={"embedding_id": embedding_id["embedding_id"], "boxes": boxes, "multimask": False},
    )
    assert answer.status_code == 200, answer.text
    instances = answer.json()["instances"]
    assert [item["prompt_index"] for item in instances] == [0, 1]
    expected = _library_masks(env.sam, image, boxes=boxes, multimask=False)
    served = decode_rle([{"size": i["mask"]["size"], "counts": i["mask"]["counts"]} for i in instances])
    assert np.array_equal(served.astype(bool), expected)
    assert all(0.0 <= item["stability_score"] <= 1.0 for item in instances)


def test_segment_with_an_image_json_or_multipart(env: Env) -> None:
    image = png(32, 32, seed=2)
    request = {"points": [[10, 12]], "labels": [1]}
    sent = {"image": {"image_base64": base64.b64encode(image).decode()}, **request}
    as_json = env.post("/v1/segment", json=sent)
    assert as_json.status_code == 200, as_json.text
    assert len(as_json.json()["instances"]) == 3 and as_json.json()["cached"] is False
    multipart = env.post(
        "/v1/segment",
        files={"image": ("b.png", image, "image/png")},
        data={"prompts": json.dumps({**request, "mask_format": "polygon"})},
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["cached"] is True
    assert multipart.json()["instances"][0]["mask"]["format"] == "polygon"


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"embedding_id": "0" * 64, "boxes": [[1, 1, 5, 5]]}, 404, "unknown_embedding"),
        ({"boxes": [[1, 1, 5, 5]]}, 400, "invalid_request"),  # neither an id nor an image
        ({"image": {"image_base64": "aGVsbG8="}, "points": [[1, 1]], "labels": [1]}, 415, "not_an_image"),
        ({"points": [[500, 5]], "labels": [1]}, 400, "bad_prompt"),  # outside the 40 x 60 image
        ({"points": [[5, 5]], "labels": [2]}, 400, "bad_prompt"),
        ({"boxes": [[30, 5, 10, 20]]}, 400, "bad_prompt"),  # x2 < x1
        ({}, 400, "bad_prompt"),  # no prompt at all
    ],
    ids=["unknown-id", "no-image", "not-an-image", "outside", "label", "box", "empty"],
)
def test_bad_requests_name_the_problem(env: Env, body: dict, status: int, kind: str) -> None:
    image = png(40, 60, seed=1)
    if "image" not in body and "embedding_id" not in body and kind == "bad_prompt":
        body = {
            **body,
            "embedding_id": env.post("/v1/embeddings", files={"image": ("a", image)}).json()["embedding_id"],
        }
    answer = env.post("/v1/segment", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["kind"] == kind


def test_the_cache_evicts_the_least_recently_used_embedding(env: Env) -> None:
    evicted = env.metric("instaseg_embedding_cache_evictions_total")
    ids = [
        env.post("/v1/embeddings", files={"image": ("x.png", png(16, 16, seed=10 + i), "image/png")}).json()[
            "embedding_id"
        ]
        for i in range(3)
    ]
    assert env.metric("instaseg_embedding_cache_evictions_total") >= evicted + 1
    assert env.post("/v1/segment", json={"embedding_id": ids[0], "boxes": [[1, 1, 8, 8]]}).status_code == 404
    assert env.post("/v1/segment", json={"embedding_id": ids[2], "boxes": [[1, 1, 8, 8]]}).status_code == 200


def test_routes_need_a_key(env: Env) -> None:
    assert env.client.post("/v1/embeddings", files={"image": ("a.png", png(8, 8, 0))}).status_code == 401


def test_with_the_routes_switched_off_they_say_so(tmp_path: Path) -> None:
    config = ServingConfig(
        registry=str(_registry(tmp_path)), torch_threads=1, promptable=PromptableConfig(enabled=False)
    )
    with TestClient(create_app(config)) as client:
        answer = client.post("/v1/segment", json={"embedding_id": "x", "boxes": [[1, 1, 2, 2]]})
    assert answer.status_code == 404 and answer.json()["error"]["kind"] == "no_promptable_model"


@pytest.mark.slow
def test_an_onnx_export_serves_the_same_masks(env: Env, tmp_path: Path) -> None:
    from instaseg.export.sam_onnx import export_sam

    export_sam(env.sam, tmp_path / "sam.onnx")
    config = ServingConfig(
        registry=str(_registry(tmp_path)),
        torch_threads=1,
        promptable=PromptableConfig(checkpoint=str(tmp_path / "sam.onnx")),
    )
    image = png(40, 60, seed=1)
    request = {"image": {"image_base64": base64.b64encode(image).decode()}, "boxes": [[2, 3, 30, 20]]}
    with TestClient(create_app(config)) as client:
        answer = client.post("/v1/segment", json={**request, "multimask": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"checkpoint": "sam.onnx", "arch": "vit_custom"}
    instances = answer.json()["instances"]
    served = decode_rle([{"size": i["mask"]["size"], "counts": i["mask"]["counts"]} for i in instances])
    expected = _library_masks(env.sam, image, boxes=[[2, 3, 30, 20]], multimask=False)
    assert (served.astype(bool) == expected).mean() > 0.999


def test_without_a_checkpoint_the_bundled_promptable_model_answers(tmp_path: Path) -> None:
    from instaseg.models import load_promptable

    config = ServingConfig(registry=str(_registry(tmp_path)), torch_threads=1)  # no promptable section
    image = png(48, 64, seed=2)
    request = {"image": {"image_base64": base64.b64encode(image).decode()}, "boxes": [[4, 6, 30, 28]]}
    with TestClient(create_app(config)) as client:
        answer = client.post("/v1/segment", json={**request, "multimask": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"checkpoint": "nuclei_promptable", "arch": "lite0_fpn"}
    instances = answer.json()["instances"]
    served = decode_rle([{"size": i["mask"]["size"], "counts": i["mask"]["counts"]} for i in instances])
    expected = _library_masks(load_promptable(), image, boxes=[[4, 6, 30, 28]], multimask=False)
    assert served.shape == expected.shape and (served.astype(bool) == expected).mean() > 0.999
