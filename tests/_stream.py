"""Numbered message streams for the reliability tests: publish 0..N-1, count what was stored.

A stream message is the JSON document `{"n": <number>}`. A test publishes numbers with a
`StreamPublisher` (a device-like paho client that keeps its own queue and a persistent session
across broker restarts), lets kom store them through its SQLite sink (`Historian` in this
process, or `kom run` as a subprocess), injects a fault, and then compares what the publisher
got acknowledged with what the database holds: `tally()` gives sent / stored / lost /
duplicates, `record()` prints it as one line and keeps it for docs/reliability.md.

Run as a module, this file also holds the helper processes of the tests:
`python -m tests._stream writer CONFIG TAG COUNT` (kom writing through its outbox, killed by a
test) and `python -m tests._stream devices ...` (hundreds of NETIO-like devices for the soak).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kom import Update
from kom._sinks import SinkWriter, SqliteSink

HOST = "127.0.0.1"
WAIT = 30.0
#: Where `record()` appends its figures as JSON lines, when set (docs/reliability.md).
RESULTS_ENV = "KOM_RELIABILITY_RESULTS"

#: A station storing the stream's numbers as tag `<name>.n`.
STATION = """
[[station]]
name = "{name}"
address = "{topic}"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
"""


def station(topic: str, name: str = "s") -> str:
    """The TOML of a station that stores the numbers of `topic` as `<name>.n`."""
    return STATION.format(name=name, topic=topic)


def is_acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether paho saw the broker's PUBACK/PUBCOMP for this message (or wrote a QoS 0 one).

    `MQTTMessageInfo.is_published()` raises for a message published while disconnected
    (rc NO_CONN) even though paho queued it and sends it after reconnecting; the flag it
    would return is read directly instead.
    """
    with info._condition:
        return bool(info._published)


def toml(value: object) -> str:
    """A TOML value (strings, booleans, numbers, lists and inline tables)."""
    from ._kom import _toml

    return _toml(value)


def payload(number: int) -> bytes:
    """The payload that carries `number`."""
    return b'{"n": %d}' % number


# -- figures ------------------------------------------------------------------------------------


@attrs.frozen
class Figures:
    """What one scenario sent and stored, and what it measured besides (seconds, counters)."""

    scenario: str
    sent: int
    stored: int
    lost: int
    duplicates: int
    lost_numbers: tuple[int, ...] = ()
    extra: dict[str, float | int | str] = attrs.field(factory=dict)

    def line(self) -> str:
        """One line for the test output: `scenario: sent N, stored N, lost N, duplicates N`."""
        more = "".join(
            f", {key} {value:.3f}" if isinstance(value, float) else f", {key} {value}"
            for key, value in self.extra.items()
        )
        return (
            f"RELIABILITY {self.scenario}: sent {self.sent}, stored {self.stored}, "
            f"lost {self.lost}, duplicates {self.duplicates}{more}"
        )


def tally(
    scenario: str, sent: Iterable[int], stored: Iterable[int], **extra: float | int | str
) -> Figures:
    """Compare the numbers acknowledged to the publisher with the numbers in the sink.

    `stored` counts distinct sent numbers found; `duplicates` counts extra copies of any number.
    """
    sent_set = set(sent)
    stored_list = [n for n in stored if n in sent_set]
    stored_set = set(stored_list)
    lost = sorted(sent_set - stored_set)
    return Figures(
        scenario,
        sent=len(sent_set),
        stored=len(stored_set),
        lost=len(lost),
        duplicates=len(stored_list) - len(stored_set),
        lost_numbers=tuple(lost[:20]),
        extra=dict(extra),
    )


RESULTS: list[Figures] = []


def record(figures: Figures) -> Figures:
    """Print the one-line figure and keep it (also as a JSON line in $KOM_RELIABILITY_RESULTS)."""
    print(figures.line())
    RESULTS.append(figures)
    target = os.environ.get(RESULTS_ENV)
    if target:
        row = attrs.asdict(figures)
        row["lost_numbers"] = list(figures.lost_numbers)
        with open(target, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
    return figures


def table(figures: Sequence[Figures]) -> str:
    """The figures as a Markdown table (printed at the end of a module run with -s)."""
    rows = [
        "| scenario | sent | stored | lost | duplicates | measured |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        more = ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in f.extra.items()
        )
        rows.append(
            f"| {f.scenario} | {f.sent} | {f.stored} | {f.lost} | {f.duplicates} | {more} |"
        )
    return "\n".join(rows)


# -- waiting ------------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll `check` every 20 ms; TimeoutError naming `what` when it stays false."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


# -- the publisher ------------------------------------------------------------------------------


class StreamPublisher:
    """A device publishing a numbered stream, the way a careful device does.

    It keeps a persistent session (`clean_session = false`, fixed client id), queues messages
    while the broker is away and sends unacknowledged ones again after reconnecting (paho does
    both), and reconnects by itself within a fraction of a second. `acked()` lists the numbers
    the broker acknowledged (PUBACK/PUBCOMP): those are what the broker promised to deliver.
    """

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        client_id: str,
        qos: int = 1,
        clean_session: bool = False,
        connect: bool = True,
    ) -> None:
        self.topic = topic
        self.qos = qos
        self.port = port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        # paho waits `min_delay` before reconnecting, doubling up to `max_delay`.
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.on_publish = self._on_publish
        self._sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        self._acked_at: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if connect:
            self.connect()

    def connect(self) -> None:
        """Connect and start paho's network thread; return once connected."""
        self.client.connect(HOST, self.port, keepalive=10)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, "stream publisher connected")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # Called by paho under its own lock: only note the time, match numbers later.
        self._acked_at[mid] = time.monotonic()

    def publish(self, number: int) -> None:
        """Publish one number (queued by paho while disconnected)."""
        info = self.client.publish(self.topic, payload(number), self.qos)
        self._sent.append((number, info))

    def stream(self, numbers: Iterable[int], rate: float) -> None:
        """Publish `numbers` at about `rate` a second on a thread of its own."""
        todo = list(numbers)

        def run() -> None:
            started = time.monotonic()
            for i, number in enumerate(todo):
                if self._stop.is_set():
                    return
                self.publish(number)
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

        self._thread = threading.Thread(target=run, name="stream-publisher", daemon=True)
        self._thread.start()

    def wait_streamed(self, timeout: float = WAIT) -> None:
        """Wait until the streaming thread has handed every number to paho."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the stream was not published within {timeout} s")

    @property
    def published(self) -> int:
        """How many numbers were handed to paho."""
        return len(self._sent)

    def acked(self) -> list[int]:
        """The numbers the broker acknowledged (all of them for QoS 0 once written)."""
        return [n for n, info in list(self._sent) if is_acked(info)]

    def acked_at(self) -> dict[int, float]:
        """When (time.monotonic) each acknowledged number was acknowledged."""
        return {
            n: self._acked_at[info.mid]
            for n, info in list(self._sent)
            if is_acked(info) and info.mid in self._acked_at
        }

    def wait_acked(self, timeout: float = WAIT) -> list[int]:
        """Wait until every published number is acknowledged; return them."""
        self.wait_streamed(timeout)
        wait_until(
            lambda: len(self.acked()) == len(self._sent),
            timeout,
            f"every publish acknowledged ({len(self.acked())}/{len(self._sent)})",
        )
        return self.acked()

    def close(self) -> None:
        """Stop streaming, DISCONNECT and stop paho's thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> StreamPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the historian ------------------------------------------------------------------------------


def stored_values(db: Path, tag: str) -> list[Any]:
    """The valid values of `tag` in a kom SQLite database, in insertion order."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        try:
            rows = conn.execute(
                "SELECT value FROM updates WHERE tag = ? AND quality = 'valid' ORDER BY id",
                (tag,),
            ).fetchall()
        except sqlite3.OperationalError:  # `kom run` has not created the table yet
            return []
    return [row[0] for row in rows]


def stored_rows(db: Path, tag: str) -> list[tuple[Any, str, str | None]]:
    """Every row of `tag` as (value, quality, reason), in insertion order."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        try:
            rows = conn.execute(
                "SELECT value, quality, reason FROM updates WHERE tag = ? ORDER BY id", (tag,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    return [(row[0], row[1], row[2]) for row in rows]


def wait_stored(db: Path, tag: str, numbers: Iterable[int], timeout: float = WAIT) -> list[int]:
    """Wait until every one of `numbers` is stored as a valid `tag`; return all stored values."""
    wanted = set(numbers)
    found: list[int] = []

    def complete() -> bool:
        found[:] = stored_values(db, tag)
        return wanted <= set(found)

    try:
        wait_until(complete, timeout, f"{len(wanted)} numbers stored")
    except TimeoutError as exc:
        missing = sorted(wanted - set(found))
        raise TimeoutError(f"{exc}: {len(missing)} missing, first {missing[:10]}") from None
    return found


class Historian:
    """kom's SQLite sink in this process, as `kom run` wires it: a callback that commits.

    kom acknowledges a batch to the broker only when this callback has returned, that is,
    after the transaction committed (SPEC §5).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = SinkWriter([SqliteSink(path)])

    def __call__(self, updates: Sequence[Update]) -> None:
        self.writer(updates)

    def values(self, tag: str = "s.n") -> list[Any]:
        return stored_values(self.path, tag)

    def wait_for(
        self, numbers: Iterable[int], tag: str = "s.n", timeout: float = WAIT
    ) -> list[int]:
        return wait_stored(self.path, tag, numbers, timeout)

    def close(self) -> None:
        self.writer.close()


def rss_kib(pid: int) -> int:
    """The resident set size of a process in KiB (VmRSS of /proc/PID/status)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


# -- helper processes ---------------------------------------------------------------------------


def writer_main(args: argparse.Namespace) -> int:
    """kom in a process of its own issuing numbered QoS 1 writes, then waiting to be killed.

    Prints `ready` once the line has tried to connect (connected or not), waits for a line on
    stdin when `--wait-go`, issues `COUNT` writes of `TAG` without waiting for their
    completion, prints `issued N` and sleeps until killed. With COUNT 0 it only runs, which
    sends whatever the outbox kept from an earlier process.
    """
    from kom import Kom, load

    kom = Kom(load(args.config), iterate=False)
    kom.start()
    line = next(iter(kom.lines.values()))
    wait_until(
        lambda: line.connected_event.is_set() or line.last_error is not None, 10, "first attempt"
    )
    print("ready", flush=True)
    if args.wait_go:
        sys.stdin.readline()
    futures = [kom.write(args.tag, str(n)) for n in range(args.count)]
    failed = [f for f in futures if f.done() and f.exception() is not None]
    for future in failed:
        print(f"failed {future.exception()}", flush=True)
    print(f"issued {len(futures) - len(failed)}", flush=True)
    while True:
        time.sleep(1)


def device_topic(device: str) -> str:
    return f"devices/{device}/messages/events/"


def devices_main(args: argparse.Namespace) -> int:
    """Hundreds of NETIO-like devices on a few paho clients, until SIGTERM; then a summary.

    Devices `netio-0000`.. publish their state document with QoS 1 every `--period` seconds,
    with `Agent.Seq` numbering each device's documents from 0, and obey SetOutputs commands
    on their devicebound topic (answering with a new document). Every fourth device is in
    MQTT-flex mode instead: QoS 0 per-output `state` and `load` messages. Each paho client
    has a persistent session and its own queue, so QoS 1 documents survive broker restarts.
    On SIGTERM, publishing stops, the process waits for every PUBACK and prints one JSON
    object: the acknowledged sequence numbers per device and the QoS 0 messages written.
    """
    from kom.sim import NetioDevice

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    names = [f"netio-{i:04d}" for i in range(args.devices)]
    devices = {name: NetioDevice(name, outputs=4, rng=random.Random(name)) for name in names}
    flex = {name for i, name in enumerate(names) if i % 4 == 3}
    clients: list[mqtt.Client] = []
    sent: dict[str, list[tuple[int, mqtt.MQTTMessageInfo]]] = {name: [] for name in names}
    qos0 = [0]
    lock = threading.Lock()
    commands = [0]

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        name = message.topic.split("/")[1]
        device = devices.get(name)
        if device is None:
            return
        with lock:
            result = device.handle_command(message.payload, datetime.now(UTC))
            commands[0] += 1
            if result.publish:
                publish_state(name)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        mine = [name for name, c in owner.items() if c is client]
        client.subscribe([(f"devices/{name}/messages/devicebound/", 1) for name in mine])

    per_client = (len(names) + args.clients - 1) // args.clients
    owner: dict[str, mqtt.Client] = {}
    for c in range(args.clients):
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{args.prefix}-{c}", clean_session=False
        )
        client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        client.max_inflight_messages_set(100)
        client.on_message = on_message
        client.on_connect = on_connect
        clients.append(client)
        for name in names[c * per_client : (c + 1) * per_client]:
            owner[name] = client
    for client in clients:
        client.connect(HOST, args.port, keepalive=10)
        client.loop_start()

    def publish_state(name: str) -> None:
        device = devices[name]
        seq = len(sent[name])
        document = device.state(datetime.now(UTC))
        document["Agent"]["Seq"] = seq
        info = owner[name].publish(device_topic(name), json.dumps(document), 1)
        sent[name].append((seq, info))

    wait_until(lambda: all(c.is_connected() for c in clients), 10, "device clients connected")
    print("ready", flush=True)
    # Spread the devices evenly over the period, as a fleet's clocks do.
    order = list(names)
    random.Random(1).shuffle(order)
    step = args.period / len(order)
    started = time.monotonic()
    tick = 0
    while not stop.is_set():
        name = order[tick % len(order)]
        now = datetime.now(UTC)
        with lock:
            devices[name].tick(now)
            if name in flex:
                for topic, body in devices[name].flex_messages(now):
                    owner[name].publish(topic, body, 0)
                    qos0[0] += 1
            else:
                publish_state(name)
        tick += 1
        ahead = started + tick * step - time.monotonic()
        if ahead > 0:
            stop.wait(ahead)
    deadline = time.monotonic() + 60
    pending = 1
    while time.monotonic() < deadline:
        pending = sum(1 for rows in sent.values() for _, info in rows if not is_acked(info))
        if not pending:
            break
        time.sleep(0.1)
    summary = {
        "acked": {name: [s for s, info in rows if is_acked(info)] for name, rows in sent.items()},
        "flex": sorted(flex),
        "qos0": qos0[0],
        "commands": commands[0],
        "unacked": pending,
    }
    for client in clients:
        client.disconnect()
        client.loop_stop()
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests._stream")
    sub = parser.add_subparsers(required=True)
    w = sub.add_parser("writer")
    w.add_argument("config")
    w.add_argument("tag")
    w.add_argument("count", type=int)
    w.add_argument("--wait-go", action="store_true")
    w.set_defaults(func=writer_main)
    d = sub.add_parser("devices")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--devices", type=int, default=300)
    d.add_argument("--clients", type=int, default=4)
    d.add_argument("--period", type=float, default=5.0)
    d.add_argument("--prefix", default="soak-devices")
    d.set_defaults(func=devices_main)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
