"""A persistent outbox: QoS 1/2 writes that survive a crash of kom.

The MQTT session keeps unacknowledged outgoing messages in memory only. With `outbox = "path"`
on a line, each QoS 1/2 write is committed to SQLite before it is handed to the session and deleted
when the broker completes it (PUBACK/PUBCOMP); what is left after a crash is sent again
on the next start. Delivery is at least once: a write completed just before a crash, whose
deletion did not commit, is sent twice.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    line TEXT NOT NULL,
    tag TEXT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


class Pending(NamedTuple):
    id: int
    tag: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """The outbox of one line in an SQLite file (several lines may share the file)."""

    def __init__(self, path: str | Path, line: str) -> None:
        self.path = Path(path)
        self.line = line
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, line={self.line!r})"

    def add(self, tag: str | None, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Commit a write before it is sent; returns its id."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO outbox (line, tag, topic, payload, qos, retain, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.line, tag, topic, payload, qos, int(retain), time.time()),
            )
            return int(cursor.lastrowid or 0)

    def done(self, ident: int) -> None:
        """The broker completed the write: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (ident,))

    def pending(self) -> list[Pending]:
        """Writes not completed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tag, topic, payload, qos, retain FROM outbox"
                " WHERE line = ? ORDER BY id",
                (self.line,),
            ).fetchall()
        return [Pending(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
