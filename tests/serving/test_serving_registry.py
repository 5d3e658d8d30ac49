"""ModelRegistry: versions, checkpoint copies, production history, canary, revision counter, bad input."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from instaseg.serving.registry import ModelRegistry, RegistryError, format_registry

CLASSES = [{"id": 1, "name": "nucleus"}]
INFO = {"num_classes": 2, "backbone_depth": 18, "min_size": 64, "max_size": 64, "max_image_pixels": 4096}


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"checkpoint bytes " * 100)
    return path


def test_first_version_is_production_and_the_checkpoint_is_copied(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    entry = registry.register("nuclei", checkpoint, CLASSES, INFO, description="first")
    assert entry.version == 1
    assert entry.checkpoint == tmp_path / "reg" / "checkpoints" / "nuclei" / "v1.pt"
    assert entry.checkpoint.read_bytes() == checkpoint.read_bytes()
    assert entry.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert entry.classes == CLASSES and entry.model_info == INFO and entry.description == "first"
    deployment = registry.deployment("nuclei")
    assert (deployment.production, deployment.canary, deployment.canary_share) == (1, None, 0.0)
    # No temporary file is left beside the copies.
    assert sorted(p.name for p in entry.checkpoint.parent.iterdir()) == ["v1.pt"]


def test_later_versions_wait_for_promotion(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for _ in range(3):
        registry.register("nuclei", checkpoint, CLASSES, INFO)
    assert [v.version for v in registry.versions("nuclei")] == [1, 2, 3]
    assert registry.deployment("nuclei").production == 1


def test_canary_promote_and_rollback(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for _ in range(3):
        registry.register("nuclei", checkpoint, CLASSES, INFO)

    deployment = registry.set_canary("nuclei", 2, 0.25)
    assert (deployment.production, deployment.canary, deployment.canary_share) == (1, 2, 0.25)

    deployment = registry.rollback("nuclei")  # with a canary: the canary goes, production stays
    assert (deployment.production, deployment.canary) == (1, None)

    registry.set_canary("nuclei", 2, 0.5)
    deployment = registry.promote("nuclei")  # the canary becomes production
    assert (deployment.production, deployment.canary, deployment.canary_share) == (2, None, 0.0)

    deployment = registry.promote("nuclei", 3)  # a named version, directly
    assert deployment.production == 3 and deployment.history == (1, 2, 3)

    assert registry.rollback("nuclei").production == 2  # without a canary: previous production
    assert registry.rollback("nuclei").production == 1
    with pytest.raises(RegistryError, match="no canary and no earlier production version"):
        registry.rollback("nuclei")


def test_every_change_bumps_the_revision(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path)
    revisions = [registry.revision()]
    registry.register("nuclei", checkpoint, CLASSES, INFO)
    revisions.append(registry.revision())
    registry.register("nuclei", checkpoint, CLASSES, INFO)
    revisions.append(registry.revision())
    registry.set_canary("nuclei", 2, 0.1)
    revisions.append(registry.revision())
    registry.promote("nuclei")
    revisions.append(registry.revision())
    registry.rollback("nuclei")
    revisions.append(registry.revision())
    assert revisions == sorted(set(revisions)) and len(revisions) == 6
    # A second handle on the same folder (another process, e.g. the CLI) sees the same state.
    assert ModelRegistry(tmp_path, create=False).revision() == revisions[-1]


def test_failed_operations_change_nothing(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.register("nuclei", checkpoint, CLASSES, INFO)
    before = registry.revision()
    with pytest.raises(RegistryError, match="no version 7; versions: \\[1\\]"):
        registry.set_canary("nuclei", 7, 0.1)
    with pytest.raises(RegistryError, match="already the production version"):
        registry.set_canary("nuclei", 1, 0.1)
    with pytest.raises(RegistryError, match="must lie in \\[0, 1\\]"):
        registry.set_canary("nuclei", 1, 1.5)
    with pytest.raises(RegistryError, match="no canary to promote"):
        registry.promote("nuclei")
    with pytest.raises(RegistryError, match="no model named 'cells'.*registered: \\['nuclei'\\]"):
        registry.promote("cells", 1)
    with pytest.raises(RegistryError, match="no model named 'cells'"):
        registry.versions("cells")
    assert registry.revision() == before


@pytest.mark.parametrize("name", ["", "Nuclei", "../evil", "a b", "-x", "x" * 65])
def test_model_names_are_checked(tmp_path: Path, checkpoint: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="is not allowed"):
        ModelRegistry(tmp_path).register(name, checkpoint, CLASSES, INFO)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_missing_checkpoint_and_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ModelRegistry(tmp_path / "reg").register("nuclei", tmp_path / "nope.pt", CLASSES, INFO)
    with pytest.raises(RegistryError, match="no model registry at .*instaseg models register"):
        ModelRegistry(tmp_path / "elsewhere", create=False)
    assert not (tmp_path / "elsewhere").exists()


def test_a_corrupt_database_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="registry.sqlite"):
        ModelRegistry(tmp_path)


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path, checkpoint: Path) -> None:
    ModelRegistry(tmp_path)
    errors: list[Exception] = []

    def register() -> None:
        try:
            ModelRegistry(tmp_path).register("nuclei", checkpoint, CLASSES, INFO)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    versions = ModelRegistry(tmp_path).versions("nuclei")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    assert all(v.checkpoint.is_file() for v in versions)


def test_format_registry_lists_roles(tmp_path: Path, checkpoint: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert "(no models registered)" in format_registry(registry)
    registry.register("nuclei", checkpoint, CLASSES, INFO)
    registry.register("nuclei", checkpoint, CLASSES, INFO, reference={"images": 1})
    registry.set_canary("nuclei", 2, 0.1)
    lines = format_registry(registry).splitlines()
    assert lines[1].split()[:3] == ["nuclei", "1", "production"]
    assert lines[2].split()[:4] == ["nuclei", "2", "canary", "10%"]
    assert lines[1].split()[4] == "no" and lines[2].split()[5] == "yes"


def test_opening_and_reading_an_existing_registry_writes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    ModelRegistry(tmp_path).register("nuclei", checkpoint, CLASSES, INFO)
    database = tmp_path / "registry.sqlite"
    before = (database.read_bytes(), database.stat().st_mtime_ns)
    reader = ModelRegistry(tmp_path, create=False)  # e.g. a replica with the registry mounted read-only
    assert reader.revision() == 1 and reader.deployments()[0].production == 1
    assert [v.version for v in reader.versions("nuclei")] == [1]
    assert (database.read_bytes(), database.stat().st_mtime_ns) == before
