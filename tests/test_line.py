"""The line against real mosquitto processes: connection, timers, ACK_ID, writes, faults."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence

import pytest

from kom import Kom, LineState, Quality, Reason, Update, WriteError
from kom._backoff import set_testing

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start, wait_until

pytestmark = pytest.mark.broker

STATION = """
[[station]]
name = "dev"
address = "{prefix}/(?P<id>[a-z0-9]+)/data"
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=v"
[[station.tag]]
name = "id"
type = "TxtI"
address = "TOPIC=id"
"""


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


def _line(broker: Mosquitto, prefix: str, **extra: object) -> dict[str, object]:
    keys: dict[str, object] = {
        "host": broker.address,
        "client_id": f"kom-{prefix.rsplit('/', 1)[-1]}",
        "topic_filter": f"{prefix}/#",
        "payload_type": "json",
        "reply_timeout": 2,
        "ping_interval": 5,
    }
    keys.update(extra)
    return keys


def test_receives_typed_values_from_a_real_broker(broker: Mosquitto, topic_prefix: str) -> None:
    """A JSON message on a subscribed topic becomes valid, typed updates with the regex group."""
    got = Collector()
    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix))
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/a1/data", '{"v": 230.5}')
        got.wait_count("dev.v", 1)
        assert got.values("dev.v") == [230.5]
        assert got.values("dev.id") == ["a1"]
        assert kom.counters()["line"].routed == 1


def test_failover_to_the_second_address_when_the_first_is_killed(
    broker_factory: object, topic_prefix: str
) -> None:
    """Killing the first broker moves the line to the second address, which then delivers."""
    first = broker_factory()  # type: ignore[operator]
    second = broker_factory()  # type: ignore[operator]
    got = Collector()
    line = _line(first, topic_prefix, host=f"{first.address};{second.address}")
    cfg = config(STATION.format(prefix=topic_prefix), **line)
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        assert kom.lines["line"].endpoint == first.address
        first.kill()
        wait_until(
            lambda: (
                kom.lines["line"].endpoint == second.address
                and kom.lines["line"].state is LineState.CONNECTED
            )
        )
        got.wait(lambda us: any(u.reason is Reason.COMM for u in us))
        with Publisher(second.port) as pub:
            pub.publish(f"{topic_prefix}/b2/data", '{"v": 1}')
            got.wait(lambda us: any(u.tag == "dev.v" and u.valid for u in us))


def test_a_silent_broker_is_detected_within_ping_interval_plus_reply_timeout(
    broker_factory: object, topic_prefix: str
) -> None:
    """SIGSTOP on the broker: kom notices within ping_interval + reply_timeout and fails over."""
    first = broker_factory()  # type: ignore[operator]
    second = broker_factory()  # type: ignore[operator]
    line = _line(
        first,
        topic_prefix,
        host=f"{first.address};{second.address}",
        ping_interval=1,
        reply_timeout=1,
    )
    cfg = config(STATION.format(prefix=topic_prefix), **line)
    with start(cfg, Collector()) as kom:
        assert kom.wait_connected(5)
        first.pause()
        stopped = time.monotonic()
        wait_until(
            lambda: (
                kom.lines["line"].endpoint == second.address
                and kom.lines["line"].state is LineState.CONNECTED
            ),
            6,
        )
        detected = time.monotonic() - stopped
        # ping_interval (1) + reply_timeout (1), plus one loop turn and the connect itself.
        assert detected < 1 + 1 + 1.0, detected
        first.resume()


def test_filter_change_resubscribes_on_the_same_session(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Reloading with other topic filters sends SUBSCRIBE/UNSUBSCRIBE without a new connection."""
    got = Collector()
    line = _line(broker, topic_prefix, topic_filter=f"{topic_prefix}/a/#")
    body = STATION.format(prefix=topic_prefix)
    with start(config(body, **line), got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        client_id = str(line["client_id"])
        assert broker.connections(client_id) == 1
        kom.reload(config(body, **{**line, "topic_filter": f"{topic_prefix}/b/#"}))
        broker.wait_for_log(f"{client_id} 1 {topic_prefix}/b/#")
        broker.wait_for_log("Received UNSUBSCRIBE from " + client_id)  # sent after SUBSCRIBE
        pub.publish(f"{topic_prefix}/a/data", '{"v": 1}')
        pub.publish(f"{topic_prefix}/b/data", '{"v": 2}')
        got.wait(lambda us: any(u.tag == "dev.v" for u in us))
        time.sleep(0.3)
        assert got.values("dev.v") == [2.0]
        assert got.values("dev.id") == ["b"]
        assert broker.connections(client_id) == 1
        assert "Received UNSUBSCRIBE from " + client_id in broker.log()


ACK_STATION = """
[[station]]
name = "q"
address = "{prefix}/q"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
[[station.tag]]
name = "id"
type = "Ci"
address = "IN_ID"
[[station.tag]]
name = "ack"
type = "Co"
address = "ACK_ID"
"""


def test_ack_id_holds_the_next_message_until_the_consumer_acknowledges(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """With ACK_ID the second message is only handed out after ACK_ID = IN_ID of the first."""
    got = Collector()
    cfg = config(
        ACK_STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix, payload_type="text")
    )
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/q", "one")
        pub.publish(f"{topic_prefix}/q", "two")
        got.wait_count("q.id", 1)
        time.sleep(0.3)
        assert got.values("q.data") == ["one"]
        first_id = got.values("q.id")[0]
        assert first_id > 0
        with pytest.raises(WriteError):
            kom.write("q.ack", first_id + 1).result(2)
        time.sleep(0.2)
        assert got.values("q.data") == ["one"]
        kom.write("q.ack", first_id).result(2)
        got.wait_count("q.data", 2)
        assert got.values("q.data") == ["one", "two"]


def test_unacknowledged_qos1_message_is_redelivered_after_a_lost_connection(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """A message held for ACK_ID when the connection drops comes again, flagged duplicate."""
    got = Collector()
    cfg = config(
        ACK_STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix, payload_type="text")
    )
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/q", "precious")
        got.wait_count("q.data", 1)
        line = kom.lines["line"]
        line._session.drop()  # the network goes away before the consumer acknowledged
        got.wait(
            lambda us: [u.value for u in us if u.tag == "q.data" and u.valid] == ["precious"] * 2
        )
        assert [u.reason for u in got.of("q.data")] == [None, Reason.COMM, None]
        assert kom.counters()["line"].duplicates == 1
        kom.write("q.ack", got.values("q.id")[-1]).result(2)
        wait_until(lambda: len(line._acks) == 0, what="acknowledged")


def test_a_qos2_write_completes(broker: Mosquitto, topic_prefix: str) -> None:
    """A QoS 2 write's future completes (on PUBCOMP) and the message reaches a subscriber."""
    body = f"""
[[station]]
name = "out"
address = "unused/out"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = {{ topic = "{topic_prefix}/cmd", payload = "{{value}}" }}
"""
    cfg = config(body, **_line(broker, topic_prefix, publish_qos=2))
    with start(cfg) as kom, Publisher(broker.port) as sub:
        sub.subscribe(f"{topic_prefix}/cmd", 2)
        assert kom.wait_connected(5)
        result = kom.write("out.cmd", "go").result(5)
        assert result.qos == 2
        wait_until(lambda: len(sub.messages(f"{topic_prefix}/cmd")) == 1)
        assert sub.messages()[0].payload == b"go"


def test_write_failures_have_reasons(broker: Mosquitto, topic_prefix: str) -> None:
    """Writing an input tag, an unknown tag, or to a topic with a wildcard fails with a reason."""
    body = (
        STATION.format(prefix=topic_prefix)
        + """
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = { topic = "x/{value}", payload = "1" }
"""
    )
    cfg = config(body, **_line(broker, topic_prefix))
    with start(cfg) as kom:
        assert kom.wait_connected(5)
        with pytest.raises(WriteError) as not_output:
            kom.write("dev.v", 1.0).result(2)
        assert not_output.value.reason == "not-output"
        with pytest.raises(WriteError) as unknown:
            kom.write("dev.nothing", 1).result(2)
        assert unknown.value.reason == "not-output"
        with pytest.raises(WriteError) as topic:
            kom.write("dev.cmd", "a/+").result(2)
        assert topic.value.reason == "topic"


def test_qos0_write_fails_when_not_connected(topic_prefix: str) -> None:
    """A QoS 0 write while the line is down fails at once with not-connected."""
    from ._broker import free_port

    body = """
[[station]]
name = "out"
address = "o"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = { topic = "o/cmd", payload = "{value}" }
"""
    cfg = config(body, host=f"127.0.0.1:{free_port()}", client_id="kom-nowhere", reply_timeout=1)
    with start(cfg) as kom:
        with pytest.raises(WriteError) as failed:
            kom.write("out.cmd", "x").result(2)
        assert failed.value.reason == "not-connected"


def test_a_raising_callback_and_bad_payloads_do_not_stop_the_line(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Consumer exceptions, invalid JSON and invalid UTF-8 are counted; later messages arrive."""
    got = Collector()
    calls = {"n": 0}

    def explode(updates: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("consumer bug")

    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix))
    kom = Kom(cfg, explode)
    kom.add_callback(got)
    kom.start()
    try:
        with Publisher(broker.port) as pub:
            assert kom.wait_connected(5)
            pub.publish(f"{topic_prefix}/a/data", '{"v": 1}')
            pub.publish(f"{topic_prefix}/a/data", b"{not json")
            pub.publish(f"{topic_prefix}/a/data", b"\xff\xfe")
            pub.publish(f"{topic_prefix}/a/data", '{"v": 4}')
            got.wait(lambda us: 4.0 in [u.value for u in us])
        assert kom.consumer_errors == 1
        reasons = [u.reason for u in got.of("dev.v")]
        assert reasons.count(Reason.PARSE) == 2
        assert kom.lines["line"].state is LineState.CONNECTED
    finally:
        kom.close()


def test_station_will_puts_the_station_in_error_and_the_next_message_clears_it(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """A device's own will message invalidates its station's tags; its next message clears it."""
    body = (
        STATION.format(prefix=topic_prefix)
        + f"""
will_topic = "{topic_prefix}/status"
will_payload = "offline"
"""
    )
    # will_topic/will_payload must be station keys: put them before the tags.
    body = body.replace(
        "[[station.tag]]",
        f'will_topic = "{topic_prefix}/status"\nwill_payload = "offline"\n[[station.tag]]',
        1,
    )
    body = body.rsplit("will_topic", 1)[0]
    got = Collector()
    cfg = config(body, **_line(broker, topic_prefix))
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/a/data", '{"v": 1}')
        got.wait_count("dev.v", 1)
        device = Publisher(broker.port, client_id=f"dev-{os.getpid()}")
        device.client.will_set(f"{topic_prefix}/status", "offline", 1)
        device.client.reconnect()
        time.sleep(0.3)
        device.client.loop_stop()
        device.client.socket().close()  # abrupt: the broker sends the device's will
        got.wait(lambda us: any(u.reason is Reason.WILL for u in us))
        assert kom.station_state("dev") == "will"
        pub.publish(f"{topic_prefix}/a/data", '{"v": 2}')
        got.wait(lambda us: 2.0 in [u.value for u in us])
        assert kom.station_state("dev") == "on"


def test_all_stations_off_disconnects_and_one_on_reconnects(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Forced disconnection: every station off closes the session; switching one on reopens it."""
    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix))
    with start(cfg, Collector()) as kom:
        assert kom.wait_connected(5)
        line = kom.lines["line"]
        kom.set_mode("dev", "off")
        wait_until(lambda: line.state is LineState.IDLE, what="idle")
        client_id = line.config.client_id
        broker.wait_for_log(f"Client {client_id} disconnected")
        kom.set_mode("dev", "on")
        wait_until(lambda: line.state is LineState.CONNECTED, what="reconnected")
        assert broker.connections(client_id) == 2


def test_line_down_makes_tags_invalid_with_comm(broker: Mosquitto, topic_prefix: str) -> None:
    """When the broker goes away, the station's tags become invalid with reason comm."""
    got = Collector()
    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix))
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/a/data", '{"v": 1}')
        got.wait_count("dev.v", 1)
        broker.kill()
        got.wait(lambda us: any(u.tag == "dev.v" and u.reason is Reason.COMM for u in us))
        last = got.of("dev.v")[-1]
        assert last.quality is Quality.INVALID
        assert kom.station_state("dev") == "comm"


def test_sigterm_restart_keeps_the_persistent_session(
    broker_factory: object, topic_prefix: str
) -> None:
    """After a broker restart with persistence, messages queued for the session arrive."""
    broker = broker_factory(persistence=True)  # type: ignore[operator]
    got = Collector()
    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix))
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        kom.set_mode("dev", "off")
        wait_until(lambda: kom.lines["line"].state is LineState.IDLE)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/a/data", '{"v": 7}')
        broker.stop()
        broker.restart()
        kom.set_mode("dev", "on")
        got.wait(lambda us: 7.0 in [u.value for u in us])


_ = signal


def test_held_qos1_messages_are_bounded_by_max_held(broker: Mosquitto, topic_prefix: str) -> None:
    """When an ACK_ID station holds max_held messages, kom stops reading; none is lost."""
    got = Collector()
    line = _line(broker, topic_prefix, payload_type="text", max_held=10)
    cfg = config(ACK_STATION.format(prefix=topic_prefix), **line)
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        station = kom.lines["line"].core.by_name["q"]
        for n in range(60):
            pub.client.publish(f"{topic_prefix}/q", str(n), qos=1)
        wait_until(lambda: kom.counters()["line"].pauses >= 1, what="reading paused")
        largest = len(station.held)
        seen: list[str] = []
        while len(seen) < 60:
            done = len(seen)
            got.wait(lambda us, done=done: len([u for u in us if u.tag == "q.data"]) > done)
            seen = [str(v) for v in got.values("q.data")]
            largest = max(largest, len(station.held))
            kom.write("q.ack", got.values("q.id")[-1]).result(5)
        assert seen == [str(n) for n in range(60)]
        assert largest <= 10 + 1


def test_debug_logs_every_message_and_value(
    broker: Mosquitto, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With debug = true the line logs each message and each value, whatever the root level."""
    import logging

    caplog.set_level(logging.WARNING)  # the process logs warnings only...
    caplog.handler.setLevel(logging.DEBUG)  # ...and the capture sees what gets through
    got = Collector()
    cfg = config(STATION.format(prefix=topic_prefix), **_line(broker, topic_prefix, debug=True))
    try:
        with start(cfg, got) as kom, Publisher(broker.port) as pub:
            assert kom.wait_connected(5)
            pub.publish(f"{topic_prefix}/d1/data", '{"v": 42.5}')
            got.wait_count("dev.v", 1)
        assert f"{topic_prefix}/d1/data q1" in caplog.text
        assert "dev.v = 42.5 valid" in caplog.text
    finally:
        logging.getLogger("kom.line").setLevel(logging.NOTSET)


def test_a_batch_larger_than_max_queue_still_reaches_a_slow_consumer(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Back-pressure bounds the queue, but a message with more updates than `max_queue`
    (many tags) is handed over, not waited on forever; every QoS 1 message arrives."""
    tags = "".join(
        f'[[station.tag]]\nname = "t{i}"\ntype = "Ci"\naddress = "JA=[{i}]"\n' for i in range(1, 21)
    )
    cfg = config(
        f'[[station]]\nname = "wide"\naddress = "{topic_prefix}/wide"\n{tags}',
        **_line(broker, topic_prefix),
    )
    got = SlowCollector()
    with start(cfg, got, max_queue=5) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        for n in range(30):
            pub.client.publish(f"{topic_prefix}/wide", str([n] * 20), qos=1)
        got.wait(lambda us: len(us) >= 30 * 20)
        assert got.values("wide.t20") == list(range(30))


class SlowCollector(Collector):
    """A consumer that takes 10 ms a batch: the dispatcher falls behind the line."""

    def __call__(self, updates: Sequence[Update]) -> None:
        time.sleep(0.01)
        super().__call__(updates)
