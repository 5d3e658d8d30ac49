"""`instaseg serve` as a real process: starts, becomes ready, answers, and exits cleanly on SIGTERM; API key
creation; configuration errors reported before anything starts."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from instaseg.cli import serve
from instaseg.io.files import file_sha256
from instaseg.models.default_model import default_model_path, held_out_samples_path
from instaseg.serving import server
from instaseg.serving.auth import hash_api_key
from instaseg.serving.config import DEFAULT_MODEL_NAME, ConfigError, ServingConfig, serving_config
from instaseg.serving.registration import register_model
from instaseg.serving.registry import ModelRegistry, RegistryError
from instaseg.serving.server import BackgroundServer

REPO = Path(__file__).resolve().parents[2]
# Parses `serve ...` exactly as `instaseg` does (add_parser, then the command's func), in a fresh process.
LAUNCHER = (
    "import argparse, sys\n"
    "from instaseg.cli import serve\n"
    "parser = argparse.ArgumentParser(prog='instaseg')\n"
    "serve.add_parser(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def run_in_process(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="instaseg")
    serve.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *argv])
    return args.func(args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_model_checkpoint: Path) -> Path:
    tmp = tmp_path_factory.mktemp("serve_cli")
    register_model(tmp / "registry", "nuclei", tiny_model_checkpoint, class_names=["nucleus"])
    return tmp / "registry"


def test_serve_process_answers_and_stops_on_sigterm(registry: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-c",
        LAUNCHER,
        "serve",
        "--registry",
        str(registry),
        "--port",
        str(port),
        "--window-ms",
        "5",
        "--max-batch-size",
        "4",
    ]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited early:\n{stderr_path.read_text()}"
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        response = httpx.post(
            f"{url}/v1/predict?score_threshold=0", files={"image": ("a.png", buffer.getvalue())}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == {"name": "nuclei", "version": 1, "role": "production"}
        assert len(response.json()["instances"]) == 2
        assert "instaseg_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text
        process.send_signal(signal.SIGTERM)
        # Uvicorn re-raises the signal once its graceful shutdown is done, so the process ends "by SIGTERM"
        # (what supervisors expect); the log below shows that the shutdown itself completed.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = stderr_path.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_new_api_key_is_printed_once_and_stored_hashed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keys = tmp_path / "keys.json"
    assert (
        run_in_process("--new-api-key", "lab", "--keys-file", str(keys), "--requests-per-minute", "30") == 0
    )
    key = capsys.readouterr().out.strip()
    stored = json.loads(keys.read_text())["keys"]
    assert stored == [{"name": "lab", "sha256": hash_api_key(key), "requests_per_minute": 30.0}]
    assert key not in keys.read_text()


def test_configuration_errors_come_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no model registry at"):
        run_in_process("--registry", str(tmp_path / "nothing"), "--port", "0")
    with pytest.raises(ConfigError, match="--new-api-key needs --keys-file"):
        run_in_process("--registry", str(tmp_path), "--new-api-key", "lab")
    config = tmp_path / "serve.yaml"
    config.write_text("registry: r\nbatching: {window: 5}\n")
    with pytest.raises(ConfigError, match="'batching.window' is unknown"):
        run_in_process("--config", str(config))


@pytest.fixture
def no_arguments_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServingConfig:
    """What `instaseg serve` with no arguments would serve, with XDG_DATA_HOME in `tmp_path` (not started)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    started: list[ServingConfig] = []
    monkeypatch.setattr(server, "run_server", lambda config: started.append(config) or 0)
    assert run_in_process() == 0
    return started[0]


def test_no_arguments_serve_the_bundled_model_from_the_per_user_registry(
    no_arguments_config: ServingConfig, tmp_path: Path
) -> None:
    config = no_arguments_config
    assert config.registry_path == tmp_path / "data" / "instaseg" / "registry"
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    registry = ModelRegistry(config.registry_path, create=False)
    assert registry.names() == [DEFAULT_MODEL_NAME]
    assert registry.deployment(DEFAULT_MODEL_NAME).production == 1
    entry = registry.get(DEFAULT_MODEL_NAME, 1)
    assert entry.sha256 == file_sha256(default_model_path())
    assert entry.classes == [{"id": 1, "name": "nucleus"}]
    # Created once: a second start serves the same registry without registering the model again.
    assert serving_config().registry_path == config.registry_path
    assert [v.version for v in registry.versions(DEFAULT_MODEL_NAME)] == [1]


@pytest.mark.slow
def test_no_arguments_service_answers_with_the_bundled_model(no_arguments_config: ServingConfig) -> None:
    sample = next(held_out_samples_path().glob("*/images/*.png"))
    with (
        BackgroundServer(replace(no_arguments_config, port=0)) as running,
        httpx.Client(base_url=running.url, timeout=60) as client,
    ):
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:  # the model loads in the background
            assert time.monotonic() < deadline, "the bundled model did not load within 120 s"
            time.sleep(0.2)
        files = {"image": (sample.name, sample.read_bytes(), "image/png")}
        response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": DEFAULT_MODEL_NAME, "version": 1, "role": "production"}
    assert len(body["instances"]) > 10 and {i["category_name"] for i in body["instances"]} == {"nucleus"}
    # The model file's recommended operating point, since the request set no threshold.
    assert body["thresholds"] == {"score_threshold": 0.7, "mask_threshold": 0.6}
    assert min(i["score"] for i in body["instances"]) >= 0.7
