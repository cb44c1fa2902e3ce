"""A session to one broker: kom's protocol core (`kom.mqtt`) driven over a socket.

One thread owns the socket: the line's. It connects, reads, writes and keeps the timers; other
threads (the host settling messages, a reload, a test dropping the connection) hand their work
to it through a queue and a wake-up socket, so nothing else touches the socket and no lock
guards the wire. The loop is thin: ask the core what to send, send it, feed it what came, hand
its events to the line (`Events`). TCP, TLS (`ssl`) and WebSockets (`wsproto`) carry it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import mqtt
from ._config import Endpoint, LineConfig
from ._errors import BrokerRefused, LineError

log = logging.getLogger("kom.mqtt")

#: A PUBLISH as read from the broker; the topic stays bytes (it may not be UTF-8). `size` is
#: -1 for a whole message, the skipped length for one over the line's packet limit.
RawMessage = mqtt.Message


class SkippedPayload(bytes):
    """The payload of a PUBLISH skipped as oversize: empty, but as long as the one skipped.

    The station's `max_payload` check then reports it like any payload over the limit
    (invalid, reason `parse`) without kom ever holding it.
    """

    size: int

    def __new__(cls, size: int) -> SkippedPayload:
        self = super().__new__(cls, b"")
        self.size = size
        return self

    def __len__(self) -> int:
        return self.size


class Events:
    """What a session tells its owner. Each runs on the line's thread and must be quick."""

    def message(self, msg: RawMessage) -> None: ...
    def take(self, batch: Sequence[object], start: int, pause: Callable[[], bool]) -> int:
        """`message` for each message of `batch` from `start`, in order, while `pause()` is
        False; the index of the first event not taken (not a message, or paused there)."""
        at = start
        count = len(batch)
        while at < count:
            event = batch[at]
            if type(event) is not RawMessage or pause():
                return at
            at += 1
            try:
                self.message(event)
            except Exception as exc:  # the line's own bug: counted, reading goes on
                self.callback_failed("on_message", exc, event.topic)
        return at

    def published(self, mid: int, ok: bool, reason: str, granted_qos: int | None = None) -> None:
        """A write finished; `granted_qos` is set when the broker took it at a lower QoS."""

    def subscribed(
        self, mid: int, granted: list[int], reason_string: str | None = None
    ) -> None: ...
    def unsubscribed(self, mid: int) -> None: ...
    def disconnected(self, reason: str) -> None: ...
    def callback_failed(self, where: str, exc: BaseException, topic: bytes | None) -> None: ...


class Connected(NamedTuple):
    session_present: bool
    assigned_client_id: str | None
    properties: dict[str, Any] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    protocol: str = "3.1.1"  # the version spoken ("5" or "3.1.1", also with "auto")


#: First id of QoS 0 writes: they have no packet identifier, and kom numbers them beyond the
#: 1..65535 of QoS 1/2 packet ids so that a line can track both in one table.
_QOS0_IDS = 1 << 16

#: Packets handled per pass over the read buffer before the line hands its batch over: a
#: backlog reaches the host in batches of this many messages, not of thousands. Measured against
#: 2,000 in 60,000-message drains: the same throughput within the machine's noise, and the
#: collector's time a little lower (0.50-0.65 s against 0.64-0.70 s), as updates die younger.
_BUFFERED_BUDGET = 256

#: Room for a PUBLISH's head beyond `max_payload` (fixed header, topic, packet id, MQTT 5
#: properties): packets bigger than the payload limit plus this are skipped as they stream in.
_HEADROOM = 5 + 2 + 65535 + 2 + 4 + 65535


class Session:
    """One client session to one broker at a time, on the thread that calls `connect`/`loop`."""

    def __init__(self, line: LineConfig, events: Events) -> None:
        self.line = line
        self._events = events
        self._v5 = line.protocol != "3.1.1"
        #: `protocol = "auto"`: try MQTT 5, fall back to 3.1.1 where the broker refuses it.
        self._auto = line.protocol == "auto"
        self._conn = self._new_connection()
        self._stream: _Stream | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_pending = False
        #: Work handed over by other threads: ("ack", n, acks) or ("drop",).
        self._commands: deque[tuple[Any, ...]] = deque()
        self._number = 0  # connections so far: acknowledgements of an older one are dropped
        self._owner: threading.Thread | None = None
        self._q0: list[int] = []  # QoS 0 writes in the bytes not yet written
        self._q0_done: list[int] = []
        self._q0_ready: list[int] = []  # written, completion not yet reported
        self._next_q0 = _QOS0_IDS
        self._more = False  # whole packets may wait in the core's buffer
        #: Events parsed and not yet handed over (the line paused), from `_backlog_at` on.
        self._backlog: list[mqtt.Event] = []
        self._backlog_at = 0
        self._alive = False
        self._closing = False
        self._released = False
        self._broker_said: str | None = None  # the reason of the broker's DISCONNECT
        #: Whether the last connection ended for a reason kom could name (a protocol error, a
        #: QoS 2 PUBLISH refused, the broker's DISCONNECT): not a client id taken over.
        self.explained = False
        self._tls: ssl.SSLContext | None = _tls_context(line) if line.tls is not None else None
        #: Asked between buffered packets: True makes the loop stop reading for now.
        self.pause_reading: Callable[[], bool] = _never
        #: Asked while connecting: True gives up at once (the line is closing).
        self.cancelled: Callable[[], bool] = _never
        #: How many times data was read from the socket so far (-1 before the first
        #: connection): messages that came in one read arrived together, and share a receive time.
        self.reads = -1

    def _new_connection(self) -> mqtt.Connection:
        line = self.line
        limit = line.max_payload + _HEADROOM
        if line.maximum_packet_size is not None:
            limit = min(limit, line.maximum_packet_size)
        return mqtt.Connection(
            self._v5,
            receive_maximum=line.receive_maximum,
            maximum_packet_size=limit,
            topic_alias_maximum=line.topic_alias_maximum,
        )

    def __repr__(self) -> str:
        return f"<Session line={self.line.name!r} connected={self.connected}>"

    @property
    def protocol(self) -> str:
        """The protocol version of the connection: "5" or "3.1.1" (after `auto` fell back)."""
        return "5" if self._v5 else "3.1.1"

    @property
    def connected(self) -> bool:
        return self._alive and self._conn.state is mqtt.State.CONNECTED

    @property
    def connection(self) -> mqtt.Connection:
        """The protocol core (for the line's thread only)."""
        return self._conn

    # -- connecting -------------------------------------------------------------------

    def connect(self, endpoint: Endpoint, timeout: float) -> Connected:
        """Open TCP/TLS/WebSocket, send CONNECT and wait for CONNACK (on the calling thread,
        which owns the session from now on); raises LineError or BrokerRefused.

        With `protocol = "auto"`, a broker that refuses MQTT 5 (CONNACK "unsupported
        protocol version", or a connection closed before CONNACK) is tried again at once
        with 3.1.1, and the log says so; the session then stays on 3.1.1.
        """
        deadline = time.monotonic() + timeout
        try:
            return self._connect(endpoint, timeout, deadline)
        except LineError as exc:
            refused_version = isinstance(exc, BrokerRefused) and exc.reason_code in (1, 0x84)
            # Closed before CONNACK: a broker without MQTT 5 may do that. A protocol error
            # (the peer is not MQTT at all) is no reason to try another version.
            lost = not isinstance(exc, BrokerRefused) and "lost before CONNACK" in str(exc)
            if not (self._auto and self._v5 and (refused_version or lost)):
                raise
            log.warning(
                "line %s: the broker at %s does not accept MQTT 5 (%s); using MQTT 3.1.1",
                self.line.name,
                endpoint,
                exc,
            )
            self._v5 = False
            self._conn.set_version(False)
            return self._connect(endpoint, max(deadline - time.monotonic(), 0.1), deadline)

    def _connect(self, endpoint: Endpoint, timeout: float, deadline: float) -> Connected:
        self._owner = threading.current_thread()
        self._close_stream()
        self._closing = False
        self._broker_said = None
        self.explained = False
        self._commands.clear()  # acknowledgements of an earlier connection
        line = self.line
        where = f"line {line.name!r} at {endpoint}"
        try:
            stream = self._open(endpoint, deadline, where)
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message
            raise LineError(f"{where}: TLS certificate refused: {why}", line.name) from exc
        except ssl.SSLError as exc:
            raise LineError(f"{where}: TLS failed: {exc.reason or exc}", line.name) from exc
        except (OSError, ValueError) as exc:
            raise LineError(f"{where}: cannot connect: {exc}", line.name) from exc
        self._stream = stream
        self._selector.register(stream.sock, selectors.EVENT_READ, stream)
        self.reads = max(self.reads, 0)
        conn = self._conn
        if conn.state is not mqtt.State.DISCONNECTED:
            conn.connection_lost()
        conn.connect(self._connect_packet(), time.monotonic())
        self._alive = True
        try:
            accepted = self._await_connack(deadline, timeout, where)
        except BaseException:
            self._close_stream()
            if conn.state is not mqtt.State.DISCONNECTED:
                conn.connection_lost()
            raise
        for done in accepted.failed:
            log.warning("line %s: write %d failed: %s", line.name, done.mid, done.reason)
            try:
                self._events.published(done.mid, False, done.reason)
            except Exception as exc:  # the line's own bug: counted
                self._events.callback_failed("on_publish", exc, None)
        assigned = accepted.properties.get("assigned_client_identifier")
        protocol = "5" if self._v5 else "3.1.1"
        return Connected(accepted.session_present, assigned, accepted.properties, protocol)

    def _await_connack(
        self, deadline: float, timeout: float, where: str
    ) -> mqtt.ConnectionAccepted:
        conn = self._conn
        name = self.line.name
        while True:
            if self.cancelled():
                raise LineError(f"{where}: closed while waiting for CONNACK", name)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LineError(f"{where}: no CONNACK within {timeout:g} s", name)
            try:
                self._flush()
                self._read(min(left, 0.1))
                event = conn.next_event(time.monotonic())
            except mqtt.ProtocolError as exc:
                self.explained = True
                raise LineError(f"{where}: protocol error before CONNACK: {exc}", name) from exc
            except (OSError, ssl.SSLError) as exc:
                raise LineError(f"{where}: connection failed: {exc}", name) from exc
            if isinstance(event, mqtt.ConnectionAccepted):
                return event
            if isinstance(event, mqtt.ConnectionRefused):
                hint = ""
                if event.unsupported_version:
                    hint = f" (the broker does not speak MQTT {'5' if self._v5 else '3.1.1'})"
                raise BrokerRefused(
                    f"{where}: broker refused the connection: {event.reason}{hint}",
                    name,
                    event.code,
                )
            if not self._alive:
                why = self._broker_said or "the broker closed the connection"
                raise LineError(f"{where}: connection lost before CONNACK ({why})", name)

    def _connect_packet(self) -> mqtt.Connect:
        line = self.line
        props: dict[str, Any] = {}
        if self._v5:
            # MQTT 5 §3.1.2.11.2: without an expiry the session ends with the connection.
            expiry = line.session_expiry
            if expiry is None:
                expiry = 0 if line.effective_clean_session else 0xFFFFFFFF
            props["session_expiry_interval"] = expiry
            if line.receive_maximum != 65535:
                props["receive_maximum"] = line.receive_maximum
            if line.maximum_packet_size is not None:
                props["maximum_packet_size"] = line.maximum_packet_size
            if line.topic_alias_maximum:
                props["topic_alias_maximum"] = line.topic_alias_maximum
            if line.user_properties:
                props["user_property"] = line.user_properties
        will = None
        if line.will is not None:
            w = line.will
            will = mqtt.Will(w.topic, _bytes(w.message), w.qos, w.retain)
        password = line.password.value.encode() if line.password is not None else None
        username = line.username
        if password is not None and username is None:
            username = ""  # MQTT 3.1.1 §3.1.2.9: no password without a user name
        return mqtt.Connect(
            line.client_id,
            line.effective_clean_session,
            line.keep_alive,
            username,
            password,
            will,
            props,
            5 if self._v5 else 4,
        )

    def _open(self, endpoint: Endpoint, deadline: float, where: str) -> _Stream:
        """A connected socket (TLS handshake done, WebSocket upgraded), non-blocking."""
        sock = _connect_tcp(endpoint.host, endpoint.port, deadline, self.cancelled)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = sock
            if self._tls is not None:
                tls = self._tls.wrap_socket(
                    sock, server_hostname=endpoint.host, do_handshake_on_connect=False
                )
                sock = tls
                _handshake(tls, deadline, self.cancelled)
            stream = _Stream(sock, raw)
            if self.line.transport == "websockets":
                stream.upgrade(endpoint, self.line.ws_path, deadline, self.cancelled)
            return stream
        except BaseException:
            sock.close()
            raise

    # -- the loop ---------------------------------------------------------------------

    def loop(self, timeout: float) -> bool:
        """Write what is due, wait up to `timeout` for the broker, read and hand over events.

        False when the connection is gone.
        """
        if not self._alive:
            return False
        try:
            self._run_commands()
            self._flush()
            if not self._more:
                # Read only when the packets read before are all handed over: the core's
                # buffer then holds at most one read and a partial packet (memory, and no
                # copying of a growing buffer).
                self._read(timeout)
            self._dispatch()
            self._run_commands()
            self._timers()
            self._flush()
        except mqtt.ProtocolError as exc:
            self.explained = True
            self._tell_broker(exc)
            self._lost(f"protocol error: {exc} [{exc.reason}]")
        except (OSError, ssl.SSLError) as exc:
            self._failed(exc)
        except Exception as exc:  # a bug must not end the line's thread
            self._events.callback_failed("loop", exc, None)
            self._lost(f"internal error: {exc!r}")
        self._report_written()
        return self._alive

    def _tell_broker(self, exc: mqtt.ProtocolError) -> None:
        """MQTT 5 §4.13.1: DISCONNECT with the reason code before closing on a protocol error
        (e.g. 0x94 for a topic alias outside kom's maximum), so the broker's log names it."""
        if not (self._v5 and self.connected):
            return
        with contextlib.suppress(OSError, ssl.SSLError, mqtt.MQTTError):
            self._conn.disconnect(exc.code, {"reason_string": str(exc)[:200]})
            self._flush()

    def idle(self, timeout: float) -> None:
        """Write what is queued (acknowledgements, writes) without reading anything."""
        if not self._alive:
            time.sleep(timeout)
            return
        try:
            self._run_commands()
            self._flush()
            stream = self._stream
            events = selectors.EVENT_WRITE if stream is not None and stream.pending_out else 0
            self._select(timeout, events)
            self._flush()
        except (OSError, ssl.SSLError) as exc:
            self._failed(exc)
        self._report_written()

    def _select(self, timeout: float, events: int) -> bool:
        """Wait for the socket (`events`) or a wake-up; whether the socket is ready."""
        stream = self._stream
        if stream is None:
            return False
        selector = self._selector
        selector.modify(stream.sock, events or selectors.EVENT_READ, stream)
        ready = False
        for key, mask in selector.select(timeout):
            if key.data is None:
                self._drain_wake()
            elif events and mask & events:
                ready = True
        if not events:
            selector.modify(stream.sock, selectors.EVENT_READ, stream)
        return ready

    def _read(self, timeout: float) -> None:
        """Wait up to `timeout` for data and give what came to the core."""
        stream = self._stream
        if stream is None:
            return
        if not stream.buffered():
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if stream.pending_out else 0)
            if not self._select(timeout, mask):
                return
            if stream.pending_out:
                self._flush()
        data = stream.read()
        if data is None:
            return
        if not data:
            self._lost(self._broker_said or "the broker closed the connection", by_peer=True)
            return
        self.reads += 1
        self._conn.receive_data(data)
        self._more = True

    def _dispatch(self) -> None:
        """Hand the events of the bytes read so far to the line, up to a budget or a pause."""
        conn = self._conn
        events = self._events
        pause = self.pause_reading
        now = time.monotonic()
        message = RawMessage
        budget = _BUFFERED_BUDGET
        while self._alive:
            batch = self._backlog
            at = self._backlog_at
            if not batch:
                if not budget or pause():
                    return  # _more stays set: the rest is read on the next pass
                batch = conn.next_events(now, budget)
                if not batch:
                    self._more = False
                    return
                budget -= len(batch)
                at = 0
            count = len(batch)
            while at < count:
                at = events.take(batch, at, pause)
                if at < count:
                    event = batch[at]
                    if type(event) is message:  # paused: the rest waits for the next pass
                        self._backlog = batch
                        self._backlog_at = at
                        return
                    self._event(event)
                    at += 1
            self._backlog = []

    def _event(self, event: mqtt.Event) -> None:
        events = self._events
        try:
            if isinstance(event, mqtt.PublishCompleted):
                granted = 1 if event.downgraded else None
                events.published(event.mid, event.ok, event.reason, granted)
            elif isinstance(event, mqtt.Subscribed):
                events.subscribed(event.mid, list(event.codes), event.reason_string)
            elif isinstance(event, mqtt.Unsubscribed):
                events.unsubscribed(event.mid)
            elif isinstance(event, mqtt.BrokerDisconnected):
                self._broker_said = f"the broker sent DISCONNECT: {event.reason}"
                self.explained = event.code != 0x8E  # "Session taken over" is a takeover
                log.warning("line %s: %s", self.line.name, self._broker_said)
        except Exception as exc:  # the line's own bug: counted, reading goes on
            events.callback_failed(type(event).__name__, exc, None)

    def _timers(self) -> None:
        problem = self._conn.timers(time.monotonic(), self.line.reply_timeout)
        if problem is not None:
            self._lost(problem)

    def _flush(self) -> None:
        """Write what the core made, as far as the socket takes it now."""
        stream = self._stream
        if stream is None:
            return
        data = self._conn.data_to_send(time.monotonic())
        if data:
            stream.write(data)
            if self._q0:
                self._q0_done.extend(self._q0)  # written once the stream's buffer is empty
                self._q0.clear()
        if stream.pending_out:
            stream.flush()
        if not stream.pending_out and self._q0_done:
            done, self._q0_done = self._q0_done, []
            self._q0_ready.extend(done)

    def _report_written(self) -> None:
        """SPEC §6: a QoS 0 write completes when its packet is written to the socket."""
        ready = self._q0_ready
        if not ready:
            return
        self._q0_ready = []
        for mid in ready:
            try:
                self._events.published(mid, True, "written")
            except Exception as exc:  # the line's own bug: counted
                self._events.callback_failed("on_publish", exc, None)

    def _run_commands(self) -> None:
        """Work other threads handed over: acknowledgements, a drop."""
        commands = self._commands
        while commands:
            command = commands.popleft()
            if command[0] == "ack":
                if command[1] == self._number and self.connected:
                    self._conn.acknowledge_many(command[2])
            elif command[0] == "drop":
                self._drop_now()

    def _drain_wake(self) -> None:
        """Empty the wake-up socket, then take wake-ups again. In this order: a wake-up
        skipped meanwhile (flag still set) finds its work taken by the loop, which runs the
        commands after this; reset first, a wake-up's byte could be drained unseen and the
        flag left set, and every later wake-up would be skipped (acknowledgements then
        waited for the next read or select timeout)."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        self._wake_pending = False

    def wake(self) -> None:
        """Make a loop() waiting for the broker return now (from any thread)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _failed(self, exc: OSError | ssl.SSLError) -> None:
        """The socket failed: a reset or broken pipe is the broker ending the connection as
        surely as an orderly close (NATS may reset it on a QoS 2 PUBLISH), read the same way."""
        if isinstance(exc, ConnectionResetError | BrokenPipeError):
            self._lost(self._broker_said or f"the broker reset the connection: {exc}", by_peer=True)
        else:
            self._lost(f"connection failed: {exc}")

    def _lost(self, reason: str, by_peer: bool = False) -> None:
        """The connection is gone: tell the core and the line; close the socket."""
        if not self._alive:
            return
        self._alive = False
        self._more = False
        self._backlog = []
        self._number += 1
        suspect = self._conn.connection_lost()
        if suspect and by_peer and self._broker_said is None:
            reason = (
                f"the broker closed the connection on kom's QoS 2 PUBLISH (packet {suspect}):"
                " it does not accept QoS 2 (use publish_qos = 1)"
            )
            self.explained = True
            self._conn.forget(suspect)
            try:
                self._events.published(suspect, False, reason)
            except Exception as exc:  # the line's own bug: counted
                self._events.callback_failed("on_publish", exc, None)
        self._close_stream()
        self._q0.clear()
        self._q0_done.clear()
        if not self._closing:
            try:
                self._events.disconnected(reason)
            except Exception as exc:  # the line's own bug: counted
                self._events.callback_failed("on_disconnect", exc, None)

    def ack_many(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge received messages, in order, with one write (from any thread).

        PUBACK for QoS 1; PUBREC for QoS 2, which hands ownership to kom (the broker then
        sends PUBREL and the core answers PUBCOMP).
        """
        if not acks:
            return
        self._commands.append(("ack", self._number, list(acks)))
        if threading.current_thread() is not self._owner:
            self.wake()

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge one received message (see ack_many)."""
        self.ack_many([(mid, qos)])

    def last_received(self) -> float:
        """When the broker last sent anything (time.monotonic)."""
        return self._conn.last_received

    def reading_packet(self) -> bool:
        """Whether a packet is half read (its first byte arrived, the rest not yet)."""
        return self._conn.reading_packet()

    def ping(self) -> None:
        """Send PINGREQ (the line keeps its own timer on the answer)."""
        if self.connected:
            self._conn.ping(time.monotonic())
            self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except (OSError, ssl.SSLError) as exc:
            self._failed(exc)

    # -- requests (the line's thread) ---------------------------------------------------

    def subscribe(self, filters: Sequence[str], qos: int) -> int:
        try:
            line = self.line
            options = (line.no_local, line.retain_as_published, line.retain_handling)
            mid = self._conn.subscribe([mqtt.Subscription(f, qos, *options) for f in filters])
        except (mqtt.MQTTError, ValueError) as exc:
            raise LineError(f"SUBSCRIBE failed: {exc}", self.line.name) from exc
        self._flush_quietly()
        return mid

    def unsubscribe(self, filters: Sequence[str]) -> int:
        try:
            mid = self._conn.unsubscribe(list(filters))
        except (mqtt.MQTTError, ValueError) as exc:
            raise LineError(f"UNSUBSCRIBE failed: {exc}", self.line.name) from exc
        self._flush_quietly()
        return mid

    def publish_many(self, messages: Sequence[tuple[Any, ...]]) -> list[int | LineError]:
        """PUBLISH several messages (topic, payload, qos, retain[, MQTT 5 properties]),
        written together after the last: the id of each, or why not. QoS 1/2 messages made
        while disconnected wait in the session and go out after the next CONNACK. Properties
        are dropped on a 3.1.1 connection."""
        out: list[int | LineError] = []
        publish = self._publish
        v5 = self._v5
        for message in messages:
            properties = message[4] if v5 and len(message) > 4 else None
            try:
                out.append(publish(message[0], message[1], message[2], message[3], properties))
            except LineError as exc:
                out.append(exc)
        self._flush_quietly()
        return out

    def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict[str, Any] | None = None,
    ) -> int:
        if not topic or "+" in topic or "#" in topic:
            why = "a wildcard" if topic else "an empty topic"
            raise LineError(f"PUBLISH refused: topic {topic!r} has {why}", self.line.name)
        if qos == 0 and not self.connected:
            raise LineError("PUBLISH failed: not connected", self.line.name)
        try:
            mid = self._conn.publish(topic, payload, qos, retain, properties)
        except (mqtt.MQTTError, ValueError) as exc:
            raise LineError(f"PUBLISH refused: {exc}", self.line.name) from exc
        if qos == 0:
            mid = self._next_q0
            self._next_q0 = mid + 1 if mid < 0x7FFF_FFFF else _QOS0_IDS
            self._q0.append(mid)
        return mid

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[int, bool]:
        """PUBLISH one message; returns (id, sent_now). QoS 1/2 wait while disconnected."""
        mid = self._publish(topic, payload, qos, retain)
        self._flush_quietly()
        return mid, self.connected

    def forget(self, mids: Sequence[int]) -> None:
        """Drop QoS 1/2 writes from the session (the line's thread): they are never sent
        again, not even after reconnecting on a kept session (`mqtt.Connection.forget`)."""
        for mid in mids:
            self._conn.forget(mid)
        if self.connected:
            self._flush_quietly()  # writes waiting for the broker's quota may go now

    # -- closing ----------------------------------------------------------------------

    def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT after what is queued, then close (the line's will is not sent)."""
        self._closing = True
        if not self.connected:
            self._drop_now()
            return
        deadline = time.monotonic() + timeout
        try:
            self._run_commands()
            self._conn.disconnect()
            self._flush()
            stream = self._stream
            while stream is not None and stream.pending_out and time.monotonic() < deadline:
                self._select(0.05, selectors.EVENT_WRITE)
                self._flush()
        except (OSError, ssl.SSLError) as exc:
            log.debug("line %s: DISCONNECT not sent: %s", self.line.name, exc)
        self._alive = False
        self._number += 1
        self._close_stream()
        self._report_written()

    def close(self) -> None:
        """Release everything: the socket, the wake-up pair, the selector."""
        self._closing = True
        self._drop_now()
        if self._released:
            return
        self._released = True
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def drop(self) -> None:
        """Close the socket at once, without DISCONNECT (the broker sends our will).

        From another thread this is handed to the line's thread.
        """
        if self._owner is not None and threading.current_thread() is not self._owner:
            self._commands.append(("drop",))
            self.wake()
            return
        self._drop_now()

    def _drop_now(self) -> None:
        if self._alive:
            closing = self._closing
            self._closing = True  # kom dropped it: no `disconnected` event
            self._lost("dropped by kom")
            self._closing = closing
        self._close_stream()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(stream.sock)
        stream.close()


def _never() -> bool:
    return False


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _connect_tcp(
    host: str, port: int, deadline: float, cancelled: Callable[[], bool]
) -> socket.socket:
    """A TCP connection, waited for in slices so that a closing line gives up at once."""
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(address)
            if code not in (0, 115, 36, 10035):  # EINPROGRESS (Linux, macOS), WSAEWOULDBLOCK
                raise OSError(code, _strerror(code))
            with selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_WRITE)
                while not sel.select(0.1):
                    if cancelled():
                        raise OSError("the line is closing")
                    if time.monotonic() >= deadline:
                        raise TimeoutError("timed out")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, _strerror(code))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


def _strerror(code: int) -> str:
    import os

    return os.strerror(code)


def _handshake(sock: ssl.SSLSocket, deadline: float, cancelled: Callable[[], bool]) -> None:
    """The TLS handshake on a non-blocking socket."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            events = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            events = selectors.EVENT_WRITE
        if cancelled():
            raise OSError("the line is closing")
        if time.monotonic() >= deadline:
            raise TimeoutError("TLS handshake timed out")
        with selectors.DefaultSelector() as sel:
            sel.register(sock, events)
            sel.select(0.1)


class _Stream:
    """The bytes of MQTT over a socket (plain or TLS), optionally inside WebSocket frames."""

    def __init__(self, sock: socket.socket, raw: socket.socket) -> None:
        self.sock = sock
        self._raw = raw
        self._out = b""
        self._ws: Any = None
        self._quickack = hasattr(socket, "TCP_QUICKACK")
        self._tls = isinstance(sock, ssl.SSLSocket)

    @property
    def pending_out(self) -> bool:
        return bool(self._out)

    def buffered(self) -> bool:
        """Whether data waits inside TLS already (select() would not see it)."""
        return self._tls and bool(self.sock.pending())  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        if self._ws is not None:
            from wsproto.events import BytesMessage

            data = self._ws.send(BytesMessage(data=data))
        self._out = self._out + data if self._out else data
        self.flush()

    def flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            out = out[sent:]
        self._out = out

    def read(self) -> bytes | None:
        """What came (b"" when the peer closed), or None when nothing is there yet."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        if self._quickack:
            # TCP_QUICKACK, re-armed after each read, stops delayed ACKs from meeting the
            # broker's Nagle (tens of ms).
            try:
                self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self._quickack = False
        if self._ws is None or not data:
            return data
        return self._unwrap(data)

    def _unwrap(self, data: bytes) -> bytes | None:
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        ws = self._ws
        ws.receive_data(data)
        out = []
        for event in ws.events():
            if isinstance(event, BytesMessage):
                out.append(bytes(event.data))
            elif isinstance(event, TextMessage):
                out.append(event.data.encode())
            elif isinstance(event, Ping):
                self._out += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                return b""
        return b"".join(out) if out else None

    def upgrade(
        self, endpoint: Endpoint, path: str, deadline: float, cancelled: Callable[[], bool]
    ) -> None:
        """The WebSocket opening handshake (RFC 6455 §4), subprotocol `mqtt`."""
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        ws = WSConnection(ConnectionType.CLIENT)
        host = f"{endpoint.host}:{endpoint.port}"
        self._out = ws.send(Request(host=host, target=path, subprotocols=["mqtt"]))
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while True:
                self.flush()
                if cancelled():
                    raise OSError("the line is closing")
                if time.monotonic() >= deadline:
                    raise TimeoutError("WebSocket handshake timed out")
                if not (self.buffered() or sel.select(0.1)):
                    continue
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                if not data:
                    raise OSError("connection closed during the WebSocket handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        self._ws = ws
                        return
                    if isinstance(event, RejectConnection):
                        raise OSError(f"WebSocket upgrade refused (HTTP {event.status_code})")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _tls_context(line: LineConfig) -> ssl.SSLContext:
    """TLS for a line: verification of chain and host name on unless `verify = false`."""
    tls = line.tls
    assert tls is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if tls.ca_file:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs()
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise LineError(f"line {line.name!r}: TLS set-up failed: {exc}", line.name) from exc
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
