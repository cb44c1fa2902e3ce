"""Latency publish → update at a fixed rate, against a default-configured mosquitto.

A publisher process sends QoS 0 messages at 2,000 and 10,000 msg/s, each stamped with
`time.monotonic_ns()` at send (CLOCK_MONOTONIC is system-wide on Linux). kom's callback
computes, per message, the time from that stamp to the hand-over of its updates. Baselines:
paho counting only, and paho re-arming TCP_QUICKACK after each message (what the issue
reports fixes mosquitto's Nagle meeting the consumer's delayed ACKs).
"""

from __future__ import annotations

import array
import gc
import multiprocessing as mp
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from kom import Kom, Update, loads, tune_gc

from ._common import Broker, Report, Row, Settings, fmt, median_spread, percentile
from ._wire import paced_worker
from ._workload import DEVICES, SENT_TAG, TAGS, TOPIC_FILTER, kom_config_text, netio_document

RATES = (2_000, 10_000)
GOALS_MS = {2_000: 0.5, 10_000: 1.0}
WARMUP = 0.5
CONSUMERS = ("kom", "kom-tuned", "paho", "paho+quickack")
PREFIX = len(b'{"Bench":{"SentNs":')


def _publish(port: int, rate: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    template = orjson.dumps(netio_document(0, 0))
    proc = ctx.Process(
        target=paced_worker,
        kwargs={
            "port": port,
            "qos": 0,
            "rate": rate,
            "seconds": seconds,
            "warmup": WARMUP,
            "devices": DEVICES,
            "template": template,
            "results": results,
        },
        daemon=True,
    )
    proc.start()
    out: dict[str, float] = results.get(timeout=WARMUP + seconds + 60)
    proc.join(10)
    return out


class Samples:
    """(send stamp, latency) pairs kept in two arrays of machine integers.

    Not a list of tuples: 50,000 tuples that live to the end of a run are what Python's
    collector walks in every full collection, and those pauses would be the consumer's own.
    """

    def __init__(self) -> None:
        self.sent = array.array("q")
        self.latency = array.array("q")

    def add(self, sent: int, latency: int) -> None:
        self.sent.append(sent)
        self.latency.append(latency)

    def window(self, start: int) -> list[int]:
        """Latencies of the messages sent at `start` or later, sorted."""
        return sorted(
            lat for sent, lat in zip(self.sent, self.latency, strict=True) if sent >= start
        )


def _kom(
    port: int, rate: int, seconds: float, run_index: int, tuned: bool = False
) -> tuple[list[int], dict[str, float]]:
    """kom with the library's defaults, or after `tune_gc()` as `kom run` does (undone after)."""
    samples = Samples()
    suffix = "." + SENT_TAG[0]

    def on_updates(updates: Sequence[Update]) -> None:
        now = time.monotonic_ns()
        for u in updates:
            if u.tag.endswith(suffix) and isinstance(u.value, int):
                samples.add(u.value, now - u.value)

    text = kom_config_text(
        port,
        f"bench-latency-kom-{rate}-{run_index}",
        0,
        "exact",
        tags=(*TAGS, SENT_TAG),
        clean_session=True,
    )
    kom = Kom(loads(text), on_updates, iterate=False)
    thresholds = gc.get_threshold()
    if tuned:
        tune_gc()
    try:
        kom.start()
        if not kom.wait_connected(10):
            raise RuntimeError("kom did not connect")
        time.sleep(0.2)  # SUBACK
        pub = _publish(port, rate, seconds)
        time.sleep(0.2)
        kom.close()
    finally:
        if tuned:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    return _window(samples, pub), pub


def _paho(
    port: int, rate: int, seconds: float, run_index: int, quickack: bool
) -> tuple[list[int], dict[str, float]]:
    samples = Samples()
    subscribed = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-latency-paho-{quickack}-{rate}-{run_index}",
        clean_session=True,
    )

    def on_message(c: Any, u: Any, m: Any) -> None:
        now = time.monotonic_ns()
        payload = m.payload
        sent = int(payload[PREFIX : payload.index(b"}", PREFIX)])
        samples.add(sent, now - sent)
        if quickack:
            # Linux turns quick ACKs off again by itself: re-arm after every receive.
            sock = c.socket()
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.subscribe(TOPIC_FILTER, 0)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("paho did not subscribe")
    pub = _publish(port, rate, seconds)
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()
    return _window(samples, pub), pub


def _window(samples: Samples, pub: dict[str, float]) -> list[int]:
    """Latencies of the messages sent after the warm-up, sorted."""
    return samples.window(int(pub["measure_from_ns"]))


def run(settings: Settings) -> Report:
    report = Report("latency", "publish → update at a fixed rate, QoS 0, default mosquitto")
    seconds = 2.0 if settings.quick else 5.0
    runs = settings.runs
    # stats[(rate, consumer)] = list of per-run dicts
    stats: dict[tuple[int, str], list[dict[str, float]]] = {}
    with Broker() as broker:
        report.settings["broker"] = broker.describe() + " (no set_tcp_nodelay)"
        report.settings["workload"] = (
            f"one publisher process, QoS 0, {seconds:g} s per rate after a {WARMUP:g} s "
            f"warm-up, {DEVICES:,} topics; kom: {DEVICES:,} exact stations x "
            f"{len(TAGS) + 1} tags (the 12 + the send stamp)"
        )
        report.settings["runs"] = f"median of {runs} runs of each percentile [min..max]"
        for rate in RATES:
            for run_index in range(runs):
                for consumer in CONSUMERS:
                    if consumer.startswith("kom"):
                        lat, pub = _kom(
                            broker.port, rate, seconds, run_index, consumer == "kom-tuned"
                        )
                    else:
                        lat, pub = _paho(
                            broker.port, rate, seconds, run_index, consumer == "paho+quickack"
                        )
                    expected = int(rate * seconds)
                    achieved = pub["sent"] / ((pub["end_ns"] - pub["start_ns"]) / 1e9)
                    entry = {
                        "p50": percentile(lat, 50) / 1e6,
                        "p99": percentile(lat, 99) / 1e6,
                        "max": (lat[-1] / 1e6) if lat else float("nan"),
                        "samples": len(lat),
                        "expected": expected,
                        "publisher_rate": achieved,
                    }
                    stats.setdefault((rate, consumer), []).append(entry)
                    print(
                        f"   [latency] {rate:>6,} msg/s run {run_index + 1} {consumer:<13} "
                        f"p50 {entry['p50']:.3f} ms  p99 {entry['p99']:.3f} ms  "
                        f"max {entry['max']:.3f} ms  ({len(lat):,} of ~{expected:,} messages; "
                        f"publisher {fmt(achieved, 'msg/s')})",
                        flush=True,
                    )
    for rate in RATES:
        kom_runs = stats[(rate, "kom")]
        paho_runs = stats[(rate, "paho")]
        quick_runs = stats[(rate, "paho+quickack")]
        for key in ("p50", "p99", "max"):
            value, spread = median_spread([r[key] for r in kom_runs])
            goal = f"<= {GOALS_MS[rate]:g} ms" if key == "p99" else None
            report.rows.append(
                Row(
                    f"{key} at {rate:,} msg/s",
                    value,
                    "ms",
                    "paho count-only",
                    median_spread([r[key] for r in paho_runs])[0],
                    goal,
                    value <= GOALS_MS[rate] if key == "p99" else None,
                    spread,
                )
            )
        value, spread = median_spread([r["p99"] for r in stats[(rate, "kom-tuned")]])
        report.rows.append(
            Row(
                f"p99 at {rate:,} msg/s, kom after tune_gc() (as kom run)",
                value,
                "ms",
                "paho count-only",
                median_spread([r["p99"] for r in paho_runs])[0],
                spread=spread,
            )
        )
        value, spread = median_spread([r["p99"] for r in quick_runs])
        report.rows.append(
            Row(
                f"p99 at {rate:,} msg/s, paho + TCP_QUICKACK (reference)",
                value,
                "ms",
                spread=spread,
            )
        )
        lost = [
            f"{c} {r['samples']:,}/{r['expected']:,}"
            for (rr, c), rs in stats.items()
            if rr == rate
            for r in rs
            if r["samples"] < 0.99 * r["expected"]
        ]
        pub_rates = [r["publisher_rate"] for (rr, _), rs in stats.items() if rr == rate for r in rs]
        report.notes.append(
            f"{rate:,} msg/s: the publisher achieved {fmt(min(pub_rates), 'msg/s')} at least"
            + (f"; fewer messages measured than sent: {', '.join(lost)}" if lost else "")
        )
    report.extra["runs"] = {f"{r}/{c}": v for (r, c), v in stats.items()}
    report.notes.append(
        "latency = the consumer's time.monotonic_ns() when the updates are handed over "
        "(kom: in its callback; paho: in on_message) minus the stamp the publisher put in "
        "the payload just before its send(); the publisher sets TCP_NODELAY, mosquitto does "
        "not (its default), so Nagle's algorithm on the broker meets the consumer's delayed ACKs."
    )
    return report
