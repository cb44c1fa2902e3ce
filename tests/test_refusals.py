"""SPEC §11: every refusal by the broker (CONNACK, SUBACK, PUBACK/PUBREC with a reason code of
0x80 or above, DISCONNECT) reaches the log, the counters and a failed write with the reason
code's name and the broker's reason string. A fake MQTT 5 broker sends the reason strings
(mosquitto rarely does)."""

from __future__ import annotations

import logging

import pytest

from kom import WriteError

from ._fakebroker import FakeBroker, PacketType
from ._kom import config, start, text_station, wait_until

pytestmark = pytest.mark.usefixtures("no_backoff")


def _cfg(fake: FakeBroker, **line: object) -> object:
    keys: dict[str, object] = {
        "host": fake.address,
        "client_id": "kom-refusals",
        "topic_filter": "r/#",
        "reply_timeout": 5,
        "protocol": "5",
    }
    keys.update(line)
    return config(text_station("r"), **keys)


@pytest.mark.parametrize(("qos", "answer"), [(1, "PUBACK"), (2, "PUBREC")])
def test_refused_write_carries_name_and_reason_string(
    qos: int, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A PUBACK/PUBREC refusal fails the write with the code's name and the reason string,
    is logged and counted in refused_writes."""
    caplog.set_level(logging.WARNING, "kom")
    with FakeBroker() as fake:
        fake.refuse[PacketType.PUBLISH] = (0x97, "quota of 10 writes a minute used up")
        with start(_cfg(fake, publish_qos=qos)) as kom:  # type: ignore[arg-type]
            assert kom.wait_connected(5)
            with pytest.raises(WriteError) as caught:
                kom.write("s.cmd", "x").result(5)
            counters = kom.lines["line"].core.counters
            assert counters.refused_writes == 1
    text = str(caught.value)
    assert "Quota exceeded (0x97)" in text
    assert "quota of 10 writes a minute used up" in text
    assert caught.value.reason == "rejected"
    assert "the broker refused s.cmd" in caplog.text
    assert "quota of 10 writes a minute used up" in caplog.text


def test_refused_subscription_carries_name_and_reason_string(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SUBACK refusal reaches last_error, the log and refused_subscriptions with the code's
    name and the reason string."""
    caplog.set_level(logging.ERROR, "kom")
    with FakeBroker() as fake:
        fake.refuse[PacketType.SUBSCRIBE] = (0x87, "r/# is for operators only")
        with start(_cfg(fake)) as kom:  # type: ignore[arg-type]
            line = kom.lines["line"]
            wait_until(lambda: line.core.counters.refused_subscriptions >= 1, what="SUBACK")
            error = str(line.last_error)
    assert "Not authorized (0x87): r/# is for operators only" in error
    assert "r/# is for operators only" in caplog.text


def test_refused_connection_carries_name_and_reason_string() -> None:
    """A CONNACK refusal reaches last_error and connect_failures with both."""
    with FakeBroker() as fake:
        fake.refuse[PacketType.CONNECT] = (0x8A, "client banned until 12:00")
        with start(_cfg(fake)) as kom:  # type: ignore[arg-type]
            line = kom.lines["line"]
            wait_until(lambda: line.core.counters.connect_failures >= 1, what="CONNACK")
            error = str(line.last_error)
    assert "Banned (0x8A)" in error
    assert "client banned until 12:00" in error


def test_server_disconnect_carries_name_and_reason_string(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker's DISCONNECT reaches the log and broker_disconnects with both (kom then
    connects again)."""
    caplog.set_level(logging.WARNING, "kom")
    with FakeBroker() as fake, start(_cfg(fake)) as kom:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        line = kom.lines["line"]
        fake.send_disconnect(0x89, "going down for maintenance")
        wait_until(lambda: line.core.counters.broker_disconnects >= 1, what="DISCONNECT")
    assert "the broker sent DISCONNECT: Server busy (0x89): going down for maintenance" in (
        caplog.text
    )
