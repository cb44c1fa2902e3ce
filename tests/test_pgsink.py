"""The PostgreSQL sink against a real PostgreSQL: typed columns, partitions, reconnection,
several sinks at once, passwords kept out of logs, and `kom run --sink postgresql://…`."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kom import Quality, Reason, Update
from kom._errors import ConfigError
from kom._pgsink import AHEAD, PostgresSink, SinkError, days_of, parse_url, pg_time
from kom._sinks import SinkWriter, open_sink

from ._broker import BrokerFactory, Mosquitto, free_port
from ._kom import Publisher, wait_until
from ._postgres import database, query

KOM = [sys.executable, "-m", "kom._cli"]
QUEUE = ["max_queued_messages 0"]  # no limit
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
def pg() -> Iterator[str]:
    """A database of this test's own on the machine's PostgreSQL (dropped afterwards)."""
    with database() as url:
        yield url


def _update(tag: str, value: object, ts: datetime = T0, **kw: object) -> Update:
    fields: dict[str, object] = {
        "quality": Quality.VALID,
        "reason": None,
        "received": ts + timedelta(milliseconds=2),
        "topic": "t/1",
    }
    fields.update(kw)
    return Update(tag, value, ts=ts, **fields)  # type: ignore[arg-type]


# -- the URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "table", "shown"),
    [
        ("postgresql://kom@db:5433/plant", "updates", "postgresql://kom@db:5433/plant"),
        (
            "postgresql://kom:s3cret@db/plant?table=hist",
            "hist",
            "postgresql://kom:***@db/plant?table=hist",
        ),
        (
            "postgres://kom@db/plant?sslmode=require&table=h2",
            "h2",
            "postgres://kom@db/plant?sslmode=require&table=h2",
        ),
    ],
)
def test_parse_url_takes_the_table_out_and_hides_the_password(
    url: str, table: str, shown: str
) -> None:
    """`?table=` is kom's option (libpq gets the rest) and the shown URL never holds a password."""
    target = parse_url(url)
    assert target.table == table
    assert target.shown == shown
    assert "table=" not in target.conninfo
    assert "s3cret" not in repr(target)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://kom:pw@db/plant?table=1x", "table: a name matches"),
        ("postgresql://kom:pw@db/plant?table=a;drop", "table: a name matches"),
        ("postgresql://kom:pw@db/", "the database is missing"),
    ],
)
def test_parse_url_refuses_bad_urls_without_showing_the_password(url: str, expected: str) -> None:
    """A bad table name or a missing database is a one-line error that does not show `pw`."""
    with pytest.raises(ConfigError, match=expected) as info:
        parse_url(url)
    assert ":pw@" not in str(info.value)


# -- the pure encoder --------------------------------------------------------------------


def test_pg_time_counts_microseconds_from_2000() -> None:
    """timestamptz is microseconds since 2000-01-01 UTC; a naive time is taken as UTC."""
    assert pg_time(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert pg_time(datetime(2000, 1, 1, 0, 0, 1, 5)) == 1_000_005
    assert pg_time(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1_000_000


def test_days_of_a_batch_are_utc_days() -> None:
    """The partitions a batch needs are the UTC days of its `ts`, whatever their offset."""
    plus2 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    updates = [_update("a", 1.0), _update("b", 2.0, ts=plus2)]
    assert days_of(updates) == {T0.date(), plus2.astimezone(UTC).date()}


# -- into PostgreSQL ---------------------------------------------------------------------

_ROW = "SELECT tag, quality, reason, value_num, value_bool, value_text, value_time, topic, detail"


@pytest.mark.parametrize(
    ("value", "column", "stored"),
    [
        (230.1, "value_num", 230.1),
        (7, "value_num", 7.0),
        (True, "value_bool", True),
        ("héllo", "value_text", "héllo"),
        ("a\x00b", "value_text", "a\ufffdb"),
        ("bad \udcff byte", "value_text", "bad \ufffd byte"),
        (T0 - timedelta(days=1), "value_time", T0 - timedelta(days=1)),
        (timedelta(seconds=90.5), "value_num", 90.5),
        (10**400, "value_text", str(10**400)),
    ],
)
def test_each_value_kind_lands_in_its_typed_column(
    pg: str, value: object, column: str, stored: object
) -> None:
    """A number is a double, a digital a boolean, a time a timestamptz; the rest stay NULL."""
    sink = PostgresSink(pg, clock=lambda: T0)
    sink.write([_update("s.v", value)])
    sink.close()
    columns = ("value_num", "value_bool", "value_text", "value_time")
    (row,) = query(pg, f"SELECT {', '.join(columns)}, ts, received FROM updates")
    assert dict(zip(columns, row[:4], strict=True)) == {
        c: (stored if c == column else None) for c in columns
    }
    assert row[4:] == (T0, T0 + timedelta(milliseconds=2))


def test_an_invalid_value_keeps_its_quality_reason_and_detail(pg: str) -> None:
    """An invalid update is stored with NULL values, its quality, reason, topic and detail."""
    sink = PostgresSink(pg, clock=lambda: T0)
    bad = _update(
        "s.v", None, quality=Quality.INVALID, reason=Reason.PARSE, detail="not a number: 'x'"
    )
    sink.write([bad, _update("s.w", 1.5, topic=None)])
    assert query(pg, _ROW + " FROM updates ORDER BY tag") == [
        ("s.v", "invalid", "parse", None, None, None, None, "t/1", "not a number: 'x'"),
        ("s.w", "valid", None, 1.5, None, None, None, None, None),
    ]
    assert query(pg, "SELECT bool_or(retained) FROM updates") == [(False,)]
    sink.close()


values = (
    st.floats(allow_nan=False, width=64)
    | st.integers(-(2**53), 2**53)
    | st.booleans()
    | st.text(max_size=40)
    | st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    )
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(values, min_size=1, max_size=20))
def test_encoded_rows_read_back_as_the_values(pg: str, batch: list[object]) -> None:
    """Whatever values a batch holds, PostgreSQL reads back each one from its typed column."""
    url = pg
    table = "h" + str(abs(hash(tuple(map(repr, batch)))))[:12]
    sink = PostgresSink(f"{url}?table={table}", clock=lambda: T0)
    sink.write([_update(f"s.v{i}", v) for i, v in enumerate(batch)])
    sink.close()
    rows = query(
        url,
        f"SELECT coalesce(value_num::text, value_bool::text, value_text, value_time::text), "
        f"value_num, value_bool, value_text, value_time FROM {table} "
        "ORDER BY substr(tag, 4)::int",
    )
    query(url, f"DROP TABLE {table}")
    for value, (_, num, flag, text, when) in zip(batch, rows, strict=True):
        if isinstance(value, bool):
            assert flag is value
        elif isinstance(value, int | float):
            assert num == float(value) or (math.isinf(value) and num == value)
        elif isinstance(value, str):
            assert text == value.replace("\x00", "\ufffd")
        else:
            assert when == value


def test_days_get_partitions_ahead_and_stray_times_wait_in_the_default(pg: str) -> None:
    """Today and the next days have partitions, a far-off time goes to `_other`, and when its
    day gets a partition of its own the row moves there."""
    sink = PostgresSink(pg + "?table=hist", clock=lambda: T0)
    far = T0 + timedelta(days=AHEAD + 3)
    sink.write([_update("s.a", 1.0), _update("s.b", 2.0, ts=far)])
    sink.close()
    names = {
        r[0]
        for r in query(
            pg,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'hist'::regclass",
        )
    }
    expected = {f"hist_p{T0 + timedelta(days=k):%Y%m%d}" for k in range(AHEAD + 1)}
    assert names == expected | {"hist_other"}
    assert query(pg, "SELECT tableoid::regclass::text, tag FROM hist ORDER BY tag") == [
        (f"hist_p{T0:%Y%m%d}", "s.a"),
        ("hist_other", "s.b"),
    ]
    later = PostgresSink(pg + "?table=hist", clock=lambda: far - timedelta(days=1))
    later.close()
    assert query(pg, "SELECT tableoid::regclass::text FROM hist WHERE tag = 's.b'") == [
        (f"hist_p{far:%Y%m%d}",)
    ]
    plan = "\n".join(
        r[0]  # type: ignore[misc]
        for r in query(
            pg,
            "EXPLAIN SELECT * FROM hist WHERE tag = 's.a' AND ts >= %s AND ts < %s",
            T0,
            T0 + timedelta(hours=1),
        )
    )
    assert f"hist_p{T0:%Y%m%d}" in plan
    assert f"hist_p{far:%Y%m%d}" not in plan


def test_instances_starting_together_make_one_table(pg: str) -> None:
    """Several sinks connecting at once to a database without the table all succeed."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresSink(pg, clock=lambda: T0).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert query(pg, "SELECT count(*) FROM pg_class WHERE relname = 'updates'") == [(1,)]


def test_write_returns_with_its_batch_committed_and_no_transaction_open(pg: str) -> None:
    """Each batch's COPY is a transaction of its own: when write() returns, another
    connection sees every row, and the sink's backend holds no transaction open (none made
    for a partition either), so nothing it wrote waits for a later COMMIT."""
    sink = PostgresSink(pg, clock=lambda: T0)
    state = (
        "SELECT state FROM pg_stat_activity WHERE application_name = 'kom' "
        "AND datname = current_database()"
    )
    batches = [
        [_update(f"s.v{i}", float(i)) for i in range(300)],
        # a day with no partition yet: made (in a transaction of its own) before the COPY
        [_update(f"s.w{i}", float(i), ts=T0 - timedelta(days=3)) for i in range(300)],
    ]
    for n, batch in enumerate(batches, 1):
        sink.write(batch)
        assert query(pg, "SELECT count(*) FROM updates") == [(300 * n,)]
        assert query(pg, state) == [("idle",)]
    assert query(pg, f"SELECT count(*) FROM updates_p{T0 - timedelta(days=3):%Y%m%d}") == [(300,)]
    sink.close()


def test_a_backend_terminated_mid_batch_loses_nothing_and_stores_nothing_twice(pg: str) -> None:
    """A COPY cut off by pg_terminate_backend fails the write; the writer's retry on a new
    connection stores the batch exactly once."""
    sink = PostgresSink(pg, clock=lambda: T0)
    writer = SinkWriter([sink])
    writer([_update("s.first", 1.0)])
    part = f"updates_p{T0:%Y%m%d}"
    batch = [_update(f"s.v{i}", float(i)) for i in range(5000)]
    with psycopg.connect(pg) as blocker:
        # Hold the partition locked, so the sink's COPY waits inside its transaction.
        blocker.execute(f"LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE")
        done = threading.Thread(target=writer, args=(batch,))
        done.start()
        wait_until(
            lambda: (
                query(
                    pg,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kom' "
                    "AND wait_event_type = 'Lock'",
                )[0][0]
                == 1
            ),
            what="the sink's COPY waiting on the lock",
        )
        killed = query(
            pg,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'kom' AND datname = current_database()",
        )
        assert killed == [(True,)]
        blocker.rollback()
    done.join(30)
    assert not done.is_alive()
    assert sink.health() == (True, None)  # the retry committed
    writer.close()
    assert writer.failures >= 1
    assert query(pg, "SELECT count(*), count(DISTINCT tag) FROM updates") == [(5001, 5001)]


def test_begun_batches_stream_on_two_connections_and_a_failed_one_is_written_again(
    pg: str,
) -> None:
    """`SinkWriter.begin` as kom's dispatcher uses it: a second batch streams on the sink's
    other connection while the first is outstanding; the first's backend terminated before
    its commit makes its end write it again, and each batch is stored exactly once."""
    sink = PostgresSink(pg, clock=lambda: T0)
    writer = SinkWriter([sink])
    writer([_update("s.first", 1.0)])
    part = f"updates_p{T0:%Y%m%d}"
    one = [_update(f"s.a{i}", float(i)) for i in range(100)]
    two = [_update(f"s.b{i}", float(i)) for i in range(100)]
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'kom' "
        "AND datname = current_database() AND wait_event_type = 'Lock' ORDER BY pid"
    )
    with psycopg.connect(pg) as blocker:
        # Hold the partition locked, so that both COPYs wait before their commits.
        blocker.execute(f"LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE")
        end_one = writer.begin(one)
        end_two = writer.begin(two)
        pids = sink.backend_pids()
        assert len(set(pids)) == 2
        with pytest.raises(RuntimeError):
            sink.begin(one)  # two are outstanding already
        wait_until(lambda: len(query(pg, waiting)) == 2, what="both COPYs waiting on the lock")
        assert query(pg, f"SELECT pg_terminate_backend({pids[0]})") == [(True,)]
        blocker.rollback()
    end_one()  # its COPY was cut: written again, on a new connection
    end_two()
    assert writer.failures == 1
    assert sink.health() == (True, None)
    writer.close()
    assert query(
        pg, "SELECT left(tag, 3), count(*), count(DISTINCT tag) FROM updates GROUP BY 1 ORDER BY 1"
    ) == [
        ("s.a", 100, 100),
        ("s.b", 100, 100),
        ("s.f", 1, 1),
    ]


def test_a_batch_the_server_refuses_raises_and_stores_nothing(pg: str) -> None:
    """An error the server answers a COPY with (here a CHECK constraint) comes back from the
    commit's wait as a SinkError: nothing of the batch is stored, and the next batch is."""
    sink = PostgresSink(pg, clock=lambda: T0)
    query(pg, "ALTER TABLE updates ADD CONSTRAINT no_negative CHECK (value_num >= 0)")
    end = sink.begin([_update("s.ok", 1.0), _update("s.neg", -1.0)])
    with pytest.raises(SinkError) as info:
        end()
    assert "no_negative" in str(info.value)
    assert not sink.health()[0]
    sink.write([_update("s.ok", 2.0)])
    assert sink.health() == (True, None)
    assert query(pg, "SELECT tag, value_num FROM updates") == [("s.ok", 2.0)]
    sink.close()


def test_a_write_to_no_server_raises_without_the_password(tmp_path: Path) -> None:
    """With nothing listening, write() raises SinkError (and health() says why) whose text
    never holds the password."""
    port = free_port()
    sink = PostgresSink(f"postgresql://kom:pw-7f3a-secret@127.0.0.1:{port}/x", clock=lambda: T0)
    with pytest.raises(SinkError) as info:
        sink.write([_update("s.v", 1.0)])
    assert "pw-7f3a-secret" not in str(info.value)
    assert "***" in str(info.value)
    assert "refused" in str(info.value)
    assert "pw-7f3a" not in repr(sink)
    assert sink.url == f"postgresql://kom:***@127.0.0.1:{port}/x"  # its name in /health
    ok, why = sink.health()
    assert not ok
    assert why == str(info.value)


# -- kom run -----------------------------------------------------------------------------

RUN_CONFIG = """
[line]
host = "127.0.0.1:{port}"
client_id = "kom-pg-{name}"
topic_filter = "{prefix}/#"
payload_type = "json"

[[station]]
name = "a"
address = "{prefix}/a"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
[[station.tag]]
name = "on"
type = "Di"
address = "JA=on"
"""


def _start_run(
    tmp_path: Path, broker: Mosquitto, prefix: str, sinks: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    cfg = tmp_path / "stations.toml"
    cfg.write_text(RUN_CONFIG.format(port=broker.port, prefix=prefix, name=prefix[-6:]))
    args = [*KOM, "--log-level", "debug", "run", str(cfg)]
    for sink in sinks:
        args += ["--sink", sink]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    wait_until(lambda: broker.connections(f"kom-pg-{prefix[-6:]}") == 1, what="kom connected")
    time.sleep(0.3)
    return proc


def _publish(broker: Mosquitto, prefix: str, count: int) -> None:
    with Publisher(broker.port) as pub:
        for n in range(count):
            pub.client.publish(f"{prefix}/a", json.dumps({"n": n, "on": n % 2 == 0}), 1)
        pub.publish(f"{prefix}/a", json.dumps({"n": count, "on": True}))


def _valid_n(url: str) -> list[tuple[object, ...]]:
    return query(
        url,
        "SELECT count(*), count(DISTINCT value_num) FROM updates "
        "WHERE tag = 'a.n' AND quality = 'valid'",
    )


def test_kom_run_into_postgresql_and_sqlite_at_once(
    pg: str, broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """`--sink postgresql://… --sink sqlite:…` stores every value in both, typed in PostgreSQL."""
    db = tmp_path / "kom.db"
    env = {**os.environ, "PGPASSWORD": "pgpass-9c1e-secret"}
    proc = _start_run(tmp_path, broker, topic_prefix, [pg, f"sqlite:{db}"], env)
    try:
        _publish(broker, topic_prefix, 500)
        wait_until(lambda: _valid_n(pg) == [(501, 501)], what="501 rows in PostgreSQL")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert "pgpass-9c1e-secret" not in (out + err).decode()
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM updates WHERE tag = 'a.n' AND quality = 'valid'"
        ).fetchone() == (501,)
    assert query(
        pg, "SELECT value_bool, count(*) FROM updates WHERE tag = 'a.on' GROUP BY 1 ORDER BY 1"
    ) == [(False, 250), (True, 251), (None, 1)]


def test_kom_run_loses_nothing_while_its_connection_is_cut_again_and_again(
    pg: str, broker_factory: BrokerFactory, topic_prefix: str, tmp_path: Path
) -> None:
    """pg_terminate_backend on kom's connection every 50 ms (80 times) while 5,000 QoS 1
    messages flow: every message is stored, and the password in the URL is never logged."""
    # mosquitto keeps at most 1,000 messages queued for a client by default and drops the
    # rest (QoS 1 too, silently): while kom holds its acknowledgements, more queue than that.
    broker = broker_factory(extra=QUEUE)
    secret = "url-4be2-secret"
    url = pg.replace("postgres@", f"postgres:{secret}@")
    proc = _start_run(tmp_path, broker, topic_prefix, [url], dict(os.environ))
    stop = threading.Event()
    kills: list[int] = []

    def cut() -> None:
        while len(kills) < 80 and not stop.wait(0.05):
            rows = query(
                pg,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'kom' AND datname = current_database()",
            )
            kills.append(sum(1 for r in rows if r[0]))

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        _publish(broker, topic_prefix, 5000)
        wait_until(
            lambda: _valid_n(pg)[0][1] == 5001, timeout=60, what="5,001 distinct values stored"
        )
    finally:
        stop.set()
        cutter.join()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    rows, distinct = _valid_n(pg)[0]
    print(f"connections cut: {sum(kills)}; rows {rows}, distinct {distinct}")
    assert sum(kills) >= 1
    assert distinct == 5001
    text = (out + err).decode()
    assert secret not in text
    assert "acknowledgements held, retrying" in text


def test_kom_run_refuses_a_bad_instance_or_sink_in_one_line(tmp_path: Path) -> None:
    """A bad `--instance` or PostgreSQL table is one line on stderr and exit 2."""
    cfg = tmp_path / "stations.toml"
    cfg.write_text('[line]\nhost = "127.0.0.1:1"\n')
    for extra in (
        ["--instance", "a b"],
        ["--sink", "postgresql://kom:pw-x@127.0.0.1:1/db?table=no-dash"],
    ):
        result = subprocess.run([*KOM, "run", str(cfg), *extra], capture_output=True, timeout=30)
        assert result.returncode == 2, result.stderr.decode()
        assert len(result.stderr.decode().strip().splitlines()) == 1
        assert "pw-x" not in result.stderr.decode()


def test_open_sink_knows_postgresql(pg: str) -> None:
    """`open_sink` gives a PostgresSink for postgresql:// URLs."""
    sink = open_sink(pg)
    assert isinstance(sink, PostgresSink)
    assert repr(sink).startswith("PostgresSink('postgresql://postgres@127.0.0.1")
    sink.close()


def test_the_retained_flag_and_a_detail_are_stored(pg: str) -> None:
    """An update's `retained` flag is stored; a valid value may carry a detail."""
    sink = PostgresSink(pg, clock=lambda: T0)
    rx = T0 + timedelta(milliseconds=2)
    sink.write(
        [
            Update("s.a", 1.0, Quality.VALID, None, T0, rx, "t/1", "scaled", True),
            Update("s.b", 2.0, Quality.VALID, None, T0, rx, "t/1", None, False),
        ]
    )
    sink.close()
    assert query(pg, "SELECT tag, value_num, detail, retained FROM updates ORDER BY tag") == [
        ("s.a", 1.0, "scaled", True),
        ("s.b", 2.0, None, False),
    ]


def _doc_queries() -> list[str]:
    text = (Path(__file__).parent.parent / "docs" / "historian.md").read_text()
    examples = text.split("### Example queries", 1)[1]
    return [block.split("```", 1)[0] for block in examples.split("```sql\n")[1:]]


def test_the_example_queries_in_docs_historian_run(pg: str) -> None:
    """Every query of docs/historian.md runs against the sink's table and finds the rows."""
    sink = PostgresSink(pg, clock=lambda: T0)
    now = datetime.now(UTC)
    updates = [
        _update("strip1.voltage", 230.0 + i, ts=T0 + timedelta(minutes=i)) for i in range(30)
    ]
    updates.append(_update("strip1.voltage", 231.0, ts=T0 + timedelta(minutes=3)))  # a copy
    updates.append(_update("strip1.out1", None, ts=T0, quality=Quality.INVALID, reason=Reason.WILL))
    updates.append(_update("strip1.voltage", 229.5, ts=now))
    sink.write(updates)
    sink.close()
    queries = _doc_queries()
    assert len(queries) == 5
    last, trend, buckets, reasons, copies = (query(pg, q) for q in queries)
    assert last == [("strip1.voltage", now, "valid", None, "229.5")]
    assert len(trend) == 31
    assert [(r[1], r[3], r[4]) for r in buckets] == [(230.0, 244.0, 16), (245.0, 259.0, 15)]
    assert reasons == [("valid", 31), ("will", 1)]
    assert copies == [("strip1.voltage", T0 + timedelta(minutes=3), "t/1", 2)]


def test_a_partition_that_cannot_be_made_sends_its_rows_to_the_default(pg: str) -> None:
    """A user without CREATE on the schema still stores a new day's rows (in `_other`)."""
    PostgresSink(pg, clock=lambda: T0).close()  # the table, made by its owner
    role = f"kom_insert_{secrets.token_hex(4)}"
    query(pg, f"CREATE ROLE {role} LOGIN")
    try:
        query(pg, f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}")
        later = T0 + timedelta(days=10)
        sink = PostgresSink(pg.replace("postgres@", f"{role}@"), clock=lambda: later)
        sink.write([_update("s.v", 1.0, ts=later)])
        sink.close()
        assert query(pg, "SELECT tableoid::regclass::text, tag FROM updates") == [
            ("updates_other", "s.v")
        ]
    finally:
        query(pg, f"DROP OWNED BY {role}")
        query(pg, f"DROP ROLE {role}")


def test_connection_options_in_the_url_win_over_the_sinks_defaults(pg: str) -> None:
    """`application_name` (or any libpq option) given in the URL is used as given."""
    sink = PostgresSink(pg + "?application_name=plant-historian", clock=lambda: T0)
    assert query(
        pg, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'plant-historian'"
    ) == [(1,)]
    sink.close()
