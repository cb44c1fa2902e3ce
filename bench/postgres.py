"""Into PostgreSQL: what `kom run --sink postgresql://…` does, at QoS 1, beside a raw COPY of
the same rows and beside `kom run` into SQLite, in the same run.

The same pre-loaded QoS 1 drain as `historian`, with `SinkWriter([PostgresSink])` as kom's
callback (one binary COPY and COMMIT per batch before the messages are acknowledged),
alternated run by run with `SinkWriter([SqliteSink])`. The baseline is the database's own
ceiling: the drain's rows, decoded and encoded beforehand, sent with COPY in the dispatcher's
batch sizes, one transaction each, pipelined on two connections as the sink does (and, for
reference, one batch at a time on one connection). It uses the machine's PostgreSQL on
127.0.0.1:5432 (user postgres, a database made for the run and dropped after) and says so when
there is none.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from kom import Update, loads
from kom._client import MERGED
from kom._pgsink import Encoder, PostgresSink
from kom._sinks import SinkWriter, SqliteSink

from ._common import Broker, Report, Row, Settings, fmt, median_spread
from ._workload import DEVICES, TAG_COUNT, kom_config_text, payload_pool
from .historian import decoded_batches
from .throughput import POOL, Preloader, broker_options, drain_kom, messages

SERVER = os.environ.get("KOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
GOAL_COPY = 0.7  # kom run -> PostgreSQL, of a raw COPY of the same rows
GOAL_SQLITE = 0.6  # kom run -> PostgreSQL, of kom run -> SQLite


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process on this machine (a PostgreSQL backend)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encoded_batches(pool: list[bytes], n: int) -> tuple[list[bytes], int, list[Update]]:
    """The drain's rows as binary COPY data in the dispatcher's batch size, their count, and
    one update a day they span (to make the same partitions the sink makes)."""
    encoder = Encoder()
    batches: list[bytes] = []
    rows = 0
    days: dict[object, Update] = {}
    for batch in decoded_batches(pool, n):
        days.update((u.ts.date(), u) for u in (batch[0], batch[-1]))
        batches.append(encoder.encode(batch))
        rows += len(batch)
    return batches, rows, list(days.values())


def sink_alone(url: str, table: str, pool: list[bytes], n: int) -> float:
    """Rows/s of PostgresSink.write alone: encoding, COPY and COMMIT of the drain's rows.

    The messages are decoded a batch at a time (the dispatcher's largest call), untimed, and
    only the writes are timed, as `historian` does for SQLite.
    """
    sink = PostgresSink(f"{url}?table={table}")
    seconds = 0.0
    rows = 0
    for batch in decoded_batches(pool, n):
        sink.write(batch[:1])  # the batch's partition, made outside the timing
        t0 = time.perf_counter()
        sink.write(batch)
        seconds += time.perf_counter() - t0
        rows += len(batch)
    sink.close()
    return rows / seconds


def raw_copy(
    url: str, table: str, encoded: tuple[list[bytes], int, list[Update]], connections: int = 2
) -> float:
    """Rows/s of COPY alone: the encoded batches, one transaction each, into a fresh table of
    the sink's own layout (partitioned by day, indexed on tag and ts); only the COPYs (each
    committed by the server before it answers) are timed.

    With two `connections` (the baseline), as the sink does it: each connection has a thread
    of its own that sends a batch's COPY and waits for its answer, and the next batch goes to
    the other connection's thread before the previous batch's answer is awaited, so one
    backend stores and commits while the other receives. With one, each COPY waits for its
    answer before the next is sent.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    import psycopg

    batches, rows, one_a_day = encoded
    maker = PostgresSink(f"{url}?table={table}")
    maker.write(one_a_day)  # the table and the partitions of the rows' days, as the sink makes
    maker.close()
    # Autocommit, as the sink: each COPY a transaction of its own, committed before the
    # server answers it (no BEGIN and COMMIT round trips of their own).
    conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
    workers = [ThreadPoolExecutor(1) for _ in range(connections)]
    try:
        conns[0].execute(f"TRUNCATE {table}")
        copy_sql = f"COPY {table} ({', '.join(_columns())}) FROM STDIN (FORMAT BINARY)"

        def copy(conn: Any, data: bytes) -> None:
            with conn.cursor() as cur, cur.copy(copy_sql) as stream:
                stream.write(data)

        outstanding: Future[None] | None = None
        t0 = time.perf_counter()
        for i, data in enumerate(batches):
            conn = conns[i % connections]
            if connections == 1:
                copy(conn, data)
                continue
            sent = workers[i % connections].submit(copy, conn, data)
            if outstanding is not None:
                outstanding.result()
            outstanding = sent
        if outstanding is not None:
            outstanding.result()
        seconds = time.perf_counter() - t0
    finally:
        for worker in workers:
            worker.shutdown()
        for conn in conns:
            conn.close()
    return rows / seconds


def _columns() -> tuple[str, ...]:
    from kom._pgsink import COPY_COLUMNS

    return COPY_COLUMNS


class _Nothing:
    """A sink that stores nothing: the drain's rate without a database (kom's own ceiling)."""

    rows = 0

    def write(self, updates: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _drain(
    broker: Broker,
    preloader: Preloader,
    n: int,
    client_id: str,
    sink: Any,
) -> tuple[float, dict[str, Any], SinkWriter]:
    preloader.load(client_id, 1, n)
    config = loads(kom_config_text(broker.port, client_id, 1, "exact"))
    writer = SinkWriter([sink])
    seconds, updates, stats = drain_kom(
        config, n * TAG_COUNT, max(180.0, n / 500), inner=writer, gc_tuned=True, inline=False
    )
    preloader.forget(client_id)
    stats["updates"] = updates
    return min(updates, n * TAG_COUNT) / TAG_COUNT / seconds, stats, writer


def run(settings: Settings) -> Report:
    report = Report(
        "postgres",
        "kom run's path into PostgreSQL (QoS 1, ack after COMMIT) beside raw COPY and SQLite",
    )
    try:
        import psycopg

        with psycopg.connect(f"{SERVER}/postgres", connect_timeout=3):
            pass
    except Exception as exc:
        report.notes.append(f"skipped: no PostgreSQL answers at {SERVER} ({exc})")
        return report
    n = messages(settings)
    pool = payload_pool(POOL)
    db = f"kom_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
        version = admin.execute("SHOW server_version").fetchone()
    url = f"{SERVER}/{db}"
    pg_rates: list[float] = []
    sqlite_rates: list[float] = []
    none_rates: list[float] = []
    row_bytes: list[float] = []
    copy_rates: list[float] = []
    copy_one_rates: list[float] = []
    alone_rates: list[float] = []
    none_cpu: list[float] = []
    kom_cpu: list[float] = []
    backend_cpu: list[float] = []
    checks: list[str] = []
    all_ok = True
    try:
        with (
            Broker(broker_options(settings)) as broker,
            tempfile.TemporaryDirectory(prefix="kom-bench-pg-") as tmp,
        ):
            report.settings["broker"] = broker.describe()
            report.settings["PostgreSQL"] = (
                f"{version[0] if version else '?'} at {SERVER} (this machine; its CPU "
                "is shared with kom and mosquitto), a fresh table per run"
            )
            report.settings["workload"] = (
                f"{n:,} QoS 1 messages per drain, {DEVICES:,} exact stations x {TAG_COUNT} "
                "tags, SinkWriter([PostgresSink]) and SinkWriter([SqliteSink]) alternated, "
                "kom.tune_gc() and inline=False as `kom run` does"
            )
            report.settings["runs"] = f"median of {settings.runs} [min..max]"
            preloader = Preloader(broker.port, settings.publishers, pool)
            encoded = encoded_batches(pool, n)
            for r in range(settings.runs):
                table = f"run{r}"
                sink = PostgresSink(f"{url}?table={table}")
                # The sink's backends (its second connects with the first pipelined batch):
                # their CPU over the drain, unless one was replaced (a reconnect) meanwhile.
                cpu0 = {pid: _cpu_seconds(pid) for pid in sink.backend_pids()}
                rate, stats, writer = _drain(broker, preloader, n, f"bench-pg-r{r}", sink)
                pids = sink.backend_pids()
                if cpu0 and set(cpu0) <= set(pids):
                    used = sum(_cpu_seconds(pid) - cpu0.get(pid, 0.0) for pid in pids)
                    backend_cpu.append(used / n * 1e6)
                writer.close()
                (valid,) = query_one(url, f"SELECT count(*) FROM {table} WHERE quality = 'valid'")
                (size,) = query_one(
                    url,
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                    f"WHERE inhparent = '{table}'::regclass",
                )
                row_bytes.append(int(size) / max(1, valid))
                expected = n * TAG_COUNT
                ok = valid == expected
                all_ok = all_ok and ok
                pg_rates.append(rate)
                kom_cpu.append(stats["cpu_us"])
                checks.append(
                    f"run {r + 1} PostgreSQL: {valid:,} valid rows, expected {expected:,}: "
                    f"{'OK' if ok else 'MISMATCH'} (sink failures {writer.failures})"
                )
                print(
                    f"   [postgres] run {r + 1} {fmt(rate, 'msg/s'):>14} "
                    f"{fmt(rate * TAG_COUNT, 'rows/s'):>16}  kom CPU "
                    f"{stats['cpu_us']:.0f} µs/msg",
                    flush=True,
                )
                path = Path(tmp) / f"run{r}.db"
                srate, _, swriter = _drain(broker, preloader, n, f"bench-sq-r{r}", SqliteSink(path))
                swriter.close()
                with sqlite3.connect(path) as check:
                    (svalid,) = check.execute(
                        "SELECT count(*) FROM updates WHERE quality = 'valid'"
                    ).fetchone()
                all_ok = all_ok and svalid == expected
                sqlite_rates.append(srate)
                print(f"   [postgres] run {r + 1} SQLite {fmt(srate, 'msg/s'):>14}", flush=True)
                nrate, nstats, _ = _drain(broker, preloader, n, f"bench-no-r{r}", _Nothing())
                none_rates.append(nrate)
                none_cpu.append(nstats["cpu_us"])
                print(f"   [postgres] run {r + 1} no sink {fmt(nrate, 'msg/s'):>14}", flush=True)
                copy_rates.append(raw_copy(url, f"copy{r}", encoded))
                print(f"   [postgres] run {r + 1} raw COPY {fmt(copy_rates[-1], 'rows/s'):>14}")
                copy_one_rates.append(raw_copy(url, f"copyone{r}", encoded, connections=1))
                print(
                    f"   [postgres] run {r + 1} raw COPY, one connection "
                    f"{fmt(copy_one_rates[-1], 'rows/s'):>14}"
                )
                alone_rates.append(sink_alone(url, f"alone{r}", pool, n))
                print(f"   [postgres] run {r + 1} sink alone {fmt(alone_rates[-1], 'rows/s'):>14}")
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    value, spread = median_spread(pg_rates)
    sqlite_value, _ = median_spread(sqlite_rates)
    copy_rows = median_spread(copy_rates)[0]
    copy_msgs = copy_rows / TAG_COUNT
    report.rows.append(
        Row(
            "QoS 1 drain into PostgreSQL (kom run path)",
            value,
            "msg/s",
            "raw COPY of the same rows",
            copy_msgs,
            goal=f">= {GOAL_COPY}x raw COPY",
            met=value >= GOAL_COPY * copy_msgs,
            spread=spread,
        )
    )
    report.rows.append(
        Row(
            "rows committed into PostgreSQL",
            value * TAG_COUNT,
            "rows/s",
            "raw COPY of the same rows",
            copy_rows,
            goal=f">= {GOAL_COPY}x raw COPY",
            met=value >= GOAL_COPY * copy_msgs,
            spread=(spread[0] * TAG_COUNT, spread[1] * TAG_COUNT),
        )
    )
    copy_one_rows = median_spread(copy_one_rates)[0]
    report.rows.append(
        Row(
            "QoS 1 drain into PostgreSQL beside one connection",
            value,
            "msg/s",
            "raw COPY, one batch at a time",
            copy_one_rows / TAG_COUNT,
        )
    )
    alone, alone_spread = median_spread(alone_rates)
    report.rows.append(
        Row(
            "PostgresSink.write alone (encode, COPY, COMMIT)",
            alone,
            "rows/s",
            "raw COPY, one batch at a time",
            copy_one_rows,
            spread=alone_spread,
        )
    )
    report.rows.append(
        Row(
            "QoS 1 drain into PostgreSQL beside SQLite",
            value,
            "msg/s",
            "kom run into SQLite",
            sqlite_value,
            goal=f">= {GOAL_SQLITE}x SQLite",
            met=value >= GOAL_SQLITE * sqlite_value,
        )
    )
    report.rows.append(
        Row(
            "QoS 1 drain into PostgreSQL beside no sink",
            value,
            "msg/s",
            "kom run storing nothing",
            median_spread(none_rates)[0],
        )
    )
    cpu, cpu_spread = median_spread(kom_cpu)
    report.rows.append(
        Row(
            "CPU per message, the kom process",
            cpu,
            "µs/msg",
            "the same storing nothing",
            median_spread(none_cpu)[0],
            spread=cpu_spread,
        )
    )
    if backend_cpu:
        bcpu, bspread = median_spread(backend_cpu)
        report.rows.append(
            Row("CPU per message, its PostgreSQL backends", bcpu, "µs/msg", spread=bspread)
        )
    report.rows.append(
        Row("disk per row (partitions and their index)", median_spread(row_bytes)[0], "bytes")
    )
    report.rows.append(
        Row(
            "valid rows in both databases, all runs",
            float(all_ok),
            "",
            goal="= N x 12 (each run)",
            met=all_ok,
            display="all" if all_ok else "MISMATCH",
        )
    )
    report.notes.extend(checks)
    report.notes.append(
        "baseline raw COPY (median of one a run, alternated with the drains): the drain's N "
        "messages decoded and encoded beforehand (untimed), sent as binary COPY in batches of "
        f"{MERGED:,} rows, one transaction each, into a fresh table of the sink's layout, "
        "pipelined on two connections as the sink does (the next batch sent while the last "
        "one commits): PostgreSQL's own ceiling here, no broker, no kom. 'One batch at a "
        "time': the same on one connection, each COPY's answer awaited before the next."
    )
    report.notes.append(
        "PostgresSink.write alone (one batch at a time, as write() does): the same messages "
        "decoded a batch at a time (untimed) and written by the sink, only its writes timed "
        "(the rows of each batch's first update written first, untimed, so that partitions "
        "are made outside the timing)."
    )
    report.notes.append(
        "CPU per message: process CPU time of kom (all its threads) and of its PostgreSQL "
        "backends (the sink's two connections) over the drain, divided by the messages "
        "(12 rows each)."
    )
    return report


def query_one(url: str, sql: str) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return tuple(row)
