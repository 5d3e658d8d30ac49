"""Service settings: one YAML file read into plain dataclasses (checked by `instaseg.io.config_schema`).

```yaml
registry: /srv/instaseg/registry    # SQLite file + checkpoint folder written by `instaseg models register`
host: 127.0.0.1
port: 8000
batching: {window_ms: 10, max_batch_size: 8}
limits: {max_body_bytes: 20971520, max_image_pixels: 40000000, max_batch_images: 16}
auth: {enabled: true, keys_file: /srv/instaseg/api_keys.json, requests_per_minute: 120}
sampling: {share: 0.01, folder: /srv/instaseg/samples, max_bytes: 104857600}
drift: {window: 500, psi_threshold: 0.2}
shadow: {share: 0.1, versions: {nuclei: 4}, max_pending: 16}
canary: {enabled: true, window_requests: 1000, min_requests: 50, max_error_rate_increase: 0.02,
         max_p95_ratio: 1.5, min_agreement: 0.7, auto_promote_after: 0}
promptable: {checkpoint: /srv/instaseg/mobile_sam.pt, cache_bytes: 268435456}   # default: nuclei_promptable
```

Unknown keys and values of the wrong type raise `ConfigError` naming the dotted key. Relative paths are taken
relative to the working directory.

With neither a config file nor a registry (`instaseg serve` alone), the service uses the embedded per-user
registry `$XDG_DATA_HOME/instaseg/registry` (default `~/.local/share/instaseg/registry`), created on first
use with the bundled nuclei model registered as `nuclei` (`ensure_default_registry`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from instaseg.export.onnx_export import BACKENDS
from instaseg.io.config_schema import ConfigError, parse_section, parse_yaml

__all__ = [
    "AuthConfig",
    "BatchingConfig",
    "CanaryConfig",
    "DEFAULT_MODEL_NAME",
    "ConfigError",
    "DriftConfig",
    "LimitsConfig",
    "ModelSlo",
    "SamplingConfig",
    "ServingConfig",
    "ShadowConfig",
    "SloConfig",
    "default_registry_path",
    "ensure_default_registry",
    "load_serving_config",
    "serving_config",
]

IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
# The name the bundled model is registered under in the embedded registry.
DEFAULT_MODEL_NAME = "nuclei"


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching: requests arriving within `window_ms` of the first queued one run as one model call of
    at most `max_batch_size` images. `max_batch_size: 1` turns batching off. `max_queue`: images waiting
    beyond this are refused at once with 503 instead of queueing past their timeout."""

    window_ms: float = 10.0
    max_batch_size: int = 8
    max_queue: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.window_ms <= 1000.0:
            raise ConfigError(f"batching.window_ms must lie in [0, 1000], got {self.window_ms}")
        if self.max_batch_size < 1:
            raise ConfigError(f"batching.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue < 1:
            raise ConfigError(f"batching.max_queue must be >= 1, got {self.max_queue}")


@dataclass(frozen=True)
class LimitsConfig:
    """What a request may carry. `max_image_pixels` (width x height, read from the header before decoding) is
    also Pillow's decompression-bomb limit in the serving process."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_batch_images: int = 16
    allowed_formats: tuple[str, ...] = IMAGE_FORMATS

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_batch_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name} must be >= 1, got {getattr(self, name)}")
        unknown = [f for f in self.allowed_formats if f not in IMAGE_FORMATS]
        if unknown or not self.allowed_formats:
            raise ConfigError(
                f"limits.allowed_formats must be a non-empty subset of {', '.join(IMAGE_FORMATS)}; "
                f"got {list(self.allowed_formats)}"
            )


@dataclass(frozen=True)
class AuthConfig:
    """API keys (`enabled`): only their SHA-256 hashes are stored, in `keys_file` (JSON written by `instaseg
    serve --new-api-key NAME`). Each key may make `requests_per_minute` requests (its own value in the keys
    file wins), in bursts of up to `burst`."""

    enabled: bool = False
    keys_file: str | None = None
    requests_per_minute: float = 120.0
    burst: int = 20

    def __post_init__(self) -> None:
        if self.enabled and not self.keys_file:
            raise ConfigError("auth.keys_file is required when auth.enabled is true")
        if self.requests_per_minute <= 0:
            raise ConfigError(f"auth.requests_per_minute must be > 0, got {self.requests_per_minute}")
        if self.burst < 1:
            raise ConfigError(f"auth.burst must be >= 1, got {self.burst}")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampled prediction log: a `share` of requests (0 = off) written to `folder`, at most `max_bytes` on
    disk (oldest files deleted first), in JSON-lines segments of `segment_bytes`; `include_images` also keeps
    the uploaded bytes."""

    share: float = 0.0
    folder: str | None = None
    max_bytes: int = 100 * 1024 * 1024
    segment_bytes: int = 4 * 1024 * 1024
    include_images: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"sampling.share must lie in [0, 1], got {self.share}")
        if self.share > 0 and not self.folder:
            raise ConfigError("sampling.folder is required when sampling.share > 0")
        if self.segment_bytes < 1024 or self.max_bytes < 2 * self.segment_bytes:
            raise ConfigError(
                "sampling.segment_bytes must be >= 1024 and sampling.max_bytes at least twice it; got "
                f"segment_bytes={self.segment_bytes}, max_bytes={self.max_bytes}"
            )


@dataclass(frozen=True)
class DriftConfig:
    """Input / score drift: population stability index of the last `window` images against the model's
    reference statistics, published once `min_samples` images were seen and refreshed every `every`
    images; a PSI above `psi_threshold` logs a warning."""

    window: int = 500
    min_samples: int = 50
    every: int = 10
    psi_threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_samples <= self.window or self.every < 1:
            raise ConfigError(
                "drift needs window >= 1, 1 <= min_samples <= window and every >= 1; got "
                f"window={self.window}, min_samples={self.min_samples}, every={self.every}"
            )
        if self.psi_threshold <= 0:
            raise ConfigError(f"drift.psi_threshold must be > 0, got {self.psi_threshold}")


@dataclass(frozen=True)
class ShadowConfig:
    """Shadow traffic: a `share` of each model's production requests (0 = off) is also run, off the response
    path, on a candidate version whose answers are compared with production's and never returned. The
    candidate is the version `versions` names for the model (model name -> version number), else the
    model's canary. At most `max_pending` images wait for shadow calls; a request beyond that is not
    shadowed (counted in `instaseg_shadow_skipped_total`) rather than slowing production down."""

    share: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)
    max_pending: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"shadow.share must lie in [0, 1], got {self.share}")
        if self.max_pending < 1:
            raise ConfigError(f"shadow.max_pending must be >= 1, got {self.max_pending}")
        for name, version in self.versions.items():
            if version < 1:
                raise ConfigError(f"shadow.versions.{name} must be a version number >= 1, got {version}")


@dataclass(frozen=True)
class CanaryConfig:
    """Automatic canary analysis (`enabled`). Over the last `window_requests` outcomes of each version (the
    requests it served; for the canary also its shadow calls), once the canary and production have
    `min_requests` each, the canary is rolled back (through the registry, so every replica follows) when
    its error rate exceeds production's by more than `max_error_rate_increase` (a difference of shares:
    production's rate is often 0, where a ratio says nothing), its p95 latency exceeds `max_p95_ratio` x
    production's, or its mean agreement with production (matched-instance mask IoU of its shadow calls,
    once there are `min_requests`) is below `min_agreement`. With `auto_promote_after` > 0, a canary that
    has passed every check after that many outcomes is promoted (after the golden-set gate, if the model
    has a golden set); 0 never promotes."""

    enabled: bool = False
    window_requests: int = 1000
    min_requests: int = 50
    max_error_rate_increase: float = 0.02
    max_p95_ratio: float = 1.5
    min_agreement: float = 0.7
    auto_promote_after: int = 0

    def __post_init__(self) -> None:
        if self.window_requests < 1 or not 1 <= self.min_requests <= self.window_requests:
            raise ConfigError(
                "canary needs window_requests >= 1 and 1 <= min_requests <= window_requests; got "
                f"window_requests={self.window_requests}, min_requests={self.min_requests}"
            )
        if not 0.0 <= self.max_error_rate_increase <= 1.0:
            raise ConfigError(
                f"canary.max_error_rate_increase must lie in [0, 1], got {self.max_error_rate_increase}"
            )
        if not self.max_p95_ratio >= 1.0:
            raise ConfigError(f"canary.max_p95_ratio must be >= 1, got {self.max_p95_ratio}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"canary.min_agreement must lie in [0, 1], got {self.min_agreement}")
        if self.auto_promote_after < 0:
            raise ConfigError(f"canary.auto_promote_after must be >= 0, got {self.auto_promote_after}")
        if self.auto_promote_after and not self.enabled:
            raise ConfigError(
                "canary.auto_promote_after needs canary.enabled: true (promotion follows the analysis)"
            )
        if 0 < self.auto_promote_after < self.min_requests:
            raise ConfigError(
                f"canary.auto_promote_after ({self.auto_promote_after}) must be 0 or >= canary.min_requests "
                f"({self.min_requests}): a canary is judged healthy only once it can be judged at all"
            )


# One cached SAM embedding: (1, 256, 64, 64) float32 (the bundled promptable model's are a quarter of it).
EMBEDDING_BYTES = 256 * 64 * 64 * 4


@dataclass(frozen=True)
class PromptableConfig:
    """`POST /v1/embeddings` and `/v1/segment`, on unless `enabled` is false (then they answer 404): the
    promptable model that answers them (`checkpoint`: None for the bundled `nuclei_promptable`, else anything
    `instaseg.models.load_promptable` takes: a SAM / MobileSAM checkpoint, an `instaseg export` of one
    (`sam.onnx`, on ONNX Runtime), a promptable model file), the byte cap of the embedding cache (a SAM
    embedding is 4 MiB), and the prompts per decoder pass."""

    enabled: bool = True
    checkpoint: str | None = None
    cache_bytes: int = 64 * EMBEDDING_BYTES
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.cache_bytes < EMBEDDING_BYTES:
            raise ConfigError(
                f"promptable.cache_bytes must hold one embedding ({EMBEDDING_BYTES} bytes), got "
                f"{self.cache_bytes}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"promptable.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelSlo:
    """The objectives of one model name over its predict requests (`/v1/predict`, `/v1/predict/batch`).

    availability: share of requests answered without a server error (5xx; a client's 4xx does not count).
    latency_p95_s: 95% of requests are answered within this many seconds (a bucket bound of
        `instaseg_request_seconds`, checked when `instaseg slo rules` turns the objectives into rules).
    """

    availability: float = 0.999
    latency_p95_s: float = 1.0


@dataclass(frozen=True)
class SloConfig:
    """Service-level objectives per deployed model name (`models`), each with an error budget spent over
    `period_days`. `instaseg slo rules` generates the Prometheus rules from them (docs/operations.md)."""

    period_days: float = 30.0
    models: dict[str, ModelSlo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.period_days > 0:
            raise ConfigError(f"slo.period_days must be > 0, got {self.period_days}")
        for name, objective in self.models.items():
            # 1 is impossible too: no error budget, so any single error is an infinite burn rate.
            if not 0.0 < objective.availability < 1.0:
                raise ConfigError(
                    f"slo.models.{name}.availability must lie strictly between 0 and 1, got "
                    f"{objective.availability}"
                )
            if not objective.latency_p95_s > 0:
                raise ConfigError(
                    f"slo.models.{name}.latency_p95_s must be > 0 seconds, got {objective.latency_p95_s}"
                )


@dataclass(frozen=True)
class ServingConfig:
    """Everything `instaseg serve` needs. Only `registry` is required.

    default_model: model used when a request names none (default: the only deployed model, if just one).
    path_root: server-side folder that JSON `path` inputs are resolved in (None: path inputs are refused).
    request_timeout_s: a request not answered in this time gets 503 (the model call itself is not killed).
    registry_poll_s: how often the registry is checked for promote / rollback / canary changes.
    shutdown_timeout_s: on SIGTERM, how long in-flight requests may take to finish.
    torch_threads: intra-op threads for the model (None: torch's default).
    backend: "torch", or "onnx": each registered checkpoint is exported to ONNX once (cached by its sha256,
        see docs/deployment.md) and run by ONNX Runtime on the CPU.
    tile_size, tile_overlap: tiling used for requests with `tiling=true` on images larger than one tile.
    """

    registry: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    default_model: str | None = None
    path_root: str | None = None
    request_timeout_s: float = 30.0
    registry_poll_s: float = 1.0
    shutdown_timeout_s: float = 30.0
    torch_threads: int | None = None
    tile_size: int = 1024
    tile_overlap: int = 256
    log_level: str = "info"
    backend: str = "torch"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    promptable: PromptableConfig = field(default_factory=PromptableConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must lie in [0, 65535], got {self.port}")
        for name in ("request_timeout_s", "registry_poll_s", "shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.tile_size < 32 or not 0 <= self.tile_overlap < self.tile_size:
            raise ConfigError(
                f"tile_size must be >= 32 and 0 <= tile_overlap < tile_size; got {self.tile_size}, "
                f"{self.tile_overlap}"
            )

    @property
    def registry_path(self) -> Path:
        return Path(self.registry)

    def with_overrides(self, **changes: Any) -> ServingConfig:
        """A copy with top-level fields replaced (those given as None are left as they are)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def load_serving_config(path: str | Path) -> ServingConfig:
    """Read a `ServingConfig` from a YAML file; raises `ConfigError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"serving config not found: {path}")
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    try:
        return parse_section(ServingConfig, data if data is not None else {}, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def serving_config(
    config_file: str | Path | None = None,
    registry: str | None = None,
    host: str | None = None,
    port: int | None = None,
    device: str | None = None,
    default_model: str | None = None,
    window_ms: float | None = None,
    max_batch_size: int | None = None,
    backend: str | None = None,
) -> ServingConfig:
    """The config of `instaseg serve`: the YAML file if given (else defaults), with command-line overrides
    (arguments left as None keep the file's value). Without `config_file` and `registry`, the embedded
    per-user registry (`ensure_default_registry`: created with the bundled model on first use)."""
    if config_file is None and registry is None:
        registry = str(ensure_default_registry())
    config = load_serving_config(config_file) if config_file is not None else ServingConfig(registry=registry)
    config = config.with_overrides(
        registry=registry, host=host, port=port, device=device, default_model=default_model, backend=backend
    )
    if window_ms is not None or max_batch_size is not None:
        batching = replace(
            config.batching,
            **{
                k: v
                for k, v in (("window_ms", window_ms), ("max_batch_size", max_batch_size))
                if v is not None
            },
        )
        config = replace(config, batching=batching)
    return config


def default_registry_path() -> Path:
    """The embedded per-user registry: `$XDG_DATA_HOME/instaseg/registry` (default
    `~/.local/share/instaseg/registry`), as the XDG base-directory convention places user data."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "instaseg" / "registry"


def ensure_default_registry(root: str | Path | None = None) -> Path:
    """The registry at `root` (default `default_registry_path()`); when it holds no model yet, the bundled
    model is registered in it first, as `DEFAULT_MODEL_NAME` (version 1, production). Returns its folder."""
    # Imported here: registering loads the model (torch), which reading a config file does not need.
    from instaseg.models.default_model import default_model_path
    from instaseg.serving.registration import register_model
    from instaseg.serving.registry import ModelRegistry

    root = Path(root) if root is not None else default_registry_path()
    if not ModelRegistry(root).names():
        register_model(
            root, DEFAULT_MODEL_NAME, default_model_path(), description="the bundled nuclei model (instaseg)"
        )
    return root
