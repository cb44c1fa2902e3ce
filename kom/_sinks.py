"""Historian sinks for `kom run`: SQLite (the default) and JSON lines (SPEC §9).

A sink's `write()` returns only once the updates are durable (committed); the line
acknowledges QoS 1/2 messages to the broker after that: at-least-once into the historian.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import orjson

from ._convert import format_time, format_value
from ._errors import ConfigError
from ._model import Quality, Reason, Update
from ._sinkhealth import HealthMark, SinkHealth, SinkStats, marks_health

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
#: Rows a batch statement holds: a batch goes into the smallest that holds it, padded with
#: rows of zeros that the statement leaves out. One statement a batch: Python's sqlite3 lets
#: go of the interpreter lock for each step and must take it back after, and with the line's
#: thread decoding meanwhile each take-back waits for that thread's turn (up to the switch
#: interval, 5 ms). A few fixed sizes, because preparing a statement of thousands of rows
#: costs more than binding its rows (4,095 rows: 8 ms to prepare, 3 ms to bind and insert).
_BUCKETS = tuple(2**k for k in range(4, 14))  # 16 .. 8,192 rows
_PAD = (0,) * (8 * _BUCKETS[-1])
#: Python's sqlite3 binds exact str, int and float parameters directly; anything else (None,
#: bool, str subclasses) first goes through its adapter lookup, which costs about 0.6 µs a
#: parameter. So a missing reason or detail is bound as the integer 0, which the statement
#: turns into NULL (both are texts otherwise), and booleans as 0 and 1.
_NONE = 0
#: The stored texts of reasons: an enum's `.value` is a Python-level property, once per row.
_REASON_TEXT = {reason: reason.value for reason in Reason}


def _insert_many(rows: int) -> str:
    """The statement that inserts up to `rows` rows, leaving out the padding (tag 0)."""
    values = ",".join(["(?,?,?,?,?,?,?,?)"] * rows)
    return (
        f"INSERT INTO updates ({_COLUMNS}) SELECT column1, column2, column3, "
        "nullif(column4, 0), column5, column6, column7, nullif(column8, 0) "
        f"FROM (VALUES {values}) WHERE column1 <> 0"
    )


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
        # SQLite's own bound on parameters a statement (32,766 unless built otherwise).
        most = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 8
        self._buckets = [b for b in _BUCKETS if b <= most] or [1]
        self._statements = {b: _insert_many(b) for b in self._buckets}
        self._lock = threading.Lock()
        self.rows = 0
        self._health = HealthMark()

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r}, rows={self.rows})"

    def health(self) -> SinkHealth:
        """Committing, or the last write's error (SQLite's `database or disk is full`)."""
        return self._health.report(f"sqlite:{self.path}", self.rows)

    @marks_health
    def write(self, updates: Sequence[Update]) -> None:
        if not updates:
            return
        params: list[object] = []
        add = params.extend
        ts_key: object = None
        rx_key: object = None
        ts_text = rx_text = ""
        for tag, raw, quality, reason, ts, received, topic, detail in updates:
            # The updates of one message share their time objects: format each once.
            if ts is not ts_key:
                ts_key, ts_text = ts, format_time(ts)
            if received is not rx_key:
                rx_key, rx_text = received, format_time(received)
            kind = type(raw)
            value: object
            if kind is float or kind is str or kind is int or raw is None:
                value = raw
            elif kind is bool:
                value = 1 if raw else 0
            elif raw is ts:  # a time tag on the message's own time field (the NETIO profile)
                value = ts_text
            else:
                value = format_value(raw)
            add(
                (
                    tag,
                    value,
                    "valid" if quality is VALID else "invalid",
                    _NONE if reason is None else _REASON_TEXT[reason],
                    ts_text,
                    rx_text,
                    topic,
                    _NONE if detail is None else detail,
                )
            )
        with self._lock:
            self._insert(params, len(updates))
            self.rows += len(updates)

    def _insert(self, params: list[object], rows: int) -> None:
        """Insert the rows (8 parameters each) in one transaction."""
        db = self._db
        top = self._buckets[-1]
        if rows <= top:
            self._execute(params, rows)  # one statement is a transaction of its own
            return
        db.execute("BEGIN")
        try:
            for start in range(0, rows, top):
                self._execute(params[8 * start : 8 * (start + top)], min(top, rows - start))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _execute(self, params: list[object], rows: int) -> None:
        """One statement for up to the largest bucket's rows, padded to its bucket."""
        size = next(b for b in self._buckets if b >= rows)
        params.extend(_PAD[: 8 * (size - rows)])
        self._db.execute(self._statements[size], params)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JsonlSink:
    """One JSON object a line (SPEC §9), flushed (and fsynced for regular files) per batch."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[bytes]
        if target == "-":
            self._file = sys.stdout.buffer
            self._owned = False
        else:
            self._file = open(target, "ab")  # noqa: SIM115 - kept open for the sink's life
            self._owned = True
        # Only a regular file can be made durable: fsync on /dev/null, a pipe or a terminal
        # fails with EINVAL, and a write retried for ever would hold back every acknowledgement.
        self._sync = self._owned and stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        self._lock = threading.Lock()
        self.rows = 0
        self._health = HealthMark()

    def __repr__(self) -> str:
        return f"JsonlSink({self.target!r}, rows={self.rows})"

    def health(self) -> SinkHealth:
        """Committing, or the last write's error (`[Errno 28] No space left on device`)."""
        return self._health.report(f"jsonl:{self.target}", self.rows)

    @marks_health
    def write(self, updates: Sequence[Update]) -> None:
        data = b"".join(orjson.dumps(record(u)) + b"\n" for u in updates)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            if self._sync:
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
        #: Per sink, in the order of `sinks`: rows, failures, commit latency (SPEC §13 metrics).
        self.stats = [SinkStats.of(sink, i) for i, sink in enumerate(self.sinks)]

    def __call__(self, updates: Sequence[Update]) -> None:
        for sink, stats in zip(self.sinks, self.stats, strict=True):
            delay = 0.1
            while True:
                started = time.perf_counter()
                try:
                    sink.write(updates)
                    stats.committed(len(updates), time.perf_counter() - started)
                    break
                except Exception as exc:
                    self.failures += 1
                    stats.failed(exc)
                    log.error("sink %r: write failed, retrying in %.1f s: %s", sink, delay, exc)
                    if self._closed.wait(delay):
                        raise
                    delay = min(delay * 2, 5.0)
        self.updates += len(updates)

    def health(self) -> list[SinkHealth]:
        """Every sink's state (its own `health()` where it has one), in the order of `sinks`."""
        return [stats.health(sink) for sink, stats in zip(self.sinks, self.stats, strict=True)]

    def close(self) -> None:
        self._closed.set()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing sink %r: %s", sink, exc)
