"""Into the historian: what `kom run` does with the SQLite sink, at QoS 1.

The same pre-loaded QoS 1 drain as `throughput`, but kom's callback is a
`SinkWriter([SqliteSink(db)])`: every batch is committed before kom acknowledges its
messages to the broker (at-least-once). The row count is checked at the end.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kom import Kom, Update, loads
from kom._client import MERGED
from kom._core import LineCore
from kom._sinks import SinkWriter, SqliteSink
from kom._station import Message

from ._common import Broker, Report, Row, Settings, fmt, median_spread
from ._wire import device_topic, stamped, time_offsets
from ._workload import DEVICES, TAG_COUNT, kom_config_text, payload_pool
from .throughput import BASE_EPOCH, POOL, Preloader, broker_options, drain_kom, messages

GOAL_MSGS = 20_000
RECEIVED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def decoded_batches(pool: list[bytes], messages: int) -> Iterator[list[Update]]:
    """The updates of a drain's messages, a batch of the dispatcher's largest call at a time.

    The messages are those of a drain (their payloads stamped with moving times as the
    publishers do, received 50 µs apart), decoded as the line decodes them.
    """
    config = loads(kom_config_text(1883, "bench-sink", 1, "exact"))
    core = LineCore(config.lines[0], config.stations)
    offsets = time_offsets(pool)
    per_batch = MERGED // TAG_COUNT
    for first in range(0, messages, per_batch):
        batch: list[Update] = []
        for i in range(first, min(messages, first + per_batch)):
            k = i % len(pool)
            payload = stamped(pool[k], offsets[k], BASE_EPOCH + i)
            received = RECEIVED + timedelta(microseconds=50 * i)
            msg = Message(device_topic(i % DEVICES), payload, received, 1, i % 65535 + 1)
            batch.extend(core.process(msg).updates)
        yield batch


def sink_alone(pool: list[bytes], messages: int) -> float:
    """Rows/s of SqliteSink.write on pre-decoded updates, as many rows as a drain writes.

    The messages of a drain are decoded a batch at a time, untimed, and only the sink's
    writes are timed, in batches of the dispatcher's largest call.
    """
    seconds = 0.0
    written = 0
    with tempfile.TemporaryDirectory(prefix="kom-bench-sink-") as tmp:
        sink = SqliteSink(Path(tmp) / "sink.db")
        for batch in decoded_batches(pool, messages):
            t0 = time.perf_counter()
            sink.write(batch)
            seconds += time.perf_counter() - t0
            written += len(batch)
        sink.close()
    return written / seconds


def drain_into(
    writer: SinkWriter,
    port: int,
    client_id: str,
    messages: int,
    before_start: Callable[[Kom], Callable[[], None]] | None = None,
) -> tuple[float, int, dict[str, Any]]:
    """`kom run`'s path: drain the pre-loaded QoS 1 session into `writer` (closed after).

    tune_gc() first and inline=False, as `kom run` does; `before_start` as drain_kom's.
    """
    config = loads(kom_config_text(port, client_id, 1, "exact"))
    try:
        return drain_kom(
            config,
            messages * TAG_COUNT,
            max(180.0, messages / 500),
            inner=writer,
            gc_tuned=True,
            inline=False,
            before_start=before_start,
        )
    finally:
        writer.close()


def run(settings: Settings) -> Report:
    report = Report("historian", "kom run's path: QoS 1 drain into SQLite, ack after commit")
    n = messages(settings)
    pool = payload_pool(POOL)
    rates: list[float] = []
    checks: list[str] = []
    all_ok = True
    total_rows = 0
    with (
        Broker(broker_options(settings)) as broker,
        tempfile.TemporaryDirectory(prefix="kom-bench-historian-") as tmp,
    ):
        report.settings["broker"] = broker.describe() + (
            "" if settings.max_inflight is not None else "; max_inflight_messages default (20)"
        )
        report.settings["workload"] = (
            f"{n:,} QoS 1 messages per drain, {DEVICES:,} exact stations x {TAG_COUNT} tags, "
            f"SinkWriter([SqliteSink]) as the callback (WAL, synchronous=NORMAL, one "
            "transaction per batch), kom.tune_gc() called first and inline=False, as `kom run` does"
        )
        report.settings["runs"] = f"median of {settings.runs} [min..max]"
        preloader = Preloader(broker.port, settings.publishers, pool)
        for run_index in range(settings.runs):
            client_id = f"bench-historian-r{run_index}"
            loaded = preloader.load(client_id, 1, n)
            db = Path(tmp) / f"run{run_index}.db"
            writer = SinkWriter([SqliteSink(db)])
            seconds, updates, stats = drain_into(writer, broker.port, client_id, n)
            preloader.forget(client_id)
            with sqlite3.connect(db) as check:
                by_kind = dict(
                    check.execute(
                        "SELECT coalesce(reason, quality), count(*) FROM updates GROUP BY 1"
                    ).fetchall()
                )
            rows = by_kind.pop("valid", 0)
            total_rows += rows
            expected = n * TAG_COUNT
            ok = rows == expected and updates >= expected and not set(by_kind) - {"comm"}
            all_ok = all_ok and ok
            rate = min(updates, expected) / TAG_COUNT / seconds
            rates.append(rate)
            others = ", ".join(f"{count:,} invalid ({kind})" for kind, count in by_kind.items())
            checks.append(
                f"run {run_index + 1}: {rows:,} valid rows in the database, expected {n:,} x "
                f"{TAG_COUNT} = {expected:,}: {'OK' if ok else 'MISMATCH'}"
                f"{'; also ' + others if others else ''} "
                f"(kom received {stats['received']:,}, duplicates {stats['duplicates']}, "
                f"sink failures {writer.failures})"
            )
            print(
                f"   [historian] run {run_index + 1} {fmt(rate, 'msg/s'):>14} "
                f"{fmt(rate * TAG_COUNT, 'rows/s'):>16}  rows {rows:,}/{expected:,} "
                f"(publishers {fmt(loaded['rate'], 'msg/s')})",
                flush=True,
            )
    sink_rows = sink_alone(pool, n)
    value, spread = median_spread(rates)
    report.rows.append(
        Row(
            "QoS 1 drain into SQLite (kom run path)",
            value,
            "msg/s",
            "SqliteSink.write alone",
            sink_rows / TAG_COUNT,
            goal=f">= {GOAL_MSGS:,} msg/s",
            met=value >= GOAL_MSGS,
            spread=spread,
        )
    )
    report.rows.append(
        Row(
            "rows committed",
            value * TAG_COUNT,
            "rows/s",
            "SqliteSink.write alone",
            sink_rows,
            goal=f">= {GOAL_MSGS * TAG_COUNT:,} rows/s",
            met=value * TAG_COUNT >= GOAL_MSGS * TAG_COUNT,
            spread=(spread[0] * TAG_COUNT, spread[1] * TAG_COUNT),
        )
    )
    report.rows.append(
        Row(
            "valid rows in the database, all runs",
            total_rows,
            "rows",
            "N x 12 x runs",
            n * TAG_COUNT * settings.runs,
            goal="= N x 12 (each run)",
            met=all_ok,
        )
    )
    report.notes.extend(checks)
    report.notes.append(
        "baseline: SqliteSink.write alone, one run, into a fresh database: the N messages "
        "of a drain decoded a batch at a time (untimed) and written in batches of "
        f"{MERGED:,} updates, the dispatcher's largest call (one transaction each); only the "
        "writes are timed: the sink's own ceiling, no broker."
    )
    report.notes.append(
        "invalid (comm) rows: Kom.close() hands out every input tag of every station as "
        "invalid with reason comm (the line goes down), and SinkWriter stores them too."
    )
    return report
