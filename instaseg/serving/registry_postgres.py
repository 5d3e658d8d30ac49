"""The shared model registry: versions and deployments in PostgreSQL, checkpoints in a store keyed by sha256.

For service replicas on several machines (docs/serving.md, "Running N replicas"). Same tables, statements
and semantics as the embedded registry (`registry.ModelRegistry`); what differs:

- the database is a PostgreSQL server (psycopg 3), named by a `postgresql://user@host:port/db` URL;
- checkpoints live in a *checkpoint store*, a shared folder or any fsspec URL (`s3://bucket/prefix`, ...),
  as `<store>/<sha256>.pt`; each replica copies the ones it serves into its local cache
  (`$XDG_CACHE_HOME/instaseg/checkpoints`, default `~/.cache/instaseg/checkpoints`), checking the sha256
  while copying: a corrupt or truncated file is refused and never enters the cache.

Two query parameters of the URL belong to instaseg and are removed before connecting:
`checkpoints=FOLDER_OR_URL` (the store; recorded in the database by the first registration, so later
users may leave it out, or give their own mount point of the same store) and `checkpoint_cache=FOLDER`.

Every write bumps the revision counter in the same transaction, which takes the revision row's lock first
(`SELECT ... FOR UPDATE`), so writers are serialised as SQLite's `BEGIN IMMEDIATE` serialises them. A lost
connection raises `RegistryUnavailable` and is reopened by the next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
import psycopg

from instaseg.io.files import file_sha256
from instaseg.serving.registry import (
    SCHEMA_VERSION,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RegistryUnavailable,
    StagedCheckpoint,
)

__all__ = ["PostgresRegistry", "default_checkpoint_cache"]

STORE_PARAMETER = "checkpoints"
CACHE_PARAMETER = "checkpoint_cache"
CONNECT_TIMEOUT_S = 5
# Held while the tables are created, so two first users of an empty database do not race.
_SCHEMA_LOCK = 7_301_118

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
    canary_share DOUBLE PRECISION NOT NULL DEFAULT 0,
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


def default_checkpoint_cache() -> Path:
    """A replica's local copies of served checkpoints: `$XDG_CACHE_HOME/instaseg/checkpoints`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "instaseg" / "checkpoints"


class _Statements:
    """A psycopg connection that runs the shared statements, written with sqlite3's `?` placeholders.

    The two drivers' paramstyles differ (`?` vs `%s`) and the shared statements hold no literal `?` or `%`,
    so a plain replacement is exact; a SQL library for ~20 fixed statements would be more code, not less.
    """

    def __init__(self, connection: psycopg.Connection) -> None:
        self.connection = connection

    def execute(self, statement: str, params: tuple = ()) -> psycopg.Cursor:
        return self.connection.execute(statement.replace("?", "%s"), params)


class PostgresRegistry(ModelRegistry):
    """The registry in the PostgreSQL database at `url` (created there on first use when `create` is true).

    `checkpoint_store` / `cache_dir` override the URL's `checkpoints=` / `checkpoint_cache=` parameters.
    Raises `RegistryUnavailable` naming the server when it cannot be reached.
    """

    def __init__(
        self,
        url: str,
        create: bool = True,
        checkpoint_store: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        conninfo, options = _split_url(url)
        self.location = _redacted(conninfo)
        self._conninfo = conninfo
        self._lock = threading.RLock()
        self._connection: psycopg.Connection | None = None
        self.cache_dir = Path(cache_dir or options.get(CACHE_PARAMETER) or default_checkpoint_cache())
        self.checkpoint_store = self._initialise_database(
            create, checkpoint_store or options.get(STORE_PARAMETER)
        )

    def _initialise_database(self, create: bool, store: str | None) -> str | None:
        """Create the tables if needed, check the schema, record or read the checkpoint store."""
        with self._connect() as db, db.connection.transaction():
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            if db.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                if not create:
                    raise RegistryError(
                        f"no model registry in database {self.location} (no instaseg tables); "
                        "`instaseg models register` creates one"
                    )
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
            row = db.execute("SELECT value FROM settings WHERE key = 'checkpoint_store'").fetchone()
            if row is None and store is not None and create:
                db.execute("INSERT INTO settings VALUES ('checkpoint_store', ?)", (store,))
        return store if store is not None else (row[0] if row is not None else None)

    # Checkpoints -------------------------------------------------------------------------------------------

    def fetch_checkpoint(self, entry: ModelVersion) -> Path:
        """Copy `entry`'s checkpoint from the store into the local cache (unless a verified copy is there).

        The sha256 is checked while copying; a corrupt or truncated file raises `RegistryError` and leaves
        the cache as it was. Returns the cached file (`entry.checkpoint`).
        """
        cached = entry.checkpoint
        if cached.is_file() and file_sha256(cached) == entry.sha256:
            return cached
        fs, stored = self._store_path(f"{entry.sha256}.pt")
        cached.parent.mkdir(parents=True, exist_ok=True)
        descriptor, staged = tempfile.mkstemp(dir=cached.parent, prefix=".incoming-", suffix=".tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with fs.open(stored, "rb") as reader, os.fdopen(descriptor, "wb") as writer:
                for chunk in iter(lambda: reader.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    writer.write(chunk)
            if digest.hexdigest() != entry.sha256:
                raise RegistryError(
                    f"checkpoint {self.checkpoint_store}/{entry.sha256}.pt of {entry.name} v{entry.version} "
                    f"is corrupt or truncated: sha256 {digest.hexdigest()[:12]}... over {size} bytes, "
                    f"registered {entry.sha256[:12]}...; not loaded"
                )
            os.replace(staged, cached)
        except FileNotFoundError as exc:
            raise RegistryError(
                f"checkpoint of {entry.name} v{entry.version} is missing from the store: "
                f"{self.checkpoint_store}/{entry.sha256}.pt"
            ) from exc
        finally:
            Path(staged).unlink(missing_ok=True)
        return cached

    def _stage_checkpoint(self, source: Path, name: str) -> StagedCheckpoint:
        """Upload `source` to the store as `<sha256>.pt` (skipped when a file of that name and size is there:
        the name is its content's hash); the version number does not enter the name."""
        sha256 = file_sha256(source)
        fs, stored = self._store_path(f"{sha256}.pt")
        if not (fs.exists(stored) and fs.size(stored) == source.stat().st_size):
            fs.makedirs(stored.rsplit("/", 1)[0], exist_ok=True)
            incoming = f"{stored}.incoming-{uuid.uuid4().hex}"
            try:
                fs.put_file(str(source), incoming)
                fs.mv(incoming, stored)  # readers never see a half-written checkpoint under its final name
            except BaseException:
                with contextlib.suppress(OSError):
                    fs.rm(incoming)
                raise
        return StagedCheckpoint(sha256, source)

    def _place_checkpoint(self, staged: StagedCheckpoint, name: str, version: int) -> str:
        return f"{staged.sha256}.pt"

    def _discard_checkpoint(self, staged: StagedCheckpoint, placed: str | None) -> None:
        """Nothing: a stored checkpoint is named by its content and may belong to other versions too."""

    def _checkpoint_path(self, stored: str, sha256: str) -> Path:
        return self.cache_dir / f"{sha256}.pt"

    def _store_path(self, name: str) -> tuple[Any, str]:
        if self.checkpoint_store is None:
            raise RegistryError(
                f"model registry {self.location} has no checkpoint store yet: add "
                f"?{STORE_PARAMETER}=FOLDER_OR_URL (a folder or fsspec URL every replica can read) to the "
                "registry URL"
            )
        fs, root = fsspec.core.url_to_fs(self.checkpoint_store)
        return fs, f"{root.rstrip('/')}/{name}"

    # Connection -------------------------------------------------------------------------------------------

    def _schema_version(self) -> int | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        """The one connection of this registry object (threads take turns), opened again after a failure."""
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = psycopg.connect(
                        self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                    )
                yield _Statements(self._connection)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._close()
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RegistryUnavailable(
                    f"cannot reach the model registry database {self.location}: {reason}"
                ) from exc
            except psycopg.Error as exc:
                raise RegistryError(f"model registry {self.location}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A write transaction holding the revision row's lock from its start, so writers take turns."""
        with self._connect() as db, db.connection.transaction():
            db.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
            yield db

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Close the database connection (the next call opens a new one)."""
        with self._lock:
            self._close()


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """(the URL libpq gets, instaseg's own query parameters removed from it)."""
    parts = urlsplit(url)
    ours, theirs = {}, []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in (STORE_PARAMETER, CACHE_PARAMETER):
            ours[key] = value
        else:
            theirs.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
