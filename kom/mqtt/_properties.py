"""MQTT 5 properties (§2.2.2): a table of identifiers, names, types and the packets allowing each.

Properties are plain dicts keyed by snake_case name. `user_property` is a tuple of (key, value)
pairs in order; `subscription_identifier` is a tuple of integers (a PUBLISH may carry several,
§3.3.2.3.8). Everything else appears at most once (§2.2.2.2: twice is a Protocol Error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import MalformedPacket, ProtocolError

Properties = dict[str, Any]

BYTE, U16, U32, VARINT, STR, BIN, PAIR = "byte", "u16", "u32", "varint", "str", "bin", "pair"
WILL = "WILL"  # the will properties of a CONNECT (§3.1.3.2)

_ALL = frozenset(
    {
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "DISCONNECT",
        "AUTH",
        WILL,
    }
)
_ACKS = frozenset({"PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBACK", "UNSUBACK"})

#: MQTT 5 §2.2.2.2, table 2-4: identifier -> (name, type, packets it may appear in).
PROPERTIES: dict[int, tuple[str, str, frozenset[str]]] = {
    0x01: ("payload_format_indicator", BYTE, frozenset({"PUBLISH", WILL})),
    0x02: ("message_expiry_interval", U32, frozenset({"PUBLISH", WILL})),
    0x03: ("content_type", STR, frozenset({"PUBLISH", WILL})),
    0x08: ("response_topic", STR, frozenset({"PUBLISH", WILL})),
    0x09: ("correlation_data", BIN, frozenset({"PUBLISH", WILL})),
    0x0B: ("subscription_identifier", VARINT, frozenset({"PUBLISH", "SUBSCRIBE"})),
    0x11: ("session_expiry_interval", U32, frozenset({"CONNECT", "CONNACK", "DISCONNECT"})),
    0x12: ("assigned_client_identifier", STR, frozenset({"CONNACK"})),
    0x13: ("server_keep_alive", U16, frozenset({"CONNACK"})),
    0x15: ("authentication_method", STR, frozenset({"CONNECT", "CONNACK", "AUTH"})),
    0x16: ("authentication_data", BIN, frozenset({"CONNECT", "CONNACK", "AUTH"})),
    0x17: ("request_problem_information", BYTE, frozenset({"CONNECT"})),
    0x18: ("will_delay_interval", U32, frozenset({WILL})),
    0x19: ("request_response_information", BYTE, frozenset({"CONNECT"})),
    0x1A: ("response_information", STR, frozenset({"CONNACK"})),
    0x1C: ("server_reference", STR, frozenset({"CONNACK", "DISCONNECT"})),
    0x1F: ("reason_string", STR, _ACKS | {"CONNACK", "DISCONNECT", "AUTH"}),
    0x21: ("receive_maximum", U16, frozenset({"CONNECT", "CONNACK"})),
    0x22: ("topic_alias_maximum", U16, frozenset({"CONNECT", "CONNACK"})),
    0x23: ("topic_alias", U16, frozenset({"PUBLISH"})),
    0x24: ("maximum_qos", BYTE, frozenset({"CONNACK"})),
    0x25: ("retain_available", BYTE, frozenset({"CONNACK"})),
    0x26: ("user_property", PAIR, _ALL),
    0x27: ("maximum_packet_size", U32, frozenset({"CONNECT", "CONNACK"})),
    0x28: ("wildcard_subscription_available", BYTE, frozenset({"CONNACK"})),
    0x29: ("subscription_identifier_available", BYTE, frozenset({"CONNACK"})),
    0x2A: ("shared_subscription_available", BYTE, frozenset({"CONNACK"})),
}
BY_NAME: dict[str, tuple[int, str, frozenset[str]]] = {
    name: (ident, kind, allowed) for ident, (name, kind, allowed) in PROPERTIES.items()
}
_REPEATED = frozenset({"user_property", "subscription_identifier"})


def encode_varint(value: int) -> bytes:
    """A variable byte integer (§1.5.5): seven bits a byte, least significant first."""
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """The variable byte integer at `pos` and the position after it; at most four bytes."""
    value = shift = 0
    for used in range(4):
        if pos + used >= end:
            raise MalformedPacket("variable byte integer cut short")
        byte = data[pos + used]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + used + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def encode_string(value: str | bytes) -> bytes:
    """A UTF-8 string or binary data with its two-byte length (§1.5.4, §1.5.6)."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes is over 65,535")
    return len(data).to_bytes(2, "big") + data


def decode_bytes(data: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[bytes, int]:
    """Two-byte length, then that many bytes (§1.5.6)."""
    if pos + 2 > end:
        raise MalformedPacket("length of a string cut short")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket("string longer than its packet")
    return bytes(data[pos + 2 : stop]), stop


def decode_string(data: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 string (§1.5.4); invalid UTF-8 is a Malformed Packet."""
    raw, pos = decode_bytes(data, pos, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"string is not UTF-8: {raw[:40]!r}") from exc
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000")
    return text, pos


def encode_properties(props: Mapping[str, Any] | None, packet: str) -> bytes:
    """The property length and the properties, in identifier order; {} encodes as one zero byte."""
    if not props:
        return b"\x00"
    out = bytearray()
    for name in sorted(props, key=lambda n: _known(n, packet)[0]):
        ident, kind, _ = _known(name, packet)
        value = props[name]
        values = value if name in _REPEATED else (value,)
        for item in values:
            out.append(ident)
            out += _encode_value(kind, item, name)
    return encode_varint(len(out)) + bytes(out)


def _known(name: str, packet: str) -> tuple[int, str, frozenset[str]]:
    entry = BY_NAME.get(name)
    if entry is None:
        raise ValueError(f"unknown MQTT 5 property {name!r}")
    if packet not in entry[2]:
        raise ValueError(f"property {name!r} is not allowed in {packet}")
    return entry


def _encode_value(kind: str, value: Any, name: str) -> bytes:
    if kind == BYTE:
        return bytes([int(value)])
    if kind == U16:
        return int(value).to_bytes(2, "big")
    if kind == U32:
        return int(value).to_bytes(4, "big")
    if kind == VARINT:
        return encode_varint(int(value))
    if kind in (STR, BIN):
        return encode_string(value)
    key, val = value
    return encode_string(key) + encode_string(val)


def decode_properties(
    data: bytes | bytearray | memoryview, pos: int, end: int, packet: str
) -> tuple[Properties, int]:
    """The properties at `pos` (length first) and the position after them.

    A property unknown, not allowed in `packet`, repeated, or cut short is refused
    (§2.2.2.2: Malformed Packet or Protocol Error).
    """
    length, pos = decode_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties longer than their packet")
    props: Properties = {}
    while pos < stop:
        ident = data[pos]
        pos += 1
        entry = PROPERTIES.get(ident)
        if entry is None:
            raise MalformedPacket(f"unknown property identifier 0x{ident:02X}")
        name, kind, allowed = entry
        if packet not in allowed:
            raise ProtocolError(f"property {name} is not allowed in {packet}")
        value: Any
        if kind == BYTE:
            if pos + 1 > stop:
                raise MalformedPacket(f"property {name} cut short")
            value, pos = data[pos], pos + 1
        elif kind == U16:
            if pos + 2 > stop:
                raise MalformedPacket(f"property {name} cut short")
            value, pos = (data[pos] << 8) | data[pos + 1], pos + 2
        elif kind == U32:
            if pos + 4 > stop:
                raise MalformedPacket(f"property {name} cut short")
            value, pos = int.from_bytes(data[pos : pos + 4], "big"), pos + 4
        elif kind == VARINT:
            value, pos = decode_varint(data, pos, stop)
        elif kind == STR:
            value, pos = decode_string(data, pos, stop)
        elif kind == BIN:
            value, pos = decode_bytes(data, pos, stop)
        else:
            key, pos = decode_string(data, pos, stop)
            val, pos = decode_string(data, pos, stop)
            value = (key, val)
        if name in _REPEATED:
            props[name] = (*props.get(name, ()), value)
        elif name in props:
            raise ProtocolError(f"property {name} appears twice")
        else:
            props[name] = value
    return props, stop
