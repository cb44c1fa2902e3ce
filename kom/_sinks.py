"""Historian sinks for `kom run`: SQLite (the default) and JSON lines (SPEC §9).

A sink's `write()` returns only once the updates are durable (committed); the line
acknowledges QoS 1/2 messages to the broker after that: at-least-once into the historian.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

import orjson

from ._convert import format_time, format_value
from ._errors import ConfigError, SinkError
from ._model import Quality, Reason, Update
from ._sinkhealth import SinkHealth, SinkStats

log = logging.getLogger("kom.sink")
VALID = Quality.VALID


class Sink(Protocol):
    """What `kom run` writes into. A sink may also offer `health() -> (ok, reason)`: False
    with a one-line reason (for `/health` and the metrics) while it cannot store anything,
    True and None once it can again (see `SinkWriter.health`). It may offer
    `begin(updates) -> end`, which sends a batch and returns a function that returns once the
    batch is committed (see `SinkWriter.begin`)."""

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
    detail TEXT,
    retained INTEGER NOT NULL DEFAULT 0
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
#: The write-ahead log's budget in bytes. SQLite checkpoints by itself every this many bytes
#: of pages (`wal_autocheckpoint` counts pages, so it is this over the page size: 1,000 pages
#: of 64 KiB let the WAL reach 64 MiB beside a database of a few hundred KiB), truncates the
#: log to it after a checkpoint (`journal_size_limit`), and the sink truncates it to nothing
#: when a commit leaves it larger. A near-full disk then needs room for this and one batch.
WAL_BYTES = 4 * 1024 * 1024
#: A generous guess at the bytes a row takes in the log and the database (with its index),
#: for the room a batch needs.
_ROW_BYTES = 256
#: SQLite's primary result codes for a full disk and a failed read or write (sqlite3.h).
SQLITE_FULL = 13
SQLITE_IOERR = 10


_COLUMNS = "tag, value, quality, reason, ts, received, topic, detail, retained"
_WIDTH = 9  # parameters a row
#: Parameters a row of a plain batch: every row valid, without reason or detail, not retained
#: (a drain's batches). Binding is most of the sink's work under the interpreter lock, and a
#: text costs SQLite a copy: 5 parameters a row instead of 9 (2 texts fewer) take 3,700
#: instructions to bind instead of 5,400, and 6,500 to insert instead of 6,900.
_PLAIN_WIDTH = 5
#: Rows a batch statement holds: a batch goes into the smallest that holds it, padded with
#: rows of zeros that the statement leaves out. One statement a batch: Python's sqlite3 lets
#: go of the interpreter lock for each step and must take it back after, and with the line's
#: thread decoding meanwhile each take-back waits for that thread's turn (up to the switch
#: interval, 5 ms). A few fixed sizes, because preparing a statement of thousands of rows
#: costs more than binding its rows (4,095 rows: 8 ms to prepare, 3 ms to bind and insert).
_BUCKETS = tuple(2**k for k in range(4, 14))  # 16 .. 8,192 rows
_PAD = (0,) * (_WIDTH * _BUCKETS[-1])
#: Python's sqlite3 binds exact str, int and float parameters directly; anything else (None,
#: bool, str subclasses) first goes through its adapter lookup, which costs about 0.6 µs a
#: parameter. So a missing reason or detail is bound as the integer 0, which the statement
#: turns into NULL (both are texts otherwise), and booleans as 0 and 1.
_NONE = 0
#: The stored texts of reasons: an enum's `.value` is a Python-level property, once per row.
_REASON_TEXT = {reason: reason.value for reason in Reason}


def _insert_many(rows: int, width: int = _WIDTH) -> str:
    """The statement that inserts up to `rows` rows, leaving out the padding (tag 0).

    `width` is _WIDTH (every column bound) or _PLAIN_WIDTH (tag, value, ts, received and
    topic bound; valid, no reason or detail, not retained).

    A padding row's tag becomes NULL, which the NOT NULL column refuses and OR IGNORE skips
    (a real row's tag, quality and times are never NULL). Not `WHERE column1 <> 0`: SQLite
    (3.40) pushes that term down into each of the VALUES' rows, and preparing the statement
    grows with the square of its rows (8,192 rows: 757 ms against 115 ms, measured alone).
    """
    values = ",".join(["(" + ",".join("?" * width) + ")"] * rows)
    if width == _PLAIN_WIDTH:
        columns = "column2, 'valid', NULL, column3, column4, column5, NULL, 0"
    else:
        columns = (
            "column2, column3, nullif(column4, 0), column5, column6, column7, "
            "nullif(column8, 0), column9"
        )
    return (
        f"INSERT OR IGNORE INTO updates ({_COLUMNS}) SELECT nullif(column1, 0), {columns} "
        f"FROM (VALUES {values})"
    )


class SqliteSink:
    """One table `updates`; WAL mode; one transaction per batch."""

    def __init__(self, path: str | os.PathLike[str], tag_index: bool = False) -> None:
        self.path = Path(path)
        self.url = f"sqlite:{self.path}"  # its name in /health and /metrics
        self._problem: str | None = None
        try:
            self._db = self._open(tag_index)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        # SQLite's own bound on parameters a statement (32,766 unless built otherwise).
        most = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _WIDTH
        self._buckets = [b for b in _BUCKETS if b <= most] or [1]
        #: By (rows, width): made when first needed (SQLite prepares each once, on first use).
        self._statements: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()
        self._wal = Path(f"{self.path}-wal")
        #: The log's size after the last commit (`_trim`), None when not known: `_make_room`
        #: takes it instead of asking the file system again. Each such call lets go of the
        #: interpreter lock, and taking it back waits for the line's thread (up to the switch
        #: interval, 5 ms): two calls a batch instead of four.
        self._wal_size: int | None = None
        self.rows = 0

    def _open(self, tag_index: bool) -> sqlite3.Connection:
        # The dispatcher thread writes; close() may come from the main thread.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # A new database gets 64 KiB pages (an existing one keeps its own): an append-only
            # table and its time index split pages and write WAL frames a sixteenth as often as
            # with the default 4 KiB (measured on the NETIO rows: 107,000-131,000 rows/s at
            # 4 KiB, 149,000-219,000 at 64 KiB). This must come before the switch to WAL.
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA wal_autocheckpoint={max(1, WAL_BYTES // page)}")
            db.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(updates)")}
            if "retained" not in columns:
                # A table made before the column existed: its rows were not marked.
                db.execute("ALTER TABLE updates ADD COLUMN retained INTEGER NOT NULL DEFAULT 0")
            if tag_index:
                db.execute(TAG_INDEX)
        except BaseException:
            db.close()
            raise
        return db

    def _error(self, doing: str, exc: sqlite3.Error) -> SinkError:
        """The one-line error for a failed SQLite call, "disk full" named as such."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        free = _free_bytes(self.path)
        where = f"sink sqlite:{self.path}: {doing}"
        # A write into a full file system fails as SQLITE_FULL, or as an I/O error when the
        # log's shared-memory index cannot grow.
        if code == SQLITE_FULL or (code == SQLITE_IOERR and free < WAL_BYTES):
            why = f"disk full ({free // 1024} KiB free on its file system)"
            return SinkError(f"{where}: {why}", str(self.path), "disk-full")
        return SinkError(f"{where}: {exc}", str(self.path), "error")

    def health(self) -> tuple[bool, str | None]:
        """(True, None) while batches commit; (False, why) after one failed, until one commits."""
        problem = self._problem
        return (problem is None, problem)

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r}, rows={self.rows})"

    def write(self, updates: Sequence[Update]) -> None:
        if not updates:
            return
        params = _rows(updates, True)
        width = _PLAIN_WIDTH
        if params is None:
            params = _rows(updates, False) or []
            width = _WIDTH
        with self._lock:
            try:
                self._make_room(len(updates))
                self._insert(params, len(updates), width)
            except sqlite3.Error as exc:
                error = self._error("write failed", exc)
                self._problem = str(error)
                raise error from exc
            self._problem = None
            self.rows += len(updates)
            self._trim()

    def _make_room(self, rows: int) -> None:
        """Before a batch: checkpoint and truncate the log unless the disk holds it twice over.

        A checkpoint copies the log's pages into the database, which may grow by as much:
        once a batch has taken the last free bytes, the log can no longer be emptied, and
        the sink waits for space it could have kept (seen on a 2 MiB file system with
        64 KiB pages: stuck after 7 one-row commits, each adding two pages to the log). So
        the log goes while the free space still holds it, the batch and a checkpoint.
        """
        wal = self._wal_size
        self._wal_size = None  # the batch changes it: _trim tells it again after a commit
        if wal is None:
            try:
                wal = self._wal.stat().st_size
            except OSError:
                return
        if wal and (wal > WAL_BYTES or _free_bytes(self.path) < 2 * wal + _ROW_BYTES * rows):
            self._checkpoint()

    def _trim(self) -> None:
        """After a commit: a log over its budget is checkpointed and truncated to nothing.

        SQLite's own checkpoints keep the log's file at `journal_size_limit`; this returns
        that room too, and catches a log that one large batch took past the budget. The
        rows are committed already: a checkpoint that fails (no room for the database to
        grow) is tried again before the next batch.
        """
        try:
            size = self._wal.stat().st_size
        except OSError:
            return
        if size > WAL_BYTES:
            self._checkpoint()  # the size is not known after it (truncated, or it failed)
        else:
            self._wal_size = size

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("sink sqlite:%s: checkpoint failed: %s", self.path, exc)

    def _insert(self, params: list[object], rows: int, width: int) -> None:
        """Insert the rows (`width` parameters each) in one transaction."""
        db = self._db
        top = self._buckets[-1]
        if rows <= top:
            self._execute(params, rows, width)  # one statement is a transaction of its own
            return
        db.execute("BEGIN")
        try:
            for start in range(0, rows, top):
                chunk = params[width * start : width * (start + top)]
                self._execute(chunk, min(top, rows - start), width)
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk can end the transaction).
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _execute(self, params: list[object], rows: int, width: int) -> None:
        """One statement for up to the largest bucket's rows, padded to its bucket."""
        size = next(b for b in self._buckets if b >= rows)
        params.extend(_PAD[: width * (size - rows)])
        statement = self._statements.get((size, width))
        if statement is None:
            statement = self._statements[size, width] = _insert_many(size, width)
        inserted = self._db.execute(statement, params).rowcount
        if inserted != rows:  # a NULL where the table refuses it: never skipped unnoticed
            raise sqlite3.IntegrityError(f"{rows - inserted} of {rows} rows refused (a NULL)")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JsonlSink:
    """One JSON object a line (SPEC §9), flushed (and fsynced for regular files) per batch."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = f"jsonl:{target}"  # its name in /health and /metrics
        self._file: IO[bytes]
        self._problem: str | None = None
        if target == "-":
            self._file = sys.stdout.buffer
            self._owned = False
        else:
            # Unbuffered: a failed write leaves nothing behind in a buffer (see write()).
            try:
                self._file = open(target, "ab", buffering=0)  # noqa: SIM115 - the sink's life
            except OSError as exc:
                raise self._error("cannot open", exc) from exc
            self._owned = True
        # Only a regular file can be made durable: fsync on /dev/null, a pipe or a terminal
        # fails with EINVAL, and a write retried for ever would hold back every acknowledgement.
        self._sync = self._owned and stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        self._lock = threading.Lock()
        self.rows = 0

    def _error(self, doing: str, exc: OSError) -> SinkError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(Path(self.target))
            why = f"disk full ({free // 1024} KiB free on its file system)"
            return SinkError(f"sink jsonl:{self.target}: {doing}: {why}", self.target, "disk-full")
        return SinkError(f"sink jsonl:{self.target}: {doing}: {exc}", self.target, "error")

    def health(self) -> tuple[bool, str | None]:
        """As SqliteSink.health: False and why after a failed batch, until one is written."""
        problem = self._problem
        return (problem is None, problem)

    def __repr__(self) -> str:
        return f"JsonlSink({self.target!r}, rows={self.rows})"

    def write(self, updates: Sequence[Update]) -> None:
        data = b"".join(orjson.dumps(record(u)) + b"\n" for u in updates)
        with self._lock:
            if self._owned:
                self._append(data)
            else:
                try:
                    self._file.write(data)
                    self._file.flush()
                except BrokenPipeError as exc:
                    # The reader of standard output went away (`kom run --sink jsonl:- | head`):
                    # no retry can write there again, and the batch stays unacknowledged.
                    self._problem = "standard output was closed (its reader went away)"
                    raise SinkError(
                        f"sink jsonl:-: {self._problem}", self.target, "closed"
                    ) from exc
            self.rows += len(updates)

    def _append(self, data: bytes) -> None:
        """Append (and fsync) the batch whole, or leave the file as it was and raise SinkError.

        On a full disk a write stops part-way; the cut line is taken back, since the batch is
        written again in full when it is retried (SinkWriter).
        """
        fd = self._file.fileno()
        start = os.fstat(fd).st_size if self._sync else None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
            if self._sync:
                os.fsync(fd)
        except OSError as exc:
            if start is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            error = self._error("write failed", exc)
            self._problem = str(error)
            raise error from exc
        self._problem = None

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
        "retained": update.retained,
    }


def _rows(updates: Sequence[Update], plain: bool) -> list[object] | None:
    """The statement's parameters for `updates`: _WIDTH a row, or with `plain` _PLAIN_WIDTH a
    row, and None as soon as a row is not plain (see _PLAIN_WIDTH)."""
    params: list[object] = []
    add = params.extend
    ts_key: object = None
    rx_key: object = None
    ts_text = rx_text = ""
    for tag, raw, quality, reason, ts, received, topic, detail, retained in updates:
        if plain and (quality is not VALID or reason is not None or detail is not None or retained):
            return None
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
        if plain:
            add((tag, value, ts_text, rx_text, topic))
            continue
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
                1 if retained else 0,
            )
        )
    return params


def open_sink(url: str) -> Sink:
    """`sqlite:PATH[?index=tag_ts]`, `jsonl:-`, `jsonl:PATH` or `postgresql://…` (SPEC §12);
    a bare path is SQLite."""
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
    if kind in ("postgresql", "postgres"):
        from ._pgsink import PostgresSink

        return PostgresSink(url)
    raise ConfigError(
        [f"--sink {url!r}: expected sqlite:PATH, jsonl:-, jsonl:PATH or postgresql://USER@HOST/DB"]
    )


def _free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except FileNotFoundError:  # not made yet: its folder's file system
        try:
            st = os.statvfs(path.parent)
        except OSError:
            return 0
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class SinkWriter:
    """Writes every batch into every sink, retrying until each commits (never drops).

    It runs as kom's update callback: the batch is acknowledged to the broker only after
    this returns, so a sink that cannot commit holds the acknowledgements back. A failure
    is logged once when it starts (one line saying why, e.g. "disk full") and once when
    the sink writes again; the retries between are quiet, at most 5 s apart.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.updates = 0
        self.failures = 0
        self._closed = threading.Event()
        #: Held while a sink writes: close() waits for a write under way instead of closing
        #: the sink beneath it ("I/O operation on closed file" while a failing sink retried).
        self._writing = threading.Lock()
        #: Set when a sink can never write again (standard output closed): `kom run` stops.
        self.ended = threading.Event()
        #: Per sink, in the order of `sinks`: rows, failures, commit latency (SPEC §13 metrics).
        self.stats = [SinkStats.of(sink, i) for i, sink in enumerate(self.sinks)]

    def __call__(self, updates: Sequence[Update]) -> None:
        for sink, stats in zip(self.sinks, self.stats, strict=True):
            self._write(sink, stats, updates)
        self.updates += len(updates)

    def begin(self, updates: Sequence[Update]) -> Callable[[], None] | None:
        """Start writing `updates`; the function returned returns once every sink has
        committed them (retrying as `__call__` does). Kom's dispatcher calls it before it
        acknowledges the batch, after handing over the next one: a sink that can (`begin`,
        the PostgreSQL sink) stores one batch while the next is sent. The others write here,
        as in `__call__`; with none that can, all is written here and None returned (the
        batch may be acknowledged at once)."""
        if not any(hasattr(sink, "begin") for sink in self.sinks):
            self(updates)
            return None
        started = time.perf_counter()
        ends: list[tuple[Sink, SinkStats, Callable[[], None] | None, Exception | None]] = []
        for sink, stats in zip(self.sinks, self.stats, strict=True):
            begin = getattr(sink, "begin", None)
            if begin is None:
                self._write(sink, stats, updates)
                continue
            try:
                with self._writing:
                    if self._closed.is_set():
                        raise SinkError(f"sink {sink!r}: kom is stopping, batch not written")
                    ends.append((sink, stats, begin(updates), None))
            except Exception as exc:
                if self._closed.is_set():
                    raise
                ends.append((sink, stats, None, exc))  # retried by the function returned

        def end() -> None:
            for sink, stats, finish, begun in ends:
                error = begun
                if finish is not None:
                    try:
                        with self._writing:
                            finish()
                        stats.committed(len(updates), time.perf_counter() - started)
                        continue
                    except Exception as exc:
                        if self._closed.is_set():
                            raise
                        error = exc
                self._write(sink, stats, updates, error)
            self.updates += len(updates)

        return end

    def _write(
        self,
        sink: Sink,
        stats: SinkStats,
        updates: Sequence[Update],
        failed: Exception | None = None,
    ) -> None:
        """Write `updates` into `sink` until it commits them; `failed`: a first attempt's
        error (counted and logged as any, then retried)."""
        delay = 0.1
        failed_since: float | None = None
        last = ""
        while True:
            started = time.perf_counter()
            try:
                if failed is not None:
                    exc, failed = failed, None
                    raise exc
                with self._writing:
                    if self._closed.is_set():
                        raise SinkError(f"sink {sink!r}: kom is stopping, batch not written")
                    sink.write(updates)
                stats.committed(len(updates), time.perf_counter() - started)
                break
            except Exception as exc:
                if self._closed.is_set():
                    raise  # stopping: the lines closed first, nothing of it is acknowledged
                self.failures += 1
                stats.failed(exc)
                if isinstance(exc, SinkError) and exc.reason == "closed":
                    if not self.ended.is_set():
                        log.error("%s; acknowledgements held, stopping", _one_line(sink, exc))
                        self.ended.set()
                elif str(exc) != last:
                    last = str(exc)
                    log.error("%s; acknowledgements held, retrying", _one_line(sink, exc))
                if failed_since is None:
                    failed_since = time.monotonic()
                if self._closed.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)
        if failed_since is not None:
            since = time.monotonic() - failed_since
            log.warning("sink %r: writing again after %.1f s", sink, since)

    def health(self) -> tuple[bool, str | None]:
        """(True, None), or False and the reasons of the sinks that cannot write now."""
        reasons = []
        for sink in self.sinks:
            health = getattr(sink, "health", None)
            if health is not None:
                ok, reason = health()
                if not ok:
                    reasons.append(reason or f"sink {sink!r} is failing")
        return (not reasons, "; ".join(reasons) or None)

    def sinks_health(self) -> list[SinkHealth]:
        """Every sink's state for `/health`, in the order of `sinks`: its own `health()` where it
        has one, with the rows, failures and commit times this writer saw."""
        return [stats.health(sink) for sink, stats in zip(self.sinks, self.stats, strict=True)]

    def close(self) -> None:
        self._closed.set()
        with self._writing:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:
                    log.error("closing sink %r: %s", sink, exc)


def _one_line(sink: Sink, exc: Exception) -> str:
    """A sink's failure as one line: kom's own errors name their sink already."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, SinkError) else f"sink {sink!r}: write failed: {text}"
