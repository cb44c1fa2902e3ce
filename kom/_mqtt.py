"""The one module that talks to paho-mqtt: a session to one broker, callbacks guarded.

paho types and return codes stop here. Every paho callback is wrapped so that nothing
raises into paho's network code (paho ends its loop when a callback raises), and failures
are counted and logged with their topic. kom runs paho's loop on its own thread, which
lets it add the timers paho lacks: PINGREQ after `ping_interval` of silence from the
broker and a `reply_timeout` on PINGRESP, SUBACK and UNSUBACK (SPEC §2).

Private paho attributes used (pinned to paho-mqtt 2.1-2.2, checked in tests):
`_last_bytes_received` / `_msgtime_mutex` (when the broker last sent anything),
`_send_simple_command` (a PINGREQ that does not arm paho's own keep-alive check),
`_in_packet` (a half-read packet), `_out_messages` / `_out_message_mutex` /
`_inflight_messages` (completing a PUBACK or PUBCOMP, see `_handle_pubackcomp`),
`_in_callback_mutex` / `_sockpairW` (writing a burst of PUBLISH packets at once),
`_packet_write` (serialised, see `Session.__init__`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._config import Endpoint, LineConfig
from ._errors import BrokerRefused, LineError

log = logging.getLogger("kom.mqtt")

_PINGREQ = 0xC0  # MQTT 3.1.1 §3.12
_PUBACK = b"\x40\x02"  # MQTT 3.1.1 §3.4: type 4, remaining length 2
_PUBREC = b"\x50\x02"  # MQTT 3.1.1 §3.5: type 5, remaining length 2
_PUBCOMP = b"\x70\x02"  # MQTT 3.1.1 §3.7: type 7, remaining length 2
_REQUIRED = (
    "_last_bytes_received",
    "_msgtime_mutex",
    "_send_simple_command",
    "_in_packet",
    "_sock",
    "_packet_queue",
    "_reset_sockets",
    "_handle_on_message",
    "_handle_publish",
    "_handle_pubrel",
    "_handle_pubackcomp",
    "_out_messages",
    "_out_message_mutex",
    "_inflight_messages",
    "_in_callback_mutex",
    "_sockpairW",
    "_packet_write",
)


def check_paho() -> list[str]:
    """The private paho attributes kom relies on that this paho version lacks."""
    probe = paho.Client(CallbackAPIVersion.VERSION2)
    return [name for name in _REQUIRED if not hasattr(probe, name)]


class RawMessage(NamedTuple):
    """A PUBLISH as read from the broker; the topic stays bytes (it may not be UTF-8)."""

    topic: bytes
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool


class Events:
    """What a session tells its owner. Each runs on the network thread and must be quick."""

    def message(self, msg: RawMessage) -> None: ...
    def published(self, mid: int, ok: bool, reason: str) -> None: ...
    def subscribed(self, mid: int, granted: list[int]) -> None: ...
    def unsubscribed(self, mid: int) -> None: ...
    def disconnected(self, reason: str) -> None: ...
    def callback_failed(self, where: str, exc: BaseException, topic: bytes | None) -> None: ...


class Connected(NamedTuple):
    session_present: bool
    assigned_client_id: str | None


class Session:
    """One paho client: connect to one endpoint, loop, publish, subscribe, acknowledge."""

    def __init__(self, line: LineConfig, events: Events) -> None:
        self.line = line
        self._events = events
        v5 = line.protocol == "5"
        kwargs: dict[str, Any] = {
            "client_id": line.client_id,
            "protocol": paho.MQTTv5 if v5 else paho.MQTTv311,
            "transport": line.transport,
            "manual_ack": True,
            "reconnect_on_failure": False,
        }
        if not v5:
            kwargs["clean_session"] = line.effective_clean_session
        client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.suppress_exceptions = True
        if line.debug:
            # paho logs every packet: worth it when debugging, a cost per packet otherwise.
            client.enable_logger(logging.getLogger("kom.paho"))
        # No in-flight window in paho: the line keeps its own (Line.WINDOW). paho's window
        # scans every message in flight for each PUBACK, and at a thousand in flight that scan
        # cost more than the rest of a write.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if line.transport == "websockets":
            client.ws_set_options(path=line.ws_path)
        self._tls: _TrackingContext | None = None
        if line.tls is not None:
            self._tls = _tls_context(line)
            client.tls_set_context(self._tls)
            client.tls_insecure_set(not line.tls.verify)
        if line.username is not None or line.password is not None:
            client.username_pw_set(
                line.username or "", line.password.value if line.password else None
            )
        if line.will is not None:
            will = line.will
            client.will_set(will.topic, will.message, will.qos, will.retain)
        client.connect_timeout = line.reply_timeout or 30.0
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_disconnect = self._on_disconnect
        # paho's dispatch decodes the topic again and matches it against per-topic
        # callbacks kom never registers; hand the message straight to kom instead.
        client._handle_on_message = self._handle_on_message  # type: ignore[method-assign]
        # Incoming PUBLISH and PUBREL are handled by kom (see _handle_publish).
        self._v5 = v5
        self._paho_handle_publish = client._handle_publish
        self._paho_handle_pubrel = client._handle_pubrel
        self._paho_handle_pubackcomp = client._handle_pubackcomp
        client._handle_publish = self._handle_publish  # type: ignore[method-assign]
        client._handle_pubrel = self._handle_pubrel  # type: ignore[method-assign]
        client._handle_pubackcomp = self._handle_pubackcomp  # type: ignore[method-assign]
        # paho writes its packet queue from whichever thread queued a packet (a write, an
        # acknowledgement from the host's thread) as well as from the loop, with no lock:
        # two threads could each take a packet and send them crossed, or interleave the
        # pieces of a partly sent one. One writer at a time keeps the stream in order.
        paho_write = client._packet_write
        write_lock = threading.Lock()

        def packet_write() -> MQTTErrorCode:
            with write_lock:
                return paho_write()

        client._packet_write = packet_write  # type: ignore[method-assign]
        self._client = client
        self._connack: tuple[bool, int, str, str | None] | None = None
        self._closing = False
        self._lock = threading.Lock()
        #: Asked between buffered packets: True makes the loop stop reading for now.
        self.pause_reading: Callable[[], bool] = _never
        #: How many times data was read from the socket so far (-1 before it is buffered):
        #: messages that came in one read arrived together, and share a receive time.
        self.reads = -1

    def __repr__(self) -> str:
        return f"<Session line={self.line.name!r} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    # -- connecting -------------------------------------------------------------------

    def connect(self, endpoint: Endpoint, timeout: float) -> Connected:
        """Open TCP/TLS, send CONNECT and wait for CONNACK; raises LineError or BrokerRefused."""
        line = self.line
        self._connack = None
        self._closing = False
        kwargs: dict[str, Any] = {}
        if line.protocol == "5":
            kwargs["clean_start"] = line.effective_clean_session
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # MQTT 5 §3.1.2.11.2: without an expiry the session ends with the connection.
            props.SessionExpiryInterval = 0 if line.effective_clean_session else 0xFFFFFFFF
            kwargs["properties"] = props
        where = f"line {line.name!r} at {endpoint}"
        try:
            rc = self._client.connect(endpoint.host, endpoint.port, line.keep_alive, **kwargs)
        except ssl.SSLCertVerificationError as exc:
            self._close_failed_tls()
            why = exc.verify_message
            raise LineError(f"{where}: TLS certificate refused: {why}", line.name) from exc
        except ssl.SSLError as exc:
            self._close_failed_tls()
            raise LineError(f"{where}: TLS failed: {exc.reason or exc}", line.name) from exc
        except (OSError, ValueError) as exc:
            self._close_failed_tls()
            raise LineError(f"{where}: cannot connect: {exc}", line.name) from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LineError(f"{where}: cannot connect: {paho.error_string(rc)}", line.name)
        self._buffer_socket()
        deadline = time.monotonic() + timeout
        while self._connack is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.drop()
                raise LineError(f"{where}: no CONNACK within {timeout:g} s", line.name)
            try:
                rc = self._client.loop(min(left, 0.1))
            except (OSError, ssl.SSLError) as exc:
                self.drop()
                raise LineError(f"{where}: connection failed: {exc}", line.name) from exc
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,) and self._connack is None:
                self.drop()
                raise LineError(
                    f"{where}: connection lost before CONNACK ({paho.error_string(rc)})", line.name
                )
        present, code, text, assigned = self._connack
        if code != 0:
            self.drop()
            raise BrokerRefused(f"{where}: broker refused the connection: {text}", line.name, code)
        return Connected(present, assigned)

    def _close_failed_tls(self) -> None:
        """paho leaves the TLS socket of a failed handshake open; close it here."""
        if self._tls is not None and self._tls.last is not None:
            self._tls.last.close()
            self._tls.last = None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            assigned = None
            if props is not None and hasattr(props, "AssignedClientIdentifier"):
                assigned = props.AssignedClientIdentifier
            code = int(reason.value) if hasattr(reason, "value") else int(reason)
            self._connack = (bool(flags.session_present), code, str(reason), assigned)
        except Exception as exc:  # never raise into paho
            self._events.callback_failed("on_connect", exc, None)
            self._connack = (False, 255, f"bad CONNACK: {exc}", None)

    # -- the loop ---------------------------------------------------------------------

    def loop(self, timeout: float) -> bool:
        """Run paho's network loop once, then every packet already buffered.

        False when the connection is gone.
        """
        client = self._client
        try:
            rc = client.loop(timeout)
            sock = client._sock
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket):
                rc = self._read_buffered(client, sock)
        except Exception as exc:  # a paho bug must not end the line's thread
            self._events.callback_failed("loop", exc, None)
            self.drop()
            return False
        return bool(rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.is_connected())

    def _read_buffered(self, client: Any, sock: _BufferedSocket) -> MQTTErrorCode:
        """Handle the packets already in kom's read buffer, without select() (bounded).

        A whole PUBLISH at the head of the buffer is parsed here, straight from the buffer:
        paho would read it with three recv() calls, grow a bytearray and dispatch it, about
        as much Python as decoding its payload. Everything else (other packet types, a
        packet cut by the end of the buffer, a malformed PUBLISH) is left to paho's reader.
        """
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        budget = _BUFFERED_BUDGET
        pause = self.pause_reading
        in_packet = client._in_packet
        taken = 0
        v5 = self._v5
        deliver = self._deliver
        next_publish = sock.next_publish
        while budget and sock.buffered() and not pause():
            budget -= 1
            msg = None if in_packet["command"] else next_publish(v5)
            if msg is not None:
                taken += 1
                deliver(msg)
                continue
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            in_packet = client._in_packet  # paho replaces it after each packet
        if taken:
            with client._msgtime_mutex:
                client._last_bytes_received = time.monotonic()
        return rc

    def idle(self, timeout: float) -> None:
        """Write what is queued (acknowledgements, writes) without reading anything."""
        client = self._client
        if client.want_write():
            client.loop_write()
        time.sleep(timeout)

    def _buffer_socket(self) -> None:
        """Put kom's read buffer under paho and switch Nagle off on kom's side.

        paho reads each packet with three recv() calls (type, length, body) and a select()
        per packet; reading 64 KiB at a time and serving paho from memory removes most of
        those system calls. TCP_NODELAY sends PUBACKs at once; TCP_QUICKACK, re-armed after
        each read, stops delayed ACKs from meeting the broker's Nagle (tens of ms).
        """
        client = self._client
        sock = client._sock
        if sock is None or isinstance(sock, _BufferedSocket):
            return
        raw = getattr(sock, "_socket", sock)  # paho's websocket wrapper keeps the socket here
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            raw = None
        client._sock = _BufferedSocket(sock, raw, self)
        self.reads = max(self.reads, 0)

    def ack_many(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge received messages, in order, with one write.

        PUBACK for QoS 1; PUBREC for QoS 2, which hands ownership to kom (the broker then
        sends PUBREL and kom answers PUBCOMP, see _handle_pubrel). paho's ack() would queue
        one packet per call with a wake-up byte each; these are the same bytes (MQTT 3.1.1
        §3.4, §3.5; in MQTT 5 a remaining length of 2 means reason code 0).
        """
        if not acks:
            return
        data = b"".join(
            (_PUBACK if qos == 1 else _PUBREC) + mid.to_bytes(2, "big") for mid, qos in acks
        )
        self._client._packet_queue(_PUBACK[0], data, 0, 0)

    def last_received(self) -> float:
        """When the broker last sent anything (paho's clock: time.monotonic)."""
        client = self._client
        with client._msgtime_mutex:
            return float(client._last_bytes_received)

    def reading_packet(self) -> bool:
        """Whether a packet is half read (its first byte arrived, the rest not yet)."""
        return bool(self._client._in_packet["command"])

    def ping(self) -> None:
        """Send PINGREQ without arming paho's keep-alive check (kom keeps its own timer)."""
        self._client._send_simple_command(_PINGREQ)

    # -- requests ---------------------------------------------------------------------

    def subscribe(self, filters: Sequence[str], qos: int) -> int:
        rc, mid = self._client.subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LineError(f"SUBSCRIBE failed: {paho.error_string(rc)}", self.line.name)
        return int(mid or 0)

    def unsubscribe(self, filters: Sequence[str]) -> int:
        rc, mid = self._client.unsubscribe(list(filters))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LineError(f"UNSUBSCRIBE failed: {paho.error_string(rc)}", self.line.name)
        return int(mid or 0)

    def publish_many(
        self, messages: Sequence[tuple[str, bytes, int, bool]], own_thread: bool
    ) -> list[int | LineError]:
        """PUBLISH several messages (topic, payload, qos, retain): the mid of each, or why not.

        On the network thread (`own_thread`) the packets are written together after the
        last: paho would write each one at once and send itself a wake-up byte for it, two
        system calls a write. From any other thread they go one by one, paho's way: the
        wake-up socket may only be touched by the thread that runs the loop (paho's loop
        replaces it when it finds it missing).
        """
        client = self._client
        publish = self._publish_checked
        if not own_thread:
            return [publish(*message) for message in messages]
        wake = client._sockpairW
        # Holding paho's callback lock makes paho queue the packets instead of writing each;
        # nobody needs waking, this is the thread that runs the loop.
        with client._in_callback_mutex:
            client._sockpairW = None
            try:
                out = [publish(*message) for message in messages]
            finally:
                client._sockpairW = wake
        if client.want_write():
            client.loop_write()
        return out

    def _publish_checked(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> int | LineError:
        try:
            return self.publish(topic, payload, qos, retain)[0]
        except LineError as exc:
            return exc
        except ValueError as exc:  # paho's own checks (topic, payload size)
            return LineError(f"PUBLISH refused: {exc}", self.line.name)

    def wake(self) -> None:
        """Make a loop() waiting in select() return now (from any thread)."""
        wake = self._client._sockpairW
        if wake is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                wake.send(b"\0")

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[int, bool]:
        """Queue a PUBLISH; returns (mid, sent_now). QoS 1/2 queue while disconnected."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return int(info.mid), False
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LineError(f"PUBLISH failed: {paho.error_string(info.rc)}", self.line.name)
        return int(info.mid), True

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge one received message (see ack_many)."""
        self.ack_many([(mid, qos)])

    # -- closing ----------------------------------------------------------------------

    def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT after what is queued, then close (the line's will is not sent)."""
        self._closing = True
        client = self._client
        if not client.is_connected():
            self.drop()
            return
        deadline = time.monotonic() + timeout
        while client.want_write() and time.monotonic() < deadline:
            client.loop(0.05)
        client.disconnect()
        while time.monotonic() < deadline and client.want_write():
            client.loop(0.05)
        self.drop()

    def close(self) -> None:
        """Release everything, paho's wake-up socket pair included (paho frees it only in GC)."""
        self._closing = True
        self.drop()
        try:
            self._client._reset_sockets()
        except Exception as exc:  # releasing must never fail the caller
            log.debug("releasing sockets: %s", exc)

    def drop(self) -> None:
        """Close the socket at once, without DISCONNECT (the broker sends our will)."""
        try:
            self._client._sock_close()
        except Exception as exc:  # closing must never fail the caller
            log.debug("closing socket: %s", exc)

    # -- paho callbacks, each guarded ----------------------------------------------------

    def _handle_publish(self) -> MQTTErrorCode:
        """Parse an incoming PUBLISH that paho read (MQTT 3.1.1 §3.3, MQTT 5 §3.3) for kom.

        Two reasons to do this in kom rather than in paho. Speed: paho builds an
        MQTTMessage, an MQTTMessageInfo with its own Condition, logs and decodes the topic
        for every PUBLISH, a third of the time at tens of thousands of messages a second.
        And QoS 2: paho sends PUBREC as soon as the PUBLISH arrives, which tells the broker
        the message is owned before the host has stored it; a crash then loses it, since
        the broker only resends PUBREL. kom delivers a QoS 2 message on PUBLISH and sends
        PUBREC when the host has it (`ack_many`), then PUBCOMP on PUBREL (MQTT 3.1.1
        §4.3.3 lets the receiver accept ownership when it is ready). Anything malformed
        goes to paho's own handler, which reports it.

        Most PUBLISH packets never reach this: `loop` takes whole ones from kom's read
        buffer (`_BufferedSocket.next_publish`); this handles the ones paho read itself.
        """
        packet = self._client._in_packet
        body = bytes(packet["packet"])
        msg = parse_publish(packet["command"], body, 0, len(body), self._v5)
        if msg is None:
            return self._paho_handle_publish()
        self._deliver(msg)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _deliver(self, msg: RawMessage) -> None:
        try:
            self._events.message(msg)
        except Exception as exc:  # never raise into paho
            self._events.callback_failed("on_message", exc, msg.topic)

    def _handle_pubrel(self) -> MQTTErrorCode:
        """PUBREL for a QoS 2 message kom already owns (it sent PUBREC): answer PUBCOMP.

        Also after a reconnection, when the broker resends PUBREL for an exchange of the
        previous connection (paho would ignore a PUBREL it does not know, leaving the
        exchange open for good).
        """
        body = self._client._in_packet["packet"]
        if len(body) < 2:
            return self._paho_handle_pubrel()
        self._client._packet_queue(_PUBCOMP[0], _PUBCOMP + bytes(body[:2]), 0, 0)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """PUBACK or PUBCOMP for a message kom published: complete it (MQTT 3.1.1 §3.4, §3.7).

        paho decodes a ReasonCode and a Properties object for each and scans its in-flight
        messages; this reads the packet id (and, in MQTT 5, the reason code after it) and
        forgets the message the way paho does. Anything shorter goes to paho's own handler.
        """
        client = self._client
        body = client._in_packet["packet"]
        if len(body) < 2:
            return self._paho_handle_pubackcomp(cmd)
        mid = (body[0] << 8) | body[1]
        code = body[2] if self._v5 and len(body) > 2 else 0
        with client._out_message_mutex:
            message = client._out_messages.pop(mid, None)
            if message is not None and message.qos > 0:
                client._inflight_messages -= 1
        if message is not None:
            try:
                ok = code < 0x80  # MQTT 5 §2.4: 0x80 and above are failures
                packet = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
                reason = "Success" if ok else str(ReasonCode(packet, identifier=code))
                self._events.published(mid, ok, reason)
            except Exception as exc:  # never raise into paho
                self._events.callback_failed("on_publish", exc, None)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: Any) -> None:
        self._on_message(self._client, None, message)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic: bytes | None = None
        try:
            topic = message._topic
            self._events.message(
                RawMessage(
                    topic,
                    message.payload,
                    message.qos,
                    message.mid,
                    bool(message.dup),
                    bool(message.retain),
                )
            )
        except Exception as exc:
            self._events.callback_failed("on_message", exc, topic)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        try:
            failed = bool(getattr(reason, "is_failure", False))
            self._events.published(mid, not failed, str(reason))
        except Exception as exc:
            self._events.callback_failed("on_publish", exc, None)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        try:
            granted = [int(getattr(r, "value", r)) for r in reasons]
            self._events.subscribed(mid, granted)
        except Exception as exc:
            self._events.callback_failed("on_subscribe", exc, None)

    def _on_unsubscribe(
        self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        try:
            self._events.unsubscribed(mid)
        except Exception as exc:
            self._events.callback_failed("on_unsubscribe", exc, None)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        try:
            if not self._closing:
                self._events.disconnected(str(reason))
        except Exception as exc:
            self._events.callback_failed("on_disconnect", exc, None)


def _never() -> bool:
    return False


#: Packets handled per pass over the read buffer before the line hands its batch over: a
#: backlog reaches the host in batches of this many messages, not of thousands. Measured against
#: 2,000 in 60,000-message drains: the same throughput within the machine's noise, and the
#: collector's time a little lower (0.50-0.65 s against 0.64-0.70 s), as updates die younger.
_BUFFERED_BUDGET = 256


def parse_publish(command: int, data: bytes, start: int, end: int, v5: bool) -> RawMessage | None:
    """The PUBLISH whose variable header and payload are `data[start:end]`; None if malformed.

    MQTT 3.1.1 §3.3: a topic (two-byte length, at least one byte), a packet identifier at
    QoS 1 and 2, in MQTT 5 properties (a variable byte integer length, then that many
    bytes, §3.3.2.3), then the payload.
    """
    qos = (command & 0x06) >> 1
    if qos == 3 or end - start < 2:
        return None
    topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
    if topic_end == start + 2:
        return None
    body = topic_end
    mid = 0
    if qos:
        body += 2
        if body > end:
            return None
        mid = (data[topic_end] << 8) | data[topic_end + 1]
    if v5:
        length = shift = used = 0
        while True:
            if body + used >= end or used == 4:
                return None
            byte = data[body + used]
            length |= (byte & 0x7F) << shift
            shift += 7
            used += 1
            if not byte & 0x80:
                break
        body += used + length
    if body > end:
        return None
    return RawMessage(
        data[start + 2 : topic_end],
        data[body:end],
        qos,
        mid,
        bool(command & 0x08),
        bool(command & 0x01),
    )


class _BufferedSocket:
    """A socket (plain, TLS or paho's websocket wrapper) read 64 KiB at a time.

    paho calls recv(1), recv(1), recv(n) per packet; those are served from memory.
    `pending()` counts buffered bytes, which makes paho's loop read without waiting in
    select(). Everything else goes to the wrapped socket.
    """

    __slots__ = ("_buf", "_owner", "_pos", "_quickack", "_sock")

    def __init__(self, sock: Any, raw: Any, owner: Session | None = None) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._quickack = raw if hasattr(socket, "TCP_QUICKACK") else None
        self._owner = owner  # counts the reads (Session.reads)

    def recv(self, size: int) -> bytes:
        pos = self._pos
        buf = self._buf
        if pos < len(buf):
            end = pos + size
            self._pos = end
            return buf[pos:end]
        data: bytes = self._sock.recv(65536)  # BlockingIOError/SSLWantRead pass to paho
        if self._owner is not None:
            self._owner.reads += 1
        if self._quickack is not None:
            try:
                self._quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self._quickack = None
        if len(data) <= size:
            self._buf = b""
            self._pos = 0
            return data
        self._buf = data
        self._pos = size
        return data[:size]

    def buffered(self) -> int:
        return max(0, len(self._buf) - self._pos)

    def next_publish(self, v5: bool) -> RawMessage | None:
        """Take the whole, well-formed PUBLISH at the head of the buffer, if there is one."""
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if pos >= size:
            return None
        command = buf[pos]
        if command & 0xF0 != 0x30:
            return None
        # MQTT 3.1.1 §2.2.3: the remaining length, one to four bytes of seven bits each.
        length = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= size or shift > 21:
                return None
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        end = i + length
        if end > size:
            return None
        msg = parse_publish(command, buf, i, end, v5)
        if msg is not None:
            self._pos = end
        return msg

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _TrackingContext(ssl.SSLContext):
    """An SSL context that remembers its last socket, so a failed handshake can be closed."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.last = sock
        return sock


def _tls_context(line: LineConfig) -> _TrackingContext:
    """TLS for a line: verification of chain and host name on unless `verify = false`."""
    tls = line.tls
    assert tls is not None
    ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
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
