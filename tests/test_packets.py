"""Incoming PUBLISH packets parsed by kom straight from its read buffer (MQTT 3.1.1 §3.3, 5 §3.3).

The packets here are encoded by a reference encoder written from the specification, not by the
code under test; the broker tests cover the same path end to end.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom._mqtt import RawMessage, _BufferedSocket, parse_publish

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


class FakeSocket:
    """Hands out a byte stream in the chunks given."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)


def buffered(data: bytes) -> _BufferedSocket:
    """A read buffer holding `data`, loaded the way paho's first recv() loads it."""
    sock = _BufferedSocket(FakeSocket(data), None)
    assert sock.recv(0) == b""
    assert sock.buffered() == len(data)
    return sock


messages = st.builds(
    RawMessage,
    topic=st.binary(min_size=1, max_size=300),
    payload=st.one_of(st.binary(max_size=2000), st.binary(min_size=16_384, max_size=20_000)),
    qos=st.integers(0, 2),
    mid=st.integers(1, 65535),
    dup=st.booleans(),
    retain=st.booleans(),
).map(lambda m: m if m.qos else m._replace(mid=0))


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_whole_packets_taken_in_order_partial_left(
    msgs: list[RawMessage], data: st.DataObject
) -> None:
    """Every whole PUBLISH in the buffer comes out as sent; a cut one stays for paho."""
    v5 = data.draw(st.booleans())
    props = data.draw(st.sampled_from([b"", b"\x01\x01", b"\x23\x00\x05"])) if v5 else None
    packets = [publish(m, props) for m in msgs]
    stream = b"".join(packets)
    cut = data.draw(st.integers(len(stream) - len(packets[-1]), len(stream)))
    sock = buffered(stream[:cut])
    whole = msgs if cut == len(stream) else msgs[:-1]
    assert [sock.next_publish(v5) for _ in whole] == whole
    assert sock.next_publish(v5) is None
    assert sock.buffered() == cut - sum(len(p) for p in packets[: len(whole)])


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\xd0\x00", id="PINGRESP"),
        pytest.param(b"\x40\x02\x00\x01", id="PUBACK"),
        pytest.param(b"\x36\x06\x00\x01t\x00\x01x", id="QoS 3"),
        pytest.param(b"\x30\x03\x00\x00x", id="empty topic"),
        pytest.param(b"\x30\x03\x00\x09x", id="topic longer than the packet"),
        pytest.param(b"\x32\x04\x00\x01t\x00", id="packet identifier cut"),
        pytest.param(b"\x30\x01\x00", id="one byte of body"),
        pytest.param(b"\x30\xff\xff\xff\xff\x7f", id="remaining length over four bytes"),
        pytest.param(b"\x30", id="no remaining length yet"),
        pytest.param(b"\x30\x80", id="remaining length cut"),
    ],
)
def test_other_and_malformed_packets_left_for_paho(packet: bytes) -> None:
    """kom takes only what it can parse; paho's reader reports the rest."""
    sock = buffered(packet + publish(RawMessage(b"t", b"x", 0, 0, False, False)))
    assert sock.next_publish(False) is None
    assert sock.buffered() == len(packet) + 6


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param(b"\x80\x80\x80\x80\x01", id="five-byte length"),
        pytest.param(b"\x05\x01", id="longer than the packet"),
    ],
)
def test_malformed_v5_properties(properties: bytes) -> None:
    body = b"\x00\x01t" + properties
    packet = bytes([0x30, len(body)]) + body
    assert parse_publish(0x30, packet, 2, len(packet), v5=True) is None
    assert buffered(packet).next_publish(True) is None


def test_v5_properties_are_not_payload() -> None:
    msg = RawMessage(b"a/b", b'{"v": 1}', 1, 7, False, True)
    packet = publish(msg, b"\x01\x01\x23\x00\x05")  # format indicator, topic alias 5
    assert buffered(packet).next_publish(True) == msg
    # Read as 3.1.1, the property bytes would be payload: the session's protocol decides.
    assert buffered(packet).next_publish(False) == msg._replace(
        payload=b"\x05\x01\x01\x23\x00\x05" + msg.payload
    )
