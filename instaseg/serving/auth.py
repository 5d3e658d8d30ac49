"""API keys, stored only as SHA-256 hashes, and a token-bucket rate limit per key.

The keys file (JSON, written by `add_api_key`) looks like

    {"keys": [{"name": "lab-scanner", "sha256": "<64 hex>", "requests_per_minute": 600}]}

`requests_per_minute` is optional (the service's default applies). Keys are long random tokens, so a plain
SHA-256 (no salt, no slow hash) is enough: nothing can be guessed from it, and lookup is one dict access.
Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`. The file is re-read when it changes, so
adding or revoking a key needs no restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instaseg.io.atomic import atomic_write
from instaseg.serving.errors import RateLimited, Unauthorized

__all__ = [
    "ApiKey",
    "Authenticator",
    "KeysFileError",
    "TokenBucket",
    "add_api_key",
    "hash_api_key",
    "load_api_keys",
]

_log = logging.getLogger(__name__)
_KEY_PREFIX = "isk_"
_RELOAD_CHECK_S = 1.0


class KeysFileError(ValueError):
    """The API keys file is missing, not JSON, or has a malformed entry (the message names which)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    requests_per_minute: float | None = None


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_api_keys(path: str | Path) -> dict[str, ApiKey]:
    """Hash -> `ApiKey` from a keys file; raises `KeysFileError` naming the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeysFileError(f"API keys file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise KeysFileError(f"API keys file {path}: cannot read it as JSON ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"API keys file {path}: expected an object with a 'keys' list")
    keys: dict[str, ApiKey] = {}
    for index, entry in enumerate(entries):
        where = f"API keys file {path}, keys[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KeysFileError(f"{where}: needs a string 'name'")
        digest = entry.get("sha256")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise KeysFileError(f"{where} ({entry['name']}): 'sha256' must be 64 lower-case hex digits")
        rate = entry.get("requests_per_minute")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
            raise KeysFileError(f"{where} ({entry['name']}): 'requests_per_minute' must be a positive number")
        keys[digest] = ApiKey(entry["name"], digest, None if rate is None else float(rate))
    return keys


def add_api_key(path: str | Path, name: str, requests_per_minute: float | None = None) -> str:
    """Create a new random key named `name`, store its hash in the keys file (created if needed, written
    atomically) and return the key itself: it is shown once and never stored."""
    path = Path(path)
    if not name or not name.strip():
        raise KeysFileError("an API key needs a non-empty name")
    existing = load_api_keys(path) if path.exists() else {}
    if any(key.name == name for key in existing.values()):
        raise KeysFileError(f"API keys file {path}: a key named {name!r} exists already")
    key = _KEY_PREFIX + secrets.token_urlsafe(32)
    entries = [
        {
            "name": k.name,
            "sha256": k.sha256,
            **({} if k.requests_per_minute is None else {"requests_per_minute": k.requests_per_minute}),
        }
        for k in existing.values()
    ]
    entry: dict = {"name": name, "sha256": hash_api_key(key)}
    if requests_per_minute is not None:
        if requests_per_minute <= 0:
            raise KeysFileError(f"requests_per_minute must be positive, got {requests_per_minute}")
        entry["requests_per_minute"] = requests_per_minute
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as stream:
        json.dump({"keys": entries}, stream, indent=2)
        stream.write("\n")
    return key


class TokenBucket:
    """Per-name token buckets: `rate_per_s` tokens per second, at most `burst` saved up."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, name: str, rate_per_s: float, burst: int) -> float:
        """Take one token for `name`: 0.0 when granted, else the seconds until one is available."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate_per_s)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / rate_per_s


class Authenticator:
    """Checks a request's key against the keys file and applies its rate limit."""

    def __init__(
        self,
        keys_file: str | Path,
        requests_per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys_file = Path(keys_file)
        self.requests_per_minute = requests_per_minute
        self.burst = burst
        self._clock = clock
        self._buckets = TokenBucket(clock)
        self._keys = load_api_keys(self.keys_file)
        self._mtime = self._stat()
        self._checked = clock()
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None, api_key_header: str | None) -> str:
        """The name of the key presented, after charging its rate limit.

        Raises `Unauthorized` (401) for a missing or unknown key and `RateLimited` (429, with the seconds to
        wait) when the key is over its limit.
        """
        key = (api_key_header or "").strip() or None  # an empty X-API-Key header is no key
        if key is None and authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if not key:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                "missing_api_key",
            )
        record = self._current_keys().get(hash_api_key(key))
        if record is None:
            raise Unauthorized("the API key is not valid", "invalid_api_key")
        per_minute = record.requests_per_minute or self.requests_per_minute
        wait = self._buckets.take(record.name, per_minute / 60.0, self.burst)
        if wait > 0:
            raise RateLimited(
                f"API key {record.name!r} is over its limit of {per_minute:g} requests per minute",
                max(1, math.ceil(wait)),
            )
        return record.name

    def _current_keys(self) -> dict[str, ApiKey]:
        """The keys, re-read when the file changed (checked at most once a second)."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= _RELOAD_CHECK_S:
                self._checked = now
                mtime = self._stat()
                if mtime != self._mtime:
                    self._mtime = mtime
                    try:
                        self._keys = load_api_keys(self.keys_file)
                    except KeysFileError as exc:  # a half-edited file must not lock everyone out
                        _log.error("keeping the previous API keys: %s", exc)
            return self._keys

    def _stat(self) -> float:
        try:
            return self.keys_file.stat().st_mtime_ns
        except OSError:
            return -1.0
