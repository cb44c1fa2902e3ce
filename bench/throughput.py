"""End-to-end throughput through a real broker: drain a pre-loaded persistent session.

For each QoS: a consumer session (fixed client id, clean_session false) subscribes and
disconnects; publisher processes publish N messages that mosquitto queues for it; then a
consumer connects with that client id and the time until its last message is measured.
Consumers: a minimal Python reader (the broker's ceiling), paho counting only, the naive
design (paho + json + jsonpath-ng per tag), and kom (1,000 exact stations, or one regex
station), whose callback counts updates until every message's 12 have arrived.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from kom import Config, Kom, Update, loads, tune_gc

from ._common import PIPELINES, Broker, Report, Row, Settings, fmt, median_spread
from ._wire import drain_raw, end_session, prepare_session, publish_worker
from ._workload import (
    BASE_TIME,
    DEVICES,
    TAG_COUNT,
    TOPIC_FILTER,
    NaiveDecoder,
    kom_config_text,
    payload_pool,
)
from .baselines import drain_gmqtt, drain_mqttjs, mqttjs_missing

KOM_PIPELINES = ("kom-exact", "kom-regex", "kom-tuned")
LABELS = {
    "raw": "minimal Python reader (broker ceiling)",
    "paho": "paho count-only",
    "naive": "naive: paho + json + jsonpath-ng",
    "gmqtt": "gmqtt + hand-written 12 fields (orjson, Update)",
    "mqttjs": "MQTT.js (node) count-only",
    "mqttjs-fields": "MQTT.js (node) + JSON.parse, 12 fields",
    "kom-exact": "kom, 1,000 exact stations",
    "kom-regex": "kom, 1 regex station",
    "kom-tuned": "kom, 1,000 exact stations, tune_gc()",
}
POOL = 2000
BASE_EPOCH = int(BASE_TIME.timestamp())
NAIVE_SHARE = 4  # the naive consumer drains N / 4 messages: it is slow and steady
#: kom-exact's goals beside paho count-only, by QoS (docs/performance.md); other kom drains 0.85x.
PAHO_GOALS = {0: 2.0, 1: 2.5}
GMQTT_GOAL = 1.2  # kom-exact >= 1.2x gmqtt + the hand-written pipeline


def broker_options(settings: Settings) -> dict[str, str]:
    options = {
        "max_queued_messages": "0",
        "max_queued_bytes": "0",
        "queue_qos0_messages": "true",
    }
    if settings.max_inflight is not None:
        options["max_inflight_messages"] = str(settings.max_inflight)
    return options


def messages(settings: Settings) -> int:
    if settings.messages:
        return settings.messages
    return 50_000 if settings.quick else 200_000


class Preloader:
    """Fills an offline session's queue with publisher processes (spawned, not forked)."""

    def __init__(self, port: int, publishers: int, pool: Sequence[bytes]) -> None:
        self.port = port
        self.publishers = publishers
        self.pool = list(pool)
        self._ctx = mp.get_context("spawn")

    def load(self, client_id: str, qos: int, count: int) -> dict[str, float]:
        """Subscribe `client_id`, leave it offline, publish `count` messages; the rate."""
        prepare_session(self.port, client_id, TOPIC_FILTER, qos)
        ctx = self._ctx
        results: Any = ctx.Queue()
        go = ctx.Event()
        readies = []
        procs = []
        share, extra = divmod(count, self.publishers)
        first = 0
        for p in range(self.publishers):
            n = share + (1 if p < extra else 0)
            ready = ctx.Event()
            proc = ctx.Process(
                target=publish_worker,
                kwargs={
                    "port": self.port,
                    "qos": qos,
                    "first": first,
                    "count": n,
                    "payloads": self.pool,
                    "devices": DEVICES,
                    "ready": ready,
                    "go": go,
                    "results": results,
                    "base_epoch": BASE_EPOCH,
                },
                daemon=True,
            )
            proc.start()
            procs.append(proc)
            readies.append(ready)
            first += n
        for ready in readies:
            if not ready.wait(30):
                raise RuntimeError("a publisher process did not start")
        go.set()
        outs = [results.get(timeout=300) for _ in procs]
        for proc in procs:
            proc.join(10)
        start = min(o["start"] for o in outs)
        end = max(o["end"] for o in outs)
        return {"rate": count / (end - start), "seconds": end - start}

    def forget(self, client_id: str) -> None:
        """Wipe a drained session, so that later runs do not queue messages for it."""
        end_session(self.port, client_id)


def drain_paho(
    port: int, client_id: str, qos: int, count: int, *, timeout: float, naive: NaiveDecoder | None
) -> tuple[float, int]:
    """paho's own loop on this thread: count messages (or decode them the naive way)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    received = 0
    t_end = 0.0
    handed: list[tuple[Any, ...]] = []

    if naive is None:

        def on_message(c: Any, u: Any, m: Any) -> None:
            nonlocal received, t_end
            received += 1
            if received == count:
                t_end = time.perf_counter()

    else:
        decode = naive.decode

        def on_message(c: Any, u: Any, m: Any) -> None:
            nonlocal received, t_end
            handed.extend(decode(m.payload, m.topic))
            if len(handed) >= 5000:  # hand a batch over
                handed.clear()
            received += 1
            if received == count:
                t_end = time.perf_counter()

    client.on_message = on_message
    t0 = time.perf_counter()
    client.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + timeout
    while received < count and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    if received < count:
        t_end = time.perf_counter()
    return t_end - t0, received


class UpdateCounter:
    """kom's update callback here: counts updates (and calls `inner` first, if any)."""

    def __init__(
        self, target: int, inner: Callable[[Sequence[Update]], None] | None = None
    ) -> None:
        self.target = target
        self.inner = inner
        self.count = 0
        self.t_end = 0.0
        self.done = threading.Event()

    def __call__(self, updates: Sequence[Update]) -> None:
        if self.inner is not None:
            self.inner(updates)
        self.count += len(updates)
        if self.count >= self.target and not self.done.is_set():
            self.t_end = time.perf_counter()
            self.done.set()


class BeginCounter(UpdateCounter):
    """UpdateCounter for an `inner` with `begin` (a SinkWriter), begun as kom's dispatcher
    begins it: the updates count once `inner` has ended them (committed)."""

    def begin(self, updates: Sequence[Update]) -> Callable[[], None] | None:
        end = self.inner.begin(updates)  # type: ignore[union-attr]
        if end is None:  # written already
            self._count(updates)
            return None

        def counted() -> None:
            end()
            self._count(updates)

        return counted

    def _count(self, updates: Sequence[Update]) -> None:
        self.count += len(updates)
        if self.count >= self.target and not self.done.is_set():
            self.t_end = time.perf_counter()
            self.done.set()


def drain_kom(
    config: Config,
    updates: int,
    timeout: float,
    inner: Callable[[Sequence[Update]], None] | None = None,
    *,
    gc_tuned: bool = False,
    inline: bool = True,
    before_start: Callable[[Kom], Callable[[], None]] | None = None,
) -> tuple[float, int, dict[str, Any]]:
    """Start kom on a pre-loaded session; seconds until `updates` updates were handed over.

    `gc_tuned` calls `kom.tune_gc()` first, as `kom run` does (undone afterwards); `inline`
    is Kom's own (`kom run` passes False); `before_start(kom)` runs before kom starts (the
    status server, say) and returns what to call once kom is closed.
    """
    counter = (BeginCounter if hasattr(inner, "begin") else UpdateCounter)(updates, inner)
    kom = Kom(config, counter, iterate=False, inline=inline)
    cleanup = before_start(kom) if before_start is not None else None
    thresholds = gc.get_threshold()
    if gc_tuned:
        tune_gc()
    collector = CollectorClock()
    gc.callbacks.append(collector)
    try:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        kom.start()
        finished = counter.done.wait(timeout)
        t_end = counter.t_end if finished else time.perf_counter()
        cpu = time.process_time() - cpu0
        kom.close()
        if cleanup is not None:
            cleanup()
    finally:
        gc.callbacks.remove(collector)
        if gc_tuned:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    line = kom.counters()["bench"]
    stats = {
        "received": line.received,
        "routed": line.routed,
        "decode_errors": line.decode_errors,
        "duplicates": line.duplicates,
        "consumer_errors": kom.consumer_errors,
        "gc_seconds": collector.seconds,
        "gc_share": collector.seconds / (t_end - t0) if t_end > t0 else 0.0,
        "gc_collections": collector.collections,
        "gc_seconds_by_generation": collector.by_generation,
        "cpu_us": cpu / max(1, counter.count // TAG_COUNT) * 1e6,
    }
    return t_end - t0, counter.count, stats


class CollectorClock:
    """A gc callback: how long the garbage collector ran, and how often, per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self.by_generation = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            took = time.perf_counter() - self._start
            self.seconds += took
            self.collections[info["generation"]] += 1
            self.by_generation[info["generation"]] += took


def drain(
    pipeline: str, port: int, client_id: str, *, qos: int, count: int, timeout: float
) -> tuple[float, int, dict[str, Any]]:
    """Seconds to drain `count` messages with one consumer, and how many arrived."""
    if pipeline == "raw":
        seconds, got = drain_raw(port, client_id, qos, count, timeout)
        return seconds, got, {}
    if pipeline == "gmqtt":
        return drain_gmqtt(port, client_id, qos, count, timeout)
    if pipeline.startswith("mqttjs"):
        return drain_mqttjs(
            port, client_id, qos, count, timeout, fields=pipeline == "mqttjs-fields"
        )
    if pipeline in ("paho", "naive"):
        naive = NaiveDecoder() if pipeline == "naive" else None
        seconds, got = drain_paho(port, client_id, qos, count, timeout=timeout, naive=naive)
        return seconds, got, {}
    variant = "regex" if pipeline == "kom-regex" else "exact"
    config = loads(kom_config_text(port, client_id, qos, variant))
    seconds, got, stats = drain_kom(
        config, count * TAG_COUNT, timeout, gc_tuned=pipeline == "kom-tuned"
    )
    return seconds, got // TAG_COUNT, stats


def run(settings: Settings) -> Report:
    report = Report("throughput", "drain a pre-loaded session through mosquitto, msg/s")
    n = messages(settings)
    pipelines = [p for p in PIPELINES if settings.pipelines is None or p in settings.pipelines]
    if any(p.startswith("mqttjs") for p in pipelines):
        why = mqttjs_missing()
        if why is not None:
            print(f"   [throughput] MQTT.js skipped: {why}", flush=True)
            report.notes.append(f"MQTT.js skipped: {why}")
            pipelines = [p for p in pipelines if not p.startswith("mqttjs")]
    pool = payload_pool(POOL)
    rates: dict[tuple[int, str], list[float]] = {}
    publish: dict[int, list[float]] = {q: [] for q in settings.qos}
    problems: list[str] = []
    gc_shares: dict[tuple[int, str], list[float]] = {}
    with Broker(broker_options(settings)) as broker:
        report.settings["broker"] = broker.describe() + (
            "" if settings.max_inflight is not None else "; max_inflight_messages default (20)"
        )
        report.settings["workload"] = (
            f"{n:,} messages per drain (naive: {n // NAIVE_SHARE:,}), "
            f"{min(len(p) for p in pool)}-{max(len(p) for p in pool)} B NETIO JSON, "
            f"{DEVICES:,} topics devices/devNNNN/messages/events/, {TAG_COUNT} tags a message; "
            "message i's Agent.Time is a base time + i seconds (times move on through a run)"
        )
        report.settings["runs"] = f"median of {settings.runs} [min..max]"
        preloader = Preloader(broker.port, settings.publishers, pool)
        for qos in settings.qos:
            for run_index in range(settings.runs):
                for pipeline in pipelines:
                    count = n // NAIVE_SHARE if pipeline == "naive" else n
                    client_id = f"bench-{pipeline}-q{qos}-r{run_index}"
                    loaded = preloader.load(client_id, qos, count)
                    publish[qos].append(loaded["rate"])
                    seconds, got, stats = drain(
                        pipeline,
                        broker.port,
                        client_id,
                        qos=qos,
                        count=count,
                        timeout=max(120.0, count / 1000),
                    )
                    preloader.forget(client_id)
                    rate = got / seconds if seconds > 0 else 0.0
                    rates.setdefault((qos, pipeline), []).append(rate)
                    if got < count or stats.get("decode_errors") or stats.get("consumer_errors"):
                        problems.append(
                            f"QoS {qos} {pipeline} run {run_index + 1}: {got:,} of {count:,} "
                            f"messages, {stats}"
                        )
                    collector = ""
                    if "gc_share" in stats:
                        full = stats["gc_collections"][2]
                        collector = (
                            f", collector {stats['gc_share']:.0%} of it, {full} full, "
                            f"{stats['cpu_us']:.1f} µs CPU/msg"
                        )
                        gc_shares.setdefault((qos, pipeline), []).append(stats["gc_share"])
                    print(
                        f"   [throughput] QoS {qos} run {run_index + 1} {pipeline:<9} "
                        f"{fmt(rate, 'msg/s'):>14}  (publishers {fmt(loaded['rate'], 'msg/s')}"
                        f"{collector})",
                        flush=True,
                    )
        report.extra["broker_rss_mb_end"] = broker.rss_mb()
    _rows(report, rates, publish, settings)
    report.extra["rates"] = {f"qos{q}/{p}": v for (q, p), v in rates.items()}
    report.extra["publish_rates"] = publish
    report.extra["gc_shares"] = {f"qos{q}/{p}": v for (q, p), v in gc_shares.items()}
    if gc_shares:
        report.notes.append(
            "garbage collector's share of kom's drain time (median): "
            + ", ".join(
                f"QoS {q} {p} {statistics.median(v):.0%}" for (q, p), v in gc_shares.items()
            )
        )
    report.notes.append(
        f"publishers: {settings.publishers} processes (multiprocessing, spawn) writing pre-built "
        "PUBLISH packets on bare sockets; they run BEFORE each drain while the consumer is "
        "offline, so they cannot be its bottleneck; their rate is to the broker holding every "
        "message (PINGRESP after the last; all PUBACKs at QoS 1)."
    )
    report.notes.append(
        "a drain is timed from the consumer's connect to its last message (kom: to the "
        "callback that completes N x 12 updates); kom's configuration loading is not timed."
    )
    report.notes.extend(problems)
    return report


def _rows(
    report: Report,
    rates: dict[tuple[int, str], list[float]],
    publish: dict[int, list[float]],
    settings: Settings,
) -> None:
    for qos in settings.qos:
        med = {p: median_spread(v) for (q, p), v in rates.items() if q == qos}
        for variant in KOM_PIPELINES:
            if variant not in med:
                continue
            value, spread = med[variant]
            if "paho" in med:
                base = med["paho"][0]
                goal = PAHO_GOALS[qos] if variant != "kom-regex" else 0.85
                report.rows.append(
                    Row(
                        f"QoS {qos}: {LABELS[variant]}",
                        value,
                        "msg/s",
                        "paho count-only",
                        base,
                        f">= {goal}x paho",
                        value >= goal * base,
                        spread,
                    )
                )
            if "gmqtt" in med and variant == "kom-exact":
                base = med["gmqtt"][0]
                report.rows.append(
                    Row(
                        f"QoS {qos}: {LABELS[variant]}",
                        value,
                        "msg/s",
                        "gmqtt + hand-written",
                        base,
                        f">= {GMQTT_GOAL}x gmqtt",
                        value >= GMQTT_GOAL * base,
                        spread,
                    )
                )
            if "naive" in med:
                base = med["naive"][0]
                report.rows.append(
                    Row(
                        f"QoS {qos}: {LABELS[variant]}",
                        value,
                        "msg/s",
                        "naive",
                        base,
                        ">= 3x naive",
                        value >= 3 * base,
                        spread,
                    )
                )
            if "paho" not in med and "naive" not in med:
                report.rows.append(
                    Row(f"QoS {qos}: {LABELS[variant]}", value, "msg/s", spread=spread)
                )
            report.notes.append(
                f"QoS {qos}: {LABELS[variant]}: {fmt(value * TAG_COUNT, 'updates/s')}"
            )
        for pipeline in ("paho", "naive", "gmqtt", "mqttjs", "mqttjs-fields", "raw"):
            if pipeline not in med:
                continue
            value, spread = med[pipeline]
            base_name = "raw" if pipeline != "raw" and "raw" in med else None
            report.rows.append(
                Row(
                    f"QoS {qos}: {LABELS[pipeline]}",
                    value,
                    "msg/s",
                    "broker ceiling" if base_name else None,
                    med["raw"][0] if base_name else None,
                    spread=spread,
                )
            )
        if publish[qos]:
            value, spread = median_spread(publish[qos])
            report.rows.append(
                Row(
                    f"QoS {qos}: publishers alone ({settings.publishers} processes)",
                    value,
                    "msg/s",
                    spread=spread,
                )
            )
            fastest = max(
                (m[0] for p, m in med.items() if p == "paho" or p.startswith("kom")), default=0.0
            )
            report.notes.append(
                f"QoS {qos}: the publishers alone publish {fmt(value, 'msg/s')}, "
                f"{value / fastest:.1f}x the fastest paho/kom consumer"
                if fastest
                else f"QoS {qos}: the publishers alone publish {fmt(value, 'msg/s')}"
            )
