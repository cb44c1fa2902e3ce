"""The status of a running kom as plain data: lines, stations, sinks, health (SPEC §13).

`Observer` samples what changes by itself (line states and since when, message rates,
trends) once a second on the server's thread; `health()` is a pure function of the lines'
and sinks' states, so that its rules are tested without a broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from .._client import Kom
from .._line import Line, LineState
from .._sinkhealth import SinkHealth, SinkStats
from .._sinks import SinkWriter, record
from ._state import TagTable, Trends, age, matching, station_lines, units


@attrs.frozen
class LineView:
    """What /health needs of a line."""

    name: str
    state: str
    wants_connection: bool
    last_error: str | None = None
    #: Topic filters the broker refused in SUBACK: connected, yet deaf to them (kom retries).
    refused_filters: tuple[str, ...] = ()


def health(lines: Sequence[LineView], sinks: Sequence[SinkHealth]) -> tuple[bool, list[str]]:
    """Healthy when every line that wants a connection has one and every sink commits.

    A line whose stations are all off or simulated wants no connection (SPEC §1) and is
    not a failure. Returns (healthy, reasons), a reason per failing line or sink.
    """
    reasons: list[str] = []
    for line in lines:
        if line.wants_connection and line.state != LineState.CONNECTED.value:
            why = f": {line.last_error}" if line.last_error else ""
            reasons.append(f"line {line.name} is {line.state}{why}")
        elif line.refused_filters:
            refused = ", ".join(repr(f) for f in line.refused_filters)
            why = f", retried with back-off: {line.last_error}" if line.last_error else ""
            reasons.append(f"line {line.name} has refused subscriptions ({refused}){why}")
    for sink in sinks:
        if not sink.ok:
            error = sink.error or "failing"
            # kom's sinks name themselves in their errors already ("sink jsonl:-: ...").
            named = error.startswith(f"sink {sink.name}")
            reasons.append(error if named else f"sink {sink.name} is failing: {error}")
    return not reasons, reasons


@attrs.define
class _Seen:
    state: str
    since: float
    received: int
    at: float
    rate: float = 0.0


class Observer:
    """Line states with the time each began, message rates, trends: sampled once a second."""

    def __init__(self, kom: Kom, table: TagTable, trends: Trends) -> None:
        self.kom = kom
        self.table = table
        self.trends = trends
        self._lines: dict[str, _Seen] = {}
        self._lock = threading.Lock()  # the sampler and requests; never a line's lock
        self.started = time.time()

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for line in list(self.kom.lines.values()):
            self.line_seen(line, now)
        self.trends.sample(self.table.snapshot())

    def line_seen(self, line: Line, now: float) -> _Seen:
        """The line's state as last seen, with since when and its message rate."""
        state = line.state.value
        received = line.core.counters.received
        with self._lock:
            seen = self._lines.get(line.name)
            if seen is None:
                seen = self._lines[line.name] = _Seen(state, now, received, now)
            if seen.state != state:
                seen.state, seen.since = state, now
            if now - seen.at >= 1.0:
                seen.rate = max(0, received - seen.received) / (now - seen.at)
                seen.received, seen.at = received, now
            return attrs.evolve(seen)


def line_views(kom: Kom) -> list[LineView]:
    return [
        LineView(
            ln.name,
            ln.state.value,
            ln.core.wants_connection,
            ln.last_error,
            tuple(ln.refused_filters),
        )
        for ln in list(kom.lines.values())
    ]


def sink_health(writer: SinkWriter | None) -> list[SinkHealth]:
    return writer.sinks_health() if writer is not None else []


def health_body(kom: Kom, writer: SinkWriter | None) -> tuple[bool, dict[str, Any]]:
    """GET /health: (healthy, body)."""
    lines = line_views(kom)
    sinks = sink_health(writer)
    ok, reasons = health(lines, sinks)
    return ok, {
        "status": "ok" if ok else "failing",
        "reasons": reasons,
        "lines": [attrs.asdict(line) for line in lines],
        "sinks": [s.as_dict() for s in sinks],
    }


def tags_body(table: TagTable, match: str = "", limit: int | None = None) -> list[dict[str, Any]]:
    """GET /api/tags: the latest update of every tag as its SPEC §9 record, sorted by tag."""
    latest = table.snapshot()
    names = matching(latest, match) if match else sorted(latest)
    return [record(latest[name]) for name in names[:limit]]


def status_body(
    kom: Kom,
    writer: SinkWriter | None,
    observer: Observer,
    match: str = "",
    limit: int | None = None,
) -> dict[str, Any]:
    """GET /api/status: everything the page shows but trends."""
    wall = time.time()
    now = datetime.fromtimestamp(wall, UTC)
    ok, health_doc = health_body(kom, writer)
    lines = []
    stations = []
    where = station_lines(kom)
    for line in list(kom.lines.values()):
        core = line.core
        c = core.counters
        seen = observer.line_seen(line, wall)
        lines.append(
            {
                "name": line.name,
                "state": seen.state,
                "since": seen.since,
                "broker": line.endpoint,
                "last_error": line.last_error,
                "reconnects": c.reconnects,
                "connect_failures": c.connect_failures,
                "received": c.received,
                "rate": round(seen.rate, 1),
                "unrouted": c.unrouted,
                "duplicates": c.duplicates,
                "decode_errors": c.decode_errors,
                "acks_pending": line.acks_pending,
                "last_message_age": age(now, c.last_message),
            }
        )
        counters = core.station_counters
        for station in list(core.stations):
            sc = counters.get(station.name)
            stations.append(
                {
                    "name": station.name,
                    "line": where.get(station.name, line.name),
                    "state": station.state.value,
                    "received": sc.received if sc else 0,
                    "routed": sc.routed if sc else 0,
                    "decode_errors": sc.decode_errors if sc else 0,
                    "duplicates": sc.duplicates if sc else 0,
                    "wills": sc.wills if sc else 0,
                    "last_message_age": age(now, sc.last_message if sc else None),
                }
            )
    latest = observer.table.snapshot()
    names = matching(latest, match) if match else sorted(latest)
    unit = units(kom)
    tags = []
    for name in names[:limit]:
        u = latest[name]
        rec = record(u)
        rec["unit"] = unit.get(name, "")
        rec["age"] = age(now, u.received)
        rec["detail"] = u.detail  # why it is invalid, for a person: the page's tooltip
        tags.append(rec)
    return {
        "now": wall,
        "started": observer.started,
        "healthy": ok,
        "health": health_doc,
        "lines": lines,
        "stations": stations,
        "tags": tags,
        "tags_total": len(latest),
        "tags_matching": len(names),
        "updates": observer.table.updates,
        "trend_seconds": observer.trends.seconds,
    }


def sink_stats(writer: SinkWriter | None) -> list[SinkStats]:
    return list(writer.stats) if writer is not None else []
