"""Serving config: YAML sections, defaults, command-line overrides, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from instaseg.serving import config as serving_config_module
from instaseg.serving.config import ConfigError, ServingConfig, load_serving_config, serving_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
registry: /srv/registry
port: 9000
path_root: /srv/images
batching: {window_ms: 5, max_batch_size: 16}
limits: {max_image_pixels: 1000000, allowed_formats: [PNG, JPEG]}
auth: {enabled: true, keys_file: /srv/keys.json, requests_per_minute: 30}
sampling: {share: 0.05, folder: /srv/samples}
drift: {window: 100, min_samples: 20, psi_threshold: 0.3}
""",
    )
    config = load_serving_config(path)
    assert config.registry_path == Path("/srv/registry") and config.port == 9000
    assert config.batching.window_ms == 5.0 and config.batching.max_batch_size == 16
    assert config.limits.allowed_formats == ("PNG", "JPEG") and config.limits.max_batch_images == 16
    assert config.auth.enabled and config.auth.requests_per_minute == 30.0
    assert config.sampling.share == 0.05 and config.drift.psi_threshold == 0.3
    assert config.host == "127.0.0.1"  # default: loopback only unless asked


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: 80", "config key 'registry' is required"),
        ("registry: r\nbatching: {window: 5}", "config key 'batching.window' is unknown"),
        ("registry: r\nport: eighty", "config key 'port' must be an integer"),
        ("registry: r\nbatching: {max_batch_size: 0}", "batching.max_batch_size must be >= 1"),
        ("registry: r\nsampling: {share: 0.5}", "sampling.folder is required"),
        ("registry: r\nauth: {enabled: true}", "auth.keys_file is required"),
        (
            "registry: r\nlimits: {allowed_formats: [BMP]}",
            "limits.allowed_formats must be a non-empty subset",
        ),
        ("registry: [unclosed", "not valid YAML"),
        ("registry: r\nbackend: tensorrt", "backend must be one of torch, onnx"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        load_serving_config(path)
    assert str(path) in str(error.value)


def test_command_line_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "registry: /a\nport: 9000\nbatching: {window_ms: 20, max_batch_size: 4}\n")
    config = serving_config(path, registry="/b", port=None, window_ms=2.5, max_batch_size=None)
    assert config.registry == "/b" and config.port == 9000
    assert config.batching.window_ms == 2.5 and config.batching.max_batch_size == 4
    assert serving_config(registry="/c", max_batch_size=1).batching.max_batch_size == 1
    # Neither a file nor a registry: the embedded per-user one (tests/cli/test_cli_serve.py creates it).
    monkeypatch.setattr(serving_config_module, "ensure_default_registry", lambda: tmp_path / "embedded")
    assert serving_config().registry == str(tmp_path / "embedded")
    with pytest.raises(FileNotFoundError, match="serving config not found"):
        serving_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="port must lie in"):
        ServingConfig(registry="r", port=70000)
