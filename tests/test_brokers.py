"""kom against brokers other than mosquitto: nats-server's MQTT listener and RabbitMQ's MQTT
plugin, each started by the tests on its own ports (skipped with the reason where they cannot
run). paho is the independent peer. What each broker does is measured here (docs/brokers.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kom import WriteError

from ._kom import Collector, Publisher, config, start, text_station, wait_until
from ._otherbrokers import Nats, OtherBroker, RabbitMQ

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("no_backoff")]

#: How each broker answers a QoS 2 write (measured: NATS 2.9 closes the connection, RabbitMQ
#: 3.10 answers PUBACK).
QOS2_WRITE = {"nats": "refused", "rabbitmq": "downgraded"}


@pytest.fixture(scope="module", params=["nats", "rabbitmq"])
def other(request: pytest.FixtureRequest) -> Iterator[OtherBroker]:
    """A nats-server or RabbitMQ of the tests' own, for this module."""
    broker: OtherBroker = Nats() if request.param == "nats" else RabbitMQ()
    try:
        if broker.skip_reason is not None:
            print(f"skipping {broker.name}: {broker.skip_reason}")
            pytest.skip(broker.skip_reason)
        yield broker
    finally:
        broker.close()


def _cfg(broker: OtherBroker, prefix: str, **line: object) -> object:
    keys: dict[str, object] = {
        "host": broker.address,
        "client_id": f"kom-{broker.name}-{prefix[-6:]}",
        "topic_filter": f"{prefix}/#",
        "reply_timeout": 10,
        "ping_interval": 0,
    }
    keys.update(line)
    return config(text_station(prefix), **keys)


def _ready(kom: object) -> None:
    """Connected, and the subscription granted (RabbitMQ takes a moment to bind its queue)."""
    line = kom.lines["line"]  # type: ignore[attr-defined]
    assert kom.wait_connected(10)  # type: ignore[attr-defined]
    wait_until(lambda: not line._requests, what="SUBACK")


def test_qos1_messages_arrive_in_order(other: OtherBroker, topic_prefix: str) -> None:
    """QoS 1 messages published by paho reach kom, all and in order."""
    got = Collector()
    with start(_cfg(other, topic_prefix), got) as kom, Publisher(other.port) as pub:  # type: ignore[arg-type]
        _ready(kom)
        for n in range(20):
            pub.publish(f"{topic_prefix}/in", str(n), qos=1)
        got.wait_count("s.data", 20, timeout=20)
    valid = [u.value for u in got.of("s.data") if u.quality.value == "valid"]
    assert valid == [str(n) for n in range(20)]


def test_auto_falls_back_to_3_1_1(
    other: OtherBroker, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """protocol = "auto": neither broker speaks MQTT 5; kom connects with 3.1.1 and says so."""
    caplog.set_level(logging.WARNING, "kom.mqtt")
    got = Collector()
    cfg = _cfg(other, topic_prefix, protocol="auto")
    with start(cfg, got) as kom, Publisher(other.port) as pub:  # type: ignore[arg-type]
        _ready(kom)
        pub.publish(f"{topic_prefix}/in", "after fall-back", qos=1)
        got.wait(lambda us: any(u.value == "after fall-back" for u in us), timeout=20)
    assert "does not accept MQTT 5" in caplog.text


def test_qos1_write_reaches_a_subscriber(other: OtherBroker, topic_prefix: str) -> None:
    """A QoS 1 write completes on PUBACK and reaches a paho subscriber."""
    cfg = _cfg(other, topic_prefix, publish_qos=1)
    with start(cfg) as kom, Publisher(other.port) as sub:  # type: ignore[arg-type]
        sub.subscribe(f"{topic_prefix}/out", qos=1)
        assert kom.wait_connected(10)
        result = kom.write("s.cmd", "hello").result(10)
        assert (result.qos, result.downgraded) == (1, False)
        wait_until(lambda: bool(sub.messages(f"{topic_prefix}/out")), what="write received")
        assert [m.payload for m in sub.messages(f"{topic_prefix}/out")] == [b"hello"]


def test_qos2_write_is_named_for_what_the_broker_does(
    other: OtherBroker, topic_prefix: str
) -> None:
    """A QoS 2 write: RabbitMQ's PUBACK reads as a downgrade; NATS closing the connection
    fails the write with that reason (and kom does not send it again)."""
    cfg = _cfg(other, topic_prefix, publish_qos=2)
    with start(cfg) as kom:  # type: ignore[arg-type]
        # The SUBACK first: a packet read after the PUBLISH says the broker did not close on it.
        _ready(kom)
        future = kom.write("s.cmd", "twice?")
        if QOS2_WRITE[other.name] == "downgraded":
            result = future.result(10)
            assert (result.qos, result.downgraded) == (1, True)
        else:
            with pytest.raises(WriteError, match="closed the connection on kom's QoS 2 PUBLISH"):
                future.result(10)
            assert kom.wait_connected(10)
            assert kom.lines["line"].takeovers == 0
