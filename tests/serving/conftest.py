"""A real PostgreSQL server for the shared-registry tests, started once per test session.

The server runs from a temporary data folder on a free loopback port (no Unix socket), with `trust`
authentication for local connections only. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` user (`runuser`). Without the PostgreSQL binaries the tests skip, naming what was looked for;
with `INSTASEG_REQUIRE_POSTGRES=1` (CI) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_SEARCHED = "/usr/lib/postgresql/*/bin, then PATH"


def _postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    found = candidates[0] if candidates else shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One `postgres` process on 127.0.0.1:`port` over the data folder `folder`; `stop()` / `start()` to
    simulate losing the database and getting it back."""

    def __init__(self, bin_dir: Path, folder: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.port = _free_port()
        self._user: list[str] = []
        if os.geteuid() == 0:
            self._user = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._user, str(self.bin_dir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL (each test gets its own registry)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("INSTASEG_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL binaries (pg_ctl, initdb) not found in {_SEARCHED}")
        pytest.skip(f"PostgreSQL binaries (pg_ctl, initdb) not found in {_SEARCHED}")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'instaseg[postgres]')")
    folder = Path(tempfile.mkdtemp(prefix="instaseg-pg-"))
    server = PostgresServer(bin_dir, folder)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped by an outage test that failed midway
            server.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(folder)
                break
            except OSError:
                time.sleep(0.2)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()
