"""GET /metrics: kom's counters in Prometheus text format (SPEC §13).

A collector reads kom's own counters when scraped, so the line never touches a metric
object (no lock, no call per message). Labels are low-cardinality: `line`, `station`,
`sink`, `quality`, `reason`, `state`, `outcome`; never a tag value or a topic.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._client import Kom
from .._line import LineState
from .._sinkhealth import COMMIT_BUCKETS
from .._sinks import SinkWriter
from .._station import StationState
from ._state import TagTable, station_lines

#: Line counters: (metric name after kom_, Counters field, help).
LINE_COUNTERS = (
    ("messages_received", "received", "MQTT messages received"),
    ("messages_routed", "routed", "messages routed to a station"),
    ("messages_unrouted", "unrouted", "messages no station took"),
    ("messages_ignored", "ignored", "messages ignored (station off or simulated, overflow)"),
    ("messages_duplicate", "duplicates", "messages redelivered by the broker (DUP)"),
    ("messages_bad_topic", "bad_topics", "messages with a topic that is not valid UTF-8"),
    ("decode_errors", "decode_errors", "invalid updates from decoding (parse, type, ...)"),
    ("wills", "wills", "device wills received"),
    ("reconnects", "reconnects", "connections made again after a loss"),
    ("connect_failures", "connect_failures", "connection attempts that failed"),
    ("pauses", "pauses", "times reading paused (held ACK_ID messages)"),
)
STATION_COUNTERS = (
    ("station_messages_received", "received", "messages routed to the station"),
    ("station_messages_duplicate", "duplicates", "redelivered messages of the station"),
    ("station_decode_errors", "decode_errors", "invalid updates from decoding, per station"),
    ("station_wills", "wills", "wills of the station's device"),
)


class KomCollector(Collector):
    """Reads a running `Kom`, its `SinkWriter` and the status `TagTable` at scrape time."""

    def __init__(self, kom: Kom, writer: SinkWriter | None, table: TagTable) -> None:
        self.kom = kom
        self.writer = writer
        self.table = table

    def collect(self) -> Iterator[Metric]:
        yield from self._lines()
        yield from self._updates()
        yield from self._sinks()
        yield from self._writes()

    def _lines(self) -> Iterator[Metric]:
        lines = list(self.kom.lines.values())
        per_line = {
            name: CounterMetricFamily(f"kom_{name}", text, labels=["line"])
            for name, _, text in LINE_COUNTERS
        }
        per_station = {
            name: CounterMetricFamily(f"kom_{name}", text, labels=["line", "station"])
            for name, _, text in STATION_COUNTERS
        }
        connected = GaugeMetricFamily(
            "kom_line_connected", "1 while the line has an MQTT connection", labels=["line"]
        )
        line_state = GaugeMetricFamily(
            "kom_line_state", "the line's state (1 for the current one)", labels=["line", "state"]
        )
        acks = GaugeMetricFamily(
            "kom_acks_pending",
            "QoS 1/2 messages received and not yet acknowledged to the broker",
            labels=["line"],
        )
        last = GaugeMetricFamily(
            "kom_last_message_timestamp_seconds",
            "when the line or station last received a message (Unix time)",
            labels=["line", "station"],
        )
        station_state = GaugeMetricFamily(
            "kom_station_state",
            "the station's communication state (1 for the current one)",
            labels=["line", "station", "state"],
        )
        for line in lines:
            core = line.core
            c = core.counters
            for name, field, _ in LINE_COUNTERS:
                per_line[name].add_metric([line.name], getattr(c, field))
            connected.add_metric([line.name], 1 if line.state is LineState.CONNECTED else 0)
            for line_st in LineState:
                line_state.add_metric([line.name, line_st.value], 1 if line.state is line_st else 0)
            acks.add_metric([line.name], line.acks_pending)
            if c.last_message is not None:
                last.add_metric([line.name, ""], c.last_message.timestamp())
            counters = core.station_counters
            for station in list(core.stations):
                for state in StationState:
                    station_state.add_metric(
                        [line.name, station.name, state.value], 1 if station.state is state else 0
                    )
                sc = counters.get(station.name)
                if sc is None:
                    continue
                for name, field, _ in STATION_COUNTERS:
                    per_station[name].add_metric([line.name, station.name], getattr(sc, field))
                if sc.last_message is not None:
                    last.add_metric([line.name, station.name], sc.last_message.timestamp())
        yield from per_line.values()
        yield connected
        yield line_state
        yield acks
        yield from per_station.values()
        yield station_state
        yield last

    def _updates(self) -> Iterator[Metric]:
        counts = self.table.invalid_counts()
        total = CounterMetricFamily(
            "kom_updates", "updates handed over, by quality", labels=["quality"]
        )
        total.add_metric(["valid"], self.table.valid)
        total.add_metric(["invalid"], sum(count for _, count in counts))
        yield total
        invalid = CounterMetricFamily(
            "kom_updates_invalid",
            "invalid updates by station and reason",
            labels=["line", "station", "reason"],
        )
        where = station_lines(self.kom)
        by: dict[tuple[str, str, str], int] = {}
        for (tag, reason), count in counts:
            station = tag.partition(".")[0]
            key = (where.get(station, ""), station, reason.value)
            by[key] = by.get(key, 0) + count
        for key, count in sorted(by.items()):
            invalid.add_metric(list(key), count)
        yield invalid

    def _sinks(self) -> Iterator[Metric]:
        if self.writer is None:
            return
        rows = CounterMetricFamily("kom_sink_rows", "rows committed", labels=["sink"])
        failures = CounterMetricFamily(
            "kom_sink_failures", "writes that failed (each retried)", labels=["sink"]
        )
        ok = GaugeMetricFamily(
            "kom_sink_ok", "1 while the sink's last write committed", labels=["sink"]
        )
        latency = HistogramMetricFamily(
            "kom_sink_commit_seconds", "time for a batch to commit", labels=["sink"]
        )
        health = {h.name: h for h in self.writer.health()}
        for stats in list(self.writer.stats):
            rows.add_metric([stats.name], stats.rows)
            failures.add_metric([stats.name], stats.failures)
            report = health.get(stats.name)
            ok.add_metric([stats.name], 1 if report is None or report.ok else 0)
            buckets = []
            cumulative = 0
            for bound, count in zip(COMMIT_BUCKETS, list(stats.buckets), strict=True):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", stats.commits))
            latency.add_metric([stats.name], buckets, stats.commit_seconds)
        yield rows
        yield failures
        yield ok
        yield latency

    def _writes(self) -> Iterator[Metric]:
        writes = CounterMetricFamily(
            "kom_writes", "writes of output tags by outcome", labels=["line", "outcome"]
        )
        for (line, outcome), count in sorted(self.kom.write_outcomes.copy().items()):
            writes.add_metric([line, outcome], count)
        yield writes


def registry(kom: Kom, writer: SinkWriter | None, table: TagTable) -> CollectorRegistry:
    """A registry of its own (not the global one) with kom's collector and the process's."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(KomCollector(kom, writer, table))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg
