"""Scale: 10,000 stations and 100,000 tags: loading, routing and memory.

A generated configuration mixes 5,000 exact addresses (plant/area07/dev00042/state) with
5,000 regular expressions (plant/area(\\d+)/dev00043/.*), 10 tags each. Each run measures in a
fresh interpreter (`python -m bench.scale --child FILE`): VmRSS after importing kom, the time
of `kom.load` (beside `tomllib` alone), of building the lines (routers, decoders), VmRSS
after, and routing µs for repeated and first-seen topics. Routers with 10,000 regex-only
stations are measured too, with a shared literal prefix and with distinct ones.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli

from ._common import Report, Row, Settings, median_spread, percentile, vm_rss_mb

STATIONS = 10_000
TAGS_PER_STATION = 10
AREAS = 20
TAG_KINDS = (
    ("voltage", "Ai", "GlobalMeasure.Voltage"),
    ("frequency", "Ai", "GlobalMeasure.Frequency"),
    ("current", "Ai", "GlobalMeasure.TotalCurrent"),
    ("load", "Ai", "GlobalMeasure.TotalLoad"),
    ("power_factor", "Ai", "GlobalMeasure.OverallPowerFactor"),
    ("energy", "Ci", "GlobalMeasure.TotalEnergy"),
    ("out1", "Di", "Outputs[1].State"),
    ("out2", "Di", "Outputs[2].State"),
    ("name", "TxtI", "Agent.DeviceName"),
    ("uptime", "TiR", "Agent.Uptime"),
)


def exact_address(i: int) -> str:
    return f"plant/area{i % AREAS:02d}/dev{i:05d}/state"


def regex_address(i: int) -> str:
    return f"plant/area(\\d+)/dev{i:05d}/.*"


def config_text(stations: int = STATIONS) -> str:
    """The generated stations.toml: even stations exact, odd ones regex."""
    parts = [
        "[line]\n"
        'host = "127.0.0.1"\n'
        'client_id = "bench-scale"\n'
        'topic_filter = "plant/#"\n'
        'payload_type = "json"\n'
    ]
    tag_text = "".join(
        f'[[station.tag]]\nname = "{name}"\ntype = "{kind}"\naddress = "JA={path}"\n'
        for name, kind, path in TAG_KINDS[:TAGS_PER_STATION]
    )
    for i in range(stations):
        address = exact_address(i) if i % 2 == 0 else regex_address(i)
        parts.append(f'\n[[station]]\nname = "s{i:05d}"\naddress = {json.dumps(address)}\n')
        parts.append(tag_text)
    return "".join(parts)


def _timed_routes(route: Any, topics: list[str]) -> list[float]:
    """µs of each first route of each topic."""
    out = []
    clock = time.perf_counter_ns
    for t in topics:
        t0 = clock()
        route(t)
        out.append((clock() - t0) / 1000)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def child(path: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: everything that `run` reports, as one JSON object."""
    from kom import Kom, Router, load

    out: dict[str, Any] = {"rss_before_mb": vm_rss_mb()}
    text = Path(path).read_text()
    t0 = time.perf_counter()
    tomllib.loads(text)
    out["toml_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tomli.loads(text)  # the parser kom uses: tomllib's own code, compiled
    out["tomli_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = load(path)
    out["load_s"] = time.perf_counter() - t0
    out["rss_loaded_mb"] = vm_rss_mb()
    t0 = time.perf_counter()
    kom = Kom(config, lambda updates: None, iterate=False)
    out["build_s"] = time.perf_counter() - t0
    out["rss_built_mb"] = vm_rss_mb()
    out["stations"] = len(config.stations)
    out["tags"] = sum(len(s.tags) for s in config.stations)
    router = kom.lines["line"].core.router
    rng = random.Random(42)
    stations = len(config.stations)
    # First-seen topics (each routed once): regex-routed, exact, unrouted.
    regex_ids = [i for i in rng.sample(range(stations), 1000) if i % 2 == 1][:400]
    exact_ids = [i for i in rng.sample(range(stations), 1000) if i % 2 == 0][:400]
    regex_topics = [
        f"plant/area{rng.randrange(AREAS):02d}/dev{i:05d}/out/{k}" for k, i in enumerate(regex_ids)
    ]
    exact_topics = [exact_address(i) for i in exact_ids]
    unrouted = [f"plant/area{k % AREAS:02d}/other{k:05d}/state" for k in range(200)]
    out["first_regex_us"] = _summary(_timed_routes(router.route, regex_topics))
    out["first_exact_us"] = _summary(_timed_routes(router.route, exact_topics))
    out["first_unrouted_us"] = _summary(_timed_routes(router.route, unrouted))
    # Repeated topics: all of the above are cached now.
    pool = regex_topics + exact_topics
    lookup = dict.fromkeys(pool, 1)
    for name, fn in (("repeated_us", router.route), ("dict_us", lookup.get)):
        for _ in range(3):
            for t in pool:
                fn(t)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(50):
                for t in pool:
                    fn(t)
            runs.append((time.perf_counter_ns() - t0) / (50 * len(pool)) / 1000)
        out[name] = statistics.median(runs)
    # Routers with 10,000 regex stations only.
    for name, pattern in (
        ("regex_shared_prefix", "plant/area(\\d+)/dev{i:05d}/.*"),
        ("regex_distinct_prefix", "plant/dev{i:05d}/area(\\d+)/.*"),
    ):
        addresses = [pattern.format(i=i) for i in range(STATIONS)]
        t0 = time.perf_counter()
        only = Router(addresses)
        build = time.perf_counter() - t0
        ids = rng.sample(range(STATIONS), 300)
        if name == "regex_shared_prefix":
            topics = [f"plant/area{rng.randrange(99)}/dev{i:05d}/x/{k}" for k, i in enumerate(ids)]
        else:
            topics = [f"plant/dev{i:05d}/area{rng.randrange(99)}/x/{k}" for k, i in enumerate(ids)]
        out[name] = _summary(_timed_routes(only.route, topics)) | {"build_s": build}
    return out


def _child_run(path: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--child", path],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scale child failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run(settings: Settings) -> Report:
    report = Report("scale", "10,000 stations / 100,000 tags: load, route, memory")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kom-bench-scale-") as tmp:
        path = Path(tmp) / "stations.toml"
        path.write_text(config_text())
        size_mb = path.stat().st_size / 1e6
        for run_index in range(settings.runs):
            result = _child_run(str(path))
            results.append(result)
            print(
                f"   [scale] run {run_index + 1}: load {result['load_s']:.2f} s, build "
                f"{result['build_s']:.2f} s, RSS {result['rss_built_mb']:.0f} MB",
                flush=True,
            )
    first = results[0]
    report.settings["configuration"] = (
        f"{first['stations']:,} stations, {first['tags']:,} tags, {size_mb:.1f} MB of TOML; "
        f"stations alternate exact (plant/area07/dev00042/state) and regex "
        f"(plant/area(\\d+)/dev00043/.*)"
    )
    report.settings["runs"] = f"median of {settings.runs} fresh interpreters [min..max]"

    def med(key: str, sub: str | None = None) -> tuple[float, tuple[float, float]]:
        return median_spread([r[key][sub] if sub else r[key] for r in results])

    load, spread = med("load_s")
    report.rows.append(
        Row(
            "kom.load (TOML → validated Config)",
            load,
            "s",
            "tomllib alone",
            med("toml_s")[0],
            spread=spread,
        )
    )
    total = [r["load_s"] + r["build_s"] for r in results]
    value, spread = median_spread(total)
    report.rows.append(
        Row(
            "load + build lines (Kom(config), not started)",
            value,
            "s",
            "tomllib alone",
            med("toml_s")[0],
            "< 2 s",
            value < 2.0,
            spread,
        )
    )
    value, spread = med("rss_built_mb")
    report.rows.append(
        Row(
            "RSS after load + build (VmRSS)",
            value,
            "MB",
            "after import kom",
            med("rss_before_mb")[0],
            "< 200 MB",
            value < 200,
            spread,
        )
    )
    value, spread = med("repeated_us")
    report.rows.append(
        Row(
            "route, repeated topic",
            value,
            "µs",
            "dict.get",
            med("dict_us")[0],
            "< 1 µs",
            value < 1.0,
            spread,
        )
    )
    for key, label in (
        ("first_regex_us", "route, first-seen topic → regex station (mixed config)"),
        ("first_exact_us", "route, first-seen topic → exact station (mixed config)"),
        ("first_unrouted_us", "route, first-seen unrouted topic (mixed config)"),
    ):
        value, spread = med(key, "median")
        report.rows.append(Row(label, value, "µs", "dict.get", med("dict_us")[0], spread=spread))
    for key, label in (
        ("regex_shared_prefix", "route, first-seen, 10,000 regex stations, shared prefix"),
        ("regex_distinct_prefix", "route, first-seen, 10,000 regex stations, own prefixes"),
    ):
        value, spread = med(key, "median")
        report.rows.append(
            Row(label, value, "µs", "dict.get", med("dict_us")[0], "< 100 µs", value < 100, spread)
        )
    for key in (
        "first_regex_us",
        "first_unrouted_us",
        "regex_shared_prefix",
        "regex_distinct_prefix",
    ):
        report.notes.append(
            f"{key}: median {med(key, 'median')[0]:.1f} µs, p99 {med(key, 'p99')[0]:.1f} µs, "
            f"max {med(key, 'max')[0]:.1f} µs"
        )
    report.notes.append(
        "shared prefix: plant/area(\\d+)/dev00042/.* (literal prefix 'plant/area', the same "
        "for all); own prefixes: plant/dev00042/area(\\d+)/.* (literal prefix per station). "
        f"Router build: {med('regex_shared_prefix', 'build_s')[0]:.2f} s and "
        f"{med('regex_distinct_prefix', 'build_s')[0]:.2f} s."
    )
    report.notes.append(
        f"RSS: {med('rss_before_mb')[0]:.0f} MB after import kom, "
        f"{med('rss_loaded_mb')[0]:.0f} MB after load, {med('rss_built_mb')[0]:.0f} MB after "
        "building the lines"
    )
    report.notes.append(
        f"TOML: kom parses with tomli {med('tomli_s')[0]:.2f} s (the standard library's "
        f"tomllib is the same parser, not compiled: {med('toml_s')[0]:.2f} s); the rest of "
        "kom.load is validation and compiling, with the collector paused"
    )
    report.extra["runs"] = results
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        sys.exit("usage: python -m bench.scale --child STATIONS.toml")
