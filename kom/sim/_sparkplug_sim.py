"""A simulated Sparkplug B edge node with two devices, on paho's public API (SPEC §14).

`EdgeNode` is the pure model: it says which payloads to send (births, data by exception,
its death) and what a command does, given the time. `EdgeNodeSimulator` is the thin thread
around it: a paho client whose will is the NDEATH (Sparkplug 3.0.0, chapter 5), which births on
connect (NBIRTH, then a DBIRTH per device), reports changed metrics only (DDATA
by alias), answers `Node Control/Rebirth` with new births and DCMD writes with
the new value, and on a clean stop publishes its NDEATH itself before DISCONNECT.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..sparkplug._host import BDSEQ_METRIC, REBIRTH_METRIC
from ..sparkplug._payload import DataType, MetricValue, Out, PayloadError, decode, encode
from ..sparkplug._topic import PREFIX

log = logging.getLogger("kom.sim.sparkplug")

GROUP = "plant"
NODE = "edge1"
RETRY_DELAY = 0.5
CONNECT_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Point(NamedTuple):
    """A simulated metric: datatype, alias, writable, and how it moves (None: stays)."""

    datatype: DataType
    alias: int | None
    writable: bool = False
    step: float | None = None


#: The node's own metrics and its two devices' (names as an integrator would see them).
NODE_POINTS = {
    # §5.4: bdSeq is an Int64; §5.17: with aliases, `Node Control/Rebirth` has none (a host
    # asks for a rebirth by name, before it knows any alias).
    BDSEQ_METRIC: Point(DataType.Int64, 0),
    REBIRTH_METRIC: Point(DataType.Boolean, None, writable=True),
    "Properties/Firmware": Point(DataType.String, 2),
    "Uptime": Point(DataType.Int64, 3, step=1.0),
}
DEVICE_POINTS = {
    "pump1": {
        "Pressure": Point(DataType.Double, 10, step=0.2),
        "Running": Point(DataType.Boolean, 11, writable=True),
        "Speed": Point(DataType.Int32, 12, writable=True),
        "Started": Point(DataType.DateTime, 13),
    },
    "tank1": {
        "Level": Point(DataType.Float, 20, step=0.5),
        "Temperature": Point(DataType.Double, 21, step=0.1),
        "Alarm": Point(DataType.Boolean, 22),
        "Mode": Point(DataType.String, 23, writable=True),
        "Offset": Point(DataType.Int16, 24, writable=True),
    },
}


class EdgeNode:
    """The edge node's state and the payloads it sends (pure; the time is passed in)."""

    def __init__(self, group: str = GROUP, node: str = NODE, seed: int = 1) -> None:
        self.group = group
        self.node = node
        self.rng = random.Random(seed)
        self.bd_seq = 0
        self.seq = 0
        self.started = datetime(2026, 1, 1, tzinfo=UTC)
        self.values: dict[str | None, dict[str, MetricValue]] = {
            None: {BDSEQ_METRIC: 0, REBIRTH_METRIC: False, "Properties/Firmware": "kom-sim 1"},
        }
        self.values[None]["Uptime"] = 0
        self.values["pump1"] = {"Pressure": 4.0, "Running": True, "Speed": 1450}
        self.values["pump1"]["Started"] = self.started
        self.values["tank1"] = {"Level": 50.0, "Temperature": 20.0, "Alarm": False}
        self.values["tank1"].update({"Mode": "auto", "Offset": -3})
        self.rebirths = 0
        self.commands = 0

    def topic(self, kind: str, device: str | None = None) -> str:
        tail = f"/{device}" if device is not None else ""
        return f"{PREFIX}{self.group}/{kind}/{self.node}{tail}"

    @staticmethod
    def points(device: str | None) -> dict[str, Point]:
        return NODE_POINTS if device is None else DEVICE_POINTS[device]

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 256
        return seq

    def death(self) -> tuple[str, bytes]:
        """The NDEATH (the will): bdSeq only, no seq."""
        payload = encode([Out(BDSEQ_METRIC, DataType.Int64, self.bd_seq)], None)
        return self.topic("NDEATH"), payload

    def births(self, now: datetime) -> list[tuple[str, bytes]]:
        """NBIRTH (seq 0) and a DBIRTH per device: every metric with name, alias and value."""
        self.seq = 0
        self.values[None][BDSEQ_METRIC] = self.bd_seq
        out = [(self.topic("NBIRTH"), self._birth(None, now))]
        out += [(self.topic("DBIRTH", d), self._birth(d, now)) for d in DEVICE_POINTS]
        return out

    def _birth(self, device: str | None, now: datetime) -> bytes:
        metrics = [
            Out(name, p.datatype, self.values[device][name], p.alias)
            for name, p in self.points(device).items()
        ]
        return encode(metrics, now, self._next_seq())

    def step(self, now: datetime) -> list[tuple[str, bytes]]:
        """One period: moving metrics change; DDATA/NDATA carry only what changed, by alias."""
        out = []
        for device in (None, *DEVICE_POINTS):
            changed = {}
            for name, p in self.points(device).items():
                if p.step is None:
                    continue
                old = self.values[device][name]
                assert isinstance(old, int | float)
                if p.datatype == DataType.Int64:
                    new: MetricValue = int(old) + 1000
                else:
                    new = round(float(old) + self.rng.uniform(-p.step, p.step), 3)
                if new != old:
                    self.values[device][name] = new
                    changed[name] = new
            if device == "tank1":
                alarm = float(self.values["tank1"]["Level"]) > 60  # type: ignore[arg-type]
                if alarm != self.values["tank1"]["Alarm"]:
                    self.values["tank1"]["Alarm"] = changed["Alarm"] = alarm
            if changed:
                out.append(self._data(device, changed, now))
        return out

    def _data(
        self, device: str | None, changed: dict[str, MetricValue], now: datetime
    ) -> tuple[str, bytes]:
        points = self.points(device)
        metrics = [
            Out(None, points[n].datatype, v, points[n].alias, timestamp=now)
            for n, v in changed.items()
        ]
        kind = "NDATA" if device is None else "DDATA"
        return self.topic(kind, device), encode(metrics, now, self._next_seq())

    def command(self, topic: str, data: bytes, now: datetime) -> list[tuple[str, bytes]]:
        """An NCMD or DCMD: a rebirth request births again; a write sets and reports."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[2] not in ("NCMD", "DCMD"):
            return []
        device = parts[4] if parts[2] == "DCMD" and len(parts) == 5 else None
        if device is not None and device not in DEVICE_POINTS:
            return []
        try:
            payload = decode(data)
        except PayloadError as exc:
            log.warning("%s: bad command on %s: %s", self.node, topic, exc)
            return []
        points = self.points(device)
        by_alias = {p.alias: n for n, p in points.items() if p.alias is not None}
        changed: dict[str, MetricValue] = {}
        for m in payload.metrics:
            name = m.name if m.name is not None else by_alias.get(m.alias or -1)
            if name is None or name not in points:
                continue
            point = points[name]
            value = m.value(point.datatype)
            if device is None and name == REBIRTH_METRIC and value is True:
                self.rebirths += 1
                return self.births(now)
            if point.writable and value is not None and name != REBIRTH_METRIC:
                self.commands += 1
                self.values[device][name] = value
                changed[name] = value
        return [self._data(device, changed, now)] if changed else []


class EdgeNodeSimulator:
    """`EdgeNode` on a broker, on a thread of its own, through paho's public API.

    `period` is how often moving metrics change. `skip_seq()` makes the next message jump
    its sequence number (a lost message, for tests). `stop(abrupt=True)` closes the socket
    without DISCONNECT, so the broker publishes the NDEATH will.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        group: str = GROUP,
        node: str = NODE,
        period: float = 1.0,
        seed: int = 1,
        clock: Clock = _utcnow,
        on_publish: Callable[[str, bytes], None] | None = None,
    ) -> None:
        if not period > 0:
            raise ValueError(f"period must be a positive number of seconds, found {period!r}")
        self.model = EdgeNode(group, node, seed)
        self.host = host
        self.port = port
        self.period = period
        self._clock = clock
        self._on_publish = on_publish
        self._lock = threading.Lock()  # the model, between paho's callbacks and the loop
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._abrupt = False
        self._dropping = threading.Event()
        self._pause = RETRY_DELAY
        self._thread: threading.Thread | None = None
        self.connections = 0
        self.published = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "idle"
        return f"<EdgeNodeSimulator {self.model.group}/{self.model.node} {state}>"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kom-sim-sparkplug", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def stop(self, abrupt: bool = False) -> None:
        self._abrupt = abrupt
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)

    def drop(self, pause: float = 1.0) -> None:
        """Lose the connection without DISCONNECT, as a cut cable does (the broker publishes
        the NDEATH will), and come back after `pause` seconds: a new session, bdSeq + 1."""
        self._pause = pause
        self._dropping.set()

    def skip_seq(self, by: int = 1) -> None:
        """The next message's seq jumps by `by` (as if messages were lost)."""
        with self._lock:
            self.model.seq = (self.model.seq + by) % 256

    def __enter__(self) -> EdgeNodeSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._session()
            except Exception as exc:  # the thread must not die while the node is wanted
                self.last_error = repr(exc)
                log.exception("sparkplug sim: %r", exc)
            self._connected.clear()
            self._stopping.wait(self._pause)
            self._pause = RETRY_DELAY

    def _session(self) -> None:
        model = self.model
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"kom-sim-{model.group}-{model.node}"
        )
        with self._lock:
            model.bd_seq = (model.bd_seq + 1) % 256 if self.connections else 0
            will_topic, will_payload = model.death()
        client.will_set(will_topic, will_payload, qos=1, retain=False)
        inbox: list[tuple[str, bytes]] = []
        client.on_message = lambda _c, _u, msg: inbox.append((msg.topic, bytes(msg.payload)))
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self.last_error = str(exc)
            return
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(0.05)
        if not client.is_connected():
            self.last_error = "no CONNACK"
            client.disconnect()
            return
        self.connections += 1
        commands = f"{PREFIX}{model.group}/NCMD/{model.node}"
        client.subscribe([(commands, 1), (f"{PREFIX}{model.group}/DCMD/{model.node}/+", 1)])
        with self._lock:
            births = model.births(self._clock())
        self._send(client, births)
        self._connected.set()
        next_step = time.monotonic() + self.period
        while not self._stopping.is_set() and not self._dropping.is_set():
            if client.loop(0.05) != paho.MQTT_ERR_SUCCESS:
                self.last_error = "connection lost"
                return
            out: list[tuple[str, bytes]] = []
            with self._lock:
                now = self._clock()
                for topic, data in inbox:
                    out += model.command(topic, data, now)
                inbox.clear()
                if time.monotonic() >= next_step:
                    next_step += self.period
                    out += model.step(now)
            self._send(client, out)
        if self._abrupt or self._dropping.is_set():
            self._dropping.clear()
            sock: Any = client.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker publishes the NDEATH will
            return
        info = client.publish(*model.death(), qos=1)
        end = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < end:
            client.loop(0.05)
        client.disconnect()

    def _send(self, client: Any, messages: list[tuple[str, bytes]]) -> None:
        for topic, data in messages:
            client.publish(topic, data, qos=0)
            self.published += 1
            if self._on_publish is not None:
                self._on_publish(topic, data)


def run_sparkplug(
    broker: str,
    *,
    group: str = GROUP,
    node: str = NODE,
    period: float = 1.0,
    duration: float | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`kom sim sparkplug`: run the edge node until Ctrl-C or for `duration` seconds."""
    from . import parse_broker

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        host, port = parse_broker(broker)
        hook = None
        if verbose:

            def hook(topic: str, data: bytes) -> None:
                print(f"{topic} {describe(data)}", file=out, flush=True)

        sim = EdgeNodeSimulator(host, port, group=group, node=node, period=period, on_publish=hook)
    except ValueError as exc:
        print(f"kom sim sparkplug: {exc}", file=err)
        return 2
    print(
        f"kom sim sparkplug: edge node {group}/{node} with devices "
        f"{', '.join(DEVICE_POINTS)} on {host}:{port}; Ctrl-C stops",
        file=err,
        flush=True,
    )
    sim.start()
    end = None if duration is None else time.monotonic() + duration
    try:
        if not sim.wait_connected(10.0 if duration is None else min(10.0, duration)):
            print(
                f"kom sim sparkplug: could not connect to {host}:{port}: {sim.last_error}", file=err
            )
            return 2
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


def describe(data: bytes) -> str:
    """A payload as one line: seq and each metric's name or alias with its value."""
    try:
        payload = decode(data)
    except PayloadError as exc:
        return f"<{exc}>"
    parts = [f"{m.name or f'#{m.alias}'}={m.value()!r}" for m in payload.metrics]
    return f"seq={payload.seq} " + " ".join(parts)
