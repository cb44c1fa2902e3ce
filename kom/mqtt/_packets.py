"""The 15 MQTT control packets of 3.1.1 and 5.0 as values, with their encoding and decoding.

`encode(packet, v5)` gives the bytes of a whole packet; `decode(first, body, v5)` the packet
whose fixed header byte is `first` and whose remaining bytes are `body`. Every reserved flag,
length and value the specifications check is checked here; a packet that breaks them raises
MalformedPacket or ProtocolError. MQTT 3.1.1 has no AUTH (type 15) and no properties or reason
codes in acknowledgements.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._errors import MalformedPacket, ProtocolError
from ._properties import (
    Properties,
    decode_bytes,
    decode_properties,
    decode_string,
    encode_properties,
    encode_string,
    encode_varint,
)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
)
NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
    AUTH: "AUTH",
}
#: §2.2.2: the fixed header flags each type must carry (PUBLISH's are its own).
_FLAGS = {PUBREL: 0x02, SUBSCRIBE: 0x02, UNSUBSCRIBE: 0x02}

_props: Any = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Will:
    """The will message of a CONNECT (§3.1.2.5, §3.1.3.2)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = _props


@attrs.frozen
class Connect:
    client_id: str
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = _props
    #: 4 is MQTT 3.1.1, 5 is MQTT 5.0 (the protocol level byte, §3.1.2.2).
    level: int = 4


@attrs.frozen
class Connack:
    session_present: bool
    code: int
    properties: Properties = _props


@attrs.frozen
class Publish:
    topic: bytes
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: Properties = _props


@attrs.frozen
class _Acknowledgement:
    """The shape of PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4-3.7): an id, MQTT 5 a reason."""

    packet_id: int
    code: int = 0
    properties: Properties = _props


@attrs.frozen
class Puback(_Acknowledgement):
    pass


@attrs.frozen
class Pubrec(_Acknowledgement):
    pass


@attrs.frozen
class Pubrel(_Acknowledgement):
    pass


@attrs.frozen
class Pubcomp(_Acknowledgement):
    pass


@attrs.frozen
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (§3.8.3.1)."""

    filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@attrs.frozen
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = _props


@attrs.frozen
class Suback:
    packet_id: int
    codes: tuple[int, ...]
    properties: Properties = _props


@attrs.frozen
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]
    properties: Properties = _props


@attrs.frozen
class Unsuback:
    packet_id: int
    #: MQTT 5 only (§3.11.3); empty in 3.1.1.
    codes: tuple[int, ...] = ()
    properties: Properties = _props


@attrs.frozen
class Pingreq:
    pass


@attrs.frozen
class Pingresp:
    pass


@attrs.frozen
class Disconnect:
    code: int = 0
    properties: Properties = _props


@attrs.frozen
class Auth:
    code: int = 0
    properties: Properties = _props


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
_ACK_TYPES: dict[type[Any], int] = {
    Puback: PUBACK,
    Pubrec: PUBREC,
    Pubrel: PUBREL,
    Pubcomp: PUBCOMP,
}
_ACK_CLASSES: dict[int, type[Puback | Pubrec | Pubrel | Pubcomp]] = {
    PUBACK: Puback,
    PUBREC: Pubrec,
    PUBREL: Pubrel,
    PUBCOMP: Pubcomp,
}


def frame(first: int, body: bytes) -> bytes:
    """A whole packet: the fixed header byte, the remaining length (§2.2.3), the body."""
    return bytes([first]) + encode_varint(len(body)) + body


def _id(packet_id: int) -> bytes:
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier out of range: {packet_id}")
    return packet_id.to_bytes(2, "big")


def encode(packet: Packet, v5: bool) -> bytes:
    """The bytes of `packet` in MQTT 5 (`v5`) or 3.1.1."""
    kind = type(packet)
    if kind is Publish:
        return encode_publish(packet, v5)  # type: ignore[arg-type]
    if kind in _ACK_TYPES:
        ack: Puback = packet  # type: ignore[assignment]
        body = _id(ack.packet_id)
        name = NAMES[_ACK_TYPES[kind]]
        if v5 and (ack.code or ack.properties):
            body += bytes([ack.code])
            if ack.properties:
                body += encode_properties(ack.properties, name)
        return frame(_ACK_TYPES[kind] << 4 | _FLAGS.get(_ACK_TYPES[kind], 0), body)
    if kind is Pingreq:
        return b"\xc0\x00"
    if kind is Pingresp:
        return b"\xd0\x00"
    if kind is Connect:
        return _encode_connect(packet, v5)  # type: ignore[arg-type]
    if kind is Connack:
        c: Connack = packet  # type: ignore[assignment]
        body = bytes([1 if c.session_present else 0, c.code])
        if v5:
            body += encode_properties(c.properties, "CONNACK")
        return frame(CONNACK << 4, body)
    if kind is Subscribe:
        s: Subscribe = packet  # type: ignore[assignment]
        if not s.subscriptions:
            raise ValueError("SUBSCRIBE needs at least one topic filter")
        body = _id(s.packet_id)
        if v5:
            body += encode_properties(s.properties, "SUBSCRIBE")
        for sub in s.subscriptions:
            options = sub.qos
            if v5:
                options |= (
                    (0x04 if sub.no_local else 0)
                    | (0x08 if sub.retain_as_published else 0)
                    | (sub.retain_handling << 4)
                )
            body += encode_string(sub.filter) + bytes([options])
        return frame(SUBSCRIBE << 4 | 0x02, body)
    if kind is Suback:
        sa: Suback = packet  # type: ignore[assignment]
        body = _id(sa.packet_id)
        if v5:
            body += encode_properties(sa.properties, "SUBACK")
        return frame(SUBACK << 4, body + bytes(sa.codes))
    if kind is Unsubscribe:
        u: Unsubscribe = packet  # type: ignore[assignment]
        if not u.filters:
            raise ValueError("UNSUBSCRIBE needs at least one topic filter")
        body = _id(u.packet_id)
        if v5:
            body += encode_properties(u.properties, "UNSUBSCRIBE")
        body += b"".join(encode_string(f) for f in u.filters)
        return frame(UNSUBSCRIBE << 4 | 0x02, body)
    if kind is Unsuback:
        ua: Unsuback = packet  # type: ignore[assignment]
        body = _id(ua.packet_id)
        if v5:
            body += encode_properties(ua.properties, "UNSUBACK") + bytes(ua.codes)
        return frame(UNSUBACK << 4, body)
    if kind is Disconnect:
        d: Disconnect = packet  # type: ignore[assignment]
        body = b""
        if v5 and (d.code or d.properties):
            body = bytes([d.code]) + (
                encode_properties(d.properties, "DISCONNECT") if d.properties else b""
            )
        return frame(DISCONNECT << 4, body)
    if kind is Auth:
        if not v5:
            raise ValueError("AUTH exists in MQTT 5 only")
        a: Auth = packet  # type: ignore[assignment]
        body = b""
        if a.code or a.properties:
            body = bytes([a.code]) + (
                encode_properties(a.properties, "AUTH") if a.properties else b""
            )
        return frame(AUTH << 4, body)
    raise TypeError(f"not an MQTT packet: {packet!r}")


def encode_publish(p: Publish, v5: bool) -> bytes:
    """A PUBLISH (§3.3); the topic may be empty in MQTT 5 when a topic alias stands for it."""
    if p.qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, found {p.qos}")
    first = (PUBLISH << 4) | (p.qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    topic = p.topic
    body = len(topic).to_bytes(2, "big") + topic
    if p.qos:
        body += _id(p.packet_id)
    if v5:
        body += encode_properties(p.properties, "PUBLISH")
    return frame(first, body + p.payload)


def _encode_connect(c: Connect, v5: bool) -> bytes:
    flags = 0x02 if c.clean_start else 0
    tail = encode_string(c.client_id)
    will = c.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if v5:
            tail += encode_properties(will.properties, "WILL")
        tail += encode_string(will.topic) + encode_string(will.payload)
    if c.username is not None:
        flags |= 0x80
        tail += encode_string(c.username)
    if c.password is not None:
        flags |= 0x40
        tail += encode_string(c.password)
    level = 5 if v5 else 4
    body = encode_string("MQTT") + bytes([level, flags]) + c.keep_alive.to_bytes(2, "big")
    if v5:
        body += encode_properties(c.properties, "CONNECT")
    return frame(CONNECT << 4, body + tail)


def decode(first: int, body: bytes, v5: bool) -> Packet:
    """The packet with fixed header byte `first` and remaining bytes `body`."""
    if first == 0x40 and len(body) == 2:  # PUBACK, success (§3.4.2.1): every QoS 1 write's
        return Puback((body[0] << 8) | body[1])
    kind = first >> 4
    flags = first & 0x0F
    end = len(body)
    if kind == PUBLISH:
        return decode_publish(first, body, v5)
    if kind == 0 or (kind == AUTH and not v5):
        raise MalformedPacket(f"reserved packet type {kind}")
    if flags != _FLAGS.get(kind, 0):
        raise MalformedPacket(f"{NAMES[kind]} with fixed header flags 0x{flags:X}")
    name = NAMES[kind]
    if kind in _ACK_CLASSES:
        if end < 2 or (not v5 and end != 2):
            raise MalformedPacket(f"{name} of {end} bytes")
        packet_id = (body[0] << 8) | body[1]
        code = body[2] if end > 2 else 0
        props: Properties = {}
        if end > 3:
            props, pos = decode_properties(body, 3, end, name)
            _done(pos, end, name)
        return _ACK_CLASSES[kind](packet_id, code, props)
    if kind in (PINGREQ, PINGRESP):
        if end:
            raise MalformedPacket(f"{name} with a body")
        return Pingreq() if kind == PINGREQ else Pingresp()
    if kind == CONNACK:
        if end < 2 or (not v5 and end != 2):
            raise MalformedPacket(f"CONNACK of {end} bytes")
        if body[0] & 0xFE:
            raise MalformedPacket("CONNACK acknowledge flags reserved bits set")
        props = {}
        if v5:
            props, pos = decode_properties(body, 2, end, "CONNACK") if end > 2 else ({}, 2)
            _done(pos, end, name)
        return Connack(bool(body[0] & 1), body[1], props)
    if kind in (SUBACK, UNSUBACK):
        if end < 2:
            raise MalformedPacket(f"{name} of {end} bytes")
        packet_id = (body[0] << 8) | body[1]
        pos = 2
        props = {}
        if v5:
            props, pos = decode_properties(body, 2, end, name)
        codes = tuple(body[pos:end])
        if kind == SUBACK:
            if not codes:
                raise ProtocolError("SUBACK without return codes")
            return Suback(packet_id, codes, props)
        if not v5 and codes:
            raise MalformedPacket("UNSUBACK of more than 2 bytes")
        return Unsuback(packet_id, codes, props)
    if kind == DISCONNECT:
        if end and not v5:
            raise MalformedPacket("DISCONNECT with a body")
        code = body[0] if end else 0
        props = {}
        if end > 1:
            props, pos = decode_properties(body, 1, end, name)
            _done(pos, end, name)
        return Disconnect(code, props)
    if kind == AUTH:
        code = body[0] if end else 0
        props = {}
        if end > 1:
            props, pos = decode_properties(body, 1, end, name)
            _done(pos, end, name)
        return Auth(code, props)
    if kind == CONNECT:
        return _decode_connect(body)
    if kind == SUBSCRIBE:
        return _decode_subscribe(body, v5)
    return _decode_unsubscribe(body, v5)


def _done(pos: int, end: int, name: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{name} has {end - pos} bytes after its properties")


def decode_publish(first: int, body: bytes, v5: bool) -> Publish:
    """A PUBLISH (§3.3.1): QoS 3 and, in 3.1.1, an empty topic are malformed."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(first & 0x08)
    if dup and not qos:
        raise MalformedPacket("QoS 0 PUBLISH with the DUP flag")
    end = len(body)
    raw, pos = decode_bytes(body, 0, end)
    if not raw and not v5:
        raise ProtocolError("PUBLISH with an empty topic")
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH cut short before its packet identifier")
        packet_id = (body[pos] << 8) | body[pos + 1]
        if not packet_id:
            raise ProtocolError("PUBLISH with packet identifier 0")
        pos += 2
    props: Properties = {}
    if v5:
        props, pos = decode_properties(body, pos, end, "PUBLISH")
    return Publish(raw, bytes(body[pos:end]), qos, bool(first & 1), dup, packet_id, props)


def _decode_connect(body: bytes) -> Connect:
    end = len(body)
    name, pos = decode_string(body, 0, end)
    if name != "MQTT" or pos + 4 > end:
        raise MalformedPacket(f"CONNECT for protocol {name!r}")
    level, flags = body[pos], body[pos + 1]
    keep_alive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    if flags & 0x01:
        raise MalformedPacket("CONNECT flags reserved bit set")
    v5 = level == 5
    props: Properties = {}
    if v5:
        props, pos = decode_properties(body, pos, end, "CONNECT")
    client_id, pos = decode_string(body, pos, end)
    will = None
    if flags & 0x04:
        will_props: Properties = {}
        if v5:
            will_props, pos = decode_properties(body, pos, end, "WILL")
        topic, pos = decode_string(body, pos, end)
        payload, pos = decode_bytes(body, pos, end)
        will = Will(topic, payload, (flags >> 3) & 3, bool(flags & 0x20), will_props)
    username = password = None
    if flags & 0x80:
        username, pos = decode_string(body, pos, end)
    if flags & 0x40:
        password, pos = decode_bytes(body, pos, end)
    _done(pos, end, "CONNECT")
    return Connect(
        client_id, bool(flags & 0x02), keep_alive, username, password, will, props, level
    )


def _decode_subscribe(body: bytes, v5: bool) -> Subscribe:
    end = len(body)
    if end < 2:
        raise MalformedPacket("SUBSCRIBE cut short")
    packet_id = (body[0] << 8) | body[1]
    pos = 2
    props: Properties = {}
    if v5:
        props, pos = decode_properties(body, pos, end, "SUBSCRIBE")
    subs = []
    while pos < end:
        text, pos = decode_string(body, pos, end)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE topic filter without options")
        options = body[pos]
        pos += 1
        if options & 0x03 == 3 or options & (0xC0 if v5 else 0xFC) or (options >> 4) & 3 == 3:
            raise MalformedPacket(f"SUBSCRIBE options 0x{options:02X}")
        subs.append(
            Subscription(
                text, options & 3, bool(options & 4), bool(options & 8), (options >> 4) & 3
            )
        )
    if not subs:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(subs), props)


def _decode_unsubscribe(body: bytes, v5: bool) -> Unsubscribe:
    end = len(body)
    if end < 2:
        raise MalformedPacket("UNSUBSCRIBE cut short")
    packet_id = (body[0] << 8) | body[1]
    pos = 2
    props: Properties = {}
    if v5:
        props, pos = decode_properties(body, pos, end, "UNSUBSCRIBE")
    filters = []
    while pos < end:
        text, pos = decode_string(body, pos, end)
        filters.append(text)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters), props)
