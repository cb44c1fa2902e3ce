"""Incoming PUBLISH packets parsed by kom's protocol core (MQTT 3.1.1 §3.3, 5 §3.3).

The packets here are encoded by a reference encoder written from the specification, not by the
code under test; the broker tests cover the same path end to end.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import mqtt
from kom._mqtt import RawMessage

from ._fakebroker import encode_remaining_length


def publish(msg: RawMessage, properties: bytes | None = None) -> bytes:
    """A PUBLISH packet; `properties` (already encoded) makes it an MQTT 5 one."""
    command = 0x30 | (msg.qos << 1) | (0x08 if msg.dup else 0) | (0x01 if msg.retain else 0)
    body = len(msg.topic).to_bytes(2, "big") + msg.topic
    if msg.qos:
        body += msg.mid.to_bytes(2, "big")
    if properties is not None:
        body += encode_remaining_length(len(properties)) + properties
    body += msg.payload
    return bytes([command]) + encode_remaining_length(len(body)) + body


def reader(v5: bool, data: bytes) -> mqtt.Connection:
    """A connected protocol core that has received `data`."""
    conn = mqtt.Connection(v5, topic_alias_maximum=10)
    conn.connect(mqtt.Connect("kom"), 0.0)
    conn.receive_data(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
    assert isinstance(conn.next_event(0.0), mqtt.ConnectionAccepted)
    conn.receive_data(data)
    return conn


def drain(conn: mqtt.Connection) -> list[Any]:
    """Every event the core has for what it received so far."""
    out = []
    while (event := conn.next_event(0.0)) is not None:
        out.append(event)
    return out


def plain(msg: Any) -> RawMessage:
    """The message without its MQTT 5 properties."""
    return RawMessage(msg.topic, msg.payload, msg.qos, msg.mid, msg.dup, msg.retain)


def _message(fields: tuple[bytes, bytes, int, int, bool, bool]) -> RawMessage:
    return RawMessage(*fields)


messages = (
    st.tuples(
        st.binary(min_size=1, max_size=300),
        # Big payloads (over one 16 KiB read) as repeated bytes: random ones are slow to draw.
        st.one_of(st.binary(max_size=2000), st.integers(16_384, 20_000).map(lambda n: b"\x5a" * n)),
        st.integers(0, 2),
        st.integers(1, 65535),
        st.booleans(),
        st.booleans(),
    )
    .map(_message)
    .map(lambda m: m if m.qos else m._replace(mid=0, dup=False))
)


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_whole_packets_taken_in_order_partial_left(
    msgs: list[RawMessage], data: st.DataObject
) -> None:
    """Every whole PUBLISH received comes out as sent; a cut one waits for the rest."""
    v5 = data.draw(st.booleans())
    props = data.draw(st.sampled_from([b"", b"\x01\x01", b"\x23\x00\x05"])) if v5 else None
    packets = [publish(m, props) for m in msgs]
    stream = b"".join(packets)
    cut = data.draw(st.integers(len(stream) - len(packets[-1]), len(stream)))
    conn = reader(v5, stream[:cut])
    whole = msgs if cut == len(stream) else msgs[:-1]
    assert [plain(m) for m in drain(conn)] == whole
    assert conn.reading_packet() == (cut not in (len(stream), len(stream) - len(packets[-1])))
    conn.receive_data(stream[cut:])
    assert [plain(m) for m in drain(conn)] == msgs[len(whole) :]


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        pytest.param(b"\x36\x06\x00\x01t\x00\x01x", "0x36", id="QoS 3"),
        pytest.param(b"\x30\x03\x00\x00x", "empty topic", id="empty topic"),
        pytest.param(b"\x30\x03\x00\x09x", "cut short|longer", id="topic longer than the packet"),
        pytest.param(b"\x32\x04\x00\x01t\x00", "cut short", id="packet identifier cut"),
        pytest.param(b"\x30\x01\x00", "cut short", id="one byte of body"),
        pytest.param(b"\x30\xff\xff\xff\xff\x7f", "four bytes", id="remaining length over 4"),
        pytest.param(b"\x38\x04\x00\x01tx", "0x38", id="DUP at QoS 0"),
    ],
)
def test_malformed_packets_are_protocol_errors(packet: bytes, error: str) -> None:
    """A malformed PUBLISH is a protocol error naming what is wrong, never a message."""
    conn = reader(False, packet + publish(RawMessage(b"t", b"x", 0, 0, False, False)))
    with pytest.raises(mqtt.ProtocolError, match=error):
        drain(conn)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\x30", id="no remaining length yet"),
        pytest.param(b"\x30\x80", id="remaining length cut"),
        pytest.param(b"\x30\x05\x00\x01t", id="body cut"),
    ],
)
def test_incomplete_packets_wait_for_more(packet: bytes) -> None:
    """The start of a packet gives nothing until the rest arrives."""
    conn = reader(False, packet)
    assert drain(conn) == []
    assert conn.reading_packet()


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param(b"\x80\x80\x80\x80\x01", id="five-byte length"),
        pytest.param(b"\x05\x01", id="longer than the packet"),
    ],
)
def test_malformed_v5_properties(properties: bytes) -> None:
    """MQTT 5 properties that do not fit their packet are a Malformed Packet."""
    body = b"\x00\x01t" + properties
    conn = reader(True, bytes([0x30, len(body)]) + body)
    with pytest.raises(mqtt.MalformedPacket):
        drain(conn)


def test_v5_properties_are_not_payload() -> None:
    """MQTT 5 properties are read as properties; read as 3.1.1 they would be payload."""
    msg = RawMessage(b"a/b", b'{"v": 1}', 1, 7, False, True)
    packet = publish(msg, b"\x01\x01\x23\x00\x05")  # format indicator, topic alias 5
    (got,) = drain(reader(True, packet))
    assert plain(got) == msg
    assert got.properties == {"payload_format_indicator": 1, "topic_alias": 5}
    (got,) = drain(reader(False, packet))
    assert got.payload == b"\x05\x01\x01\x23\x00\x05" + msg.payload
