"""kom's MQTT protocol core without a broker: packets, properties, flows, timers, limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import mqtt
from kom.mqtt._packets import frame
from kom.mqtt._properties import decode_varint, encode_varint
from tests.mqtt_strategies import packets_by_type, properties

ALL_PACKETS = [
    "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
    "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "DISCONNECT", "AUTH", "WILL",
]  # fmt: skip


def split(data: bytes) -> tuple[int, bytes]:
    """The fixed header byte and the body of one whole packet."""
    length, pos = decode_varint(data, 1, len(data))
    assert pos + length == len(data)
    return data[0], data[pos:]


@pytest.mark.parametrize(
    ("name", "v5"),
    [(name, v5) for v5 in (False, True) for name in packets_by_type(v5)],
)
@given(data=st.data())
def test_every_packet_round_trips(name: str, v5: bool, data: st.DataObject) -> None:
    """Any packet of each type, in either version, decodes to itself after encoding."""
    packet = data.draw(packets_by_type(v5)[name])
    first, body = split(mqtt.encode(packet, v5))
    assert mqtt.decode(first, body, v5) == packet


@pytest.mark.parametrize("packet", ALL_PACKETS)
@given(data=st.data())
def test_every_property_round_trips(packet: str, data: st.DataObject) -> None:
    """Any set of properties a packet allows decodes to itself after encoding."""
    props = data.draw(properties(packet))
    raw = mqtt.encode_properties(props, packet)
    assert mqtt.decode_properties(raw, 0, len(raw), packet) == (props, len(raw))


@given(st.integers(0, 268_435_455))
def test_variable_byte_integers_round_trip(value: int) -> None:
    """Variable byte integers (MQTT 5 §1.5.5) take one to four bytes and decode to themselves."""
    raw = encode_varint(value)
    assert 1 <= len(raw) <= 4
    assert decode_varint(raw, 0, len(raw)) == (value, len(raw))


@pytest.mark.parametrize(
    ("packet", "v5", "expected"),
    [
        (mqtt.Pingreq(), False, b"\xc0\x00"),
        (mqtt.Puback(5), False, b"\x40\x02\x00\x05"),
        (mqtt.Puback(5, 0x87), True, b"\x40\x03\x00\x05\x87"),
        (mqtt.Pubrel(1), False, b"\x62\x02\x00\x01"),
        (mqtt.Disconnect(), True, b"\xe0\x00"),
        (mqtt.Publish(b"a/b", b"x", 1, False, False, 7), False, b"\x32\x08\x00\x03a/b\x00\x07x"),
        (mqtt.Publish(b"a", b"", 0, True), True, b"\x31\x04\x00\x01a\x00"),
        (
            mqtt.Subscribe(2, (mqtt.Subscription("t/#", 1, True, True, 2),)),
            True,
            b"\x82\x09\x00\x02\x00\x00\x03t/#\x2d",
        ),
        (
            mqtt.Connect("k", True, 60, level=4),
            False,
            b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01k",
        ),
    ],
)
def test_known_encodings(packet: mqtt.Packet, v5: bool, expected: bytes) -> None:
    """Packets encode to the bytes the specifications give."""
    assert mqtt.encode(packet, v5) == expected


@pytest.mark.parametrize(
    ("first", "body", "v5", "error"),
    [
        (0x36, b"\x00\x01a\x00\x01", False, "QoS 3"),
        (0x38, b"\x00\x01a", False, "DUP"),
        (0x30, b"\x00\x05ab", False, "longer than its packet"),
        (0x63, b"\x00\x01", False, "flags"),
        (0x00, b"", False, "reserved packet type"),
        (0xF0, b"", False, "reserved packet type"),
        (0x40, b"\x00\x01\x00", False, "PUBACK of 3 bytes"),
        (0xC0, b"\x00", False, "with a body"),
        (0x20, b"\x02\x00", False, "reserved bits"),
        (0x40, b"\x00\x01\x00\x02\x7f\x00", True, "unknown property"),
        (0x40, b"\x00\x01\x00\x02\x23\x00", True, "not allowed in PUBACK"),
        (0x40, b"\x00\x01\x00\x06\x1f\x00\x00\x1f\x00\x00", True, "appears twice"),
        (0x20, b"\x00\x00\x04\x1f\x00\x01\xff", True, "not UTF-8"),
    ],
)
def test_malformed_packets_raise(first: int, body: bytes, v5: bool, error: str) -> None:
    """A packet breaking the specification raises ProtocolError naming what is wrong."""
    with pytest.raises(mqtt.ProtocolError, match=error):
        mqtt.decode(first, body, v5)


@pytest.mark.parametrize(
    ("code", "packet", "v5", "name"),
    [
        (5, "CONNACK", False, "not authorized (5)"),
        (6, "CONNACK", False, "reserved return code (6)"),
        (0xFF, "CONNACK", False, "reserved return code (255)"),
        (0x84, "CONNACK", True, "Unsupported Protocol Version (0x84)"),
        (0xFF, "CONNACK", True, "unknown reason code (0xFF)"),
        (0, "DISCONNECT", True, "Normal disconnection (0x00)"),
        (0x8E, "DISCONNECT", True, "Session taken over (0x8E)"),
        (0x80, "SUBACK", False, "Failure (0x80)"),
        (0x97, "PUBACK", True, "Quota exceeded (0x97)"),
    ],
)
def test_reason_codes_by_name_with_the_code(code: int, packet: str, v5: bool, name: str) -> None:
    """Every reason code reads as its name followed by the code itself."""
    assert mqtt.reason_name(code, packet=packet, v5=v5) == name


# -- the connection ------------------------------------------------------------------------


def connected(v5: bool = False, connack: mqtt.Connack | None = None, **kw: Any) -> mqtt.Connection:
    """A Connection that sent CONNECT and got `connack` (accepted, by default)."""
    conn = mqtt.Connection(v5, **kw)
    conn.connect(mqtt.Connect("kom", keep_alive=10, level=5 if v5 else 4), 0.0)
    conn.data_to_send()
    conn.receive_data(mqtt.encode(connack or mqtt.Connack(False, 0), v5))
    event = conn.next_event(0.0)
    assert isinstance(event, mqtt.ConnectionAccepted)
    return conn


def feed(conn: mqtt.Connection, *items: mqtt.Packet | bytes, now: float = 0.0) -> list[Any]:
    """Feed packets (or raw bytes) to `conn` and return every event that comes out."""
    conn.receive_data(
        b"".join(i if isinstance(i, bytes) else mqtt.encode(i, conn.v5) for i in items)
    )
    events = []
    while (event := conn.next_event(now)) is not None:
        events.append(event)
    return events


def sent(conn: mqtt.Connection) -> list[mqtt.Packet]:
    """The packets `conn` wants to send, decoded."""
    data = conn.data_to_send()
    out = []
    pos = 0
    while pos < len(data):
        length, start = decode_varint(data, pos + 1, len(data))
        out.append(mqtt.decode(data[pos], data[start : start + length], conn.v5))
        pos = start + length
    return out


def test_qos1_write_completes_on_puback() -> None:
    """A QoS 1 PUBLISH completes when its PUBACK arrives, and then leaves the session."""
    conn = connected()
    mid = conn.publish("t", b"1", 1)
    assert sent(conn) == [mqtt.Publish(b"t", b"1", 1, False, False, mid)]
    assert feed(conn, mqtt.Puback(mid)) == [mqtt.PublishCompleted(mid, True, "Success (0x00)", 0)]
    assert conn.in_flight == 0


_TOPICS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="+#\x00"),
    min_size=1,
    max_size=200,
)


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize("as_bytes", [False, True])
@given(data=st.data())
def test_a_qos12_publish_is_encoded_as_encode_publish_would(
    v5: bool, as_bytes: bool, data: st.DataObject
) -> None:
    """The connection builds QoS 1/2 PUBLISHes itself (a tag's topic bytes kept): byte for
    byte what `encode_publish` makes of the same packet, on its first use and later ones."""
    qos = data.draw(st.sampled_from([1, 2]))
    retain = data.draw(st.booleans())
    topic = data.draw(_TOPICS)
    payload = data.draw(st.binary(max_size=20_000))
    props = data.draw(properties("PUBLISH").filter(lambda p: "topic_alias" not in p))
    conn = connected(v5)
    raw = topic.encode()
    for _ in range(2):
        mid = conn.publish(raw if as_bytes else topic, payload, qos, retain, props or None)
        packet = mqtt.Publish(raw, payload, qos, retain, False, mid, props if v5 else {})
        assert conn.data_to_send() == mqtt.encode(packet, v5)


def test_qos2_write_goes_through_pubrec_pubrel_pubcomp() -> None:
    """A QoS 2 PUBLISH: PUBREC is answered with PUBREL, PUBCOMP completes it."""
    conn = connected()
    mid = conn.publish("t", b"1", 2)
    sent(conn)
    assert feed(conn, mqtt.Pubrec(mid)) == []
    assert sent(conn) == [mqtt.Pubrel(mid)]
    (done,) = feed(conn, mqtt.Pubcomp(mid))
    assert (done.ok, done.downgraded) == (True, False)


def test_qos2_write_answered_with_puback_is_downgraded() -> None:
    """A broker that answers a QoS 2 PUBLISH with PUBACK downgraded it: said so, not PUBCOMP."""
    conn = connected()
    mid = conn.publish("t", b"1", 2)
    sent(conn)
    (done,) = feed(conn, mqtt.Puback(mid))
    assert done.ok
    assert done.downgraded
    assert "downgraded to QoS 1" in done.reason


@pytest.mark.parametrize(
    ("qos", "answer", "error"),
    [
        (1, mqtt.Pubrec(1), "PUBREC for QoS 1"),
        (2, mqtt.Pubcomp(1), "PUBCOMP for message 1 before PUBREC"),
    ],
)
def test_answers_out_of_flow_raise(qos: int, answer: mqtt.Packet, error: str) -> None:
    """An answer that does not fit the message's flow is a protocol error."""
    conn = connected()
    conn.publish("t", b"", qos)
    with pytest.raises(mqtt.ProtocolError, match=error):
        feed(conn, answer)


def test_refused_write_carries_reason_code_and_string() -> None:
    """MQTT 5: a PUBACK of 0x80 or above fails the write with the code's name and the reason."""
    conn = connected(v5=True)
    mid = conn.publish("t", b"1", 1)
    (done,) = feed(conn, mqtt.Puback(mid, 0x87, {"reason_string": "acl"}))
    assert (done.ok, done.code, done.reason) == (False, 0x87, "Not authorized (0x87): acl")


def test_incoming_qos2_pubrec_only_after_hand_over() -> None:
    """An incoming QoS 2 message is delivered at once; PUBREC goes only when kom acknowledges,
    and PUBREL is answered with PUBCOMP."""
    conn = connected()
    (msg,) = feed(conn, mqtt.Publish(b"a", b"x", 2, False, False, 9))
    assert (msg.topic, msg.payload, msg.qos, msg.mid) == (b"a", b"x", 2, 9)
    assert conn.data_to_send() == b""
    conn.acknowledge(9, 2)
    assert sent(conn) == [mqtt.Pubrec(9)]
    assert feed(conn, mqtt.Pubrel(9)) == []
    assert sent(conn) == [mqtt.Pubcomp(9)]


def test_broker_receive_maximum_bounds_writes_in_flight() -> None:
    """MQTT 5: with the broker's Receive Maximum of 2, a third write waits for an answer."""
    conn = connected(True, mqtt.Connack(False, 0, {"receive_maximum": 2}))
    mids = [conn.publish("t", bytes([n]), 1) for n in range(3)]
    assert [p.packet_id for p in sent(conn)] == mids[:2]  # type: ignore[union-attr]
    feed(conn, mqtt.Puback(mids[0]))
    assert [p.packet_id for p in sent(conn)] == [mids[2]]  # type: ignore[union-attr]


def test_broker_exceeding_kom_receive_maximum_is_a_protocol_error() -> None:
    """MQTT 5: more QoS 1/2 messages in flight than kom's Receive Maximum raises 0x93."""
    conn = connected(True, receive_maximum=2)
    feed(conn, *(mqtt.Publish(b"a", b"", 1, packet_id=n) for n in (1, 2)))
    conn.acknowledge(1, 1)
    feed(conn, mqtt.Publish(b"a", b"", 1, packet_id=3))
    with pytest.raises(mqtt.ProtocolError) as raised:
        feed(conn, mqtt.Publish(b"a", b"", 1, packet_id=4))
    assert raised.value.code == 0x93


def test_incoming_topic_aliases() -> None:
    """MQTT 5: an alias set with a topic stands for it later; unknown or too big raises."""
    conn = connected(True, topic_alias_maximum=4)
    first, again = feed(
        conn,
        mqtt.Publish(b"long/topic", b"1", properties={"topic_alias": 3}),
        mqtt.Publish(b"", b"2", properties={"topic_alias": 3}),
    )
    assert (first.topic, again.topic, again.payload) == (b"long/topic", b"long/topic", b"2")
    with pytest.raises(mqtt.ProtocolError, match="used before it was set"):
        feed(conn, mqtt.Publish(b"", b"", properties={"topic_alias": 2}))
    conn = connected(True, topic_alias_maximum=4)
    with pytest.raises(mqtt.ProtocolError) as raised:
        feed(conn, mqtt.Publish(b"t", b"", properties={"topic_alias": 5}))
    assert raised.value.code == 0x94


def test_oversize_publish_is_skipped_as_it_streams_in() -> None:
    """A PUBLISH over the maximum packet size is reported with its size and no payload, and
    kom never holds more than the limit plus one read of it; the next packet reads normally."""
    conn = connected(maximum_packet_size=1000)
    big = mqtt.encode(mqtt.Publish(b"big", b"x" * 1_000_000, 1, packet_id=4), False)
    small = mqtt.encode(mqtt.Publish(b"small", b"ok"), False)
    stream = big + small
    events: list[Any] = []
    most = 0
    for start in range(0, len(stream), 4096):
        conn.receive_data(stream[start : start + 4096])
        most = max(most, len(conn._buf))
        while (event := conn.next_event(0.0)) is not None:
            events.append(event)
    assert most <= 4096
    skipped, whole = events
    assert (skipped.topic, skipped.payload, skipped.qos, skipped.mid) == (b"big", b"", 1, 4)
    assert skipped.size == len(big) - 4
    assert (whole.topic, whole.payload, whole.size) == (b"small", b"ok", -1)


def test_oversize_packet_other_than_publish_is_a_protocol_error() -> None:
    """Only a PUBLISH can be skipped: any other packet over the limit raises 0x95."""
    conn = connected(True, maximum_packet_size=50)
    with pytest.raises(mqtt.ProtocolError) as raised:
        feed(conn, mqtt.Suback(1, (0,) * 60))
    assert raised.value.code == 0x95


def test_keep_alive_pings_and_times_out() -> None:
    """With nothing sent for most of the keep-alive, PINGREQ goes; unanswered, it is a problem;
    a PINGRESP clears it."""
    conn = connected()
    assert conn.timers(5.0, reply_timeout=3) is None
    assert conn.data_to_send() == b""
    assert conn.next_deadline(5.0, 3) == 7.5
    assert conn.timers(7.5, reply_timeout=3) is None
    assert sent(conn) == [mqtt.Pingreq()]
    assert conn.timers(10.4, 3) is None
    assert conn.timers(10.5, 3) == "no PINGRESP within 3 s"
    feed(conn, mqtt.Pingresp(), now=10.6)
    assert conn.timers(10.7, 3) is None
    assert conn.last_received == 10.6


def test_server_keep_alive_replaces_kom_own() -> None:
    """MQTT 5 §3.2.2.3.14: the broker's Server Keep Alive is the interval kom keeps."""
    conn = connected(True, mqtt.Connack(False, 0, {"server_keep_alive": 4}))
    assert conn.next_deadline(0.0, 3) == 3.0


def test_session_resumes_after_reconnection() -> None:
    """Unfinished writes are sent again after the next CONNACK: PUBREL for those the broker
    received, the PUBLISH with DUP for the others; packet ids stay."""
    conn = connected()
    one = conn.publish("t", b"1", 1)
    two = conn.publish("t", b"2", 2)
    sent(conn)
    feed(conn, mqtt.Pubrec(two))
    assert conn.connection_lost() == 0
    conn.connect(mqtt.Connect("kom"), 1.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(True, 0))
    assert sent(conn) == [mqtt.Pubrel(two), mqtt.Publish(b"t", b"1", 1, False, True, one)]


def test_a_write_made_while_disconnected_is_sent_after_connack() -> None:
    """A QoS 1 write made with no connection waits in the session; QoS 0 needs a connection."""
    conn = mqtt.Connection()
    mid = conn.publish("t", b"1", 1)
    with pytest.raises(mqtt.LocalProtocolError):
        conn.publish("t", b"0", 0)
    conn.connect(mqtt.Connect("kom"), 0.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(False, 0))
    assert sent(conn) == [mqtt.Publish(b"t", b"1", 1, False, False, mid)]


def test_connection_closed_right_after_qos2_publish_is_named() -> None:
    """When the last thing sent was a QoS 2 PUBLISH and nothing came back, the loss says which;
    forgetting it keeps it from being sent again."""
    conn = connected()
    mid = conn.publish("t", b"1", 2)
    conn.data_to_send()
    assert conn.connection_lost() == mid
    conn.forget(mid)
    conn.connect(mqtt.Connect("kom"), 0.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(False, 0))
    assert conn.data_to_send() == b""
    conn2 = connected()
    mid = conn2.publish("t", b"1", 2)
    feed(conn2, mqtt.Pingresp())
    assert conn2.connection_lost() == 0


@pytest.mark.parametrize(
    ("code", "v5", "unsupported", "reason"),
    [
        (1, False, True, "unacceptable protocol version (1)"),
        (6, False, False, "reserved return code (6)"),
        (0x84, True, True, "Unsupported Protocol Version (0x84)"),
        (0x87, True, False, "Not authorized (0x87)"),
    ],
)
def test_refused_connection(code: int, v5: bool, unsupported: bool, reason: str) -> None:
    """A CONNACK refusal names its code and says whether the protocol version was the cause."""
    conn = mqtt.Connection(v5)
    conn.connect(mqtt.Connect("kom"), 0.0)
    (event,) = feed(conn, mqtt.Connack(False, code))
    assert event == mqtt.ConnectionRefused(code, reason, unsupported, {})
    assert conn.state is mqtt.State.DISCONNECTED


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.subscribe([mqtt.Subscription("a")]),
        lambda c: c.unsubscribe(["a"]),
        lambda c: c.ping(0.0),
        lambda c: c.acknowledge(1, 1),
        lambda c: c.connect(mqtt.Connect("again"), 0.0),
    ],
)
def test_illegal_commands_raise(call: Any) -> None:
    """Requests that need a connection raise before CONNACK, and CONNECT cannot be sent twice."""
    conn = mqtt.Connection()
    conn.connect(mqtt.Connect("kom"), 0.0)
    with pytest.raises(mqtt.LocalProtocolError):
        call(conn)


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (mqtt.Publish(b"t", b""), "PUBLISH while connecting"),
        (mqtt.Suback(1, (0,)), "SUBACK before CONNACK"),
    ],
)
def test_packets_before_connack_raise(packet: mqtt.Packet, error: str) -> None:
    """Before CONNACK only CONNACK may come."""
    conn = mqtt.Connection()
    conn.connect(mqtt.Connect("kom"), 0.0)
    with pytest.raises(mqtt.ProtocolError, match=error):
        feed(conn, packet)


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (mqtt.Connack(False, 0), "a second CONNACK"),
        (mqtt.Suback(7, (0,)), "did not send"),
        (mqtt.Connect("x"), "CONNECT cannot come from a broker"),
        (b"\x00\x00", "reserved packet type 0"),
        (b"HTTP/1.1 400 Bad Request\r\n", "answered in HTTP.*not an MQTT listener"),
    ],
)
def test_packets_out_of_place_after_connack_raise(packet: mqtt.Packet | bytes, error: str) -> None:
    """A second CONNACK, an answer to nothing, a client's packet or garbage raise."""
    conn = connected()
    with pytest.raises(mqtt.ProtocolError, match=error):
        feed(conn, packet)


def test_state_table_has_no_other_edges() -> None:
    """The connection's states move only along the table's edges."""
    assert mqtt.TRANSITIONS[mqtt.State.DISCONNECTED] == {mqtt.State.CONNECTING}
    conn = mqtt.Connection()
    with pytest.raises(mqtt.LocalProtocolError, match="DISCONNECT while disconnected"):
        conn.disconnect()  # type: ignore[call-arg]


def test_packets_split_anywhere_still_parse() -> None:
    """Packets read in pieces of any size parse the same as whole."""
    stream = frame(0x30, b"\x00\x01a" + b"p" * 300) + mqtt.encode(mqtt.Pingresp(), False)
    for step in (1, 2, 3, 7, 150):
        conn = connected()
        events: list[Any] = []
        for start in range(0, len(stream), step):
            conn.receive_data(stream[start : start + step])
            while (event := conn.next_event(0.0)) is not None:
                events.append(event)
        assert [type(e).__name__ for e in events] == ["Message", "PingResponse"]
        assert events[0].payload == b"p" * 300


def test_new_broker_session_fails_a_write_it_had_received_and_resends_the_rest() -> None:
    """§4.4, MQTT 5 §3.2.2.1.1: with Session Present 0 a QoS 2 write past PUBREC fails saying
    the broker's session is new (a PUBREL would be answered PUBCOMP and read as done); a write
    not yet answered is sent again."""
    conn = connected()
    one = conn.publish("t", b"1", 1)
    two = conn.publish("t", b"2", 2)
    sent(conn)
    feed(conn, mqtt.Pubrec(two))
    conn.connection_lost()
    conn.connect(mqtt.Connect("kom", clean_start=False), 1.0)
    conn.data_to_send()
    (accepted,) = feed(conn, mqtt.Connack(False, 0))
    assert [(f.mid, f.ok) for f in accepted.failed] == [(two, False)]
    assert "session is new" in accepted.failed[0].reason
    assert sent(conn) == [mqtt.Publish(b"t", b"1", 1, False, True, one)]
    assert conn.in_flight == 1


@pytest.mark.parametrize(
    ("connack", "qos", "retain", "code"),
    [
        ({"maximum_qos": 1}, 2, False, 0x9B),
        ({"maximum_qos": 0}, 1, False, 0x9B),
        ({"retain_available": 0}, 0, True, 0x9A),
    ],
)
def test_publish_beyond_the_broker_limits_is_refused(
    connack: dict[str, int], qos: int, retain: bool, code: int
) -> None:
    """MQTT 5 §3.2.2.3.4-5: kom sends no PUBLISH above the broker's Maximum QoS, nor a retained
    one where Retain Available is 0 (the broker would close the connection): the write fails."""
    conn = connected(True, mqtt.Connack(False, 0, connack))
    with pytest.raises(mqtt.NotAllowed) as caught:
        conn.publish("t", b"x", qos, retain)
    assert caught.value.code == code
    assert conn.data_to_send() == b""
    assert conn.in_flight == 0


def test_queued_write_beyond_limits_of_the_next_connack_fails_there() -> None:
    """A write queued while disconnected fails after a CONNACK whose Maximum QoS or Maximum
    Packet Size it breaks, instead of being sent to a broker that would close on it."""
    conn = mqtt.Connection(True)
    big = conn.publish("t", b"x" * 100, 1)
    two = conn.publish("t", b"2", 2)
    conn.connect(mqtt.Connect("kom", level=5), 0.0)
    conn.data_to_send()
    connack = mqtt.Connack(False, 0, {"maximum_qos": 1, "maximum_packet_size": 50})
    (accepted,) = feed(conn, connack)
    assert sorted((f.mid, f.code) for f in accepted.failed) == [(big, 0x95), (two, 0x9B)]
    assert conn.data_to_send() == b""
    assert conn.in_flight == 0


@pytest.mark.parametrize("code", [0x9C, 0x9D])
def test_server_reference_is_named_in_the_disconnect_reason(code: int) -> None:
    """MQTT 5 §4.11: a DISCONNECT "use another server" / "server moved" names the Server
    Reference (kom does not follow it) beside the reason string."""
    conn = connected(True)
    props = {"reason_string": "maintenance", "server_reference": "other:1884"}
    (event,) = feed(conn, mqtt.Disconnect(code, props))
    assert "maintenance" in event.reason
    assert "server reference: other:1884" in event.reason


def _next_ids_from(conn: mqtt.Connection, mid: int) -> None:
    """Make `conn` hand out packet ids from `mid` on (a wrap-around without 65,535 writes)."""
    conn._next_id = mid - 1


def test_a_forgotten_qos1_write_is_not_resent_and_its_id_waits_for_the_next_connection() -> None:
    """A sent QoS 1 write that is forgotten is not resent after reconnecting; its late PUBACK is
    ignored, and its packet id is not reused on the connection it was sent on."""
    conn = connected()
    mid = conn.publish("t", b"doomed", 1)
    sent(conn)
    conn.forget(mid)
    _next_ids_from(conn, mid)
    other = conn.publish("t", b"other", 1)
    assert other != mid
    assert feed(conn, mqtt.Puback(mid)) == []  # late: finishes nothing
    assert conn.in_flight == 1
    conn.connection_lost()
    conn.connect(mqtt.Connect("kom", clean_start=False), 1.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(True, 0))
    assert sent(conn) == [mqtt.Publish(b"t", b"other", 1, False, True, other)]
    _next_ids_from(conn, mid)
    assert conn.publish("t", b"new", 1) == mid


@pytest.mark.parametrize("pubrec", [False, True])
def test_a_forgotten_qos2_write_is_not_resent_nor_released(pubrec: bool) -> None:
    """A sent QoS 2 write that is forgotten gets neither a DUP resend nor a PUBREL after
    reconnecting on a kept session, and its packet id stays out of use until a CONNACK
    without a session (the broker may hold it, awaiting PUBREL)."""
    conn = connected()
    mid = conn.publish("t", b"doomed", 2)
    sent(conn)
    if pubrec:
        feed(conn, mqtt.Pubrec(mid))
        assert sent(conn) == [mqtt.Pubrel(mid)]
    conn.connection_lost()
    conn.forget(mid)
    assert conn.in_flight == 0
    conn.connect(mqtt.Connect("kom", clean_start=False), 1.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(True, 0))
    assert conn.data_to_send() == b""
    assert feed(conn, mqtt.Pubrec(mid)) == []  # a late PUBREC is not answered with PUBREL
    assert conn.data_to_send() == b""
    _next_ids_from(conn, mid)
    assert conn.publish("t", b"new", 2) != mid
    conn.connection_lost()
    conn.connect(mqtt.Connect("kom", clean_start=False), 2.0)
    conn.data_to_send()
    feed(conn, mqtt.Connack(False, 0))
    _next_ids_from(conn, mid)
    assert conn.publish("t", b"new", 2) == mid


def test_a_write_forgotten_before_it_was_sent_frees_its_id_at_once() -> None:
    """A QoS 2 write forgotten while it waited (never sent) leaves nothing behind."""
    conn = mqtt.Connection()
    mid = conn.publish("t", b"1", 2)
    conn.forget(mid)
    _next_ids_from(conn, mid)
    assert conn.publish("t", b"2", 2) == mid


# -- reading a whole read at once (next_events) ---------------------------------------------

_publishes = st.builds(
    lambda topic, payload, qos, retain, dup, mid: mqtt.Publish(
        topic, payload, qos, retain, dup and qos > 0, mid if qos else 0
    ),
    st.binary(min_size=1, max_size=20),
    st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=200), st.just(b"x" * 17000)),
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    st.integers(1, 0xFFFF),
)


@given(
    st.lists(st.one_of(_publishes, st.just(mqtt.Pingresp())), min_size=1, max_size=12),
    st.lists(st.integers(1, 400), max_size=8),
    st.integers(1, 5),
    st.booleans(),
)
def test_next_events_reads_what_the_generic_decoder_reads(
    packets: list[Any], cuts: list[int], limit: int, v5: bool
) -> None:
    """PUBLISH (parsed in place on 3.1.1) and other packets, cut anywhere, batched by any
    limit, come out as the packet decoder reads each one alone."""
    stream = b"".join(mqtt.encode(p, v5) for p in packets)
    conn = connected(v5)
    events: list[Any] = []
    pieces = []
    pos = 0
    for cut in cuts:
        pieces.append(stream[pos : pos + cut])
        pos += cut
    pieces.append(stream[pos:])
    for piece in pieces:
        if piece:
            conn.receive_data(piece)
        for _ in range(len(packets) + 1):  # bounded: a bug that repeats events must not hang
            batch = conn.next_events(1.0, limit)
            if not batch:
                break
            assert len(batch) <= limit
            events += batch
    expected: list[Any] = []
    for p in packets:
        if isinstance(p, mqtt.Pingresp):
            expected.append(mqtt.PingResponse())
        else:
            first, body = split(mqtt.encode(p, v5))
            d = mqtt.decode(first, body, v5)
            props = d.properties if v5 else None
            expected.append(
                mqtt.Message(d.topic, d.payload, d.qos, d.packet_id, d.dup, d.retain, props)
            )
    assert events == expected
    assert conn.last_received == 1.0


@pytest.mark.parametrize("v5", [False, True])
def test_next_events_with_a_read_cut_at_every_byte(v5: bool) -> None:
    """Every place a read can end (inside a two- or three-byte remaining length too): each
    packet comes out once, and a call with nothing whole left returns nothing."""
    packets = [
        mqtt.Publish(b"t/a", b"x" * 200, 1, packet_id=1),
        mqtt.Publish(b"t/b", b"y" * 20_000, 0),
        mqtt.Pingresp(),
        mqtt.Publish(b"t/c", b"z" * 130, 2, packet_id=2),
    ]
    stream = b"".join(mqtt.encode(p, v5) for p in packets)
    cuts = sorted({*range(0, 300), *range(len(stream) - 300, len(stream) + 1), 20_210, 20_211})
    for cut in cuts:
        conn = connected(v5)
        events: list[Any] = []
        for piece in (stream[:cut], stream[cut:]):
            if piece:
                conn.receive_data(piece)
            for _ in range(len(packets) + 1):
                batch = conn.next_events(0.0, 256)
                if not batch:
                    break
                events += batch
            assert not conn.next_events(0.0, 256), f"cut at {cut}: events again"
        assert [type(e).__name__ for e in events] == [
            "Message", "Message", "PingResponse", "Message"
        ], f"cut at {cut}"  # fmt: skip
        assert [len(e.payload) for e in events if isinstance(e, mqtt.Message)] == [200, 20_000, 130]


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (frame(0x32, b"\x00\x01t\x00\x00x"), "packet identifier 0"),
        (frame(0x30, b"\x00\x00x"), "topic|properties"),
        (frame(0x32, b"\x00\x09t"), "cut short|longer"),
        (b"\x00\x00", "first byte|packet type|reserved"),
    ],
)
def test_a_fault_after_good_packets_is_raised_after_they_are_handed_over(
    bad: bytes, error: str, v5: bool
) -> None:
    good = mqtt.encode(mqtt.Publish(b"t/1", b"one", 1, packet_id=7), v5)
    conn = connected(v5)
    conn.receive_data(good + good.replace(b"\x00\x07", b"\x00\x08") + bad)
    batch = conn.next_events(5.0, 10)
    assert [(m.topic, m.mid) for m in batch] == [(b"t/1", 7), (b"t/1", 8)]
    with pytest.raises(mqtt.ProtocolError, match=error):
        conn.next_events(5.0, 10)
