"""The PostgreSQL historian sink: `--sink postgresql://USER@HOST[:PORT]/DB[?table=NAME]` (SPEC §12).

Each batch is one transaction: one `COPY ... FROM STDIN (FORMAT BINARY)` of every update,
sent outside any transaction block, so that the COPY is its own transaction; the server
commits it (durably, with `synchronous_commit` on) before it answers that the COPY is
complete, and `write()` returns only after that answer, so `kom run` acknowledges the
messages to the broker only once they are stored. `kom run` uses `begin()` instead (through
`SinkWriter.begin`): it sends a batch's COPY and its end on one of two connections and returns
the wait for the answer, which kom's dispatcher calls after sending the next batch on the other
connection, and before it acknowledges the batch. A failed write closes its connection and
raises; the `SinkWriter` retries the whole batch on a new connection (nothing uncommitted is ever
acknowledged; a COMMIT whose answer was lost may store a batch twice: at-least-once).

The rows are encoded here, in PostgreSQL's binary COPY format (`Encoder`, no I/O), rather
than by psycopg's `write_row`: the updates of one message share their tag names, topic and
time objects, and encoding each of those once is what makes the sink keep up with the line
(docs/scale-out.md has the measured figures).
"""

from __future__ import annotations

import functools
import logging
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from ._errors import ConfigError, SinkError
from ._model import Quality, Update

log = logging.getLogger("kom.sink")

#: The table's columns. A value goes into the one `value_*` column of its kind, the
#: others stay NULL (an invalid value leaves all four NULL): numbers (analog, integer and
#: quaternary values; durations in seconds, as in the SPEC §9 record) in `value_num`, digital
#: values in `value_bool`, texts in `value_text`, absolute times in `value_time`.
#: This is the order the encoder writes a row's fields in (see Encoder.chunks); the
#: table's own order is TABLE_SQL's.
COPY_COLUMNS = (
    "tag",
    "quality",
    "reason",
    "value_num",
    "value_bool",
    "value_text",
    "value_time",
    "detail",
    "ts",
    "received",
    "topic",
    "retained",
)

TABLE_SQL = """
CREATE TABLE {table} (
    tag text COLLATE "C" NOT NULL,
    ts timestamptz NOT NULL,
    received timestamptz NOT NULL,
    quality text NOT NULL,
    reason text,
    value_num double precision,
    value_bool boolean,
    value_text text,
    value_time timestamptz,
    topic text,
    detail text,
    retained boolean NOT NULL DEFAULT false
)"""
#: "One tag over a time range" (SPEC §12); on a partitioned table every partition gets it.
#: The tag column compares bytes (COLLATE "C"): the index is written at every row, and with
#: the database's default collation (C.UTF-8 here) COPY stored 114,000-117,000 rows/s against
#: 169,000 with "C" (the same rows, the same machine, alternated). Tags sort in byte order.
INDEX_SQL = "CREATE INDEX IF NOT EXISTS {index} ON {table} (tag, ts)"

#: Daily partitions are made this many days ahead of today (UTC), so that the first rows of
#: a new day never wait for DDL, and on demand for a batch's days from `LOOKBACK` days ago
#: on. Rows outside that window (a device whose clock is far off) go to the default
#: partition `<table>_other`; when a day whose rows wait there becomes a partition of its
#: own, its rows are moved into it in the same transaction.
AHEAD = 2
LOOKBACK = 31

CONNECT_DEFAULTS: dict[str, str | int | None] = {
    "application_name": "kom",
    "keepalives": 1,
    "keepalives_idle": 20,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "connect_timeout": 10,
}

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")  # room for the `_pYYYYMMDD` suffix (63 max)
DEFAULT_TABLE = "updates"

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_FIELDS = struct.pack(">h", len(COPY_COLUMNS))
_VALID = b"\x00\x00\x00\x05valid"
_INVALID = b"\x00\x00\x00\x07invalid"
_FALSE = b"\x00\x00\x00\x01\x00"
_TRUE = b"\x00\x00\x00\x01\x01"
_F8 = struct.Struct(">id").pack
_BOOL_TRUE = _NULL + _TRUE + _NULL * 2  # the four value fields of a digital value
_BOOL_FALSE = _NULL + _FALSE + _NULL * 2
_BIG = 2**53  # integers below this in size are exact as a double
_I8 = struct.Struct(">iq").pack
_NULLS_AFTER_NUM = _NULL * 3  # a number's row: value_bool, value_text, value_time NULL
_AFTER_NUM = _NULLS_AFTER_NUM + _NULL  # ... and no detail
_VALID_NO_REASON = _VALID + _NULL


@attrs.frozen
class Target:
    """Where the sink writes: libpq's connection string and the table's name.

    `conninfo` may hold a password (from the URL) and is never shown; `shown` is the URL
    with its password replaced by `***`, for logs and reprs.
    """

    conninfo: str = attrs.field(repr=False)
    table: str
    shown: str
    password: str | None = attrs.field(default=None, repr=False)


def parse_url(url: str) -> Target:
    """`postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?table=NAME&libpq options]` as a Target.

    `table` is kom's own option and is taken out; any other query option (`sslmode`,
    `connect_timeout`, ...) goes to libpq as it is. A missing password comes from
    `PGPASSWORD` or `~/.pgpass`, as libpq does it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError([f"--sink {_hide(url)!r}: expected postgresql://USER@HOST[:PORT]/DB"])
    query = parse_qsl(parts.query, keep_blank_values=True)
    table = DEFAULT_TABLE
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "table":
            table = value
        else:
            rest.append((key, value))
    if not NAME.fullmatch(table):
        raise ConfigError(
            [
                f"--sink {_hide(url)!r}: table: a name matches [A-Za-z_][A-Za-z0-9_]* "
                f"(at most 48 characters), found {table!r}"
            ]
        )
    if not parts.path.strip("/"):
        raise ConfigError([f"--sink {_hide(url)!r}: the database is missing (…/DB)"])
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    shown_parts = parts._replace(netloc=_hide_netloc(parts.netloc), query=urlencode(query))
    return Target(conninfo, table, urlunsplit(shown_parts), parts.password or None)


def _hide_netloc(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return netloc
    user = userinfo.split(":", 1)[0]
    return f"{user}:***@{host}"


def _hide(url: str) -> str:
    try:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=_hide_netloc(parts.netloc)))
    except ValueError:
        return "postgresql://…"


def pg_time(dt: datetime) -> int:
    """Microseconds since 2000-01-01 UTC, PostgreSQL's timestamptz; a naive `dt` is UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - _PG_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _text(value: str) -> bytes:
    """A text field. PostgreSQL's text holds neither NUL nor invalid UTF-8, and one row it
    refuses would fail its whole batch again on every retry (the line would stall): a NUL
    becomes U+FFFD, as does an undecodable byte kept as a lone surrogate."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        data = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value).encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def _value(raw: object, ts: object, ts_data: bytes) -> bytes:
    """The four value fields of a value that is not a float, bool or None."""
    if isinstance(raw, str):
        return _NULL * 2 + _text(raw) + _NULL
    if isinstance(raw, datetime):
        return _NULL * 3 + (ts_data if raw is ts else _I8(8, pg_time(raw)))
    if isinstance(raw, timedelta):
        return _F8(8, raw.total_seconds()) + _NULL * 3
    if isinstance(raw, int | float):
        try:
            return _F8(8, float(raw)) + _NULL * 3
        except OverflowError:  # an integer beyond double precision's range: kept as text
            return _NULL * 2 + _text(str(raw)) + _NULL
    return _NULL * 2 + _text(str(raw)) + _NULL


class Encoder:
    """Updates to PostgreSQL binary COPY data; texts seen before are encoded once."""

    def __init__(self) -> None:
        self._texts: dict[str, bytes] = {}
        self._heads: dict[str, bytes] = {}  # a row's field count and its tag
        self._valid_heads: dict[str, bytes] = {}  # ... then a valid value's quality, reason

    def _field(self, value: str | None) -> bytes:
        if value is None:
            return _NULL
        cached = self._texts.get(value)
        if cached is None:
            if len(self._texts) > 100_000:  # tags and topics repeat; anything else may not
                self._texts.clear()
                self._heads.clear()
                self._valid_heads.clear()
            cached = self._texts[value] = _text(value)
        return cached

    def encode(self, updates: Sequence[Update]) -> bytes:
        """One complete COPY stream (header, the rows, trailer) for `updates`."""
        return b"".join(self.chunks(updates, len(updates) + 1))

    def chunks(self, updates: Sequence[Update], rows: int = 1024) -> Iterator[bytes]:
        """The COPY stream of `updates` in pieces of about `rows` rows (the header in the
        first, the trailer in the last), in the column order of COPY_COLUMNS: the fields a
        message's updates share (times, topic) last, so that they are encoded once a message
        and added as one piece. In pieces, so that the server stores one while the next is
        encoded."""
        out = [_HEADER]
        add = out.append
        join = b"".join
        field = self._field
        heads = self._heads
        valid_heads = self._valid_heads
        ts_key: object = None
        rx_key: object = None
        topic_key: object = None
        ts_data = b""
        tails = (b"", b"")
        num_tails = other_tails = tails
        valid = Quality.VALID
        limit = 3 * rows
        raw: Any  # dispatched on its exact type below
        for update in updates:
            if len(update) == 9:
                tag, raw, quality, reason, ts, received, topic, detail, retained = update
            else:
                tag, raw, quality, reason, ts, received, topic, detail = update[:8]
                retained = len(update) > 8 and update[8]
            if ts is not ts_key or received is not rx_key or topic is not topic_key:
                # The updates of one message share their times and topic: encode them once.
                if ts is not ts_key:
                    ts_key, ts_data = ts, _I8(8, pg_time(ts))
                rx_key, topic_key = received, topic
                shared = ts_data + _I8(8, pg_time(received)) + field(topic)
                tails = (shared + _FALSE, shared + _TRUE)
                # ... and with what comes between a value and them: a number's three
                # other value fields and the detail, or only the detail.
                num_tails = (_AFTER_NUM + tails[0], _AFTER_NUM + tails[1])
                other_tails = (_NULL + tails[0], _NULL + tails[1])
            if quality is valid and reason is None and detail is None:
                # The common row, a valid value without detail: three pieces (the tag's
                # constant head, the value fields, the message's tail), no join a row.
                kind = type(raw)
                value: bytes | None
                if kind is float:
                    value, after = _F8(8, raw), num_tails
                elif kind is bool:
                    value, after = (_BOOL_TRUE if raw else _BOOL_FALSE), other_tails
                elif kind is int and -_BIG < raw < _BIG:
                    value, after = _F8(8, raw), num_tails
                elif kind is timedelta:
                    value, after = _F8(8, raw.total_seconds()), num_tails
                elif raw is ts:
                    value, after = _NULL * 3 + ts_data, other_tails
                else:
                    value = None
                if value is not None:
                    head = valid_heads.get(tag)
                    if head is None:
                        head = valid_heads[tag] = _FIELDS + field(tag) + _VALID_NO_REASON
                    add(head)
                    add(value)
                    add(after[1 if retained else 0])
                    if len(out) >= limit:
                        yield join(out)
                        out.clear()
                    continue
            head = heads.get(tag)
            if head is None:
                head = heads[tag] = _FIELDS + field(tag)
            if quality is valid and reason is None:
                head2 = _VALID_NO_REASON
            else:
                head2 = (_VALID if quality is valid else _INVALID) + (
                    _NULL if reason is None else field(reason.value)
                )
            kind = type(raw)
            if kind is float:
                value = _F8(8, raw)
                rest = _AFTER_NUM
            elif raw is None:
                value, rest = _NULL * 4, _NULL
            elif kind is bool:
                value, rest = _NULL + (_TRUE if raw else _FALSE) + _NULL * 2, _NULL
            else:
                value, rest = _value(raw, ts, ts_data), _NULL
            if detail is not None:
                rest = rest[:-4] + _text(detail)
            add(join((head, head2, value, rest, tails[1 if retained else 0])))
            if len(out) >= limit:
                yield join(out)
                out.clear()
        add(_TRAILER)
        yield join(out)


def days_of(updates: Sequence[Update]) -> set[date]:
    """The UTC days the updates' `ts` fall on."""
    days: set[date] = set()
    last: object = None
    for update in updates:
        ts = update[4]
        if ts is last:
            continue
        last = ts
        if ts.tzinfo is not None and ts.tzinfo is not UTC:
            ts = ts.astimezone(UTC)
        days.add(ts.date())
    return days


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _nothing() -> None:
    pass


class PostgresSink:
    """One table (default `updates`) in PostgreSQL; one transaction per batch (SPEC §12)."""

    def __init__(
        self,
        url: str,
        *,
        connect: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = parse_url(url)
        #: The sink's name in /health and /metrics: its URL with the password as `***`.
        self.url = self.target.shown
        self._clock = clock
        self._lock = threading.Lock()
        #: Two connections (psycopg.Connection while connected), so that one batch's COPY
        #: can end and commit on one while the next batch streams on the other (`begin`);
        #: `write` uses the first. `_ending[i]`: connection i sent a COPY's end and its
        #: answer (the commit) is not read yet.
        self._conns: list[Any] = [None, None]
        self._ending = [False, False]
        #: One thread per connection runs its COPYs (psycopg's public API ends a COPY by
        #: reading its answer): `begin` hands a batch to the thread of a free connection and
        #: returns, and the function it returns waits for that thread's commit.
        self._workers: list[ThreadPoolExecutor | None] = [None, None]
        self._encoders = [Encoder(), Encoder()]  # one for each connection's thread
        self._days: set[date] = set()  # partitions known to exist
        self._layout = "unknown"  # partitioned, hypertable or plain
        self.rows = 0
        self.reconnects = 0
        self._problem: str | None = None
        if connect:
            # A database that is not up yet is no reason to stop: the first write connects
            # (and retries), and nothing is acknowledged before it is stored.
            try:
                with self._lock:
                    self._connection(0)
            except SinkError as exc:
                log.error("%s; retrying with the first batch", exc)

    def __repr__(self) -> str:
        return f"PostgresSink({self.target.shown!r}, rows={self.rows})"

    # -- the connection and the schema -------------------------------------------------------

    @property
    def _conn(self) -> Any:
        """The first connection (None when not connected)."""
        return self._conns[0]

    def backend_pids(self) -> list[int]:
        """The process ids of the sink's PostgreSQL backends, while connected."""
        return [c.info.backend_pid for c in self._conns if c is not None and not c.closed]

    def _connection(self, slot: int) -> Any:
        conn = self._conns[slot]
        if conn is not None and not conn.closed:
            return conn
        import psycopg

        try:
            given = psycopg.conninfo.conninfo_to_dict(self.target.conninfo)
            # Defaults for what the URL leaves out. A connection that died without a word (a
            # cut cable) is noticed within about 40 s instead of the kernel's two hours; the
            # batch is then retried.
            defaults = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
            conninfo = psycopg.conninfo.make_conninfo(self.target.conninfo, **defaults)
            # Autocommit: a batch's COPY is a transaction of its own, committed before the
            # server answers it, without a BEGIN and a COMMIT of their own (two round trips
            # a batch, each a wait for the server and for this thread's turn at the GIL).
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        try:
            self._prepare(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        self._conns[slot] = conn
        self.reconnects += 1
        log.info("sink %s: connected (%s table %s)", self.target.shown, self._layout, self.table)
        return conn

    @property
    def table(self) -> str:
        return self.target.table

    def _prepare(self, conn: Any) -> None:
        """Create the table (and its index) when absent; learn its layout and partitions."""
        from psycopg import sql

        table = sql.Identifier(self.table)
        with conn.transaction(), conn.cursor() as cur:
            # Several instances may start together: one makes the table, the others wait.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"kom:{self.table}",))
            cur.execute(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = %s AND n.nspname = current_schema()",
                (self.table,),
            )
            found = cur.fetchone()
            cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            timescale = cur.fetchone() is not None
            if found is None:
                create = sql.SQL(TABLE_SQL).format(table=table)
                if timescale:
                    cur.execute(create)
                    cur.execute(
                        "SELECT create_hypertable(%s, 'ts', chunk_time_interval => "
                        "interval '1 day', if_not_exists => true)",
                        (self.table,),
                    )
                else:
                    cur.execute(create + sql.SQL(" PARTITION BY RANGE (ts)"))
                    cur.execute(
                        sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                            sql.Identifier(f"{self.table}_other"), table
                        )
                    )
                cur.execute(
                    sql.SQL(INDEX_SQL).format(
                        index=sql.Identifier(f"{self.table}_tag_ts"), table=table
                    )
                )
                log.warning("sink %s: created table %s", self.target.shown, self.table)
                kind = "h" if timescale else "p"
            else:
                kind = found[0]
                if kind == "r" and timescale:
                    cur.execute(
                        "SELECT 1 FROM timescaledb_information.hypertables "
                        "WHERE hypertable_name = %s",
                        (self.table,),
                    )
                    kind = "h" if cur.fetchone() else "r"
            self._layout = {"p": "partitioned", "h": "hypertable"}.get(kind, "plain")
            self._days = set()
            if self._layout == "partitioned":
                cur.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = %s::regclass",
                    (self.table,),
                )
                pattern = re.compile(re.escape(self.table) + r"_p(\d{8})")
                for (name,) in cur.fetchall():
                    m = pattern.fullmatch(name)
                    if m:
                        self._days.add(datetime.strptime(m[1], "%Y%m%d").date())
        if self._layout == "partitioned":
            today = self._clock().astimezone(UTC).date()
            self._make_partitions(conn, [today + timedelta(days=k) for k in range(AHEAD + 1)])

    def _make_partitions(self, conn: Any, days: Iterable[date]) -> None:
        """Make the daily partitions missing among `days`, each in a transaction of its own.

        A partition that cannot be made (no CREATE right on the schema, say) is logged and
        not tried again by this process: its day's rows go to the default partition, rather
        than the line stalling on a batch that could be stored.
        """
        import psycopg

        for day in sorted(set(days) - self._days):
            try:
                self._make_partition(conn, day)
            except psycopg.OperationalError:
                raise  # the connection: the write fails and is retried
            except psycopg.Error as exc:  # its transaction was rolled back
                log.error(
                    "sink %s: cannot make partition %s (its rows go to %s_other): %s",
                    self.target.shown,
                    partition_name(self.table, day),
                    self.table,
                    self._scrub(exc),
                )
            self._days.add(day)

    def _make_partition(self, conn: Any, day: date) -> None:
        from psycopg import sql

        table = sql.Identifier(self.table)
        other = sql.Identifier(f"{self.table}_other")
        name = partition_name(self.table, day)
        low, high = day.isoformat(), (day + timedelta(days=1)).isoformat()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"kom:{self.table}",))
            cur.execute("SELECT to_regclass(%s)", (name,))
            found = cur.fetchone()
            if found is None or found[0] is None:
                part = sql.Identifier(name)
                bounds = sql.SQL("FOR VALUES FROM ({}) TO ({})").format(
                    sql.Literal(f"{low} 00:00:00+00"), sql.Literal(f"{high} 00:00:00+00")
                )
                # Rows of this day may wait in the default partition (a clock far
                # ahead): they move into the new partition in this transaction.
                cur.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(part, table)
                )
                cur.execute(
                    sql.SQL(
                        "WITH moved AS (DELETE FROM {other} WHERE ts >= %s AND ts < %s "
                        "RETURNING *) INSERT INTO {part} SELECT * FROM moved"
                    ).format(other=other, part=part),
                    (f"{low} 00:00:00+00", f"{high} 00:00:00+00"),
                )
                cur.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(table, part, bounds)
                )
                log.info("sink %s: made partition %s", self.target.shown, name)

    # -- writing -----------------------------------------------------------------------------

    def write(self, updates: Sequence[Update]) -> None:
        """Store `updates` in one transaction; returns after its COMMIT, raises SinkError if
        not (the COPY is the transaction: its answer comes after the commit)."""
        self.begin(updates)()

    def begin(self, updates: Sequence[Update]) -> Callable[[], None]:
        """Hand `updates` to the thread of a free connection, which sends them as one COPY
        (one transaction); the function returned waits for it and returns once the batch is
        committed (raises SinkError if not). Nothing may be acknowledged before it returns.

        While one batch's answer is outstanding, the next `begin` streams on the other
        connection, so that the server stores and commits one batch while kom encodes and
        sends the next. At most two may be outstanding: end one before a third `begin`.
        Raises SinkError if no connection can be had (nothing of the batch is then sent).
        """
        if not updates:
            return _nothing
        import psycopg

        with self._lock:
            slot = 0 if not self._ending[0] else 1
            if self._ending[slot]:
                raise RuntimeError("PostgresSink.begin: two batches are outstanding already")
            conn = self._connection(slot)
            try:
                if self._layout == "partitioned":
                    today = self._clock().astimezone(UTC).date()
                    wanted = {today + timedelta(days=k) for k in range(AHEAD + 1)}
                    low = today - timedelta(days=LOOKBACK)
                    wanted |= {d for d in days_of(updates) if low <= d <= today + timedelta(AHEAD)}
                    if not wanted <= self._days:
                        self._make_partitions(conn, wanted)
            except psycopg.Error as exc:
                self._drop(slot)
                raise self._error(exc) from exc
            except BaseException:
                self._drop(slot)
                raise
            worker = self._workers[slot]
            if worker is None:
                worker = self._workers[slot] = ThreadPoolExecutor(
                    1, thread_name_prefix=f"kom-sink-pg{slot}"
                )
            copying = worker.submit(self._copy, conn, self._encoders[slot], updates)
            self._ending[slot] = True
        return functools.partial(self._end, slot, conn, copying, len(updates))

    def _copy(self, conn: Any, encoder: Encoder, updates: Sequence[Update]) -> None:
        """One batch as one COPY, on its connection's thread; returns once it is committed
        (autocommit: the server commits the COPY before it answers)."""
        from psycopg import sql

        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(self.table),
            sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)),
        )
        with conn.cursor() as cur, cur.copy(copy) as stream:
            # Each piece goes to the server as soon as it is made, so the server stores one
            # while this thread encodes the next: measured, the sink alone is about as fast
            # as a COPY of the same rows encoded beforehand.
            for piece in encoder.chunks(updates):
                stream.write(piece)

    def _end(self, slot: int, conn: Any, copying: Future[None], rows: int) -> None:
        """Wait for the COPY that `begin` handed to `conn`'s thread: its commit."""
        import psycopg

        try:
            copying.result()
        except psycopg.Error as exc:
            with self._lock:
                self._drop_if(slot, conn)
                raise self._error(exc) from exc
        except BaseException:
            with self._lock:
                self._drop_if(slot, conn)
            raise
        with self._lock:
            if self._conns[slot] is not conn or not self._ending[slot]:
                raise self._error(RuntimeError("the connection was closed before the commit"))
            self._ending[slot] = False
            self.rows += rows
            self._problem = None

    def _drop_if(self, slot: int, conn: Any) -> None:
        """`_drop(slot)` if `conn` is still that slot's connection."""
        if self._conns[slot] is conn:
            self._drop(slot)

    def _drop(self, slot: int | None = None) -> None:
        """Forget a connection, or both (a transaction not committed is rolled back by the
        server; a COPY ended whose answer was not read may have committed)."""
        for i in (0, 1) if slot is None else (slot,):
            conn, self._conns[i] = self._conns[i], None
            self._ending[i] = False
            if conn is not None:
                try:
                    conn.close()
                except Exception as exc:  # already broken: nothing more to do with it
                    log.debug("sink %s: closing a broken connection: %s", self.target.shown, exc)

    def _error(self, exc: BaseException) -> SinkError:
        """The one-line SinkError for a failed call; it is also what health() reports."""
        self._problem = f"sink {self.target.shown}: {self._scrub(exc)}"
        return SinkError(self._problem, self.target.shown, "error")

    def health(self) -> tuple[bool, str | None]:
        """(True, None) while batches commit; (False, why) after one failed, until one commits."""
        problem = self._problem
        return (problem is None, problem)

    def _scrub(self, exc: BaseException) -> str:
        """The error's text, one line, never holding the URL's password."""
        text = " ".join(str(exc).split())
        password = self.target.password
        if password:
            text = text.replace(password, "***")
        return text

    def close(self) -> None:
        with self._lock:
            self._drop()
            workers, self._workers = self._workers, [None, None]
        for worker in workers:
            if worker is not None:
                worker.shutdown(wait=True)
