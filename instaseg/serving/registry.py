"""The embedded model registry: one SQLite file plus a folder of checkpoints, nothing else to run.

Layout of a registry folder:

    registry.sqlite                       versions, deployments, production history, a revision counter
    checkpoints/<name>/v<version>.pt      copies of the registered checkpoints (never modified afterwards)

Each model name has numbered versions (1, 2, ...). Its deployment says which version serves traffic
(`production`, the top of a stack of promotions, so `rollback` can return to the previous one) and which, if
any, gets a `canary_share` of the traffic. Every write bumps `revision` in the same transaction; a running
service polls that one integer and reloads when it changes, so `instaseg models promote|rollback|set-canary`
take effect without a restart. Several processes may use the registry at once: SQLite serialises the writers.

`open_registry(location)` picks the backend from the location: a folder is this embedded registry; a
`postgresql://` URL is the shared one of `registry_postgres.py` (service replicas on several machines). A URL
of any other scheme is refused by name, never taken as a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "Deployment",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "RegistryUnavailable",
    "format_registry",
    "open_registry",
]

DATABASE_NAME = "registry.sqlite"
CHECKPOINT_FOLDER = "checkpoints"
SCHEMA_VERSION = 1
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# "scheme:/..." or "scheme://...": a URL, not a folder. Two letters at least, so "C:/x" stays a Windows path;
# one slash because `Path("postgresql://h/db")` keeps only one.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
POSTGRES_SCHEMES = ("postgresql", "postgres")
# Columns of `versions` in the order `_version_from_row` reads them.
VERSION_COLUMNS = "name, version, checkpoint, sha256, classes, model_info, reference, description, created_at"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    classes TEXT NOT NULL,
    model_info TEXT NOT NULL,
    reference TEXT,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    canary_version INTEGER,
    canary_share REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS production_history (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    promoted_at TEXT NOT NULL,
    PRIMARY KEY (name, seq)
);
"""


# The quality gate's tables (instaseg.serving.golden): created by the first write that needs them, in either
# backend; the `quality_tables` row of `meta` says they exist, so readers (a read-only replica) never create.
_QUALITY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS golden_sets (name TEXT PRIMARY KEY, spec TEXT NOT NULL, "
    "updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quality_gates (name TEXT NOT NULL, version INTEGER NOT NULL, "
    "result TEXT NOT NULL, decided_at TEXT NOT NULL, PRIMARY KEY (name, version))",
    "INSERT INTO meta VALUES ('quality_tables', 1) ON CONFLICT DO NOTHING",
)
# The automatic canary analysis's decisions (instaseg.serving.canary), one per version, made the same way.
_CANARY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS canary_decisions (name TEXT NOT NULL, version INTEGER NOT NULL, "
    "result TEXT NOT NULL, decided_at TEXT NOT NULL, PRIMARY KEY (name, version))",
    "INSERT INTO meta VALUES ('canary_tables', 1) ON CONFLICT DO NOTHING",
)


class RegistryError(ValueError):
    """A registry operation that cannot be done: unknown model or version, bad name, unreadable registry."""


class RegistryUnavailable(RegistryError):
    """The registry's database cannot be reached right now (a server down, a network cut): worth retrying."""


def url_scheme(location: str | Path) -> str | None:
    """The URL scheme of `location` (lower case), or None for a plain path."""
    match = _URL_SCHEME.match(str(location))
    return match.group(1).lower() if match else None


def open_registry(location: str | Path, create: bool = True) -> ModelRegistry:
    """The registry at `location`: a folder (the embedded SQLite registry) or a `postgresql://` URL (see
    `instaseg.serving.registry_postgres.PostgresRegistry`). Raises `RegistryError` for a URL of another
    scheme, naming it; `create=False` refuses a registry that does not exist yet."""
    scheme = url_scheme(location)
    if scheme in POSTGRES_SCHEMES:
        # Imported here: psycopg is an optional extra, and only this backend needs it.
        from instaseg.serving.registry_postgres import PostgresRegistry

        return PostgresRegistry(str(location), create=create)
    return ModelRegistry(location, create=create)


@dataclass(frozen=True)
class ModelVersion:
    """One registered checkpoint.

    classes: `[{"id", "name"}]` in model class order (model class k -> `classes[k - 1]`).
    model_info: architecture facts shown to clients (`num_classes`, `min_size`, `max_size`,
        `max_image_pixels`, `family`, `backbone`, `operating_point`: `SegmentationModel.summary()`).
    reference: drift reference statistics (`instaseg.serving.drift.ReferenceStats.to_dict()`), or None.
    """

    name: str
    version: int
    checkpoint: Path  # where this process reads the file: `ModelRegistry.fetch_checkpoint` puts it there
    sha256: str
    classes: list[dict]
    model_info: dict[str, Any]
    reference: dict[str, Any] | None
    description: str
    created_at: str

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version


@dataclass(frozen=True)
class Deployment:
    """Which versions of model `name` serve traffic: `production` (None until the first promotion) and an
    optional `canary` that receives `canary_share` of the requests."""

    name: str
    production: int | None
    canary: int | None
    canary_share: float
    history: tuple[int, ...]

    def serving_versions(self) -> list[int]:
        return [v for v in (self.production, self.canary) if v is not None]


class ModelRegistry:
    """Read and change the registry at `root` (created on first use when `create` is true).

    The statements are shared with `PostgresRegistry`, which overrides the connection, the schema and where
    checkpoints are kept; they use `?` placeholders and SQL that SQLite and PostgreSQL both run.
    """

    def __init__(self, root: str | Path, create: bool = True) -> None:
        scheme = url_scheme(root)
        if scheme in POSTGRES_SCHEMES:
            raise RegistryError(
                f"{root} is a PostgreSQL registry: open it with open_registry, not as a folder"
            )
        if scheme is not None:
            raise RegistryError(
                f"model registry {str(root)!r}: unsupported URL scheme {scheme!r}; a registry is a folder "
                "(embedded SQLite) or a postgresql:// URL"
            )
        self.root = Path(root)
        self.location = str(self.root)
        self.database = self.root / DATABASE_NAME
        if not self.database.is_file():
            if not create:
                raise RegistryError(
                    f"no model registry at {self.root} (no {DATABASE_NAME}); "
                    "`instaseg models register` creates one"
                )
            self.root.mkdir(parents=True, exist_ok=True)
        self._initialise()

    def _initialise(self) -> None:
        """Create the tables of a new registry; check the schema version of an existing one."""
        schema = self._schema_version()
        # Only a new registry is written here (an existing one is only read: replicas may mount it read-only).
        if schema is None:
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('revision', 0) ON CONFLICT DO NOTHING")
                db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", (SCHEMA_VERSION,)
                )
                schema = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if schema != SCHEMA_VERSION:
            raise RegistryError(
                f"{self.location}: schema version {schema}, this instaseg reads {SCHEMA_VERSION}"
            )

    # Reading ---------------------------------------------------------------------------------------------

    def revision(self) -> int:
        """A counter bumped by every change; cheap enough to poll every second."""
        with self._connect() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def names(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first; raises `RegistryError` for an unknown name."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
        if not rows:
            raise RegistryError(self._unknown_model(name))
        return [self._version_from_row(row) for row in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {VERSION_COLUMNS} FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            known = [v.version for v in self.versions(name)]
            raise RegistryError(f"model {name!r} has no version {version}; versions: {known}")
        return self._version_from_row(row)

    def deployment(self, name: str) -> Deployment:
        with self._connect() as db:
            return self._deployment(db, name)

    def deployments(self) -> list[Deployment]:
        """The deployment of every registered model name, by name."""
        with self._connect() as db:
            names = [row[0] for row in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]
            return [self._deployment(db, name) for name in names]

    # Changing --------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        checkpoint: str | Path,
        classes: list[dict],
        model_info: dict[str, Any],
        reference: dict[str, Any] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Copy `checkpoint` into the registry as the next version of `name` and record it.

        The first version of a name becomes its production version (so a fresh registry serves at once);
        later versions wait for `promote` or `set_canary`.
        """
        if not MODEL_NAME.match(name):
            raise RegistryError(
                f"model name {name!r} is not allowed: use 1-64 lower-case letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        source = Path(checkpoint)
        if not source.is_file():
            raise FileNotFoundError(f"checkpoint not found: {source}")
        staged = self._stage_checkpoint(source, name)
        placed: str | None = None
        try:
            with self._transaction() as db:
                row = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
                version = (row[0] or 0) + 1
                placed = self._place_checkpoint(staged, name, version)
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        placed,
                        staged.sha256,
                        json.dumps(classes),
                        json.dumps(model_info),
                        None if reference is None else json.dumps(reference),
                        description,
                        _now(),
                    ),
                )
                if version == 1:
                    db.execute(
                        "INSERT INTO deployments VALUES (?, NULL, 0, ?) ON CONFLICT (name) DO UPDATE SET "
                        "canary_version = NULL, canary_share = 0, updated_at = excluded.updated_at",
                        (name, _now()),
                    )
                    self._push_production(db, name, version)
                self._bump(db)
        except BaseException:
            # The transaction was rolled back: the copied checkpoint belongs to no version.
            self._discard_checkpoint(staged, placed)
            raise
        return self.get(name, version)

    def promote(self, name: str, version: int | None = None) -> Deployment:
        """Make `version` (default: the current canary) the production version; the canary is cleared."""
        with self._transaction() as db:
            current = self._deployment(db, name)
            if version is None:
                if current.canary is None:
                    raise RegistryError(
                        f"model {name!r} has no canary to promote; name a version "
                        f"(`instaseg models promote {name} --version N`)"
                    )
                version = current.canary
            self._check_version(db, name, version)
            self._promote(db, name, version, current)
            self._bump(db)
            return self._deployment(db, name)

    def rollback(self, name: str) -> Deployment:
        """Drop the canary if there is one; otherwise return production to the previously promoted version."""
        with self._transaction() as db:
            current = self._deployment(db, name)
            if current.canary is not None:
                self._clear_canary(db, name)
            else:
                if len(current.history) < 2:
                    raise RegistryError(
                        f"model {name!r} has no canary and no earlier production version to roll back to"
                    )
                db.execute(
                    "DELETE FROM production_history WHERE name = ? AND seq = "
                    "(SELECT MAX(seq) FROM production_history WHERE name = ?)",
                    (name, name),
                )
            self._bump(db)
            return self._deployment(db, name)

    def set_canary(self, name: str, version: int, share: float) -> Deployment:
        """Send `share` (0..1) of `name`'s traffic to `version`; the rest stays on production."""
        if not 0.0 <= share <= 1.0:
            raise RegistryError(f"canary share must lie in [0, 1], got {share}")
        with self._transaction() as db:
            current = self._deployment(db, name)
            self._check_version(db, name, version)
            if version == current.production:
                raise RegistryError(f"version {version} of {name!r} is already the production version")
            db.execute(
                "UPDATE deployments SET canary_version = ?, canary_share = ?, updated_at = ? WHERE name = ?",
                (version, share, _now(), name),
            )
            self._bump(db)
            return self._deployment(db, name)

    # Quality gate (instaseg.serving.golden) ---------------------------------------------------------------

    def set_golden_set(self, name: str, spec: dict[str, Any]) -> None:
        """Store the golden set of model `name` (`golden.GoldenSet.to_dict()`), replacing an earlier one."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone() is None:
                raise RegistryError(self._unknown_model(name, db))
            for statement in _QUALITY_SCHEMA:
                db.execute(statement)
            db.execute(
                "INSERT INTO golden_sets VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "spec = excluded.spec, updated_at = excluded.updated_at",
                (name, json.dumps(spec), _now()),
            )

    def golden_set(self, name: str) -> dict[str, Any] | None:
        """The stored golden set of `name`, or None."""
        with self._connect() as db:
            if not self._has_quality_tables(db):
                return None
            row = db.execute("SELECT spec FROM golden_sets WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def record_quality_gate(self, name: str, version: int, result: dict[str, Any]) -> None:
        """Store the latest quality-gate decision on `version` of `name` (`golden.GateDecision.to_dict()`)."""
        with self._transaction() as db:
            self._check_version(db, name, version)
            _store_version_result(db, _QUALITY_SCHEMA, "quality_gates", name, version, result)

    def quality_gates(self, name: str) -> dict[int, dict[str, Any]]:
        """The latest quality-gate decision of each version of `name` that went through the gate."""
        return self._version_results("quality_tables", "quality_gates", name)

    @staticmethod
    def _has_quality_tables(db: Any) -> bool:
        return db.execute("SELECT 1 FROM meta WHERE key = 'quality_tables'").fetchone() is not None

    # Automatic canary decisions (instaseg.serving.canary) ------------------------------------------------

    def rollback_canary(self, name: str, version: int, decision: dict[str, Any]) -> bool:
        """End the canary of `name` if it still is `version` (production is never touched) and store
        `decision` with it, in one transaction. False, changing nothing, when `version` is no longer the
        canary (another replica or an operator changed the deployment first)."""
        return self._decide_canary(name, version, decision, promote=False)

    def promote_canary(self, name: str, version: int, decision: dict[str, Any]) -> bool:
        """Make the canary `version` of `name` production if it still is the canary, storing `decision`;
        False, changing nothing, otherwise."""
        return self._decide_canary(name, version, decision, promote=True)

    def record_canary_decision(self, name: str, version: int, decision: dict[str, Any]) -> None:
        """Store a canary decision that changes no deployment (a promotion the golden-set gate refused)."""
        with self._transaction() as db:
            self._check_version(db, name, version)
            _store_version_result(db, _CANARY_SCHEMA, "canary_decisions", name, version, decision)

    def canary_decisions(self, name: str) -> dict[int, dict[str, Any]]:
        """The latest automatic canary decision on each version of `name` that had one."""
        return self._version_results("canary_tables", "canary_decisions", name)

    def _version_results(self, flag: str, table: str, name: str) -> dict[int, dict[str, Any]]:
        """version -> stored JSON result of `table` (`quality_gates`, `canary_decisions`) for `name`; empty
        while the `meta` row `flag` says the table was never created (readers never create it)."""
        with self._connect() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = ?", (flag,)).fetchone() is None:
                return {}
            rows = db.execute(f"SELECT version, result FROM {table} WHERE name = ?", (name,)).fetchall()
        return {int(version): json.loads(result) for version, result in rows}

    def _decide_canary(self, name: str, version: int, decision: dict[str, Any], promote: bool) -> bool:
        with self._transaction() as db:
            current = self._deployment(db, name)
            if current.canary != version:
                return False
            if promote:
                self._promote(db, name, version, current)
            else:
                self._clear_canary(db, name)
            _store_version_result(db, _CANARY_SCHEMA, "canary_decisions", name, version, decision)
            self._bump(db)
            return True

    # Internals -------------------------------------------------------------------------------------------

    def fetch_checkpoint(self, entry: ModelVersion) -> Path:
        """The local file of `entry`'s checkpoint (here: inside the registry folder, as registered)."""
        return entry.checkpoint

    def close(self) -> None:
        """Release what is held open between calls (here nothing: each call opens the file)."""

    def _stage_checkpoint(self, source: Path, name: str) -> StagedCheckpoint:
        """Copy `source` into the registry before its version number is known (outside the transaction)."""
        folder = self.root / CHECKPOINT_FOLDER / name
        folder.mkdir(parents=True, exist_ok=True)
        staged, sha256 = _copy_hashed(source, folder)
        return StagedCheckpoint(sha256, Path(staged))

    def _place_checkpoint(self, staged: StagedCheckpoint, name: str, version: int) -> str:
        """Give the staged copy its final name (inside the transaction); returns the `checkpoint` column."""
        relative = Path(CHECKPOINT_FOLDER) / name / f"v{version}.pt"
        os.replace(staged.path, self.root / relative)
        return relative.as_posix()

    def _discard_checkpoint(self, staged: StagedCheckpoint, placed: str | None) -> None:
        staged.path.unlink(missing_ok=True)
        if placed is not None:
            (self.root / placed).unlink(missing_ok=True)

    def _schema_version(self) -> int | None:
        """The registry's schema version, or None when its tables do not exist yet."""
        with self._connect() as db:
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError:  # no such table: an empty (new) database file
                return None
        return None if row is None else int(row[0])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            db = sqlite3.connect(self.database, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open model registry {self.database}: {exc}") from exc
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"model registry {self.database}: {exc}") from exc
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A write transaction that takes the write lock up front, so read-then-write cannot interleave."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _deployment(self, db: Any, name: str) -> Deployment:
        row = db.execute(
            "SELECT canary_version, canary_share FROM deployments WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise RegistryError(self._unknown_model(name, db))
        history = tuple(
            r[0]
            for r in db.execute("SELECT version FROM production_history WHERE name = ? ORDER BY seq", (name,))
        )
        return Deployment(
            name=name,
            production=history[-1] if history else None,
            canary=row[0],
            canary_share=float(row[1]) if row[0] is not None else 0.0,
            history=history,
        )

    def _promote(self, db: Any, name: str, version: int, current: Deployment) -> None:
        """`version` on top of the production stack (unless it is there already); the canary is cleared."""
        if version != current.production:
            self._push_production(db, name, version)
        self._clear_canary(db, name)

    @staticmethod
    def _clear_canary(db: Any, name: str) -> None:
        db.execute(
            "UPDATE deployments SET canary_version = NULL, canary_share = 0, updated_at = ? WHERE name = ?",
            (_now(), name),
        )

    def _push_production(self, db: Any, name: str, version: int) -> None:
        row = db.execute("SELECT MAX(seq) FROM production_history WHERE name = ?", (name,)).fetchone()
        db.execute(
            "INSERT INTO production_history VALUES (?, ?, ?, ?)", (name, (row[0] or 0) + 1, version, _now())
        )

    def _check_version(self, db: Any, name: str, version: int) -> None:
        known = [
            r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))
        ]
        if not known:
            raise RegistryError(self._unknown_model(name, db))
        if version not in known:
            raise RegistryError(f"model {name!r} has no version {version}; versions: {known}")

    @staticmethod
    def _bump(db: Any) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    def _unknown_model(self, name: str, db: Any | None = None) -> str:
        if db is None:
            known = self.names()
        else:
            known = [row[0] for row in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]
        return f"no model named {name!r} in registry {self.location}; registered: {known or 'none'}"

    def _checkpoint_path(self, stored: str, sha256: str) -> Path:
        """Where this process reads a checkpoint stored as `stored` (the `checkpoint` column)."""
        return self.root / stored

    def _version_from_row(self, row: tuple) -> ModelVersion:
        name, version, stored, sha256, classes, model_info, reference, description, created_at = row
        return ModelVersion(
            name=name,
            version=int(version),
            checkpoint=self._checkpoint_path(stored, sha256),
            sha256=sha256,
            classes=json.loads(classes),
            model_info=json.loads(model_info),
            reference=None if reference is None else json.loads(reference),
            description=description,
            created_at=created_at,
        )


@dataclass(frozen=True)
class StagedCheckpoint:
    """A checkpoint copied into the registry's storage, waiting for its version: its hash and where it is."""

    sha256: str
    path: Path


def _copy_hashed(source: Path, folder: Path) -> tuple[str, str]:
    """Copy `source` to a temporary file in `folder` (same file system, so it can be renamed into place)."""
    descriptor, staged = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as reader, os.fdopen(descriptor, "wb") as writer:
            for chunk in iter(lambda: reader.read(1 << 20), b""):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return staged, digest.hexdigest()


def _store_version_result(
    db: Any, schema: tuple[str, ...], table: str, name: str, version: int, result: dict[str, Any]
) -> None:
    """Create `table` with `schema` if needed and store `result` as the latest one of (`name`, `version`)."""
    for statement in schema:
        db.execute(statement)
    db.execute(
        f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT (name, version) DO UPDATE SET "
        "result = excluded.result, decided_at = excluded.decided_at",
        (name, version, json.dumps(result), _now()),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_registry(registry: ModelRegistry) -> str:
    """A plain-text table of every model version and its role, for `instaseg models list`."""
    lines = [f"{'MODEL':<20} {'VERSION':>7}  {'ROLE':<18} {'CLASSES':<24} {'DRIFT REF':<9}  REGISTERED"]
    for deployment in registry.deployments():
        for entry in registry.versions(deployment.name):
            if entry.version == deployment.production:
                role = "production"
            elif entry.version == deployment.canary:
                role = f"canary {deployment.canary_share:.0%}"
            else:
                role = "-"
            names = ",".join(c["name"] for c in entry.classes)
            names = names if len(names) <= 24 else names[:21] + "..."
            reference = "yes" if entry.reference is not None else "no"
            lines.append(
                f"{entry.name:<20} {entry.version:>7}  {role:<18} {names:<24} {reference:<9}  "
                f"{entry.created_at}"
            )
    if len(lines) == 1:
        lines.append("(no models registered)")
    return "\n".join(lines)
