"""The registry backends chosen by location: the same semantics on SQLite and PostgreSQL (a real server, see
conftest.py), the checkpoint store keyed by sha256 with a verified per-replica cache, and bad locations."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from instaseg.serving.registry import ModelRegistry, RegistryError, RegistryUnavailable, open_registry

CLASSES = [{"id": 1, "name": "nucleus"}]
INFO = {"num_classes": 2, "min_size": 64}


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"checkpoint bytes " * 1000)
    return path


def _pg(url: str, tmp_path: Path, replica: str = "a") -> ModelRegistry:
    return open_registry(f"{url}?checkpoints={tmp_path / 'store'}&checkpoint_cache={tmp_path / replica}")


@pytest.mark.parametrize(
    "location",
    ["s3://bucket/registry", "mysql://host/db", "sqlite:///tmp/x.sqlite", "http://host/registry"],
)
def test_a_url_of_another_scheme_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    monkeypatch.chdir(tmp_path)
    scheme = location.split(":")[0]
    with pytest.raises(RegistryError, match=f"unsupported URL scheme '{scheme}'"):
        open_registry(location)
    with pytest.raises(RegistryError, match=f"unsupported URL scheme '{scheme}'"):
        ModelRegistry(Path(location))  # a Path keeps one slash of "://": still a URL, not a folder
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" or "mysql:"


def test_an_unreachable_database_is_named_without_its_password() -> None:
    with pytest.raises(RegistryUnavailable, match=r"postgresql://u:\*\*\*@127\.0\.0\.1:9/db") as caught:
        open_registry("postgresql://u:secret@127.0.0.1:9/db")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_both_backends_share_the_semantics(
    request: pytest.FixtureRequest, tmp_path: Path, checkpoint: Path, backend: str
) -> None:
    if backend == "sqlite":
        registry = open_registry(tmp_path / "reg")
    else:
        registry = _pg(request.getfixturevalue("postgres_url"), tmp_path)
    assert registry.revision() == 0 and registry.names() == []
    for _ in range(3):
        registry.register("nuclei", checkpoint, CLASSES, INFO, description="d")
    assert registry.revision() == 3
    assert [v.version for v in registry.versions("nuclei")] == [1, 2, 3]
    assert registry.get("nuclei", 2).classes == CLASSES and registry.get("nuclei", 2).model_info == INFO
    deployment = registry.set_canary("nuclei", 2, 0.1)
    assert (deployment.production, deployment.canary, deployment.canary_share) == (1, 2, 0.1)
    assert registry.promote("nuclei").production == 2
    assert registry.promote("nuclei", 3).history == (1, 2, 3)
    assert registry.rollback("nuclei").production == 2
    assert registry.revision() == 7
    with pytest.raises(RegistryError, match="has no version 9; versions: \\[1, 2, 3\\]"):
        registry.promote("nuclei", 9)
    with pytest.raises(RegistryError, match="no model named 'cells'.*registered: \\['nuclei'\\]"):
        registry.deployment("cells")
    assert registry.revision() == 7  # failed operations change nothing


def test_checkpoints_are_stored_by_sha256_and_cached_per_replica(
    postgres_url: str, tmp_path: Path, checkpoint: Path
) -> None:
    registry = _pg(postgres_url, tmp_path)
    first = registry.register("nuclei", checkpoint, CLASSES, INFO)
    second = registry.register("nuclei", checkpoint, CLASSES, INFO)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert first.sha256 == second.sha256 == digest
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [f"{digest}.pt"]  # stored once
    # A second replica: no ?checkpoints= (the database recorded the store), its own cache.
    replica = open_registry(f"{postgres_url}?checkpoint_cache={tmp_path / 'b'}", create=False)
    entry = replica.get("nuclei", 1)
    assert entry.checkpoint == tmp_path / "b" / f"{digest}.pt" and not entry.checkpoint.exists()
    assert replica.fetch_checkpoint(entry).read_bytes() == checkpoint.read_bytes()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{digest}.pt"]  # no temporary left


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_stored_checkpoint_is_refused_by_sha256(
    postgres_url: str, tmp_path: Path, checkpoint: Path, damage: str
) -> None:
    registry = _pg(postgres_url, tmp_path)
    entry = registry.register("nuclei", checkpoint, CLASSES, INFO)
    stored = tmp_path / "store" / f"{entry.sha256}.pt"
    data = checkpoint.read_bytes()
    stored.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"X" + data[1:])
    with pytest.raises(RegistryError, match="nuclei v1 is corrupt or truncated: sha256 .* registered"):
        registry.fetch_checkpoint(entry)
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []  # the cache is untouched
    stored.unlink()
    with pytest.raises(RegistryError, match="nuclei v1 is missing from the store"):
        registry.fetch_checkpoint(entry)


def test_a_damaged_cached_copy_is_fetched_again(postgres_url: str, tmp_path: Path, checkpoint: Path) -> None:
    registry = _pg(postgres_url, tmp_path)
    entry = registry.register("nuclei", checkpoint, CLASSES, INFO)
    registry.fetch_checkpoint(entry)
    entry.checkpoint.write_bytes(b"bit rot")
    assert registry.fetch_checkpoint(entry).read_bytes() == checkpoint.read_bytes()


def test_opening_an_empty_database_read_only_and_registering_without_a_store(
    postgres_url: str, checkpoint: Path
) -> None:
    with pytest.raises(RegistryError, match="no model registry in database .*instaseg models register"):
        open_registry(postgres_url, create=False)
    registry = open_registry(postgres_url)
    with pytest.raises(RegistryError, match="has no checkpoint store yet: add \\?checkpoints="):
        registry.register("nuclei", checkpoint, CLASSES, INFO)
    assert registry.revision() == 0


def test_concurrent_writers_on_postgres_get_distinct_versions(
    postgres_url: str, tmp_path: Path, checkpoint: Path
) -> None:
    _pg(postgres_url, tmp_path)
    errors: list[Exception] = []

    def register() -> None:
        try:
            _pg(postgres_url, tmp_path).register("nuclei", checkpoint, CLASSES, INFO)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    registry = _pg(postgres_url, tmp_path)
    assert [v.version for v in registry.versions("nuclei")] == [1, 2, 3, 4, 5]
    assert registry.revision() == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["models", "list", "--registry", "postgresql://u@127.0.0.1:9/db"],
            "cannot reach the model registry",
        ),
        (["models", "promote", "nuclei", "--registry", "s3://bucket/reg"], "unsupported URL scheme 's3'"),
    ],
)
def test_the_cli_names_a_bad_registry_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    from instaseg.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_automatic_canary_decisions_change_only_that_canary(
    request: pytest.FixtureRequest, tmp_path: Path, checkpoint: Path, backend: str
) -> None:
    """Two replicas may decide on the same canary: the second finds it gone and must not roll production
    back (what `rollback` would do without a canary); a stale promotion changes nothing either."""
    if backend == "sqlite":
        registry = open_registry(tmp_path / "reg")
    else:
        registry = _pg(request.getfixturevalue("postgres_url"), tmp_path)
    for _ in range(3):
        registry.register("nuclei", checkpoint, CLASSES, INFO)
    registry.promote("nuclei", 2)
    registry.set_canary("nuclei", 3, 0.2)
    assert registry.canary_decisions("nuclei") == {}  # no table yet: read without creating it
    revision = registry.revision()
    decision = {"action": "rolled_back", "reason": "latency", "message": "p95 3x production's"}
    assert registry.rollback_canary("nuclei", 3, decision) is True
    deployment = registry.deployment("nuclei")
    assert (deployment.production, deployment.canary, deployment.history) == (2, None, (1, 2))
    assert registry.revision() == revision + 1
    assert registry.rollback_canary("nuclei", 3, {**decision, "reason": "error_rate"}) is False
    assert registry.deployment("nuclei").history == (1, 2) and registry.revision() == revision + 1
    assert registry.canary_decisions("nuclei") == {3: decision}
    registry.set_canary("nuclei", 1, 0.5)
    assert registry.promote_canary("nuclei", 3, {"action": "promoted"}) is False  # 1 is the canary now
    assert registry.promote_canary("nuclei", 1, {"action": "promoted"}) is True
    assert registry.deployment("nuclei").history == (1, 2, 1)
    registry.record_canary_decision("nuclei", 3, {"action": "promotion_refused"})
    assert registry.canary_decisions("nuclei") == {
        1: {"action": "promoted"},
        3: {"action": "promotion_refused"},
    }
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.record_canary_decision("nuclei", 9, {})
