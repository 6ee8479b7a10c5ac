"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, a free port
on loopback, fsync off, torn down at the end of the session.

Runs the server binaries directly (Debian's postgresql package), as the
``postgres`` user when the tests run as root (initdb refuses root). When the
binaries are missing the PostgreSQL tests skip with the reason - unless
ENGINE_REQUIRE_POSTGRES=1 (set by .ci/run), which turns that into a failure.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from servers import free_port


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    def __init__(self):
        self.initdb = find_binary("initdb")
        self.pg_ctl = find_binary("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
        self.directory = Path(tempfile.mkdtemp(prefix="engine-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"])
        self.server_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(self.as_user + command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import sqlalchemy as sa

        name = "t_" + uuid.uuid4().hex[:12]
        engine = sa.create_engine(f"{self.server_url}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return f"{self.server_url}/{name}"

    def stop(self) -> None:
        subprocess.run(self.as_user + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


_server: PostgresServer | None = None
_failure: str | None = None


def server() -> PostgresServer:
    """The session's server, started on first use; skips (or fails in CI) when impossible."""
    global _server, _failure
    if _server is None and _failure is None:
        try:
            _server = PostgresServer()
        except (FileNotFoundError, RuntimeError) as exc:
            _failure = str(exc)
    if _server is None:
        if os.environ.get("ENGINE_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here but cannot start: {_failure}")
        pytest.skip(f"PostgreSQL unavailable: {_failure}")
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
