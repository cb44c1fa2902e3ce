"""`python -m bench [BENCHMARK] [--quick] [--runs N] [--json PATH]`: kom's benchmark suite.

Benchmarks: micro, throughput, historian, postgres, latency, scale, writes, operations, or all
(the default).
Each broker benchmark starts its own mosquitto on a free loopback port and stops it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ._common import PIPELINES, Report, Settings, cpu_summary, mosquitto_version, render

BENCHMARKS = (
    "micro",
    "throughput",
    "historian",
    "postgres",
    "latency",
    "scale",
    "writes",
    "operations",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="kom's benchmarks: each figure beside its baseline, with the issue's goal.",
    )
    parser.add_argument(
        "benchmark", nargs="?", default="all", choices=(*BENCHMARKS, "all"), help="default: all"
    )
    parser.add_argument("--quick", action="store_true", help="short runs (about 1-2 minutes)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per figure, the median is shown (default 3)"
    )
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages per drain (throughput, historian; default 200,000, quick 50,000)",
    )
    parser.add_argument(
        "--publishers", type=int, default=2, help="publisher processes (1-4, default 2)"
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="set mosquitto's max_inflight_messages (default: mosquitto's own, 20)",
    )
    parser.add_argument(
        "--qos", default="0,1", help="throughput: QoS levels to run, comma-separated (0,1)"
    )
    parser.add_argument(
        "--pipelines",
        default=None,
        help=f"throughput consumers to run, comma-separated from {','.join(PIPELINES)}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pipelines = None
    if args.pipelines:
        pipelines = tuple(p.strip() for p in args.pipelines.split(",") if p.strip())
        unknown = [p for p in pipelines if p not in PIPELINES]
        if unknown:
            raise SystemExit(f"bench: unknown pipeline(s) {unknown} (known: {PIPELINES})")
    qos = tuple(sorted({int(q) for q in args.qos.split(",") if q.strip()}))
    if not qos or set(qos) - {0, 1}:
        raise SystemExit("bench: --qos takes 0, 1 or 0,1")
    settings = Settings(
        qos=qos,
        quick=args.quick,
        runs=args.runs if args.runs is not None else (1 if args.quick else 3),
        messages=args.messages,
        publishers=max(1, min(4, args.publishers)),
        max_inflight=args.max_inflight,
        pipelines=pipelines,
    )
    if settings.runs < 1:
        raise SystemExit("bench: --runs must be at least 1")
    names = BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    header = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_summary(),
        "python": platform.python_version(),
        "kom": version("kom"),
        "paho-mqtt": version("paho-mqtt"),
        "broker": mosquitto_version(),
        "quick": settings.quick,
        "runs": settings.runs,
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print("kom benchmarks: " + "; ".join(f"{k} {v}" for k, v in header.items()), flush=True)
    reports: list[Report] = []
    t_all = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        report: Report = module.run(settings)
        report.seconds = time.perf_counter() - t0
        report.settings["load average (1 min)"] = (
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
            "(other processes on the machine skew these figures)"
        )
        reports.append(report)
        print("\n" + render(report), flush=True)
    total = time.perf_counter() - t_all
    summary = [row for r in reports for row in r.rows if row.met is not None]
    met = sum(1 for row in summary if row.met)
    print(f"\ngoals met: {met} of {len(summary)}; total time {total:.0f} s")
    for report in reports:
        for row in report.rows:
            if row.met is False:
                print(f"   NOT MET  {report.name}: {row.figure} (goal {row.goal})")
    if args.json:
        out: dict[str, Any] = {
            "header": header,
            "seconds": total,
            "benchmarks": [r.as_dict() for r in reports],
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
