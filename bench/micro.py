"""Micro benchmarks without a broker: routing and decoding, µs per message.

Routing: `Router.route()` with 10, 1,000 and 10,000 stations (half exact addresses, half
regular expressions with a literal prefix, 1 in 1,000 with none), for topics seen before
(decision cached) and topics seen for the first time, beside a plain dict lookup.
Decoding: `LineCore.process()` of the NETIO document with the 12-tag station, beside
`json.loads` and `orjson.loads` alone, the naive jsonpath-ng design and a hand-written floor.
Sparkplug B: a DDATA of 20 metrics beside the protobuf parse alone (bench/sparkplug.py).
"""

from __future__ import annotations

import json
import string
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from kom import Router, loads
from kom._core import LineCore
from kom._station import Message

from . import sparkplug
from ._common import Report, Row, Settings, median_spread, per_call_ns
from ._workload import TAGS, NaiveDecoder, kom_config_text, sample_payload

SIZES = (10, 1_000, 10_000)


def station_addresses(count: int) -> list[str]:
    """Half exact, half regex with a literal prefix; one in 1,000 (at least one) with none."""
    without_prefix = max(1, count // 1000)
    out = []
    for i in range(count):
        site = i % 100
        if i % 2 == 0:
            out.append(f"site{site:03d}/dev{i:05d}/state")
        elif i < 2 * without_prefix:
            out.append(f"(?P<site>[a-z0-9]+)/gw{i:05d}/.*")
        else:
            out.append(f"site{site:03d}/dev{i:05d}/(?P<channel>[a-z]+)/value")
    return out


def _letters(n: int) -> str:
    out = []
    while True:
        n, r = divmod(n, 26)
        out.append(string.ascii_lowercase[r])
        if not n:
            return "".join(out)


def regex_topics(stations: int, first: int, amount: int) -> list[str]:
    """`amount` distinct topics each matched by a regex station (channel names never repeat)."""
    regex_stations = [
        i for i in range(stations) if i % 2 == 1 and i >= 2 * max(1, stations // 1000)
    ] or [1]
    out = []
    for k in range(amount):
        i = regex_stations[k % len(regex_stations)]
        out.append(f"site{i % 100:03d}/dev{i:05d}/ch{_letters(first + k)}/value")
    return out


def _route_loop(route: Any, topics: list[str]) -> Any:
    def loop(n: int) -> None:
        count = len(topics)
        for k in range(n):
            route(topics[k % count])

    return loop


def routing(settings: Settings, report: Report) -> None:
    runs = max(5, settings.runs)
    repeat_n = 20_000 if settings.quick else 200_000
    first_n = 2_000 if settings.quick else 10_000
    for size in SIZES:
        addresses = station_addresses(size)
        t0 = time.perf_counter()
        router = Router(addresses)
        build_ms = (time.perf_counter() - t0) * 1000
        exact = [a for a in addresses if "(" not in a]
        lookup = {a: i for i, a in enumerate(addresses)}
        # Repeated topics: 1,000 topics (half exact, half regex), every one already cached.
        pool = exact[:500] + regex_topics(size, 0, 500)
        for t in pool:
            router.route(t)
        kom_rep = per_call_ns(_route_loop(router.route, pool), repeat_n, runs)
        dict_rep = per_call_ns(_route_loop(lookup.get, pool), repeat_n, runs)
        value, spread = median_spread([v / 1000 for v in kom_rep])
        report.rows.append(
            Row(
                f"route, repeated topic, {size:,} stations",
                value,
                "µs",
                "dict.get",
                median_spread([v / 1000 for v in dict_rep])[0],
                "< 1 µs" if size == 10_000 else None,
                value < 1.0 if size == 10_000 else None,
                spread,
            )
        )
        # First-seen topics: each topic routed once, on a fresh router (empty cache).
        fresh_times = []
        exact_times = []
        for run in range(runs):
            fresh = Router(addresses)
            topics = regex_topics(size, 1_000_000 * (run + 1), first_n)
            t0n = time.perf_counter_ns()
            for t in topics:
                fresh.route(t)
            fresh_times.append((time.perf_counter_ns() - t0n) / len(topics) / 1000)
            sample = exact[: min(len(exact), first_n)]
            t0n = time.perf_counter_ns()
            for t in sample:
                fresh.route(t)
            exact_times.append((time.perf_counter_ns() - t0n) / len(sample) / 1000)
        unseen = regex_topics(size, 9_000_000, first_n)
        dict_miss = per_call_ns(_route_loop(lookup.get, unseen), first_n, runs)
        value, spread = median_spread(fresh_times)
        report.rows.append(
            Row(
                f"route, first-seen regex topic, {size:,} stations",
                value,
                "µs",
                "dict.get",
                median_spread([v / 1000 for v in dict_miss])[0],
                "< 100 µs" if size == 10_000 else None,
                value < 100 if size == 10_000 else None,
                spread,
            )
        )
        value, spread = median_spread(exact_times)
        report.rows.append(
            Row(
                f"route, first-seen exact topic, {size:,} stations",
                value,
                "µs",
                "dict.get",
                median_spread([v / 1000 for v in dict_miss])[0],
                spread=spread,
            )
        )
        report.extra[f"router_build_ms_{size}"] = build_ms
    report.notes.append(
        "routing: stations are half exact addresses, half regexes with a literal prefix "
        "(site042/dev00043/(?P<channel>[a-z]+)/value), 1 in 1,000 without one "
        "((?P<site>[a-z0-9]+)/gw00001/.*). Router build: "
        + ", ".join(f"{s:,} stations {report.extra[f'router_build_ms_{s}']:.1f} ms" for s in SIZES)
    )


def decoding(settings: Settings, report: Report) -> None:
    runs = max(5, settings.runs)
    n = 5_000 if settings.quick else 30_000
    payload = sample_payload()
    topic = "devices/dev0001/messages/events/"
    config = loads(kom_config_text(1883, "bench-micro", 0, "exact", devices=1))
    core = LineCore(config.lines[0], config.stations)
    received = datetime.now(UTC)
    msg = Message(topic, payload, received)
    check = core.process(msg)
    assert len(check.updates) == len(TAGS), check
    assert all(u.valid for u in check.updates), check
    process = core.process

    def kom_loop(count: int) -> None:
        for _ in range(count):
            process(msg)

    def json_loop(count: int) -> None:
        for _ in range(count):
            json.loads(payload)

    def orjson_loop(count: int) -> None:
        for _ in range(count):
            orjson.loads(payload)

    naive = NaiveDecoder()

    def naive_loop(count: int) -> None:
        for _ in range(count):
            naive.decode(payload, topic)

    def naive_parse_loop(count: int) -> None:
        for _ in range(count):
            naive.decode_parsing(payload, topic)

    paths = [tuple(_steps(a)) for _, _, a, _ in TAGS]
    names = [name for name, *_ in TAGS]

    def floor_loop(count: int) -> None:
        for _ in range(count):
            doc = orjson.loads(payload)
            out = []
            for name, steps in zip(names, paths, strict=True):
                node: Any = doc
                for step in steps:
                    node = node[step]
                out.append((name, node, "valid", topic))

    figures = {
        "kom": per_call_ns(kom_loop, n, runs),
        "json": per_call_ns(json_loop, n, runs),
        "orjson": per_call_ns(orjson_loop, n, runs),
        "naive": per_call_ns(naive_loop, n // 5, runs),
        "naive_parse": per_call_ns(naive_parse_loop, max(20, n // 500), min(runs, 3), 5),
        "floor": per_call_ns(floor_loop, n, runs),
    }
    us = {k: median_spread([x / 1000 for x in v]) for k, v in figures.items()}
    kom_us, kom_spread = us["kom"]
    for name, label in (
        ("orjson", "orjson.loads alone"),
        ("json", "json.loads alone"),
        ("floor", "orjson + 12 dict walks + tuples"),
        ("naive", "json + 12 jsonpath find"),
        ("naive_parse", "json + 12 jsonpath parse+find"),
    ):
        report.rows.append(
            Row(
                "decode NETIO, 12 tags (LineCore.process)",
                kom_us,
                "µs",
                label,
                us[name][0],
                spread=kom_spread,
            )
        )
    report.rows.append(
        Row(
            "decode NETIO, kom speed-up over naive",
            us["naive"][0] / kom_us,
            "x",
        )
    )
    report.notes.append(
        f"decoding: the {len(payload)}-byte NETIO document of tests/data, a 12-tag station "
        "(TiA, TiR, 7 Ai, Ci, 2 Di with on_change = false), line time_field Agent.Time (ISO). "
        "LineCore.process = count, route (cached), decode 12 tags with types and qualities, "
        "build 12 Update tuples. The naive design parses its 12 JSONPath expressions once; "
        "parsing them again for every message is the last baseline."
    )


def _steps(address: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in address.split("."):
        if "[" in part:
            key, _, rest = part.partition("[")
            steps.append(key)
            steps.append(int(rest.rstrip("]")) - 1)
        else:
            steps.append(part)
    return steps


def run(settings: Settings) -> Report:
    report = Report("micro", "routing and decoding, µs per message (no broker)")
    report.settings["timing"] = (
        f"time.perf_counter_ns loops after a warm-up; median of {max(5, settings.runs)} runs "
        "[min..max]; ratio = kom ÷ baseline (below 1: kom is faster)"
    )
    routing(settings, report)
    decoding(settings, report)
    sparkplug.decoding(settings, report)
    return report
