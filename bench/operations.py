"""The status server's cost: `kom run`'s drain into SQLite with and without `--http` scraped.

The historian benchmark's QoS 1 drain (SinkWriter([SqliteSink]) on the dispatcher, tune_gc,
inline=False), alternately without and with what `kom run --http` adds: the StatusServer on
its own threads, its TagTable as a second callback, and a scraper process that GETs /metrics
(and /health, as a load balancer would) once a second for the whole drain. Goal: the drain
rate with the server within 3% of the rate without.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kom import Kom
from kom._sinks import SinkWriter, SqliteSink
from kom.http import serve

from ._common import Broker, Report, Row, Settings, fmt, median_spread
from ._workload import TAG_COUNT, payload_pool
from .historian import drain_into
from .throughput import POOL, Preloader, broker_options, messages

GOAL_RATIO = 0.97
SCRAPE_SECONDS = 1.0

#: The scraper: another process, as Prometheus is; counts the scrapes that answered.
SCRAPER = """
import signal, sys, time, urllib.request
# Asked to stop with SIGTERM: a process started in the background of a shell ignores SIGINT.
def stop(signum, frame):
    raise SystemExit
signal.signal(signal.SIGTERM, stop)
base, period = sys.argv[1], float(sys.argv[2])
ok = failed = 0
first = "-"
try:
    while True:
        started = time.monotonic()
        for path in ("metrics", "health"):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    response.read()
                ok += 1
            except Exception as exc:
                failed += 1
                first = first if failed > 1 else f"{path}: {exc!r}".replace(" ", "_")
        # The counts so far, every round: what a scraper killed at the end still reported.
        print(ok, failed, first, flush=True)
        time.sleep(max(0.0, period - (time.monotonic() - started)))
except (KeyboardInterrupt, SystemExit):
    pass
print(ok, failed, first, flush=True)
"""


class Scraped:
    """`before_start` for drain_kom: the status server on a free port, scraped every second."""

    def __init__(self, writer: SinkWriter) -> None:
        self.writer = writer
        self.ok = 0
        self.failed = 0
        self.first_failure: str | None = None

    def __call__(self, kom: Kom) -> Callable[[], None]:
        server = serve(kom, self.writer, "127.0.0.1:0")
        scraper = subprocess.Popen(
            [sys.executable, "-c", SCRAPER, server.url, str(SCRAPE_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def stop() -> None:
            scraper.terminate()
            try:
                out, _ = scraper.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                scraper.kill()
                out, _ = scraper.communicate()
                self.failed += 1
                self.first_failure = self.first_failure or "the scraper did not stop on SIGTERM"
            lines = out.split("\n") if out else []
            last = [line for line in lines if len(line.split()) == 3]
            if not last:
                self.failed += 1
                self.first_failure = self.first_failure or "the scraper reported nothing"
            else:
                ok, failed, first = last[-1].split()
                self.ok += int(ok)
                self.failed += int(failed)
                if int(failed) and self.first_failure is None:
                    self.first_failure = first.replace("_", " ")
            server.close()

        return stop


def run(settings: Settings) -> Report:
    report = Report(
        "operations", "kom run's drain into SQLite, with --http scraped every second and without"
    )
    n = messages(settings)
    pool = payload_pool(POOL)
    rates: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    scraped = 0
    failed = 0
    with (
        Broker(broker_options(settings)) as broker,
        tempfile.TemporaryDirectory(prefix="kom-bench-operations-") as tmp,
    ):
        report.settings["broker"] = broker.describe()
        report.settings["workload"] = (
            f"{n:,} QoS 1 messages per drain into SQLite as in `historian`; with --http: the "
            f"status server and a scraper process getting /metrics and /health every "
            f"{SCRAPE_SECONDS:g} s; the two alternate, {settings.runs} run(s) each"
        )
        preloader = Preloader(broker.port, settings.publishers, pool)
        for run_index in range(settings.runs):
            for variant in ("without", "with"):
                client_id = f"bench-ops-{variant}-r{run_index}"
                preloader.load(client_id, 1, n)
                writer = SinkWriter([SqliteSink(Path(tmp) / f"{variant}{run_index}.db")])
                hook = Scraped(writer) if variant == "with" else None
                seconds, updates, stats = drain_into(writer, broker.port, client_id, n, hook)
                preloader.forget(client_id)
                rate = min(updates, n * TAG_COUNT) / TAG_COUNT / seconds
                rates[variant].append(rate)
                cpu[variant].append(stats["cpu_us"])
                if hook is not None:
                    scraped += hook.ok
                    failed += hook.failed
                    if hook.first_failure:
                        report.notes.append(
                            f"run {run_index + 1}: {hook.failed} scrape(s) failed, the first: "
                            f"{hook.first_failure}"
                        )
                print(
                    f"   [operations] run {run_index + 1} {variant + ' --http':<14} "
                    f"{fmt(rate, 'msg/s'):>14} in {seconds:.1f} s, "
                    f"{stats['cpu_us']:.1f} µs CPU/msg"
                    + (f" ({hook.ok} scrapes answered)" if hook is not None else ""),
                    flush=True,
                )
                time.sleep(0.5)
    with_value, with_spread = median_spread(rates["with"])
    without_value, _ = median_spread(rates["without"])
    ratio = with_value / without_value
    report.rows.append(
        Row(
            "QoS 1 drain into SQLite, --http scraped every 1 s",
            with_value,
            "msg/s",
            "the same without --http",
            without_value,
            goal=f">= {GOAL_RATIO:.2f} x without",
            met=ratio >= GOAL_RATIO,
            spread=with_spread,
        )
    )
    cpu_with, cpu_spread = median_spread(cpu["with"])
    cpu_without, _ = median_spread(cpu["without"])
    report.rows.append(
        Row(
            "kom's CPU time per message, --http scraped every 1 s",
            cpu_with,
            "µs",
            "the same without --http",
            cpu_without,
            goal=f"<= {2 - GOAL_RATIO:.2f} x without",
            met=cpu_with <= (2 - GOAL_RATIO) * cpu_without,
            spread=cpu_spread,
        )
    )
    report.rows.append(
        Row(
            f"scrapes answered (/metrics and /health), {failed} failed",
            scraped,
            "requests",
            goal="every one",
            met=failed == 0 and scraped > 0,
        )
    )
    report.notes.append(
        "runs alternate without / with, so that a slow moment of the machine does not fall on "
        "one variant only; each variant's figure is the median of its runs"
    )
    report.notes.append(
        "CPU time per message: the kom process's own (all its threads, the status server's "
        "included; the scraper is another process), which other load on a shared machine "
        "disturbs less than the wall-clock rate"
    )
    report.extra["rates"] = rates
    report.extra["cpu_us"] = cpu
    return report
