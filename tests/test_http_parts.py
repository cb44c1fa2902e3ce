"""The status server's pure parts: health rules, trends, tag table, sink health, JSON logs."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kom import Kom, Update
from kom._errors import ConfigError
from kom._logs import JsonFormatter, named_arguments
from kom._model import Quality, Reason
from kom._sinkhealth import COMMIT_BUCKETS, HealthMark, SinkHealth, SinkStats, describe_error
from kom._sinks import JsonlSink, SinkWriter, SqliteSink
from kom.http import TagTable, Trends, health, parse_address
from kom.http._metrics import StationText, _escape
from kom.http._state import Ring, numeric
from kom.http._status import LineView

from ._kom import config, text_station

T = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _update(tag: str, value: object, at: datetime = T, reason: Reason | None = None) -> Update:
    quality = Quality.VALID if reason is None else Quality.INVALID
    return Update(tag, value, quality, reason, at, at, "t")  # type: ignore[arg-type]


OK_SINK = SinkHealth("sqlite:kom.db", True)
FULL_SINK = SinkHealth("sqlite:kom.db", False, "database or disk is full", 1.0)


@pytest.mark.parametrize(
    ("lines", "sinks", "healthy", "reasons"),
    [
        ([LineView("a", "connected", True)], [OK_SINK], True, []),
        ([], [], True, []),
        # A line no station wants (all off or simulated) is idle on purpose, not failing.
        ([LineView("a", "idle", False)], [OK_SINK], True, []),
        (
            [LineView("a", "backing-off", True, "connection refused")],
            [OK_SINK],
            False,
            ["line a is backing-off: connection refused"],
        ),
        ([LineView("a", "connecting", True)], [], False, ["line a is connecting"]),
        (
            [LineView("a", "connected", True, "refused: Failure (0x80)", ("x/#",))],
            [OK_SINK],
            False,
            [
                "line a has refused subscriptions ('x/#'), retried with back-off:"
                " refused: Failure (0x80)"
            ],
        ),
        (
            [LineView("a", "connected", True)],
            [FULL_SINK],
            False,
            ["sink sqlite:kom.db is failing: database or disk is full"],
        ),
        (
            [],
            [SinkHealth("jsonl:x", False, "sink jsonl:x: write failed: disk full")],
            False,
            ["sink jsonl:x: write failed: disk full"],  # named by the sink itself: not twice
        ),
        (
            [LineView("a", "connected", True), LineView("b", "closed", True)],
            [FULL_SINK],
            False,
            ["line b is closed", "sink sqlite:kom.db is failing: database or disk is full"],
        ),
    ],
)
def test_health_rules(
    lines: list[LineView], sinks: list[SinkHealth], healthy: bool, reasons: list[str]
) -> None:
    """Healthy exactly when every wanted line is connected and every sink commits, with reasons."""
    assert health(lines, sinks) == (healthy, reasons)


@pytest.mark.parametrize(
    ("value", "point"),
    [
        (230.5, 230.5),
        (3, 3.0),
        (True, 1.0),
        (False, 0.0),
        (timedelta(minutes=2), 120.0),
        ("on", None),
        (None, None),
        (T, None),
        (math.nan, None),
        (math.inf, None),
    ],
)
def test_numeric_points_of_a_trend(value: object, point: float | None) -> None:
    """Numbers, booleans and durations make trend points; texts, times and NaN do not."""
    assert numeric(value) == point


@given(st.integers(2, 20), st.lists(st.floats(allow_nan=False), max_size=60))
def test_ring_keeps_the_last_points_in_order(size: int, values: list[float]) -> None:
    """A ring holds the last `size` points in the order they came, whatever wrapped."""
    ring = Ring(size)
    for i, value in enumerate(values):
        ring.add(float(i), value)
    times, kept = ring.points()
    assert kept == values[-size:] if values else kept == []
    assert times == [float(i) for i in range(len(values))][-size:]


def test_trends_sample_changed_numeric_updates_only() -> None:
    """A sample adds a point per tag whose latest update changed and is a valid number."""
    trends = Trends(seconds=60)
    a1 = _update("s.a", 1.0)
    text = _update("s.txt", "hello")
    trends.sample({"s.a": a1, "s.txt": text})
    trends.sample({"s.a": a1, "s.txt": text})  # unchanged: no new point
    a2 = _update("s.a", 2.0, T + timedelta(seconds=1))
    bad = _update("s.a", None, T + timedelta(seconds=2), Reason.PARSE)
    trends.sample({"s.a": a2})
    trends.sample({"s.a": bad})
    now = (T + timedelta(seconds=3)).timestamp()
    assert trends.series("s.a", now) == ([T.timestamp(), T.timestamp() + 1], [1.0, 2.0])
    assert trends.series("s.txt", now) == ([], [])
    # Only the window's points: a minute later the first is gone.
    assert trends.series("s.a", T.timestamp() + 60.5) == ([T.timestamp() + 1], [2.0])


def test_trends_beyond_max_tags_only_for_wanted_tags() -> None:
    """Past `max_tags`, a tag gets a trend only once someone asked for it."""
    trends = Trends(seconds=60, max_tags=1)
    trends.sample({"s.a": _update("s.a", 1.0), "s.b": _update("s.b", 1.0)})
    now = T.timestamp() + 1
    assert trends.series("s.a", now)[1] == [1.0]
    assert trends.series("s.b", now)[1] == []
    trends.want("s.b")
    trends.sample({"s.b": _update("s.b", 5.0, T + timedelta(seconds=0.5))})
    assert trends.series("s.b", now)[1] == [5.0]


def test_tag_table_keeps_the_latest_and_counts_invalid_by_tag_and_reason() -> None:
    """The latest update of a tag wins; invalid updates are counted by (tag, reason)."""
    table = TagTable()
    table([_update("s.a", 1.0), _update("s.a", 2.0), _update("s.b", None, reason=Reason.PARSE)])
    table([_update("s.b", None, reason=Reason.PARSE), _update("s.b", None, reason=Reason.COMM)])
    assert table.snapshot()["s.a"].value == 2.0
    assert table.snapshot()["s.b"].reason is Reason.COMM
    assert (table.updates, table.valid) == (5, 2)
    assert dict(table.invalid_counts()) == {("s.b", Reason.PARSE): 2, ("s.b", Reason.COMM): 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_http_address(text: str, expected: tuple[str, int]) -> None:
    """`--http` takes HOST:PORT, with brackets for an IPv6 host."""
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:http", "host:70000", ""])
def test_parse_http_address_refuses(text: str) -> None:
    """A malformed `--http` is a configuration error naming the option."""
    with pytest.raises(ConfigError, match="--http"):
        parse_address(text)


def test_health_mark_follows_failures_and_commits() -> None:
    """A failure is kept with when the failing began until the next commit clears it."""
    mark = HealthMark()
    assert mark.report("x", 0) == SinkHealth("x", True)
    mark.failed(sqlite3.OperationalError("database or disk is full"), 10.0)
    mark.failed(sqlite3.OperationalError("database or disk is full"), 12.0)
    assert mark.report("x", 5) == SinkHealth("x", False, "database or disk is full", 10.0, None, 5)
    mark.committed(13.0)
    assert mark.report("x", 6) == SinkHealth("x", True, None, None, 13.0, 6)


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
        (RuntimeError("first line\nsecond"), "first line"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_describe_error(exc: BaseException, text: str) -> None:
    """An error is one line: its own text, or its type's name when it has none."""
    assert describe_error(exc) == text


def test_sink_stats_histogram_and_fallback_health() -> None:
    """Commits fall into latency buckets (slow ones only in the total); failures are kept."""
    stats = SinkStats("custom0")
    stats.committed(10, 0.0004)
    stats.committed(5, 0.02)
    stats.committed(1, 60.0)
    assert (stats.rows, stats.commits) == (16, 3)
    assert stats.buckets[0] == 1
    assert stats.buckets[COMMIT_BUCKETS.index(0.025)] == 1
    assert sum(stats.buckets) == 2
    stats.failed(RuntimeError("refused"))
    report = stats.health(object())  # a sink without health(): what the writer saw
    assert (report.name, report.ok, report.error, report.rows) == ("custom0", False, "refused", 16)


def test_sqlite_sink_health_with_what_the_writer_saw(tmp_path: Path) -> None:
    """A full database (SQLite's own page limit): /health's record has the sink's reason and
    the writer's rows and times, until a batch commits again."""
    sink = SqliteSink(tmp_path / "full.db")
    writer = SinkWriter([sink])
    writer([_update("s.a", 1.0)])
    (report,) = writer.sinks_health()
    assert (report.name, report.ok, report.rows) == (f"sqlite:{tmp_path / 'full.db'}", True, 1)
    assert report.last_commit is not None
    pages = sink._db.execute("PRAGMA page_count").fetchone()[0]
    sink._db.execute(f"PRAGMA max_page_count={pages}")
    big = [_update(f"s.t{i}", "x" * 1000) for i in range(500)]
    stats = writer.stats[0]
    with pytest.raises(OSError, match="disk full"):
        sink.write(big)
    stats.failed(RuntimeError("refused"))  # as the writer's retry loop notes it
    (report,) = writer.sinks_health()
    assert not report.ok
    assert report.error is not None
    assert "disk full" in report.error  # the sink's own reason, not the writer's
    assert report.failing_since is not None
    sink._db.execute("PRAGMA max_page_count=1000000")
    writer(big)
    (report,) = writer.sinks_health()
    assert (report.ok, report.error, report.failing_since, report.rows) == (True, None, None, 501)
    writer.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_jsonl_sink_reports_no_space_and_the_writer_retries() -> None:
    """Writing into /dev/full fails (ENOSPC): /health says disk full; the writer retries."""
    sink = JsonlSink("/dev/full")
    writer = SinkWriter([sink])
    done = threading.Event()

    def write() -> None:
        try:
            writer([_update("s.a", 1.0)])
        except OSError:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(100):
            if writer.failures >= 2:
                break
            threading.Event().wait(0.05)
        (report,) = writer.sinks_health()
        assert report.name == "jsonl:/dev/full"
        assert not report.ok
        assert report.error is not None
        assert "disk full" in report.error
        assert report.failing_since is not None
        assert writer.stats[0].failures >= 2
    finally:
        writer.close()  # stops the retrying; closing /dev/full fails too, and is logged
        thread.join(5)
    assert done.is_set()


@pytest.mark.parametrize(
    ("fmt", "args", "expected"),
    [
        ("line %s: connecting to %s as %r", ("plant", "h:1", "id"), {"line": "plant"}),
        (
            "line %s: station %s: no time field %s",
            ("plant", "strip1", "T"),
            {"line": "plant", "station": "strip1"},
        ),
        ("station %r: %d%% done", ("s1", 5), {"station": "s1"}),
        ("deadline %s passed", ("x",), {}),
        ("kom run: %d line(s)", (2,), {}),
        ("line %s", (), {}),
    ],
)
def test_named_arguments_of_log_messages(
    fmt: str, args: tuple[object, ...], expected: dict[str, str]
) -> None:
    """The arguments after "line" and "station" in a log format are taken as those fields."""
    assert named_arguments(fmt, args) == expected


def test_json_log_line_has_the_fields() -> None:
    """A JSON log line is one object: time, level, logger, line, station, event (and error)."""
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "kom.line", logging.WARNING, __file__, 1, "line %s: station %s: lost", ("p", "s"), None
    )
    record.created = T.timestamp()
    doc = orjson.loads(formatter.format(record))
    assert doc == {
        "time": "2026-11-22T10:00:00.000Z",
        "level": "warning",
        "logger": "kom.line",
        "line": "p",
        "station": "s",
        "event": "line p: station s: lost",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "kom", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), None
        )
    record.threadName = "kom-line-north"
    doc = orjson.loads(formatter.format(record))
    assert doc["line"] == "north"  # from the line's thread
    assert doc["station"] is None
    assert "ValueError: boom" in doc["error"]


@pytest.mark.parametrize(
    ("value", "text"),
    [("plain", "plain"), ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb")],
)
def test_label_values_are_escaped(value: str, text: str) -> None:
    """A label value in the text format has its backslashes, quotes and newlines escaped."""
    assert _escape(value) == text


def test_station_families_parse_as_prometheus_text() -> None:
    """The per-station text parses with prometheus-client's parser: counters, state, times."""
    cfg = config(text_station("p", "a") + text_station("q", "b"), name="plant", host="127.0.0.1")
    kom = Kom(cfg)
    line = kom.lines["plant"]
    line.core.station_counters["a"].received = 7
    line.core.station_counters["a"].last_message = T
    families = {
        f.name: f for f in text_string_to_metric_families(StationText(kom).render().decode())
    }
    received = families["kom_station_messages_received"]
    assert received.type == "counter"
    assert [(s.labels, s.value) for s in received.samples] == [
        ({"line": "plant", "station": "a"}, 7.0)
    ]
    states = {s.labels["station"]: s.labels["state"] for s in families["kom_station_state"].samples}
    assert states == {"a": "comm", "b": "comm"}  # not connected yet
    (last,) = families["kom_last_message_timestamp_seconds"].samples
    assert (last.labels["station"], last.value) == ("a", T.timestamp())
