"""What every benchmark shares: a throw-away mosquitto, result rows, tables and timing.

Each benchmark starts its own broker on a free loopback port with its configuration in a
temporary folder, and stops it when done. The system's broker (127.0.0.1:1883) is never used.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

HOST = "127.0.0.1"
SYSTEM_PORT = 1883
START_TIMEOUT = 10.0


@dataclass
class Settings:
    """Options every benchmark reads; `quick` shortens the runs to about a fifth."""

    quick: bool = False
    runs: int = 3
    messages: int | None = None
    publishers: int = 2
    max_inflight: int | None = None
    pipelines: tuple[str, ...] | None = None
    qos: tuple[int, ...] = (0, 1)


#: The throughput benchmark's consumers (bench/README.md), in the order they drain.
PIPELINES = (
    "raw",
    "paho",
    "naive",
    "gmqtt",
    "mqttjs",
    "mqttjs-fields",
    "kom-exact",
    "kom-regex",
    "kom-tuned",
)


# -- results ------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure of kom beside its baseline: `ratio` is kom ÷ baseline."""

    figure: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    goal: str | None = None
    met: bool | None = None
    spread: tuple[float, float] | None = None
    display: str | None = None  # shown instead of the value (e.g. "HUNG")

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


@dataclass
class Report:
    """The result of one benchmark: settings, rows, and notes printed under the table."""

    name: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "settings": self.settings,
            "rows": [r.as_dict() for r in self.rows],
            "notes": self.notes,
            "extra": self.extra,
            "seconds": self.seconds,
        }


def fmt(value: float | None, unit: str = "") -> str:
    """A number for a table: thousands separators, 3 significant digits below 100."""
    if value is None:
        return "-"
    if unit in ("B", "MB") or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip()


def render(report: Report) -> str:
    """The report as a plain-text table with settings above and notes below."""
    lines = [f"== {report.name}: {report.title}"]
    for key, value in report.settings.items():
        lines.append(f"   {key}: {value}")
    header = ("figure", "kom", "baseline", "ratio", "goal", "met")
    table: list[tuple[str, ...]] = [header]
    for row in report.rows:
        kom = row.display or fmt(row.value, row.unit)
        if row.display is None and row.spread is not None and row.spread[0] != row.spread[1]:
            kom += f" [{fmt(row.spread[0])}..{fmt(row.spread[1])}]"
        base = "-"
        if row.baseline is not None:
            base = f"{fmt(row.baseline, row.unit)} ({row.baseline_name})"
        ratio = _ratio(row.ratio)
        met = {True: "MET", False: "NOT MET", None: "-"}[row.met]
        table.append((row.figure, kom, base, ratio, row.goal or "-", met))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        lines.append("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("   " + "  ".join("-" * w for w in widths))
    for note in report.notes:
        lines.append(f"   * {note}")
    lines.append(f"   ({report.seconds:.1f} s)")
    return "\n".join(lines)


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    if ratio >= 1:
        return f"{ratio:.2f}x"
    return f"{ratio:.3f}x"  # 0.845x is not 0.85x


def median_spread(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """The median of `values` and their (min, max)."""
    return statistics.median(values), (min(values), max(values))


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def per_call_ns(
    loop: Callable[[int], None], count: int, runs: int, warmup: int | None = None
) -> list[float]:
    """ns per call of `loop(count)` (which calls the code `count` times), one figure a run."""
    loop(warmup if warmup is not None else max(1, count // 10))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        loop(count)
        out.append((time.perf_counter_ns() - t0) / count)
    return out


def vm_rss_mb() -> float:
    """This process's resident set size (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the broker ---------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise SystemExit("bench: mosquitto is missing (scripts/setup installs it)")
    return found


def mosquitto_version() -> str:
    out = subprocess.run(
        [mosquitto_binary(), "-h"], capture_output=True, text=True, check=False, timeout=10
    )
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "mosquitto (unknown version)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    if port == SYSTEM_PORT:  # never the system broker's port
        return free_port()
    return port


class Broker:
    """mosquitto on a free port of 127.0.0.1, configured by `options` (key → value lines)."""

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self._dir = tempfile.TemporaryDirectory(prefix="kom-bench-broker-")
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()

    def _start(self) -> None:
        binary = mosquitto_binary()
        for _ in range(3):  # a free port may be taken before mosquitto binds it
            self.port = free_port()
            conf = Path(self._dir.name) / "mosquitto.conf"
            body = [
                f"listener {self.port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                f"log_dest file {self._dir.name}/mosquitto.log",
                "log_type error",
                "log_type warning",
            ]
            body += [f"{k} {v}" for k, v in self.options.items()]
            conf.write_text("\n".join(body) + "\n")
            self._proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    socket.create_connection((HOST, self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.02)
            self._stop()
        self._dir.cleanup()
        raise SystemExit("bench: the benchmark's mosquitto did not start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def describe(self) -> str:
        """The settings that matter, for the printed report."""
        shown = ", ".join(f"{k} {v}" for k, v in self.options.items()) or "mosquitto defaults"
        return f"{mosquitto_version()} on {HOST}:{self.port}; {shown}"

    def log_tail(self, lines: int = 20) -> str:
        path = Path(self._dir.name) / "mosquitto.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        if self._proc is None:
            return float("nan")
        try:
            for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def close(self) -> None:
        self._stop()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def cpu_summary() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"
