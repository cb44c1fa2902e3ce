"""Historian sinks for `kom run`: SQLite (the default) and JSON lines (SPEC §9).

A sink's `write()` returns only once the updates are durable (committed); the line
acknowledges QoS 1/2 messages to the broker after that: at-least-once into the historian.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import orjson

from ._convert import format_time, format_value
from ._errors import ConfigError
from ._model import Quality, Reason, Update

log = logging.getLogger("kom.sink")
VALID = Quality.VALID


class Sink(Protocol):
    def write(self, updates: Sequence[Update]) -> None: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY,
    tag TEXT NOT NULL,
    value,
    quality TEXT NOT NULL,
    reason TEXT,
    ts TEXT NOT NULL,
    received TEXT NOT NULL,
    topic TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS updates_ts ON updates (ts);
"""

#: `sqlite:PATH?index=tag_ts` adds this index. Rows arrive in time order, so an index on ts
#: only grows at its end (measured: 440,000 rows/s, flat as the table grows), while one on
#: (tag, ts) is written all over for every batch (230,000 rows/s falling to 90,000 at
#: 2.4 million rows). Per-tag queries are fast with it; choose by what the historian needs.
TAG_INDEX = "CREATE INDEX IF NOT EXISTS updates_tag_ts ON updates (tag, ts);"
#: The page size of a new database (see SqliteSink.__init__).
PAGE_SIZE = 65536


_COLUMNS = "tag, value, quality, reason, ts, received, topic, detail"
_INSERT_ROWS = f"INSERT INTO updates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
#: A whole batch in one statement: the rows as one JSON array of arrays, taken apart by
#: SQLite. executemany() steps once per row, and Python's sqlite3 releases the interpreter
#: lock for each step and takes it back after; with the line's thread decoding meanwhile,
#: each take-back waits for that thread's turn to end (measured beside a busy thread: 4,800
#: rows/s through executemany, 78,000 through one statement). Alone, executemany is faster
#: (NETIO rows: 145,000 against 97,000 rows/s), but kom's sink never runs alone.
_INSERT_JSON = (
    f"INSERT INTO updates ({_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(8))
    + " FROM json_each(?)"
)
#: SQLite's JSON functions end a text at an escaped NUL; such batches go row by row.
_JSON_NUL = b"\\u0000"
_PLAIN = frozenset({float, int, bool, str})
#: The stored texts of reasons: an enum's `.value` is a Python-level property, once per row.
_REASON_TEXT = {reason: reason.value for reason in Reason}


class SqliteSink:
    """One table `updates`; WAL mode; one transaction per batch."""

    def __init__(self, path: str | os.PathLike[str], tag_index: bool = False) -> None:
        self.path = Path(path)
        # The dispatcher thread writes; close() may come from the main thread.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # A new database gets 64 KiB pages (an existing one keeps its own): an append-only
        # table and its time index split pages and write WAL frames a sixteenth as often as
        # with the default 4 KiB (measured on the NETIO rows: 107,000-131,000 rows/s at 4 KiB,
        # 149,000-219,000 at 64 KiB). This must come before the switch to WAL.
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        if tag_index:
            self._db.execute(TAG_INDEX)
        self._lock = threading.Lock()
        self.rows = 0

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r}, rows={self.rows})"

    def write(self, updates: Sequence[Update]) -> None:
        rows: list[tuple[object, ...]] = []
        append = rows.append
        ts_key: object = None
        rx_key: object = None
        ts_text = rx_text = ""
        plain = _PLAIN
        for tag, raw, quality, reason, ts, received, topic, detail in updates:
            # The updates of one message share their time objects: format each once.
            if ts is not ts_key:
                ts_key, ts_text = ts, format_time(ts)
            if received is not rx_key:
                rx_key, rx_text = received, format_time(received)
            value: object
            if raw is None or type(raw) in plain:
                value = raw
            elif raw is ts:  # a time tag on the message's own time field (the NETIO profile)
                value = ts_text
            else:
                value = format_value(raw)
            append(
                (
                    tag,
                    value,
                    "valid" if quality is VALID else "invalid",
                    reason and _REASON_TEXT[reason],
                    ts_text,
                    rx_text,
                    topic,
                    detail,
                )
            )
        data = _as_json(rows)
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                if data is None:
                    db.executemany(_INSERT_ROWS, rows)
                else:
                    db.execute(_INSERT_JSON, (data,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self.rows += len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _as_json(rows: list[tuple[object, ...]]) -> bytes | None:
    """The rows as one JSON array for _INSERT_JSON; None when they must go row by row.

    Values are finite floats, 64-bit integers, booleans (stored as 0/1), text or None, each
    of which JSON carries exactly (a property test checks the round trip). Anything orjson
    refuses goes row by row, where the driver reports what it cannot store.
    """
    try:
        data = orjson.dumps(rows)
    except TypeError:
        return None
    return None if _JSON_NUL in data else data


class JsonlSink:
    """One JSON object a line (SPEC §9), flushed (and fsynced for files) per batch."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[bytes]
        if target == "-":
            self._file = sys.stdout.buffer
            self._owned = False
        else:
            self._file = open(target, "ab")  # noqa: SIM115 - kept open for the sink's life
            self._owned = True
        self._lock = threading.Lock()
        self.rows = 0

    def __repr__(self) -> str:
        return f"JsonlSink({self.target!r}, rows={self.rows})"

    def write(self, updates: Sequence[Update]) -> None:
        data = b"".join(orjson.dumps(record(u)) + b"\n" for u in updates)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            if self._owned:
                os.fsync(self._file.fileno())
            self.rows += len(updates)

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._file.close()
            else:
                self._file.flush()


def record(update: Update) -> dict[str, object]:
    """The SPEC §9 record of an update: ISO times, durations in seconds, invalid as null."""
    return {
        "tag": update.tag,
        "value": format_value(update.value),
        "quality": update.quality.value,
        "reason": update.reason.value if update.reason else None,
        "ts": format_time(update.ts),
        "received": format_time(update.received),
        "topic": update.topic,
    }


def open_sink(url: str) -> Sink:
    """`sqlite:PATH[?index=tag_ts]`, `jsonl:-` or `jsonl:PATH`; a bare path is SQLite."""
    kind, sep, rest = url.partition(":")
    if not sep:
        return SqliteSink(url)
    if kind == "sqlite" and rest:
        path, _, query = rest.partition("?")
        if query not in ("", "index=tag_ts", "index=ts"):
            raise ConfigError([f"--sink {url!r}: the SQLite option is index=tag_ts (or index=ts)"])
        return SqliteSink(path, tag_index=query == "index=tag_ts")
    if kind == "jsonl" and rest:
        return JsonlSink(rest)
    raise ConfigError([f"--sink {url!r}: expected sqlite:PATH, jsonl:- or jsonl:PATH"])


class SinkWriter:
    """Writes every batch into every sink, retrying until each commits (never drops).

    It runs as kom's update callback: the batch is acknowledged to the broker only after
    this returns, so a sink that cannot commit holds the acknowledgements back.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.updates = 0
        self.failures = 0
        self._closed = threading.Event()

    def __call__(self, updates: Sequence[Update]) -> None:
        for sink in self.sinks:
            delay = 0.1
            while True:
                try:
                    sink.write(updates)
                    break
                except Exception as exc:
                    self.failures += 1
                    log.error("sink %r: write failed, retrying in %.1f s: %s", sink, delay, exc)
                    if self._closed.wait(delay):
                        raise
                    delay = min(delay * 2, 5.0)
        self.updates += len(updates)

    def close(self) -> None:
        self._closed.set()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing sink %r: %s", sink, exc)
