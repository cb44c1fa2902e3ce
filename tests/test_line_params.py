"""Every line parameter of SPEC §2 against a live broker (own mosquitto or scripted fake)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from kom import BrokerRefused, LineState, Reason
from kom._backoff import set_testing

from ._broker import Mosquitto
from ._fakebroker import FakeBroker, PacketType, packet_id
from ._kom import Collector, Publisher, config, start, text_station, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


def _roundtrip(broker_port: int, prefix: str, got: Collector, text: str = "hello") -> None:
    with Publisher(broker_port) as pub:
        pub.publish(f"{prefix}/in", text)
    got.wait(lambda us: any(u.tag == "s.data" and u.value == text for u in us))


def _cfg(prefix: str, **line: object) -> object:
    keys: dict[str, object] = {
        "client_id": f"kom-{prefix[-6:]}",
        "topic_filter": f"{prefix}/#",
        "reply_timeout": 2,
    }
    keys.update(line)
    return config(text_station(prefix), **keys)


def test_tls_with_the_ca_connects_and_delivers(broker_factory: object, topic_prefix: str) -> None:
    """TLS with verification against the broker's CA connects and receives."""
    broker: Mosquitto = broker_factory(tls=True)  # type: ignore[operator]
    got = Collector()
    cfg = _cfg(topic_prefix, host=f"localhost:{broker.port}", tls={"ca_file": broker.ca_file})
    with start(cfg, got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        got2 = got
        # Plain publisher cannot talk TLS: publish through kom's own line instead.
        kom.lines["line"].publish_raw(f"{topic_prefix}/in", b"over tls").result(5)
        got2.wait(lambda us: any(u.value == "over tls" for u in us))


def test_tls_with_a_wrong_ca_fails_closed_with_a_clear_error(
    broker_factory: object, tmp_path: Path, topic_prefix: str
) -> None:
    """A CA that did not sign the broker's certificate is refused: no connection, a clear error."""
    import trustme

    broker: Mosquitto = broker_factory(tls=True)  # type: ignore[operator]
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    cfg = _cfg(topic_prefix, host=f"localhost:{broker.port}", tls={"ca_file": str(other)})
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert not kom.wait_connected(1.5)
        line = kom.lines["line"]
        assert line.last_error is not None
        assert "certificate" in line.last_error.lower()
        assert line.core.counters.connect_failures >= 1


def test_tls_host_name_mismatch_fails_closed(broker_factory: object, topic_prefix: str) -> None:
    """Verification checks the host name: a name the certificate does not carry is refused."""
    broker: Mosquitto = broker_factory(tls=True)  # type: ignore[operator]
    cfg = _cfg(topic_prefix, host=f"127.0.0.2:{broker.port}", tls={"ca_file": broker.ca_file})
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert not kom.wait_connected(1.5)
        assert kom.lines["line"].core.counters.connect_failures >= 1


def test_tls_client_certificate(broker_factory: object, topic_prefix: str) -> None:
    """A broker requiring client certificates accepts kom's cert_file/key_file."""
    broker: Mosquitto = broker_factory(tls=True, require_certificate=True)  # type: ignore[operator]
    tls = {
        "ca_file": broker.ca_file,
        "cert_file": broker.client_cert_file,
        "key_file": broker.client_key_file,
    }
    with start(_cfg(topic_prefix, host=f"localhost:{broker.port}", tls=tls)) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)


def test_password_from_a_file_is_accepted_and_never_logged(
    broker_factory: object, tmp_path: Path, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials from a password file connect; the secret appears in no log line or repr."""
    broker: Mosquitto = broker_factory(users={"scada": "s3cret-pw"})  # type: ignore[operator]
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    caplog.set_level("DEBUG")
    base = {"client_id": "kom-pw", "topic_filter": f"{topic_prefix}/#", "reply_timeout": 2}
    text = text_station(topic_prefix)
    from kom import loads

    cfg = loads(
        "[line]\n"
        + "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in base.items())
        + f'\nhost = "{broker.address}"\nusername = "scada"\npassword = {{ file = "{secret}" }}\n'
        + text
    )
    got = Collector()
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        _roundtrip(broker.port, topic_prefix, got) if False else None
    assert "s3cret-pw" not in repr(cfg)
    assert "s3cret-pw" not in caplog.text


def test_wrong_password_is_refused_with_a_clear_error(
    broker_factory: object, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused CONNECT is reported (not authorised), counted, and the password not logged."""
    broker: Mosquitto = broker_factory(users={"scada": "right"})  # type: ignore[operator]
    caplog.set_level("DEBUG")
    cfg = _cfg(topic_prefix, host=broker.address, username="scada", password="wrong-pw-value")
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert not kom.wait_connected(1.0)
        line = kom.lines["line"]
        wait_until(lambda: line.last_error is not None)
        assert "refused" in (line.last_error or "")
    assert "wrong-pw-value" not in caplog.text


def test_websockets_transport(broker_factory: object, topic_prefix: str) -> None:
    """transport = "websockets" connects to the broker's websockets listener."""
    broker: Mosquitto = broker_factory(websockets=True)  # type: ignore[operator]
    got = Collector()
    cfg = _cfg(
        topic_prefix, host=f"127.0.0.1:{broker.ws_port}", transport="websockets", ws_path="/"
    )
    with start(cfg, got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        _roundtrip(broker.port, topic_prefix, got)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_both_protocol_versions(broker: Mosquitto, topic_prefix: str, protocol: str) -> None:
    """MQTT 3.1.1 and 5 both connect, subscribe and deliver."""
    got = Collector()
    with start(_cfg(topic_prefix, host=broker.address, protocol=protocol), got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        _roundtrip(broker.port, topic_prefix, got)
    assert f"(p{5 if protocol == '5' else 2}," in broker.log()


def test_mqtt5_persistent_session_survives_a_reconnect(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """With protocol 5 and clean_session false, the session (expiry set) is present again."""
    cfg = _cfg(topic_prefix, host=broker.address, protocol="5")
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        kom.lines["line"]._session.drop()
        wait_until(
            lambda: (
                kom.lines["line"].generation == 2 and kom.lines["line"].state is LineState.CONNECTED
            )
        )
    assert "Sending CONNACK to kom-" in broker.log()
    assert "(1, 0)" in broker.log()  # session present on the second CONNACK


def test_empty_client_id_gets_one_from_the_broker(broker: Mosquitto, topic_prefix: str) -> None:
    """An empty client id connects with a clean session and a broker-assigned identifier."""
    got = Collector()
    with start(_cfg(topic_prefix, host=broker.address, client_id=""), got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        assert kom.lines["line"].config.effective_clean_session
        _roundtrip(broker.port, topic_prefix, got)
    assert "as auto-" in broker.log()


def test_clean_session_false_keeps_messages_while_disconnected(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """A persistent session gets QoS 1 messages sent while kom was away; a clean one does not."""
    for clean, expect in ((False, True), (True, False)):
        got = Collector()
        cid = f"kom-cs-{int(clean)}-{topic_prefix[-6:]}"
        cfg = _cfg(topic_prefix, host=broker.address, client_id=cid, clean_session=clean)
        with start(cfg, got) as kom:  # type: ignore[arg-type]
            assert kom.wait_connected(5)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/in", f"while away {clean}")
        with start(cfg, got) as kom:  # type: ignore[arg-type]
            assert kom.wait_connected(5)
            time.sleep(0.5)
            found = any(u.value == f"while away {clean}" for u in got.updates)
            assert found is expect


def test_keep_alive_is_sent_in_connect(broker: Mosquitto, topic_prefix: str) -> None:
    """keep_alive goes into CONNECT (mosquitto logs k<seconds>)."""
    with start(_cfg(topic_prefix, host=broker.address, keep_alive=37)) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
    assert ", k37)" in broker.log()


def test_the_lines_own_will_is_published_when_kom_vanishes(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """The line's will (topic, message, qos, retain) reaches subscribers when kom drops abruptly."""
    will = {"topic": f"{topic_prefix}/kom/state", "message": "kom gone", "qos": 1, "retain": True}
    with Publisher(broker.port) as watcher:
        watcher.subscribe(f"{topic_prefix}/kom/state")
        kom = start(_cfg(topic_prefix, host=broker.address, will=will))  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        kom.lines["line"]._session.drop()
        wait_until(lambda: bool(watcher.messages(f"{topic_prefix}/kom/state")))
        assert watcher.messages()[0].payload == b"kom gone"
        kom.close()


def test_subscribe_qos_caps_delivery(broker: Mosquitto, topic_prefix: str) -> None:
    """subscribe_qos = 0 makes the broker downgrade QoS 1 messages to QoS 0 (IN_ID 0)."""
    body = (
        text_station(topic_prefix)
        + '[[station.tag]]\nname = "id"\ntype = "Ci"\naddress = "IN_ID"\n'
    )
    got = Collector()
    cfg = config(
        body,
        host=broker.address,
        client_id="kom-sq",
        topic_filter=f"{topic_prefix}/#",
        subscribe_qos=0,
    )
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        _roundtrip(broker.port, topic_prefix, got)
        got.wait_count("s.id", 1)
        assert got.values("s.id") == [0]


def test_publish_qos_and_retain(broker: Mosquitto, topic_prefix: str) -> None:
    """publish_qos and publish_retain apply to writes (a late subscriber gets the retained one)."""
    cfg = _cfg(topic_prefix, host=broker.address, publish_qos=1, publish_retain=True)
    with start(cfg) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        assert kom.write("s.cmd", "kept").result(5).qos == 1
    with Publisher(broker.port) as late:
        late.subscribe(f"{topic_prefix}/out")
        wait_until(lambda: bool(late.messages()))
        message = late.messages()[0]
        assert message.payload == b"kept"
        assert message.retain
        assert message.qos == 1


def test_a_list_of_filters_and_a_shared_subscription(broker: Mosquitto, topic_prefix: str) -> None:
    """Several filters are subscribed, and `$share/group/...` shares messages between two lines."""
    got_a, got_b = Collector(), Collector()
    shared = f"$share/g1/{topic_prefix}/in"
    base = {
        "host": broker.address,
        "topic_filter": [shared, f"{topic_prefix}/other"],
        "reply_timeout": 2,
    }
    cfg_a = config(text_station(topic_prefix), client_id="kom-share-a", **base)
    cfg_b = config(text_station(topic_prefix), client_id="kom-share-b", **base)
    with start(cfg_a, got_a) as a, start(cfg_b, got_b) as b:
        assert a.wait_connected(5)
        assert b.wait_connected(5)
        time.sleep(0.3)
        with Publisher(broker.port) as pub:
            for i in range(10):
                pub.publish(f"{topic_prefix}/in", f"m{i}")
        wait_until(lambda: len(got_a.values("s.data")) + len(got_b.values("s.data")) == 10)
        time.sleep(0.3)
        assert len(got_a.values("s.data")) + len(got_b.values("s.data")) == 10
    assert f"{topic_prefix}/other" in broker.log()


ANY = '[[station]]\nname = "any"\naddress = "#"\n'


def test_missing_suback_within_reply_timeout_reconnects() -> None:
    """A broker that never answers SUBSCRIBE makes kom close and re-open within reply_timeout."""
    with FakeBroker() as fake:
        fake.ignore_subscribe = True
        cfg = config(
            ANY, host=fake.address, client_id="kom-suback", reply_timeout=1, ping_interval=0
        )
        with start(cfg) as kom:
            fake.wait_for(PacketType.SUBSCRIBE, 1)
            fake.wait_for(PacketType.CONNECT, 2, timeout=4)
            assert (
                "SUBACK" in (kom.lines["line"].last_error or "")
                or kom.lines["line"].generation >= 2
            )


def test_missing_pingresp_is_detected(topic_prefix: str) -> None:
    """A broker that stops answering PINGREQ is left after ping_interval + reply_timeout."""
    with FakeBroker() as fake:
        cfg = config(ANY, host=fake.address, client_id="kom-ping", reply_timeout=1, ping_interval=1)
        with start(cfg) as kom:
            fake.wait_for(PacketType.PINGREQ, 1, timeout=4)  # answered: the line stays
            assert kom.lines["line"].generation == 1
            fake.ignore_pingreq = True
            started = time.monotonic()
            fake.wait_for(PacketType.CONNECT, 2, timeout=6)
            assert time.monotonic() - started < 1 + 1 + 1.5


def test_an_invalid_utf8_topic_does_not_kill_the_network_thread() -> None:
    """A PUBLISH with a non-UTF-8 topic is counted and acknowledged; the next one is processed."""
    body = ANY + '[[station.tag]]\nname = "t"\ntype = "TxtI"\naddress = "IN_TOPIC"\n'
    with FakeBroker() as fake:
        got = Collector()
        with start(
            config(body, host=fake.address, client_id="kom-utf8", ping_interval=0), got
        ) as kom:
            assert kom.wait_connected(5)
            bad = fake.send_publish(b"bad/\xff\xfe", b"x", qos=1)
            fake.send_publish(b"good/topic", b"y", qos=1)
            got.wait(lambda us: any(u.value == "good/topic" for u in us))
            acks = [packet_id(raw) for raw in fake.wait_for(PacketType.PUBACK, 2)]
            assert acks[0] == bad
            assert kom.counters()["line"].bad_topics == 1
            assert kom.lines["line"].state is LineState.CONNECTED


def test_pubacks_go_out_in_arrival_order_across_stations() -> None:
    """A late ACK_ID holds back PUBACKs of later messages of other stations (MQTT 3.1.1 §4.6)."""
    body = """
[[station]]
name = "held"
address = "a"
[[station.tag]]
name = "id"
type = "Ci"
address = "IN_ID"
[[station.tag]]
name = "ack"
type = "Co"
address = "ACK_ID"
[[station]]
name = "free"
address = "b"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
"""
    with FakeBroker() as fake:
        got = Collector()
        with start(
            config(body, host=fake.address, client_id="kom-order", ping_interval=0), got
        ) as kom:
            assert kom.wait_connected(5)
            first = fake.send_publish(b"a", b"1", qos=1)
            second = fake.send_publish(b"b", b"2", qos=1)
            third = fake.send_publish(b"b", b"3", qos=1)
            got.wait_count("free.data", 2)
            time.sleep(0.3)
            assert fake.packets(PacketType.PUBACK) == []  # all wait behind the held one
            kom.write("held.ack", first).result(2)
            acks = [packet_id(raw) for raw in fake.wait_for(PacketType.PUBACK, 3)]
            assert acks == [first, second, third]


def test_the_driver_refusing_broker_is_reported(topic_prefix: str) -> None:
    """CONNACK with a refusal code is a BrokerRefused in the line's last error, not a crash."""
    fake = FakeBroker(return_code=5)
    cfg = config(ANY, host=fake.address, client_id="kom-refused", ping_interval=0)
    with fake, start(cfg) as kom:
        wait_until(lambda: kom.lines["line"].last_error is not None)
        assert "refused" in (kom.lines["line"].last_error or "")
        assert kom.lines["line"].state is not LineState.CONNECTED
    assert BrokerRefused.__mro__[1].__name__ == "LineError"


_ = Reason


OUT = """
[[station]]
name = "o"
address = "o/in"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = { topic = "o/cmd", payload = "{value}" }
"""


def test_a_qos2_write_completes_only_on_pubcomp() -> None:
    """A QoS 2 write stays pending after PUBREC and completes when PUBCOMP arrives."""
    with FakeBroker() as fake:
        fake.hold_pubcomp = True
        cfg = config(OUT, host=fake.address, client_id="kom-q2", publish_qos=2, ping_interval=0)
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            future = kom.write("o.cmd", "x")
            fake.wait_for(PacketType.PUBREL, 1)  # PUBREC came, kom answered PUBREL
            time.sleep(0.2)
            assert not future.done()
            fake.release_pubcomp()
            assert future.result(5).qos == 2


def test_a_write_without_acknowledgement_fails_with_timeout() -> None:
    """A QoS 1 write the broker never acknowledges fails with reason timeout after reply_timeout."""
    from kom import WriteError

    with FakeBroker() as fake:
        fake.ignore_publish = True
        cfg = config(OUT, host=fake.address, client_id="kom-wt", publish_qos=1, reply_timeout=1)
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            started = time.monotonic()
            with pytest.raises(WriteError) as failed:
                kom.write("o.cmd", "x").result(5)
            assert failed.value.reason == "timeout"
            assert 0.9 < time.monotonic() - started < 3


def test_out_topic_and_out_value_publish(broker: Mosquitto, topic_prefix: str) -> None:
    """Writing OUT_VALUE publishes to the current OUT_TOPIC (its default, then a written one)."""
    body = f"""
[[station]]
name = "w"
address = "{topic_prefix}/in"
[[station.tag]]
name = "topic"
type = "TxtO"
address = "OUT_TOPIC"
default = "{topic_prefix}/first"
[[station.tag]]
name = "value"
type = "TxtO"
address = "OUT_VALUE"
"""
    cfg = config(body, host=broker.address, client_id="kom-outv", publish_qos=1)
    with start(cfg) as kom, Publisher(broker.port) as sub:
        sub.subscribe(f"{topic_prefix}/#")
        assert kom.wait_connected(5)
        kom.write("w.value", "one").result(5)
        kom.write("w.topic", f"{topic_prefix}/second").result(5)
        kom.write("w.value", "two").result(5)
        wait_until(lambda: len(sub.messages()) == 2)
        assert [(m.topic, m.payload) for m in sub.messages()] == [
            (f"{topic_prefix}/first", b"one"),
            (f"{topic_prefix}/second", b"two"),
        ]


def test_duplicate_client_id_is_reported_not_a_silent_loop(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Two lines with one client id knock each other off; kom reports it and backs off."""
    set_testing(False)
    cfg = _cfg(
        topic_prefix, host=broker.address, client_id="kom-twin", reconnect_min=0.2, reconnect_max=1
    )
    with start(cfg) as first, start(cfg) as second:  # type: ignore[arg-type]
        wait_until(lambda: first.lines["line"].takeovers + second.lines["line"].takeovers > 0, 15)
        connections = broker.connections("kom-twin")
    assert connections < 40  # backed off, not a tight reconnect loop


def test_outbox_keeps_writes_across_a_restart(tmp_path: Path) -> None:
    """QoS 1 writes not acknowledged before kom stops are sent again by the next kom."""
    outbox = tmp_path / "outbox.db"
    with FakeBroker() as fake:
        fake.ignore_publish = True
        cfg = config(OUT, host=fake.address, client_id="kom-ob", publish_qos=1, outbox=str(outbox))
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            kom.write("o.cmd", "must arrive")
            fake.wait_for(PacketType.PUBLISH, 1)
        fake.ignore_publish = False
        with start(cfg) as kom:
            fake.wait_for(PacketType.PUBLISH, 2)
            from kom._outbox import Outbox

            wait_until(lambda: not Outbox(outbox, "line").pending(), what="outbox emptied")
    payloads = [raw[-len(b"must arrive") :] for raw in fake.packets(PacketType.PUBLISH)]
    assert payloads == [b"must arrive", b"must arrive"]


def test_no_driver_module_imports_paho() -> None:
    """kom speaks MQTT itself (SPEC §11): only the simulators under kom/sim/ (devices of their
    own, on its public API) import paho-mqtt; no module of the driver does."""
    import ast
    from pathlib import Path

    import kom

    root = Path(kom.__file__).parent
    importers = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "paho" for name in names):
                importers.append(str(path.relative_to(root)))
    assert importers, "the simulators import paho"
    assert [name for name in importers if not name.startswith("sim/")] == []


def test_qos2_messages_are_owned_after_handover_and_completed(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """An incoming QoS 2 message gets PUBREC after hand-over, then PUBCOMP on PUBREL."""
    got = Collector()
    cfg = _cfg(topic_prefix, host=broker.address, client_id="kom-in-q2", subscribe_qos=2)
    with start(cfg, got) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/in", "exactly once", qos=2)
        got.wait(lambda us: any(u.value == "exactly once" for u in us))
        broker.wait_for_log("Received PUBCOMP from kom-in-q2")


def test_a_write_times_out_while_the_line_is_down(topic_prefix: str) -> None:
    """A QoS 1 write queued while no broker answers fails with timeout after reply_timeout."""
    from kom import WriteError

    from ._broker import free_port

    cfg = config(
        OUT, host=f"127.0.0.1:{free_port()}", client_id="kom-down", publish_qos=1, reply_timeout=1
    )
    with start(cfg) as kom:
        kom.lines["line"]._session_for_line()  # a session exists before the first connection
        started = time.monotonic()
        with pytest.raises(WriteError) as failed:
            kom.write("o.cmd", "x").result(5)
        assert failed.value.reason == "timeout"
        assert time.monotonic() - started < 3


def test_close_from_inside_a_callback(broker: Mosquitto, topic_prefix: str) -> None:
    """A host may close kom from its own update callback without an error."""
    from kom import Kom

    closed: list[bool] = []
    holder: list[Kom] = []

    def on_updates(updates: object) -> None:
        if not closed:
            holder[0].close()
            closed.append(True)

    cfg = _cfg(topic_prefix, host=broker.address)
    kom = Kom(cfg, on_updates)  # type: ignore[arg-type]
    holder.append(kom)
    kom.start()
    assert kom.wait_connected(5)
    with Publisher(broker.port) as pub:
        pub.publish(f"{topic_prefix}/in", "bye")
    wait_until(lambda: bool(closed))
    # The callback may run on the line's own thread, which then ends once it returns.
    wait_until(lambda: all(line.state is LineState.CLOSED for line in kom.lines.values()))


def test_many_writes_at_once_all_complete(broker: Mosquitto, topic_prefix: str) -> None:
    """Thousands of QoS 1 writes fired together all complete (no lock cycle with paho)."""
    cfg = config(OUT, host=broker.address, client_id="kom-burst", publish_qos=1, reply_timeout=20)
    with start(cfg) as kom:
        assert kom.wait_connected(5)
        futures = [kom.write("o.cmd", str(n)) for n in range(3000)]
        results = [f.result(20) for f in futures]
    assert len({r.mid for r in results[:1000]}) == 1000


def test_messages_read_together_share_their_receive_time() -> None:
    """The receive time is taken per read from the socket: messages that arrived in one read
    share it; a later read gets a later one."""
    from ._fakebroker import packet as make_packet

    body = ANY + '[[station.tag]]\nname = "t"\ntype = "TxtI"\naddress = "IN_DATA"\n'
    with FakeBroker() as fake:
        got = Collector()
        with start(
            config(body, host=fake.address, client_id="kom-stamp", ping_interval=0), got
        ) as kom:
            assert kom.wait_connected(5)

            def burst(text: str) -> None:
                fake.send_raw(
                    b"".join(
                        make_packet(PacketType.PUBLISH, 0, b"\x00\x01t" + f"{text}{n}".encode())
                        for n in range(5)
                    )
                )

            burst("a")
            got.wait(lambda us: len(us) >= 5)
            time.sleep(0.05)
            burst("b")
            updates = got.wait(lambda us: len(us) >= 10)
    first = {u.received for u in updates if u.value.startswith("a")}
    second = {u.received for u in updates if u.value.startswith("b")}
    assert len(first) == 1
    assert len(second) == 1
    assert second.pop() - first.pop() >= timedelta(milliseconds=40)
