"""A simulated NETIO 4All on a real broker: the network and clock around the pure model.

The thread is thin (STYLE: "the I/O loop is thin"): it reads what paho delivered, hands each
command to :class:`~kom.sim._netio_model.NetioDevice`, and publishes what the model says, when
the model says it. Everything the device *means* lives in the model; this module only decides
*when* to ask it (every ``period``, on a command, when a short pulse is due) and keeps the
session alive.

What goes on the wire (SPEC section 10): on connect ``online`` on ``devices/<id>/status`` and
the state once; then the state every ``period`` and at once after each output change. With a
period of 0 (NETIO's "Update period" 0), there is no periodic message: the state goes out only
when something in it changed, an output or a measured value (looked at every
``measure_interval`` seconds). Every
message is QoS 1 without retain, as the real device sends. The last will is ``offline`` on the
status topic, so an abrupt end (``stop(abrupt=True)``) makes the broker announce it; a clean
stop publishes ``offline`` itself before DISCONNECT, which discards the will.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Literal, Self, TextIO

from .._config import Endpoint, LineConfig, Will
from .._errors import LineError
from .._mqtt import Events, RawMessage, Session
from ._netio_model import OFFLINE, ONLINE, Action, CommandResult, NetioDevice, report_key

__all__ = ["DEFAULT_CLIENT_ID", "Mode", "NetioSimulator", "parse_broker", "run_netio"]

log = logging.getLogger("kom.sim.netio")

Mode = Literal["generic", "flex"]
MODES: tuple[Mode, ...] = ("generic", "flex")
DEFAULT_CLIENT_ID = "netio-4All-25E0"
DEFAULT_PORT = 1883

#: Wait between connection attempts. Fixed, not backed off: the simulator serves tests and a
#: demo on one machine, where the broker comes back within moments or not at all.
RETRY_DELAY = 0.5
#: How long one paho loop call may block; bounds the reaction to stop() and to due timers.
LOOP_STEP = 0.05
#: CONNECT to CONNACK, and the TCP connect itself.
CONNECT_TIMEOUT = 5.0
#: A clean stop waits this long for the PUBACK of ``offline`` before it disconnects.
CLOSE_TIMEOUT = 2.0
#: stop() waits this long for the thread to finish.
JOIN_TIMEOUT = 10.0
#: paho's own keep-alive: the session notices a broker that went silent without closing.
KEEP_ALIVE = 30
#: With an update period of 0, how often the measured values are looked at for changes.
MEASURE_INTERVAL = 1.0
#: The simulated strip's digital inputs (S0 counters), as on a PowerDIN 4PZ; 0 is a true 4All.
DEFAULT_INPUTS = 2

_QOS = 1  # SPEC section 10: "The device publishes with QoS 1 and never sets retain."
_PULSES = (Action.SHORT_OFF, Action.SHORT_ON)

Clock = Callable[[], datetime]
PublishHook = Callable[[str, bytes], None]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Inbox(Events):
    """The session's reports, collected on the simulator's thread for it to act on after loop()."""

    def __init__(self) -> None:
        self.messages: list[RawMessage] = []
        self.acked: set[int] = set()
        self.subacks: dict[int, list[int]] = {}

    def message(self, msg: RawMessage) -> None:
        self.messages.append(msg)

    def published(self, mid: int, ok: bool, reason: str, granted_qos: int | None = None) -> None:
        self.acked.add(mid)
        if not ok:
            log.warning("the broker refused a message (mid %d): %s", mid, reason)

    def subscribed(self, mid: int, granted: list[int], reason_string: str | None = None) -> None:
        self.subacks[mid] = granted
        if reason_string:
            log.warning("SUBACK says %s", reason_string)

    def disconnected(self, reason: str) -> None:
        log.debug("disconnected: %s", reason)  # the simulator's thread says more

    def callback_failed(self, where: str, exc: BaseException, topic: bytes | None) -> None:
        log.error("paho callback %s failed (topic %r): %r", where, topic, exc)


class NetioSimulator:
    """A NETIO 4All that lives on an MQTT broker, on a thread of its own.

    ``mode`` is ``"generic"`` (JSON state and commands) or ``"flex"`` (one topic per output and
    quantity). ``period`` is NETIO's update period in seconds; 0 sends messages only on change
    (measured values are looked at every ``measure_interval`` seconds). ``inputs`` is the number
    of digital inputs with S0 counters (the ``Inputs`` block). ``seed`` makes the measurements
    reproducible; left out, the device is seeded with its client id. ``clock`` gives the
    device's time (aware datetimes); the pace of the thread follows ``time.monotonic``.

    ``device`` is the model itself: read it to inspect outputs, but it changes on the
    simulator's thread. ``on_publish(topic, payload)`` is called on that thread for every
    message handed to the broker; ``published`` counts them. The thread never raises: errors
    are logged to ``kom.sim.netio`` and the simulator carries on, reconnecting every
    ``RETRY_DELAY`` seconds while the broker is away.
    """

    def __init__(
        self,
        broker_host: str,
        broker_port: int = DEFAULT_PORT,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        mode: Mode = "generic",
        outputs: int = 4,
        period: float = 1.0,
        default_delay_ms: int = 5000,
        inputs: int = DEFAULT_INPUTS,
        measure_interval: float = MEASURE_INTERVAL,
        seed: int | None = None,
        clock: Clock = _utcnow,
        on_publish: PublishHook | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'generic' or 'flex', found {mode!r}")
        if not period >= 0:
            raise ValueError(f"period must be a number of seconds >= 0, found {period!r}")
        if not measure_interval > 0:
            raise ValueError(
                f"measure_interval must be a positive number of seconds, found {measure_interval!r}"
            )
        if not 1 <= broker_port <= 65535:
            raise ValueError(f"broker_port must be 1..65535, found {broker_port!r}")
        # Without a seed, the model's own default: a device reproducible by its name alone.
        rng = random.Random(client_id if seed is None else seed)
        self.device = NetioDevice(
            client_id, outputs=outputs, default_delay_ms=default_delay_ms, rng=rng, inputs=inputs
        )
        self.mode: Mode = mode
        self.period = float(period)
        self.measure_interval = float(measure_interval)
        self.endpoint = Endpoint(broker_host, broker_port)
        self._clock = clock
        self._on_publish = on_publish
        self._line = LineConfig(
            name="netio",
            endpoints=(self.endpoint,),
            client_id=client_id,
            clean_session=True,
            keep_alive=KEEP_ALIVE,
            ping_interval=0,
            reply_timeout=CONNECT_TIMEOUT,
            will=Will(self.device.status_topic, OFFLINE, _QOS, False),
        )
        #: Messages handed to the broker since start (status messages included).
        self.published = 0
        #: Completed connections (CONNACK and SUBACK) since start; above 1 after reconnects.
        self.connections = 0
        #: Why the last connection attempt failed or the last connection ended.
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._abrupt = False
        self._connected = threading.Event()
        # Device time at which a running short pulse ends, by output: tick() is due then.
        self._pulse_ends: dict[int, datetime] = {}
        self._next_report = 0.0
        # What was last sent, for an update period of 0: the state document's key (generic),
        # or the payload of each topic (flex).
        self._sent_key: bytes | None = None
        self._sent: dict[str, bytes] = {}

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "running" if self.running else "idle"
        return f"<NetioSimulator {self.device.client_id} {self.mode} {self.endpoint} {state}>"

    # -- life -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """Whether the device is on the broker and subscribed to its command topic."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start the thread; it connects, and reconnects, until stop()."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._thread = threading.Thread(
            target=self._run, name=f"kom-sim-netio-{self.device.client_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and subscribed; False when ``timeout`` passed first."""
        return self._connected.wait(timeout)

    def stop(self, abrupt: bool = False) -> None:
        """Leave the broker and end the thread; safe to call more than once.

        A clean stop publishes ``offline`` and waits for its PUBACK, then sends DISCONNECT.
        ``abrupt=True`` closes the socket without DISCONNECT, as a device losing power does,
        so the broker publishes the will (``offline`` on the status topic) on its own.
        """
        thread = self._thread
        if thread is None or self._stopping.is_set():
            if thread is not None:
                thread.join(JOIN_TIMEOUT)
            return
        self._abrupt = abrupt
        self._stopping.set()
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("%r: the thread did not end within %g s", self, JOIN_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self._connect_and_serve():
                    failures = 0
                else:
                    failures += 1
            except Exception as exc:  # the thread must never die with the device still wanted
                self.last_error = repr(exc)
                log.exception("%s: unexpected error: %r", self.device.client_id, exc)
            self._connected.clear()
            if failures == 1 and not self._stopping.is_set():
                log.warning(
                    "%s: cannot reach %s (%s); retrying every %g s",
                    self.device.client_id,
                    self.endpoint,
                    self.last_error,
                    RETRY_DELAY,
                )
            self._stopping.wait(RETRY_DELAY)

    def _connect_and_serve(self) -> bool:
        """One connection, until it is lost or stop() is called; True when it connected."""
        inbox = _Inbox()
        # A fresh session each time: paho's client carries state from a dead connection.
        session = Session(self._line, inbox)
        try:
            return self._use(session, inbox)
        finally:
            session.close()

    def _use(self, session: Session, inbox: _Inbox) -> bool:
        try:
            session.connect(self.endpoint, CONNECT_TIMEOUT)
        except LineError as exc:
            self.last_error = str(exc)
            log.debug("%s: %s", self.device.client_id, exc)
            return False
        try:
            log.info("%s: connected to %s", self.device.client_id, self.endpoint)
            self._publish(session, self.device.status_topic, ONLINE)
            wanted = (
                self.device.devicebound_topic
                if self.mode == "generic"
                else self.device.flex_action_filter
            )
            suback = session.subscribe([wanted], _QOS)
            now = self._clock()
            self.device.tick(now)
            self._report(session, now)
            self._serve(session, inbox, suback)
        except LineError as exc:
            self.last_error = str(exc)
            log.warning("%s: %s", self.device.client_id, exc)
            session.drop()
        finally:
            self._connected.clear()
        return True

    def _serve(self, session: Session, inbox: _Inbox, suback: int) -> None:
        while True:
            if self._stopping.is_set():
                self._leave(session, inbox)
                return
            alive = session.loop(LOOP_STEP)
            if suback in inbox.subacks:
                granted = inbox.subacks.pop(suback)
                if any(code >= 0x80 for code in granted):
                    log.error("%s: the broker refused the subscription", self.device.client_id)
                self.connections += 1
                self._connected.set()
            for msg in inbox.messages:
                self._on_message(session, msg)
            inbox.messages.clear()
            inbox.acked.clear()
            if not alive:
                self.last_error = "connection lost"
                log.warning(
                    "%s: lost the connection to %s; reconnecting",
                    self.device.client_id,
                    self.endpoint,
                )
                session.drop()
                return
            self._on_time(session)

    def _leave(self, session: Session, inbox: _Inbox) -> None:
        if self._abrupt:
            log.info(
                "%s: dropping the connection (the broker sends the will)", self.device.client_id
            )
            session.drop()
            return
        inbox.acked.clear()
        mid = self._publish(session, self.device.status_topic, OFFLINE)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while mid not in inbox.acked and time.monotonic() < deadline:
            if not session.loop(LOOP_STEP):
                break
            inbox.messages.clear()  # commands arriving now are too late to obey
        session.disconnect()
        log.info("%s: disconnected", self.device.client_id)

    # -- what the device does ------------------------------------------------------------

    def _on_message(self, session: Session, msg: RawMessage) -> None:
        topic = msg.topic.decode("utf-8", errors="replace")
        now = self._clock()
        if self.mode == "generic":
            result = self.device.handle_command(msg.payload, now)
        else:
            result = self.device.handle_flex_action(topic, msg.payload, now)
        # Acknowledge once the command is carried out (the session acks manually).
        if msg.qos > 0:
            session.ack(msg.mid, msg.qos)
        if result.error is not None:
            log.warning(
                "%s: refused a command on %s: %s", self.device.client_id, topic, result.error
            )
            return
        log.debug("%s: %s on %s", self.device.client_id, result.operation, topic)
        self._note_pulses(result, now)
        if result.publish:
            self._report(session, now)

    def _note_pulses(self, result: CommandResult, now: datetime) -> None:
        """Remember when the short pulses a command started end, to tick the model then."""
        if not result.changed:
            return
        outputs = {o["ID"]: o for o in self.device.state(now)["Outputs"]}
        for output_id in result.changed:
            output = outputs[output_id]
            if output["Action"] in _PULSES:
                self._pulse_ends[output_id] = now + timedelta(milliseconds=output["Delay"])
            else:
                self._pulse_ends.pop(output_id, None)

    def _on_time(self, session: Session) -> None:
        """Tick the model when a report or a pulse end is due, and publish what changed."""
        due = time.monotonic() >= self._next_report
        now = self._clock()
        pulse_due = any(end <= now for end in self._pulse_ends.values())
        if not (due or pulse_due):
            return
        self._pulse_ends = {k: end for k, end in self._pulse_ends.items() if end > now}
        changes = self.device.tick(now)
        for change in changes:
            log.debug(
                "%s: output %d is now %d", self.device.client_id, change.output_id, change.state
            )
        if self.period == 0:
            if due or changes:
                self._report(session, now, only_changes=True)
        elif due or changes:
            self._report(session, now)

    def _report(self, session: Session, now: datetime, only_changes: bool = False) -> None:
        """Publish the state (with `only_changes`, only what differs from the last sent), and
        count the period (or, with a period of 0, the measuring interval) from now."""
        if self.mode == "generic":
            document = self.device.state(now)
            key = report_key(document)
            messages = (
                []
                if only_changes and key == self._sent_key
                else [(self.device.events_topic, self.device.to_json(now))]
            )
            self._sent_key = key
        else:
            messages = [
                (topic, payload)
                for topic, payload in self.device.flex_messages(now)
                if not (only_changes and self._sent.get(topic) == payload)
            ]
            self._sent.update(messages)
        for topic, payload in messages:
            self._publish(session, topic, payload)
        self._next_report = time.monotonic() + (self.period or self.measure_interval)

    def _publish(self, session: Session, topic: str, payload: bytes) -> int:
        mid, _ = session.publish(topic, payload, _QOS, False)
        self.published += 1
        if self._on_publish is not None:
            try:
                self._on_publish(topic, payload)
            except Exception as exc:  # an observer's bug must not stop the device
                log.error("on_publish failed: %r", exc)
        return mid


# -- the command line ------------------------------------------------------------------

_BRACKETED = re.compile(r"\[([^\]]+)\](?::(\d+))?")
_HOST_PORT = re.compile(r"([^:\s\[\]]+)(?::(\d+))?")


def parse_broker(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` as (host, port); ValueError if not."""
    text = text.strip()
    match = _BRACKETED.fullmatch(text) or _HOST_PORT.fullmatch(text)
    if match is None:
        if text.count(":") > 1 and re.fullmatch(r"[0-9A-Fa-f:.]+", text):
            return text, default_port  # a bare IPv6 address
        raise ValueError(f"broker: expected HOST[:PORT] or [IPv6]:PORT, found {text!r}")
    host, port_text = match.group(1), match.group(2)
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"broker: port out of range 1..65535 in {text!r}")
    return host, port


def run_netio(
    broker: str,
    *,
    id: str = DEFAULT_CLIENT_ID,
    mode: str = "generic",
    outputs: int = 4,
    period: float = 1.0,
    inputs: int = DEFAULT_INPUTS,
    duration: float | None = None,
    verbose: bool = False,
    connect_timeout: float | None = 10.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run a simulated NETIO 4All until Ctrl-C or for ``duration`` seconds (``kom sim netio``).

    With ``verbose``, every published message is printed as one line, ``TIME TOPIC PAYLOAD``,
    on ``out``. Returns 0, or 2 for bad arguments and when the broker could not be reached
    within ``connect_timeout`` seconds (None: keep trying until stopped). Once connected, a
    lost broker is waited for, not an error.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        host, port = parse_broker(broker)
        if mode not in MODES:
            raise ValueError(f"mode: expected generic or flex, found {mode!r}")
        if duration is not None and duration < 0:
            raise ValueError(f"duration: expected seconds >= 0, found {duration!r}")
        hook = _printer(out) if verbose else None
        sim = NetioSimulator(
            host,
            port,
            client_id=id,
            mode=mode,
            outputs=outputs,
            period=period,
            inputs=inputs,
            on_publish=hook,
        )
    except ValueError as exc:
        print(f"kom sim netio: {exc}", file=err)
        return 2
    print(
        f"kom sim netio: {id} ({mode} mode, {outputs} output{'s' if outputs != 1 else ''}, "
        f"{f'every {period:g} s' if period else 'on change only'}) "
        f"on {sim.endpoint}; Ctrl-C stops",
        file=err,
        flush=True,
    )
    end = None if duration is None else time.monotonic() + duration
    sim.start()
    try:
        wait = _min_time(connect_timeout, duration)
        if not sim.wait_connected(wait) and (end is None or time.monotonic() < end):
            print(
                f"kom sim netio: could not connect to {sim.endpoint} within {wait:g} s: "
                f"{sim.last_error}",
                file=err,
            )
            return 2
        while end is None or time.monotonic() < end:
            time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    if sim.connections == 0:
        print(f"kom sim netio: never connected to {sim.endpoint}: {sim.last_error}", file=err)
        return 2
    return 0


def _min_time(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _printer(out: TextIO) -> PublishHook:
    def show(topic: str, payload: bytes) -> None:
        stamp = datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]
        text = payload.decode("utf-8", errors="replace")
        print(f"{stamp} {topic} {text}", file=out, flush=True)

    return show
