"""The client side of an MQTT connection, with no I/O: bytes in, events out; calls in, bytes out.

The model is h11's `Connection`: `receive_data()` takes what the socket gave, `next_event()`
returns one event at a time (None when it needs more bytes), and every call that makes a packet
appends its bytes to `data_to_send()`. The clock is an argument wherever time matters. The
session state (outgoing QoS 1/2 messages and their flow, incoming QoS 2 messages awaiting
PUBREL) outlives a connection, so a persistent session resumes where it stopped (MQTT 3.1.1
§4.4, MQTT 5 §4.4).

Rules kept from kom's driver:
- An incoming QoS 2 message is delivered on PUBLISH and PUBREC is sent only when the host has
  it (`acknowledge`): the broker then owns nothing kom has not stored (MQTT 3.1.1 §4.3.3 lets
  the receiver accept ownership when it is ready). PUBREL is answered with PUBCOMP at once,
  also for an exchange of an earlier connection.
- An incoming PUBLISH bigger than `maximum_packet_size` is skipped as it streams in: its head
  (topic, packet identifier) is kept and reported with `size` set and an empty payload, the rest
  is dropped as it arrives, so memory stays bounded by the limit plus one read.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from ._errors import LocalProtocolError, MalformedPacket, NotAllowed, PacketTooLarge, ProtocolError
from ._packets import (
    NAMES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    decode,
    encode,
    encode_publish,
)
from ._properties import Properties, decode_properties, encode_properties, encode_varint
from ._reasons import UNSUPPORTED_VERSION, is_failure, reason_name


class State(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # CONNECT sent, CONNACK not yet in
    CONNECTED = "connected"


_S = State
#: The connection's states as a table (the model is h11/_state.py): anything else raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    _S.DISCONNECTED: frozenset({_S.CONNECTING}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.DISCONNECTED}),
    _S.CONNECTED: frozenset({_S.DISCONNECTED}),
}


# -- events ------------------------------------------------------------------------------


class Message(NamedTuple):
    """A PUBLISH from the broker. The topic stays bytes (it may not be UTF-8).

    `size` is -1 for a whole message; for one skipped as oversize it is the packet's
    remaining length, and `payload` is empty.
    """

    topic: bytes
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool
    properties: Properties | None = None
    size: int = -1


class ConnectionAccepted(NamedTuple):
    session_present: bool
    properties: Properties
    #: Writes of the session that cannot go on: the broker's session is new (§4.4) and they
    #: were half through QoS 2, or they break a limit the broker announced in this CONNACK.
    failed: tuple[PublishCompleted, ...] = ()


class ConnectionRefused(NamedTuple):
    code: int
    reason: str  # the code's name with the code, and the broker's reason string
    #: The broker does not speak the protocol version kom asked for (3.1.1 code 1, 5: 0x84).
    unsupported_version: bool
    properties: Properties


class PublishCompleted(NamedTuple):
    """A QoS 1/2 PUBLISH of kom's is finished: by PUBACK, PUBCOMP, or a refusal."""

    mid: int
    ok: bool
    reason: str
    code: int
    #: A QoS 2 message answered with PUBACK: the broker took it at QoS 1.
    downgraded: bool = False


class Subscribed(NamedTuple):
    mid: int
    codes: tuple[int, ...]
    reason_string: str | None = None


class Unsubscribed(NamedTuple):
    mid: int
    codes: tuple[int, ...]


class PingResponse(NamedTuple):
    pass


class BrokerDisconnected(NamedTuple):
    """MQTT 5: the broker sent DISCONNECT (§3.14) before closing."""

    code: int
    reason: str


Event = (
    Message
    | ConnectionAccepted
    | ConnectionRefused
    | PublishCompleted
    | Subscribed
    | Unsubscribed
    | PingResponse
    | BrokerDisconnected
)


#: A named tuple made from a tuple of its fields, without the call of its `__new__`.
new = tuple.__new__


class _Out:
    """An outgoing QoS 1/2 PUBLISH in the session: its bytes and where its flow stands."""

    __slots__ = ("data", "payload", "properties", "qos", "retain", "sent", "state", "topic")

    def __init__(  # noqa: PLR0917 - one per write: positional arguments are cheaper
        self,
        data: bytes,
        topic: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None,
    ) -> None:
        self.data = data
        # What it was made of, to encode it again if the protocol version changes.
        self.topic = topic
        self.payload = payload
        self.properties = properties
        self.qos = qos
        self.retain = retain
        self.state = "queued"  # queued -> sent -> (QoS 2) released
        self.sent = False  # sent on some connection (a resend carries DUP)

    def packet(self, mid: int) -> Publish:
        return Publish(
            self.topic, self.payload, self.qos, self.retain, False, mid, self.properties or {}
        )


#: The first byte of a QoS 1/2 PUBLISH, by `qos << 1 | retain`.
_FIRST = [bytes(((PUBLISH << 4) | i,)) for i in range(6)]
#: Topics whose encoded bytes a connection keeps (emptied when full).
_HEADS = 1024

_PUBACK_HEAD = b"\x40\x02"  # MQTT 3.1.1 §3.4; in MQTT 5 a remaining length of 2 means code 0
_PUBREC_HEAD = b"\x50\x02"
_PUBCOMP_HEAD = b"\x70\x02"
_PUBREL_HEAD = b"\x62\x02"
_PINGREQ = b"\xc0\x00"


class Connection:
    """One client's MQTT session and the connection it runs on (no I/O).

    `receive_maximum`, `maximum_packet_size` and `topic_alias_maximum` are what kom announces
    (the latter two in MQTT 5 only); `maximum_packet_size` also bounds what kom reads on 3.1.1.
    """

    def __init__(
        self,
        v5: bool = False,
        *,
        receive_maximum: int = 65535,
        maximum_packet_size: int = 268_435_460,
        topic_alias_maximum: int = 0,
    ) -> None:
        self.v5 = v5
        self.state = State.DISCONNECTED
        self.receive_maximum = receive_maximum
        self.maximum_packet_size = maximum_packet_size
        self.topic_alias_maximum = topic_alias_maximum
        #: What the broker announced in CONNACK (MQTT 5 §3.2.2.3), defaults otherwise.
        self.server_receive_maximum = 65535
        self.server_maximum_packet_size = 268_435_460
        self.server_keep_alive: int | None = None
        self.server_maximum_qos = 2
        self.server_retain_available = True
        self.keep_alive = 0
        self.session_present = False
        self._buf = b""
        self._pos = 0
        self._skip = 0  # bytes of an oversize PUBLISH still to drop
        self._out: list[bytes] = []
        self._next_id = 0
        # topic -> its bytes, and them after their length (§1.5.3)
        self._heads: dict[str | bytes, tuple[bytes, bytes]] = {}
        self._flights: dict[int, _Out] = {}  # outgoing QoS 1/2, by packet id (session state)
        self._sending = 0  # flights sent and not finished (bounded by the broker's maximum)
        self._waiting: deque[int] = deque()  # flights waiting for the send quota
        self._requests: dict[int, str] = {}  # SUBSCRIBE/UNSUBSCRIBE awaiting their answer
        #: Packet ids of forgotten messages kept out of use (see `forget`): QoS 1 ones until the
        #: connection ends, QoS 2 ones until a CONNACK without a session.
        self._held_ids: set[int] = set()
        self._retired_ids: set[int] = set()
        self._incoming: set[int] = set()  # QoS 1/2 received, not yet finished by kom
        self._aliases: dict[int, bytes] = {}
        self._suspect = 0  # a QoS 2 PUBLISH sent last, nothing received since
        self.last_received = 0.0
        self.last_sent = 0.0
        self._valid_first = _BROKER_FIRST_5 if v5 else _BROKER_FIRST_311
        self._ping_sent: float | None = None
        #: A protocol error found after other events of one `next_events` call: raised next.
        self._error: ProtocolError | None = None

    def __repr__(self) -> str:
        return (
            f"<Connection {'5' if self.v5 else '3.1.1'} {self.state.value}"
            f" in-flight={len(self._flights)}>"
        )

    # -- state --------------------------------------------------------------------------

    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"illegal transition {self.state.value} -> {to.value}", 0x82)
        self.state = to

    def _require(self, what: str, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"{what} while {self.state.value}")

    @property
    def in_flight(self) -> int:
        """Outgoing QoS 1/2 messages not yet finished (sent or waiting)."""
        return len(self._flights)

    def reading_packet(self) -> bool:
        """Whether part of a packet arrived and the rest is still due."""
        return self._pos < len(self._buf) or self._skip > 0

    # -- commands -----------------------------------------------------------------------

    def connect(self, packet: Connect, now: float) -> None:
        """Start a connection with CONNECT; the broker's CONNACK comes as an event."""
        self._move(State.CONNECTING)
        self.keep_alive = packet.keep_alive
        self._buf = b""
        self._pos = 0
        self._skip = 0
        self._out = [encode(packet, self.v5)]
        self._aliases.clear()
        self._incoming.clear()
        self._requests.clear()
        self._suspect = 0
        self._ping_sent = None
        self.last_received = now
        self.last_sent = now

    def data_to_send(self, now: float | None = None) -> bytes:
        """The bytes of the packets made since the last call, in order."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if now is not None:
            self.last_sent = now
        return data

    def _packet_id(self) -> int:
        """The next packet identifier in use by nothing (§2.3.1: 1..65535)."""
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            mid = self._next_id
            if (
                mid not in self._flights
                and mid not in self._requests
                and mid not in self._held_ids  # forgotten messages (see `forget`)
                and mid not in self._retired_ids
            ):
                return mid
        raise LocalProtocolError("every packet identifier is in use")

    def publish(
        self,
        topic: str | bytes,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """PUBLISH a message; its packet id (0 at QoS 0).

        QoS 1/2 messages join the session: sent now if connected and the broker's Receive
        Maximum leaves room, otherwise when it does. QoS 0 needs a connection.
        """
        self._check_allowed(qos, retain)
        if qos not in (1, 2):
            raw = topic.encode() if isinstance(topic, str) else topic
            self._require("QoS 0 PUBLISH", State.CONNECTED)
            data = encode_publish(
                Publish(raw, payload, qos, retain, False, 0, properties or {}), self.v5
            )
            self._check_size(data)
            self._out.append(data)
            return 0
        # Every write of a tag goes to the same topic: its bytes and length are kept.
        known = self._heads.get(topic)
        if known is None:
            raw = topic.encode() if isinstance(topic, str) else topic
            known = (raw, len(raw).to_bytes(2, "big") + raw)
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            self._heads[topic] = known
        raw, head = known
        mid = self._packet_id()
        # §3.3: what encode_publish makes, without a Publish per message.
        tail = b""
        if self.v5:
            tail = encode_properties(properties, "PUBLISH") if properties else b"\x00"
        length = len(head) + 2 + len(tail) + len(payload)
        data = b"".join(
            (
                _FIRST[qos << 1 | retain],
                bytes((length,)) if length < 0x80 else encode_varint(length),
                head,
                mid.to_bytes(2, "big"),
                tail,
                payload,
            )
        )
        self._check_size(data)
        self._flights[mid] = flight = _Out(data, raw, payload, qos, retain, properties)
        if self.state is State.CONNECTED and self._sending < self.server_receive_maximum:
            self._send_flight(mid, flight)
        else:
            self._waiting.append(mid)
        return mid

    def set_version(self, v5: bool) -> None:
        """Speak MQTT 5 or 3.1.1 from the next connection on (`protocol = "auto"` falling
        back); the session's messages are encoded again for it."""
        self._require("a protocol change", State.DISCONNECTED)
        self.v5 = v5
        self._valid_first = _BROKER_FIRST_5 if v5 else _BROKER_FIRST_311
        for mid, flight in self._flights.items():
            flight.data = encode_publish(flight.packet(mid), v5)

    def _check_allowed(self, qos: int, retain: bool) -> None:
        """MQTT 5 §3.2.2.3.4, §3.2.2.3.5: no PUBLISH above the broker's Maximum QoS, and none
        retained where it has no retained messages (it would close the connection)."""
        if qos > self.server_maximum_qos:
            raise NotAllowed(
                f"QoS {qos} is over the broker's Maximum QoS of {self.server_maximum_qos}", 0x9B
            )
        if retain and not self.server_retain_available:
            why = "the broker does not take retained messages (Retain Available 0)"
            raise NotAllowed(why, 0x9A)

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.server_maximum_packet_size:
            raise PacketTooLarge(
                f"a PUBLISH of {len(data)} bytes is over the broker's Maximum Packet Size"
                f" of {self.server_maximum_packet_size}"
            )

    def _send_flight(self, mid: int, flight: _Out) -> None:
        data = flight.data
        if flight.sent:
            data = bytes([data[0] | 0x08]) + data[1:]  # §3.3.1.1: DUP on a resend
        self._out.append(data)
        flight.state = "sent"
        flight.sent = True
        self._sending += 1
        self._suspect = mid if flight.qos == 2 else 0

    def forget(self, mid: int) -> None:
        """Drop an outgoing message from the session: it will not be sent (again), nor its
        PUBREL, and an answer that still comes for it is ignored.

        This departs from MQTT 3.1.1 §4.4 / MQTT 5 §4.4 (resend unacknowledged PUBLISH and
        PUBREL on a kept session) on purpose: the host gave up on the message and reported it
        failed, and a command that reports failure must not act later. A message already sent
        keeps its packet id out of use, so that nothing new is mistaken for it: a QoS 1 one
        until this connection ends (its PUBACK may still come on it; a broker keeps no QoS 1
        state across connections), a QoS 2 one until a CONNACK without a session, as the
        broker may hold the id awaiting a PUBREL that never comes (§4.3.3 Method B: a new
        PUBLISH with that id would be taken for a duplicate and not delivered).
        """
        flight = self._flights.pop(mid, None)
        if flight is None:
            return
        if flight.state == "queued":
            self._waiting.remove(mid)
        elif self.state is State.CONNECTED:
            self._sending -= 1
            self._send_waiting()
        if flight.qos == 2 and flight.sent:
            self._retired_ids.add(mid)
        elif flight.state != "queued" and self.state is not State.DISCONNECTED:
            self._held_ids.add(mid)

    def acknowledge(self, mid: int, qos: int) -> None:
        """The host has the message: PUBACK (QoS 1), or PUBREC (QoS 2; PUBREL follows)."""
        self._require("acknowledgement", State.CONNECTED)
        if qos == 1:
            self._incoming.discard(mid)
            self._out.append(_PUBACK_HEAD + mid.to_bytes(2, "big"))
        elif qos == 2:
            self._out.append(_PUBREC_HEAD + mid.to_bytes(2, "big"))
        else:
            raise LocalProtocolError(f"no acknowledgement for QoS {qos}")

    def acknowledge_many(self, acks: Iterable[tuple[int, int]]) -> None:
        """`acknowledge` for several messages, in order."""
        self._require("acknowledgement", State.CONNECTED)
        out = []
        incoming = self._incoming
        for mid, qos in acks:
            if qos == 1:
                incoming.discard(mid)
                out.append(_PUBACK_HEAD + mid.to_bytes(2, "big"))
            else:
                out.append(_PUBREC_HEAD + mid.to_bytes(2, "big"))
        self._out.append(b"".join(out))

    def subscribe(
        self, subscriptions: Sequence[Subscription], properties: Properties | None = None
    ) -> int:
        self._require("SUBSCRIBE", State.CONNECTED)
        mid = self._packet_id()
        self._out.append(encode(Subscribe(mid, tuple(subscriptions), properties or {}), self.v5))
        self._requests[mid] = "SUBSCRIBE"
        return mid

    def unsubscribe(self, filters: Sequence[str], properties: Properties | None = None) -> int:
        self._require("UNSUBSCRIBE", State.CONNECTED)
        mid = self._packet_id()
        self._out.append(encode(Unsubscribe(mid, tuple(filters), properties or {}), self.v5))
        self._requests[mid] = "UNSUBSCRIBE"
        return mid

    def ping(self, now: float) -> None:
        self._require("PINGREQ", State.CONNECTED)
        self._out.append(_PINGREQ)
        if self._ping_sent is None:
            self._ping_sent = now

    def disconnect(self, code: int = 0, properties: Properties | None = None) -> None:
        """Send DISCONNECT (the broker then drops the will) and end the connection."""
        self._require("DISCONNECT", State.CONNECTED, State.CONNECTING)
        self._out.append(encode(Disconnect(code, properties or {}), self.v5))
        self._end()

    def connection_lost(self) -> int:
        """The connection is gone (closed, reset, or dropped by kom); the session stays.

        Returns the packet id of a QoS 2 PUBLISH that was the last thing kom sent, with
        nothing received from the broker after it (0 if none): a broker that closes the
        connection on a QoS 2 PUBLISH does not support QoS 2.
        """
        suspect = self._suspect
        if self.state is not State.DISCONNECTED:
            self._end()
        self._out.clear()
        return suspect if suspect in self._flights else 0

    def _end(self) -> None:
        self._move(State.DISCONNECTED)
        self._held_ids.clear()
        self._buf = b""
        self._pos = 0
        self._skip = 0
        self._error = None
        self._sending = 0
        self._suspect = 0
        self._ping_sent = None
        # MQTT 5 §4.9: the send quota starts again on each connection; in 3.1.1 too, the
        # session's messages are all sent again after the next CONNACK.
        self._waiting = deque(self._flights)
        for flight in self._flights.values():
            if flight.state != "released":
                flight.state = "queued"

    # -- timers ---------------------------------------------------------------------------

    def timers(self, now: float, reply_timeout: float) -> str | None:
        """Keep-alive (MQTT 3.1.1 §3.1.2.10): PINGREQ when kom sent nothing for the
        keep-alive interval; a problem when a PINGREQ stays unanswered `reply_timeout`."""
        if self.state is not State.CONNECTED:
            return None
        if self._ping_sent is not None:
            if reply_timeout > 0 and now - self._ping_sent >= reply_timeout:
                return f"no PINGRESP within {reply_timeout:g} s"
            return None
        keep_alive = (
            self.server_keep_alive if self.server_keep_alive is not None else self.keep_alive
        )
        if keep_alive and now - self.last_sent >= keep_alive * 0.75:
            self.ping(now)
        return None

    def next_deadline(self, now: float, reply_timeout: float) -> float | None:
        """When `timers` next has something to do (None: nothing is due)."""
        if self.state is not State.CONNECTED:
            return None
        if self._ping_sent is not None:
            return self._ping_sent + reply_timeout if reply_timeout > 0 else None
        keep_alive = (
            self.server_keep_alive if self.server_keep_alive is not None else self.keep_alive
        )
        return self.last_sent + keep_alive * 0.75 if keep_alive else None

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the broker, as they came."""
        if self.state is State.DISCONNECTED:
            raise LocalProtocolError("data received while disconnected")
        if self._skip:
            drop = min(self._skip, len(data))
            self._skip -= drop
            data = data[drop:]
            if not data:
                return
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def next_event(self, now: float) -> Event | None:
        """The next event from the bytes received, or None until more bytes arrive.

        Raises ProtocolError (with the MQTT 5 reason code that fits) when the broker breaks
        the protocol; the connection must then be closed.
        """
        events = self.next_events(now, 1)
        return events[0] if events else None

    def next_events(self, now: float, limit: int) -> list[Event]:
        """Up to `limit` events from the bytes received, in order; empty until more arrive.

        The reading loop's form of `next_event`: one call parses a whole read. A protocol
        error found after some events of the call is raised by the next call, so that the
        events before it are handed over first (their packets were whole and valid).
        """
        error = self._error
        if error is not None:
            self._error = None
            raise error
        events: list[Event] = []
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if pos >= size:
            return events
        append = events.append
        valid = self._valid_first
        # MQTT 3.1.1 PUBLISH packets of a connected session are parsed right here: the hot
        # path of a drain. Anything unusual in one takes `_publish`, which names the fault.
        inline = not self.v5 and self.state is State.CONNECTED
        incoming = self._incoming
        count = 0
        try:
            while pos < size and count < limit:
                first = buf[pos]
                if not valid[first]:
                    raise MalformedPacket(_bad_first(first, buf[pos : pos + 16]))
                # §2.2.3: the remaining length, one to four bytes of seven bits each.
                if pos + 1 < size and buf[pos + 1] < 0x80:  # one byte: most packets
                    i = pos + 2
                    end = i + buf[pos + 1]
                else:
                    length = shift = 0
                    i = pos + 1
                    while i < size:
                        byte = buf[i]
                        i += 1
                        length |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            break
                        shift += 7
                        if shift > 21:
                            raise MalformedPacket("remaining length longer than four bytes")
                    else:
                        break  # the remaining length is not all here yet
                    end = i + length
                if end - pos > self.maximum_packet_size:
                    self._consumed(pos, now)
                    pos = -1  # the buffer is the oversize packet's now
                    oversize = self._oversize(first, i, end - i)
                    if oversize is not None:
                        append(oversize)
                    return events
                if end > size:
                    break
                if first & 0xF0 == 0x30:
                    topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1]) if end - i >= 2 else end + 1
                    if inline and i + 2 < topic_end <= end and first & 0x06 == 0:
                        append(
                            new(
                                Message,
                                (
                                    buf[i + 2 : topic_end],
                                    buf[topic_end:end],
                                    0,
                                    0,
                                    first & 0x08 == 0x08,
                                    first & 0x01 == 0x01,
                                    None,
                                    -1,
                                ),
                            )
                        )
                    elif inline and i + 2 < topic_end <= end - 2 and first & 0x06 != 0x06:
                        mid = (buf[topic_end] << 8) | buf[topic_end + 1]
                        if not mid:
                            raise ProtocolError("PUBLISH with packet identifier 0")
                        incoming.add(mid)
                        append(
                            new(
                                Message,
                                (
                                    buf[i + 2 : topic_end],
                                    buf[topic_end + 2 : end],
                                    (first & 0x06) >> 1,
                                    mid,
                                    first & 0x08 == 0x08,
                                    first & 0x01 == 0x01,
                                    None,
                                    -1,
                                ),
                            )
                        )
                    else:
                        message = self._publish(first, buf, i, end)
                        if message is not None:
                            append(message)
                    count += 1
                else:
                    event = self._packet(decode(first, buf[i:end], self.v5), now)
                    if event is not None:
                        append(event)
                        count += 1
                pos = end
        except ProtocolError as exc:
            if not events:
                raise
            self._error = exc  # raised by the next call
        if pos >= 0:
            self._consumed(pos, now)
        return events

    def _consumed(self, pos: int, now: float) -> None:
        """The packets before `pos` were read: a packet from the broker came at `now`."""
        if pos != self._pos:
            self._pos = pos
            self.last_received = now
            self._suspect = 0

    def _publish(self, first: int, buf: bytes, start: int, end: int) -> Message | None:
        """An incoming PUBLISH (§3.3), parsed in place: this is the hot path."""
        if self.state is not State.CONNECTED:
            raise ProtocolError(f"PUBLISH while {self.state.value}")
        qos = (first & 0x06) >> 1
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        if end - start < 2:
            raise MalformedPacket("PUBLISH cut short")
        topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
        body = topic_end
        mid = 0
        if qos:
            body += 2
            if body > end:
                raise MalformedPacket("PUBLISH cut short before its packet identifier")
            mid = (buf[topic_end] << 8) | buf[topic_end + 1]
            if not mid:
                raise ProtocolError("PUBLISH with packet identifier 0")
        topic = buf[start + 2 : topic_end]
        props = None
        if self.v5:
            props, body = decode_properties(buf, body, end, "PUBLISH")
            if props:
                topic = self._alias(topic, props)
            elif not topic:
                raise ProtocolError("PUBLISH with neither topic nor topic alias", 0x82)
        elif topic_end == start + 2:
            raise ProtocolError("PUBLISH with an empty topic")
        if body > end:
            raise MalformedPacket("PUBLISH longer than its packet")
        if qos:
            self._received_flight(mid)
        return Message(
            topic, buf[body:end], qos, mid, bool(first & 0x08), bool(first & 0x01), props
        )

    def _received_flight(self, mid: int) -> None:
        """MQTT 5 §4.9: the broker may not have more than kom's Receive Maximum in flight."""
        incoming = self._incoming
        if mid not in incoming:
            if self.v5 and len(incoming) >= self.receive_maximum:
                raise ProtocolError(
                    f"more than Receive Maximum ({self.receive_maximum}) QoS 1/2 messages"
                    " in flight from the broker",
                    0x93,
                )
            incoming.add(mid)

    def _alias(self, topic: bytes, props: Properties) -> bytes:
        """MQTT 5 §3.3.2.3.4: a topic alias sets (with a topic) or stands for (without) it."""
        alias = props.get("topic_alias")
        if alias is None:
            if not topic:
                raise ProtocolError("PUBLISH with neither topic nor topic alias")
            return topic
        if not 0 < alias <= self.topic_alias_maximum:
            raise ProtocolError(f"topic alias {alias} outside 1..{self.topic_alias_maximum}", 0x94)
        if topic:
            self._aliases[alias] = topic
            return topic
        known = self._aliases.get(alias)
        if known is None:
            raise ProtocolError(f"topic alias {alias} used before it was set", 0x82)
        return known

    def _oversize(self, first: int, start: int, length: int) -> Message | None:
        """A packet over `maximum_packet_size`: a PUBLISH is skipped as it streams in.

        Only its head (topic, packet id) is kept, so that it can be reported and acknowledged;
        any other packet that large is a protocol error (MQTT 5 §3.1.2.11.4: 0x95).
        """
        kind = first >> 4
        if kind != PUBLISH:
            raise ProtocolError(
                f"{NAMES.get(kind, kind)} of {length} bytes is over the Maximum Packet Size"
                f" of {self.maximum_packet_size}",
                0x95,
            )
        if self.state is not State.CONNECTED:
            raise ProtocolError("PUBLISH while not connected")
        buf = self._buf
        have = len(buf) - start
        qos = (first & 0x06) >> 1
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        if have < 2:
            return None
        topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
        head = topic_end + (2 if qos else 0)
        if head - start > length:
            raise MalformedPacket("PUBLISH topic longer than its packet")
        if head > len(buf):
            return None  # the head (at most 65,539 bytes) is not all here yet
        mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
        topic = buf[start + 2 : topic_end]
        end = start + length
        if end <= len(buf):
            self._pos = end
        else:
            self._skip = end - len(buf)
            self._buf = b""
            self._pos = 0
        self._suspect = 0
        if qos:
            self._received_flight(mid)
        return Message(topic, b"", qos, mid, bool(first & 0x08), bool(first & 0x01), None, length)

    def _packet(self, packet: Packet, now: float) -> Event | None:
        """Every packet other than PUBLISH, checked against the connection's state."""
        kind = type(packet)
        if self.state is State.CONNECTING:
            if kind is not Connack:
                raise ProtocolError(f"{type(packet).__name__.upper()} before CONNACK")
            return self._connack(packet)  # type: ignore[arg-type]
        if kind is Connack:
            raise ProtocolError("a second CONNACK")
        if kind is Pingresp:
            self._ping_sent = None
            return PingResponse()
        code: int = getattr(packet, "code", 0)
        props: Properties = getattr(packet, "properties", {})
        if kind is Disconnect:
            why = reason_name(code, packet="DISCONNECT") + _reason_string(props)
            return BrokerDisconnected(code, why)
        mid: int = getattr(packet, "packet_id", 0)
        if kind is Suback:
            self._request_done(mid, "SUBSCRIBE")
            return Subscribed(mid, packet.codes, props.get("reason_string"))  # type: ignore[union-attr]
        if kind is Unsuback:
            self._request_done(mid, "UNSUBSCRIBE")
            return Unsubscribed(mid, packet.codes)  # type: ignore[union-attr]
        number = _ACK_NUMBERS.get(kind)
        if number == PUBREL:
            # Also for an exchange of an earlier connection (the broker resends PUBREL).
            self._incoming.discard(mid)
            self._out.append(_PUBCOMP_HEAD + mid.to_bytes(2, "big"))
            return None
        if number is None:
            raise ProtocolError(f"{kind.__name__.upper()} sent by a broker")
        return self._flight_answer(number, mid, code, props)

    def _request_done(self, mid: int, what: str) -> None:
        if self._requests.pop(mid, None) != what:
            raise ProtocolError(f"answer to {what} {mid}, which kom did not send")

    def _flight_answer(self, number: int, mid: int, code: int, props: Properties) -> Event | None:
        """PUBACK, PUBREC or PUBCOMP for a message of kom's (§4.3.2, §4.3.3)."""
        flight = self._flights.get(mid)
        if flight is None or flight.state == "queued":
            # An answer for nothing in flight: a late one from an earlier connection.
            return None
        why = _SUCCESS if code == 0 and not props else reason_name(code) + _reason_string(props)
        if number == PUBREC:
            if flight.qos != 2:
                raise ProtocolError(f"PUBREC for QoS 1 message {mid}")
            if is_failure(code):
                self._finish(mid)
                return PublishCompleted(mid, False, why, code)
            flight.state = "released"
            self._out.append(_PUBREL_HEAD + mid.to_bytes(2, "big"))
            return None
        if number == PUBCOMP:
            if flight.state != "released":
                raise ProtocolError(f"PUBCOMP for message {mid} before PUBREC")
            self._finish(mid)
            return PublishCompleted(mid, not is_failure(code), why, code)
        # PUBACK
        if flight.qos == 2:
            if flight.state == "released":
                raise ProtocolError(f"PUBACK for QoS 2 message {mid} after PUBREC")
            self._finish(mid)
            if is_failure(code):
                return PublishCompleted(mid, False, why, code)
            return PublishCompleted(
                mid,
                True,
                "downgraded to QoS 1 by the broker (PUBACK for a QoS 2 PUBLISH)",
                code,
                downgraded=True,
            )
        self._finish(mid)
        return PublishCompleted(mid, not is_failure(code), why, code)

    def _finish(self, mid: int) -> None:
        del self._flights[mid]
        self._sending -= 1
        if self._waiting:
            self._send_waiting()

    def _send_waiting(self) -> None:
        waiting = self._waiting
        flights = self._flights
        while waiting and self._sending < self.server_receive_maximum:
            mid = waiting.popleft()
            flight = flights.get(mid)
            if flight is not None:
                self._send_flight(mid, flight)

    def _connack(self, packet: Connack) -> Event:
        props = packet.properties
        if packet.code:
            self._end()
            why = reason_name(packet.code, packet="CONNACK", v5=self.v5) + _reason_string(props)
            return ConnectionRefused(packet.code, why, packet.code in UNSUPPORTED_VERSION, props)
        self._move(State.CONNECTED)
        self.session_present = packet.session_present
        if not packet.session_present:
            self._retired_ids.clear()  # the broker holds no flow of kom's any more
        self.server_receive_maximum = props.get("receive_maximum", 65535)
        if not self.server_receive_maximum:
            raise ProtocolError("CONNACK with Receive Maximum 0")
        self.server_maximum_packet_size = props.get("maximum_packet_size", 268_435_460)
        self.server_keep_alive = props.get("server_keep_alive")
        self.server_maximum_qos = props.get("maximum_qos", 2)
        self.server_retain_available = bool(props.get("retain_available", 1))
        failed = self._resend(packet.session_present)
        return ConnectionAccepted(packet.session_present, props, failed)

    def _resend(self, session_present: bool) -> tuple[PublishCompleted, ...]:
        """After CONNACK: PUBREL for messages the broker has received, then every other
        message of the session in order, DUP set on those sent before (§4.4).

        With a new session on the broker (Session Present 0) a message it had received
        (PUBREC) is not known there any more: whether it was delivered cannot be known, so its
        write fails saying so (MQTT 5 §3.2.2.1.1: the session state is discarded); a
        PUBREL now would be answered PUBCOMP and read as done. Messages that now break the
        broker's limits fail too, rather than make it close the connection.
        """
        failed = []
        waiting = self._waiting
        self._waiting = deque()
        for mid, flight in list(self._flights.items()):
            if flight.state != "released":
                continue
            if session_present:
                self._out.append(_PUBREL_HEAD + mid.to_bytes(2, "big"))
                self._sending += 1
            else:
                del self._flights[mid]
                why = (
                    "the broker's session is new (Session Present 0): it had received the"
                    " message (PUBREC) but may not have delivered it; not sent again"
                )
                failed.append(PublishCompleted(mid, False, why, 0x80))
        for mid in waiting:
            out = self._flights.get(mid)
            if out is None or out.state == "released":
                continue
            try:
                self._check_allowed(out.qos, out.retain)
                self._check_size(out.data)
            except (NotAllowed, PacketTooLarge) as exc:
                del self._flights[mid]
                failed.append(PublishCompleted(mid, False, str(exc), exc.code))
                continue
            if self._sending < self.server_receive_maximum:
                self._send_flight(mid, out)
            else:
                self._waiting.append(mid)
        return tuple(failed)


_ACK_NUMBERS: dict[type, int] = {
    Puback: PUBACK,
    Pubrec: PUBREC,
    Pubrel: PUBREL,
    Pubcomp: PUBCOMP,
}
_SUCCESS = reason_name(0)


def _valid_firsts(v5: bool) -> bytes:
    """Which fixed header bytes a broker may send (§2.2): a table, checked as a packet starts,
    so that garbage is named at its first byte rather than waited for."""
    table = bytearray(256)
    for first in range(256):
        kind, flags = first >> 4, first & 0x0F
        if kind == PUBLISH:
            table[first] = (flags >> 1) & 3 != 3 and not (flags & 0x08 and not flags & 0x06)
        elif kind in (2, 4, 5, 7, 9, 11, 13, 14) or (kind == 15 and v5):
            table[first] = flags == 0
        elif kind == PUBREL:
            table[first] = flags == 0x02
    return bytes(table)


_BROKER_FIRST_311 = _valid_firsts(False)
_BROKER_FIRST_5 = _valid_firsts(True)


def _bad_first(first: int, head: bytes = b"") -> str:
    """Why a packet cannot start with `first`; an HTTP answer (a web server, or a WebSocket
    listener spoken to over plain TCP) is named as such rather than as a packet type."""
    if head.startswith((b"HTTP/", b"<")):
        return (
            f"the peer answered in HTTP ({head!r}...): not an MQTT listener"
            ' (a WebSocket listener needs transport = "websockets")'
        )
    kind = first >> 4
    name = NAMES.get(kind, f"reserved packet type {kind}")
    return f"{name} cannot come from a broker (fixed header byte 0x{first:02X}): not MQTT"


def _reason_string(props: Properties | dict[str, Any]) -> str:
    """The broker's Reason String, and its Server Reference (MQTT 5 §4.11: use another server,
    server moved), which kom does not follow but names."""
    text = props.get("reason_string")
    out = f": {text}" if text else ""
    reference = props.get("server_reference")
    if reference:
        out += f" (server reference: {reference})"
    return out
