"""PostgreSQL for tests: a database of its own on the machine's server, or a private cluster.

`database()` makes a uniquely named database on 127.0.0.1:5432 (trust auth, user postgres)
and drops it afterwards; `Cluster` runs a PostgreSQL of its own (initdb + pg_ctl as the
postgres user, in a temporary folder, on a free loopback port) that a test may stop, kill
and start without disturbing anyone else. Both skip the test, with the reason, when they
cannot be had.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ._broker import free_port

HOST = "127.0.0.1"
PORT = int(os.environ.get("KOM_TEST_PGPORT", "5432"))
USER = "postgres"


def server_url(port: int = PORT, db: str = "postgres") -> str:
    return f"postgresql://{USER}@{HOST}:{port}/{db}"


def answers(port: int = PORT) -> str | None:
    """None when a PostgreSQL on `port` takes a connection, else why not."""
    try:
        with psycopg.connect(server_url(port), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return " ".join(str(exc).split())


@contextlib.contextmanager
def database(port: int = PORT) -> Iterator[str]:
    """A fresh database on the server at `port`; yields its URL, drops it afterwards."""
    why = answers(port)
    if why is not None:
        pytest.skip(f"no PostgreSQL answers on {HOST}:{port} ({why})")
    name = f"kom_test_{secrets.token_hex(6)}"
    with psycopg.connect(server_url(port), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server_url(port, name)
    finally:
        with psycopg.connect(server_url(port), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class Cluster:
    """A private PostgreSQL (trust auth on loopback) in a temporary folder, on a free port."""

    def __init__(self) -> None:
        bindir = _bin()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("a private PostgreSQL cluster needs root (runuser -u postgres)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="kom-pg-"))
        shutil.chown(self.dir, USER, USER)
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self.port = free_port()
        self._as_postgres(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"
        )
        self.start()

    def _as_postgres(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            ["runuser", "-u", USER, "--", str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "".join(self.log.read_text().splitlines(keepends=True)[-20:])
        except OSError:
            return ""

    def url(self, db: str = "postgres") -> str:
        return server_url(self.port, db)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={HOST}"
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (clean), or `immediate` (as if it crashed: recovery on start)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate", down: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
