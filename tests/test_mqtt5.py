"""MQTT 5 as SPEC §11 says, against mosquitto (which speaks it) with paho as the peer, and
against the fake broker playing a 3.1.1-only broker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ._broker import Mosquitto
from ._fakebroker import FakeBroker, PacketType
from ._kom import Collector, Publisher, config, start, text_station, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("no_backoff")]


def _cfg(prefix: str, **line: object) -> object:
    keys: dict[str, object] = {
        "client_id": f"kom5-{prefix[-6:]}",
        "topic_filter": f"{prefix}/#",
        "reply_timeout": 5,
        "protocol": "5",
    }
    keys.update(line)
    return config(text_station(prefix), **keys)


def _connect_properties(raw: bytes) -> dict[str, object]:
    """The properties of a CONNECT as paho (an independent decoder) reads them."""
    index = 1
    while raw[index] & 0x80:
        index += 1
    body = raw[index + 1 :]
    assert body[:7] == b"\x00\x04MQTT\x05"
    props = Properties(PacketTypes.CONNECT)
    props.unpack(body[10:])
    return props.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("broker_does", ["refuse", "close"])
def test_auto_falls_back_to_3_1_1_and_says_so(
    broker_does: str, caplog: pytest.LogCaptureFixture
) -> None:
    """protocol = "auto" against a broker without MQTT 5 (refusing the version, or closing
    the connection) connects with 3.1.1 at once, and the log names the cause."""
    caplog.set_level(logging.WARNING, "kom.mqtt")
    with FakeBroker() as fake:
        fake.version_5 = broker_does
        with start(_cfg("auto", host=fake.address, protocol="auto")) as kom:
            assert kom.wait_connected(5)
            levels = [raw[8] for raw in fake.packets(PacketType.CONNECT)]
            assert levels[:2] == [5, 4]
            assert kom.lines["line"].generation == 1
    assert "does not accept MQTT 5" in caplog.text
    assert "using MQTT 3.1.1" in caplog.text


def test_auto_speaks_5_with_a_broker_that_does(broker: Mosquitto, topic_prefix: str) -> None:
    """protocol = "auto" against mosquitto connects with MQTT 5 and delivers."""
    got = Collector()
    with start(_cfg(topic_prefix, host=broker.address, protocol="auto"), got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/in", "five")
        got.wait(lambda us: any(u.value == "five" for u in us))
    assert f"as kom5-{topic_prefix[-6:]} (p5" in broker.log()


def test_refused_version_without_auto_names_the_cause() -> None:
    """protocol = "5" against a broker refusing it: the error says which version and why."""
    with FakeBroker() as fake:
        fake.version_5 = "refuse"
        with start(_cfg("v5", host=fake.address)) as kom:
            line = kom.lines["line"]
            wait_until(lambda: line.last_error is not None)
            assert "unacceptable protocol version (1)" in str(line.last_error)
            assert "does not speak MQTT 5" in str(line.last_error)


def test_connect_carries_the_mqtt5_line_keys() -> None:
    """session_expiry, receive_maximum, maximum_packet_size, topic_alias_maximum and
    user_properties go into CONNECT's properties."""
    with FakeBroker() as fake:
        fake.ignore_subscribe = True  # the fake reads 3.1.1 SUBSCRIBE packets only
        cfg = _cfg(
            "props",
            host=fake.address,
            session_expiry=300,
            receive_maximum=20,
            maximum_packet_size=100_000,
            topic_alias_maximum=8,
            user_properties={"site": "north", "role": "historian"},
        )
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            (raw,) = fake.packets(PacketType.CONNECT)
    props = _connect_properties(raw)
    assert props["SessionExpiryInterval"] == 300
    assert props["ReceiveMaximum"] == 20
    assert props["MaximumPacketSize"] == 100_000
    assert props["TopicAliasMaximum"] == 8
    assert props["UserProperty"] == [("site", "north"), ("role", "historian")]


def test_no_local_keeps_kom_own_writes_from_coming_back(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """no_local = true: kom's own write to a topic it subscribes to does not come back;
    another client's message on it does."""
    got = Collector()
    cfg = _cfg(topic_prefix, host=broker.address, no_local=True)
    with start(cfg, got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        kom.lines["line"].publish_raw(f"{topic_prefix}/in", b"mine").result(5)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/in", "theirs")
        got.wait(lambda us: any(u.value == "theirs" for u in us))
    assert "mine" not in got.values("s.data")


@pytest.mark.parametrize(("handling", "delivered"), [(0, True), (2, False)])
def test_retain_handling(
    broker: Mosquitto, topic_prefix: str, handling: int, delivered: bool
) -> None:
    """retain_handling = 2: retained messages are not sent when kom subscribes; 0: they are."""
    with Publisher(broker.port) as pub:
        pub.publish(f"{topic_prefix}/in", "retained", retain=True)
    got = Collector()
    cfg = _cfg(topic_prefix, host=broker.address, retain_handling=handling)
    with start(cfg, got) as kom, Publisher(broker.port) as pub:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/in", "fresh")
        got.wait(lambda us: any(u.value == "fresh" for u in us))
    assert ("retained" in got.values("s.data")) is delivered


def test_server_keep_alive_is_honoured_and_logged(
    broker_factory: object, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker's Server Keep Alive replaces kom's keep_alive, and the log says so."""
    caplog.set_level(logging.INFO, "kom.line")
    broker: Mosquitto = broker_factory(extra=["max_keepalive 10"])  # type: ignore[operator]
    with start(_cfg(topic_prefix, host=broker.address, keep_alive=60)) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        session = kom.lines["line"]._session
        assert session is not None
        assert session.connection.server_keep_alive == 10
    assert "the broker sets the keep-alive to 10 s (kom asked for 60 s)" in caplog.text


def test_shared_subscription_routes_by_the_real_topic(broker: Mosquitto, topic_prefix: str) -> None:
    """A $share/group/ filter subscribes; messages reach the station by their real topic."""
    got = Collector()
    cfg = _cfg(topic_prefix, host=broker.address, topic_filter=f"$share/kom/{topic_prefix}/#")
    with start(cfg, got) as kom, Publisher(broker.port) as pub:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        wait_until(lambda: "SUBSCRIBE" in broker.log() or "$share" in broker.log())
        pub.publish(f"{topic_prefix}/in", "shared")
        got.wait(lambda us: any(u.value == "shared" for u in us))


def test_refused_write_fails_with_the_reason_code_name(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """A write the broker refuses (an ACL, MQTT 5 PUBACK 0x87) fails with the code's name."""
    from kom import WriteError

    acl = tmp_path / "acl"
    acl.write_text(f"topic read {topic_prefix}/#\n")
    broker: Mosquitto = broker_factory(extra=[f"acl_file {acl}"])  # type: ignore[operator]
    cfg = _cfg(topic_prefix, host=broker.address, publish_qos=1)
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        with pytest.raises(WriteError, match=r"Not authorized \(0x87\)"):
            kom.write("s.cmd", "x").result(5)


PROP_STATION = """
[[station]]
name = "p"
address = "{prefix}/props"
[[station.tag]]
name = "ct"
type = "TxtI"
address = "PROP=content_type"
[[station.tag]]
name = "rt"
type = "TxtI"
address = "PROP=response_topic"
[[station.tag]]
name = "expiry"
type = "Ci"
address = "PROP=message_expiry_interval"
[[station.tag]]
name = "site"
type = "TxtI"
address = "PROP=user:site"
[[station.tag]]
name = "corr"
type = "TxtI"
address = "PROP=correlation_data"
"""


def test_prop_addresses_read_the_publish_properties(broker: Mosquitto, topic_prefix: str) -> None:
    """PROP= tags read a PUBLISH's MQTT 5 properties (sent by paho); absent ones are invalid
    with reason missing."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got = Collector()
    cfg = config(
        PROP_STATION.format(prefix=topic_prefix),
        host=broker.address,
        client_id=f"kom5-p-{topic_prefix[-6:]}",
        topic_filter=f"{topic_prefix}/#",
        protocol="5",
    )
    peer = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    peer.connect("127.0.0.1", broker.port)
    peer.loop_start()
    try:
        with start(cfg, got) as kom:
            assert kom.wait_connected(5)
            wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            props.MessageExpiryInterval = 60
            props.UserProperty = [("site", "north"), ("site", "south")]
            props.CorrelationData = b"req-7"
            peer.publish(f"{topic_prefix}/props", b"{}", 1, properties=props).wait_for_publish(5)
            got.wait(lambda us: any(u.tag == "p.site" for u in us))
    finally:
        peer.loop_stop()
        peer.disconnect()
    first = {u.tag: u for u in got.updates if u.quality.value == "valid" or u.reason == "missing"}
    assert first["p.ct"].value == "application/json"
    assert first["p.expiry"].value in (59, 60)  # the broker counts down the time it held it
    assert first["p.site"].value == "north"
    assert first["p.corr"].value == "req-7"
    assert (first["p.rt"].quality.value, first["p.rt"].reason) == ("invalid", "missing")


def test_an_output_tag_user_properties_go_with_its_publish(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """An output tag's user_properties reach a paho subscriber (MQTT 5) with its write."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    body = f"""
[[station]]
name = "o"
address = "{topic_prefix}/in"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = {{ topic = "{topic_prefix}/cmd", payload = "{{value}}" }}
user_properties = {{ origin = "kom", unit = "V" }}
"""
    received: list[object] = []
    peer = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    peer.on_message = lambda client, userdata, message: received.append(message)
    peer.connect("127.0.0.1", broker.port)
    peer.loop_start()
    try:
        peer.subscribe(f"{topic_prefix}/cmd", 1)
        cfg = config(
            body,
            host=broker.address,
            client_id=f"kom5-u-{topic_prefix[-6:]}",
            protocol="5",
            publish_qos=1,
        )
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            kom.write("o.cmd", "on").result(5)
            wait_until(lambda: bool(received), what="the write received")
    finally:
        peer.loop_stop()
        peer.disconnect()
    (message,) = received
    assert message.payload == b"on"  # type: ignore[attr-defined]
    props = message.properties.json()  # type: ignore[attr-defined]
    assert props["UserProperty"] == [("origin", "kom"), ("unit", "V")]


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_an_http_server_is_named_and_no_reason_to_fall_back(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer answering CONNECT in HTTP is named as an HTTP server, not as a PUBACK; with
    protocol = "auto" it is no reason to blame MQTT 5 and fall back."""
    import socket
    import threading

    caplog.set_level(logging.WARNING, "kom.mqtt")
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                peer, _ = server.accept()
            except TimeoutError:
                continue
            with peer:
                peer.recv(1000)
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        with start(_cfg("http", host=f"127.0.0.1:{port}", protocol=protocol)) as kom:
            line = kom.lines["line"]
            wait_until(lambda: line.last_error is not None)
            error = str(line.last_error)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert "the peer answered in HTTP" in error, error
    assert "PUBACK" not in error
    assert "does not accept MQTT 5" not in caplog.text
