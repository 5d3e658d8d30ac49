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


def test_shadow_and_canary_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
registry: r
shadow: {share: 0.25, versions: {nuclei: 4}, max_pending: 4}
canary: {enabled: true, window_requests: 200, min_requests: 20, max_p95_ratio: 2, auto_promote_after: 500}
""",
    )
    config = load_serving_config(path)
    assert config.shadow.share == 0.25 and config.shadow.versions == {"nuclei": 4}
    assert (
        config.canary.enabled
        and config.canary.max_p95_ratio == 2.0
        and config.canary.auto_promote_after == 500
    )
    assert config.canary.max_error_rate_increase == 0.02 and config.canary.min_agreement == 0.7  # defaults
    defaults = ServingConfig(registry="r")
    assert (
        defaults.shadow.share == 0.0
        and not defaults.canary.enabled
        and defaults.canary.auto_promote_after == 0
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shadow: {share: 2}", "shadow.share must lie in \\[0, 1\\]"),
        ("shadow: {versions: {nuclei: 0}}", "shadow.versions.nuclei must be a version number"),
        ("shadow: {versions: {nuclei: canary}}", "config key 'shadow.versions.nuclei' must be an integer"),
        ("shadow: {max_pending: 0}", "shadow.max_pending must be >= 1"),
        ("canary: {min_requests: 50, window_requests: 10}", "1 <= min_requests <= window_requests"),
        ("canary: {max_error_rate_ratio: 2}", "config key 'canary.max_error_rate_ratio' is unknown"),
        ("canary: {max_p95_ratio: 0.5}", "canary.max_p95_ratio must be >= 1"),
        ("canary: {min_agreement: 1.5}", "canary.min_agreement must lie in \\[0, 1\\]"),
        ("canary: {auto_promote_after: 100}", "canary.auto_promote_after needs canary.enabled"),
        ("canary: {enabled: true, auto_promote_after: 10}", "must be 0 or >= canary.min_requests \\(50\\)"),
    ],
)
def test_shadow_and_canary_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, f"registry: r\n{text}")
    with pytest.raises(ConfigError, match=message) as error:
        load_serving_config(path)
    assert str(path) in str(error.value)


def test_promptable_routes_default_to_the_bundled_model_and_can_be_switched_off(tmp_path: Path) -> None:
    default = ServingConfig(registry=str(tmp_path)).promptable
    assert default.enabled and default.checkpoint is None
    off = load_serving_config(write(tmp_path, "registry: r\npromptable: {enabled: false}\n"))
    assert not off.promptable.enabled
    sam = load_serving_config(
        write(tmp_path, "registry: r\npromptable: {checkpoint: mobile_sam.pt, batch_size: 8}\n")
    )
    assert sam.promptable.enabled and sam.promptable.checkpoint == "mobile_sam.pt"
    with pytest.raises(ConfigError, match="promptable.enabled"):
        load_serving_config(write(tmp_path, "registry: r\npromptable: {enabled: maybe}\n"))
