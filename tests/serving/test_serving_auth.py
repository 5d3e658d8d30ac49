"""API keys: stored hashed, checked from either header, rate limited per key, re-read when changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instaseg.serving.auth import (
    Authenticator,
    KeysFileError,
    TokenBucket,
    add_api_key,
    hash_api_key,
    load_api_keys,
)
from instaseg.serving.errors import RateLimited, Unauthorized


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    alice = add_api_key(keys_file, "alice")
    bob = add_api_key(keys_file, "bob", requests_per_minute=30)
    text = keys_file.read_text()
    assert alice not in text and bob not in text
    assert alice != bob and alice.startswith("isk_") and len(alice) > 40
    keys = load_api_keys(keys_file)
    assert keys[hash_api_key(alice)].name == "alice"
    assert keys[hash_api_key(bob)].requests_per_minute == 30
    with pytest.raises(KeysFileError, match="a key named 'alice' exists already"):
        add_api_key(keys_file, "alice")


def test_authenticate_with_either_header(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = add_api_key(keys_file, "scanner")
    auth = Authenticator(keys_file, requests_per_minute=600, burst=10)
    assert auth.authenticate(f"Bearer {key}", None) == "scanner"
    assert auth.authenticate(None, key) == "scanner"
    assert auth.authenticate(f"Bearer {key}", "") == "scanner"  # an empty X-API-Key does not hide the Bearer
    with pytest.raises(Unauthorized) as missing:
        auth.authenticate(None, None)
    assert missing.value.status == 401 and missing.value.kind == "missing_api_key"
    with pytest.raises(Unauthorized) as wrong:
        auth.authenticate("Bearer isk_not-a-key", None)
    assert wrong.value.kind == "invalid_api_key"
    with pytest.raises(Unauthorized, match="required"):
        auth.authenticate(f"Basic {key}", None)  # only the Bearer scheme carries keys


def test_rate_limit_per_key_with_retry_after(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    slow = add_api_key(keys_file, "slow", requests_per_minute=6)  # one token every 10 s
    fast = add_api_key(keys_file, "fast")
    clock = Clock()
    auth = Authenticator(keys_file, requests_per_minute=600, burst=2, clock=clock)
    auth.authenticate(None, slow)
    auth.authenticate(None, slow)  # the burst of 2 is spent
    with pytest.raises(RateLimited) as limited:
        auth.authenticate(None, slow)
    assert limited.value.status == 429 and limited.value.headers["Retry-After"] == "10"
    assert auth.authenticate(None, fast) == "fast"  # other keys are not affected
    clock.now += 4.0
    with pytest.raises(RateLimited) as again:
        auth.authenticate(None, slow)
    assert again.value.retry_after_s == 6
    clock.now += 6.0
    assert auth.authenticate(None, slow) == "slow"


def test_token_bucket_refills_up_to_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(clock)
    assert [bucket.take("k", 1.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("k", 1.0, 3) == pytest.approx(1.0)
    clock.now += 100.0  # a long pause saves up no more than the burst
    assert [bucket.take("k", 1.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("k", 1.0, 3) > 0


def test_keys_file_changes_apply_without_restart(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    first = add_api_key(keys_file, "first")
    clock = Clock()
    auth = Authenticator(keys_file, requests_per_minute=600, burst=10, clock=clock)
    second = add_api_key(keys_file, "second")
    os.utime(keys_file, ns=(1, 1))  # make sure the modification time differs whatever the clock resolution
    clock.now += 2.0
    assert auth.authenticate(None, second) == "second"
    # Revoking: rewrite the file without "first".
    data = json.loads(keys_file.read_text())
    data["keys"] = [k for k in data["keys"] if k["name"] != "first"]
    keys_file.write_text(json.dumps(data))
    os.utime(keys_file, ns=(2, 2))
    clock.now += 2.0
    with pytest.raises(Unauthorized):
        auth.authenticate(None, first)
    # A broken edit keeps the last good keys instead of locking everyone out.
    keys_file.write_text("{not json")
    os.utime(keys_file, ns=(3, 3))
    clock.now += 2.0
    assert auth.authenticate(None, second) == "second"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected an object with a 'keys' list"),
        ('{"keys": [{"sha256": "' + "a" * 64 + '"}]}', "keys\\[0\\]: needs a string 'name'"),
        ('{"keys": [{"name": "x", "sha256": "abc"}]}', "keys\\[0\\] \\(x\\): 'sha256' must be 64"),
        (
            '{"keys": [{"name": "x", "sha256": "' + "a" * 64 + '", "requests_per_minute": -1}]}',
            "'requests_per_minute' must be a positive number",
        ),
        ("{oops", "cannot read it as JSON"),
    ],
)
def test_malformed_keys_files_name_file_and_entry(tmp_path: Path, content: str, message: str) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(content)
    with pytest.raises(KeysFileError, match=message) as error:
        load_api_keys(keys_file)
    assert str(keys_file) in str(error.value)


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="not found"):
        Authenticator(tmp_path / "nope.json", 60, 5)
