"""Confirmed writes (SPEC §11): the pure bookkeeping by tables, the configuration's key paths,
and writes confirmed by a read-back or an MQTT 5 response against mosquitto, with paho as
the device that answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kom import ConfigError, WriteError, WriteResult
from kom._confirm import Confirmations, Pending, default_response_topic, same_value

from ._broker import Mosquitto
from ._kom import config, start, wait_until

# -- pure parts --------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expected", "got", "same"),
    [
        (True, True, True),
        (True, False, False),
        (True, 1, False),  # a boolean is not the number 1
        (1, 1.0, True),
        (21.3, 21.299999237060547, True),  # a 32-bit float device reads 21.3 back so
        (21.3, 21.31, False),
        (0.0, 1e-12, True),
        (0.0, 1e-6, False),
        (1_000_000, 1_000_000.5, True),  # relative tolerance 1e-6
        (1_000_000, 1_000_002, False),
        ("on", "on", True),
        ("on", "On", False),
        (T0, T0, True),
        (T0, T0 + timedelta(microseconds=1), False),
        (timedelta(seconds=5), timedelta(seconds=5), True),
        (timedelta(seconds=5), 5, False),
        (None, None, True),
    ],
)
def test_same_value(expected: object, got: object, same: bool) -> None:
    """A value read back matches the written one by type: numbers within the tolerance."""
    assert same_value(expected, got) is same


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_number_always_matches_itself(x: float) -> None:
    """Every finite number read back unchanged confirms its write."""
    assert same_value(x, x)


def _pending(
    key: str | bytes = "s.state", expected: object = True, deadline: float = 10.0
) -> Pending:
    future: Future[WriteResult] = Future()
    how = "read-back" if isinstance(key, str) else "response"
    return Pending(future, "s.set", how, key, expected, deadline, 10.0)


RESULT = WriteResult("s.set", "t/set", 1, 7)


@pytest.mark.parametrize("device_first", [True, False])
def test_read_back_completes_whichever_answer_comes_first(device_first: bool) -> None:
    """A read-back write is done once both the broker and the device answered, in any order."""
    book = Confirmations()
    p = _pending()
    book.add(p)
    if device_first:
        assert book.read("s.state", True) == []
        assert book.published(p, RESULT)
    else:
        assert not book.published(p, RESULT)
        assert book.read("s.state", True) == [p]
    assert not book
    assert p.result().confirmed == "read-back"


def test_a_wrong_value_is_remembered_and_a_later_right_one_confirms() -> None:
    """Readings that differ do not confirm (they are named on time-out); the right one does."""
    book = Confirmations()
    p = _pending()
    book.add(p)
    book.published(p, RESULT)
    assert book.read("s.state", False) == []
    assert book.read("other.tag", True) == []
    assert "it read False (1 reading(s) since the write)" in p.why_not()
    assert book.read("s.state", True) == [p]


def test_deadline_passes_unconfirmed() -> None:
    """A write not confirmed by its deadline is handed back to fail; an earlier one waits."""
    book = Confirmations()
    late, early = _pending(deadline=5.0), _pending(deadline=50.0)
    book.add(late)
    book.add(early)
    assert book.expire(4.9) == []
    assert book.expire(5.0) == [late]
    assert len(book) == 1
    assert "no reading since the write" in late.why_not()


def test_response_matches_by_correlation_data_only() -> None:
    """A response confirms the write with its correlation data, and keeps its payload."""
    book = Confirmations()
    a, b = _pending(b"a" * 16), _pending(b"b" * 16)
    for p in (a, b):
        book.add(p)
        book.published(p, RESULT)
    assert book.responded(b"c" * 16, b"?") == []
    assert book.responded(b"b" * 16, b"done") == [b]
    assert b.result().response == b"done"
    assert b.result().confirmed == "response"
    assert "no response with its correlation data within 10 s" in a.why_not()


def test_default_response_topic() -> None:
    """The default response topic is the client's own (the line's name without a client id)."""
    assert default_response_topic("kom-a", "line") == "kom/kom-a/response"
    assert default_response_topic("", "line") == "kom/line/response"


# -- configuration -----------------------------------------------------------------------

STATION = """
[[station]]
name = "sw"
address = "{prefix}/state"
[[station.tag]]
name = "state"
type = "Di"
address = "JA=on"
[[station.tag]]
name = "level"
type = "Ai"
address = "JA=level"
[[station.tag]]
name = "set"
type = "Do"
publish = {{ topic = "{prefix}/set", payload = '{{"on": {{value}}}}' }}
{set_keys}
[[station.tag]]
name = "setpoint"
type = "Ao"
publish = {{ topic = "{prefix}/set", payload = '{{"level": {{value}}}}' }}
confirm = "read-back"
confirm_tag = "sw.level"
confirm_timeout = 3
"""


def _station(prefix: str, set_keys: str) -> str:
    return STATION.format(prefix=prefix, set_keys=set_keys)


@pytest.mark.parametrize(
    ("keys", "protocol", "error"),
    [
        (
            'confirm = "response"',
            "3.1.1",
            'station[1].tag[3].confirm: confirm = "response" needs MQTT 5',
        ),
        (
            'confirm = "read-back"',
            "5",
            'station[1].tag[3].confirm_tag: confirm = "read-back" needs',
        ),
        (
            'confirm = "read-back"\nconfirm_tag = "sw"',
            "5",
            "station[1].tag[3].confirm_tag: expected",
        ),
        (
            'confirm = "read-back"\nconfirm_tag = "nope.x"',
            "5",
            "station[1].tag[3].confirm_tag: no station named 'nope'",
        ),
        (
            'confirm = "read-back"\nconfirm_tag = "sw.gone"',
            "5",
            "station[1].tag[3].confirm_tag: station 'sw' has no tag 'gone'",
        ),
        (
            'confirm = "read-back"\nconfirm_tag = "sw.setpoint"',
            "5",
            "station[1].tag[3].confirm_tag: sw.setpoint is an output (Ao)",
        ),
        ('confirm = "echo"', "5", "station[1].tag[3].confirm:"),
        ('confirm_tag = "sw.state"', "5", "station[1].tag[3].confirm_tag: confirm_tag goes with"),
        (
            'confirm = "response"\nresponse_topic = "r/+"',
            "5",
            "station[1].tag[3].response_topic: a topic without wildcards",
        ),
        (
            'confirm = "read-back"\nconfirm_tag = "sw.state"\nconfirm_timeout = -1',
            "5",
            "station[1].tag[3].confirm_timeout:",
        ),
    ],
)
def test_configuration_errors_name_their_key_path(keys: str, protocol: str, error: str) -> None:
    """Each misconfigured confirmation is one error at its key path."""
    with pytest.raises(ConfigError) as caught:
        config(_station("p", keys), payload_type="json", protocol=protocol)
    assert error in str(caught.value)


def test_confirm_tag_on_another_line_is_refused() -> None:
    """A read-back must come through the writing line: another line's tag is refused."""
    body = (
        _station("p", 'confirm = "read-back"\nconfirm_tag = "far.state"')
        + """
[[station]]
name = "far"
line = "other"
address = "q/state"
[[station.tag]]
name = "state"
type = "Di"
address = "JA=on"
"""
    )
    text = (
        '[[line]]\nname = "line"\npayload_type = "json"\n'
        '[[line]]\nname = "other"\npayload_type = "json"\n'
    )
    from kom._config import loads

    body = body.replace('name = "sw"\n', 'name = "sw"\nline = "line"\n')
    with pytest.raises(
        ConfigError, match=r"tag\[3\]\.confirm_tag: station 'far' is on line 'other'"
    ):
        loads(text + body)


def test_kom_check_shows_the_confirmation(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kom check` lists how each confirmed output is confirmed."""
    from kom._cli import main

    path = tmp_path / "c.toml"
    path.write_text(
        '[line]\nhost = "127.0.0.1"\npayload_type = "json"\nprotocol = "5"\n'
        + _station("p", 'confirm = "response"\nresponse_topic = "p/answers"')
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "confirm response on p/answers within reply_timeout" in out
    assert "confirm read-back of sw.level within 3 s" in out


# -- against mosquitto, paho as the device ----------------------------------------------


@contextmanager
def _device(
    broker: Mosquitto, subscribe: str, answer: Callable[[paho.Client, Any], None], v5: bool = False
) -> Iterator[paho.Client]:
    """A paho client that calls `answer` for every message on `subscribe`."""
    protocol = paho.MQTTv5 if v5 else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    subscribed = threading.Event()
    client.on_message = lambda c, _u, msg: answer(c, msg)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe(subscribe, 1)
        assert subscribed.wait(5)
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def _echo(
    prefix: str, change: Callable[[dict[str, Any]], dict[str, Any]] = dict
) -> Callable[[paho.Client, Any], None]:
    """A device that reports its state (the command, after `change`) on `{prefix}/state`."""

    def answer(client: paho.Client, msg: Any) -> None:
        client.publish(f"{prefix}/state", json.dumps(change(json.loads(msg.payload))), 1)

    return answer


def _cfg(prefix: str, set_keys: str, **line: object) -> Any:
    keys: dict[str, object] = {
        "host": "127.0.0.1",
        "client_id": f"komc-{prefix[-6:]}",
        "topic_filter": f"{prefix}/state",
        "payload_type": "json",
        "publish_qos": 1,
        "reply_timeout": 5,
    }
    keys.update(line)
    return config(_station(prefix, set_keys), **keys)


READ_BACK = 'confirm = "read-back"\nconfirm_tag = "sw.state"\nconfirm_timeout = 1.5'


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_read_back_confirms_a_write(broker: Mosquitto, topic_prefix: str, protocol: str) -> None:
    """A device echoing its state confirms a read-back write (a number within tolerance too)."""
    cfg = _cfg(topic_prefix, READ_BACK, host=broker.address, protocol=protocol)
    with _device(broker, f"{topic_prefix}/set", _echo(topic_prefix)), start(cfg) as kom:
        assert kom.wait_connected(5)
        wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
        result = kom.write("sw.set", True).result(5)
        assert (result.confirmed, result.qos, result.response) == ("read-back", 1, None)
        result = kom.write("sw.set", "false").result(5)
        assert result.confirmed == "read-back"
        assert kom.write("sw.setpoint", 21.3).result(5).confirmed == "read-back"


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
def test_a_wrong_value_read_back_fails_unconfirmed(broker: Mosquitto, topic_prefix: str) -> None:
    """A device reporting another state than written: the write fails `unconfirmed`, naming
    what was read, and the line counts it."""

    def refuse(state: dict[str, Any]) -> dict[str, Any]:
        return {"on": not state["on"]}

    cfg = _cfg(topic_prefix, READ_BACK, host=broker.address)
    with _device(broker, f"{topic_prefix}/set", _echo(topic_prefix, refuse)), start(cfg) as kom:
        assert kom.wait_connected(5)
        wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
        with pytest.raises(WriteError) as caught:
            kom.write("sw.set", True).result(5)
        assert caught.value.reason == "unconfirmed"
        assert "sw.state did not read back True within 1.5 s: it read False" in str(caught.value)
        assert kom.lines["line"].core.counters.unconfirmed_writes == 1


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
def test_no_read_back_times_out_unconfirmed(broker: Mosquitto, topic_prefix: str) -> None:
    """Without a device the broker completes the PUBLISH, but the write fails `unconfirmed`."""
    cfg = _cfg(topic_prefix, READ_BACK, host=broker.address)
    with start(cfg) as kom:
        assert kom.wait_connected(5)
        with pytest.raises(WriteError, match="no reading since the write") as caught:
            kom.write("sw.set", True).result(5)
        assert caught.value.reason == "unconfirmed"


def _responder(answer: bool) -> Callable[[paho.Client, Any], None]:
    """An MQTT 5 device answering on the Response Topic with the Correlation Data."""

    def respond(client: paho.Client, msg: Any) -> None:
        if not answer:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        client.publish(msg.properties.ResponseTopic, b"ok:" + msg.payload, 1, properties=props)

    return respond


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
def test_response_confirms_a_write(broker: Mosquitto, topic_prefix: str) -> None:
    """MQTT 5: a responder echoing the correlation data on the default response topic (kom
    subscribed it) confirms each write, and the result carries the response's payload."""
    cfg = _cfg(topic_prefix, 'confirm = "response"', host=broker.address, protocol="5")
    seen: list[Any] = []

    def respond(client: paho.Client, msg: Any) -> None:
        seen.append(msg.properties.CorrelationData)
        _responder(True)(client, msg)

    with _device(broker, f"{topic_prefix}/set", respond, v5=True), start(cfg) as kom:
        assert kom.wait_connected(5)
        wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
        first = kom.write("sw.set", True).result(5)
        second = kom.write("sw.set", False).result(5)
    assert (first.confirmed, first.response) == ("response", b'ok:{"on": true}')
    assert second.response == b'ok:{"on": false}'
    assert len(set(seen)) == 2  # correlation data unique per write


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
def test_no_response_fails_unconfirmed(broker: Mosquitto, topic_prefix: str) -> None:
    """MQTT 5: a device that takes the command and never responds: `unconfirmed`."""
    cfg = _cfg(
        topic_prefix,
        'confirm = "response"\nconfirm_timeout = 1\nresponse_topic = "' + topic_prefix + '/r"',
        host=broker.address,
        protocol="5",
    )
    with _device(broker, f"{topic_prefix}/set", _responder(False), v5=True), start(cfg) as kom:
        assert kom.wait_connected(5)
        with pytest.raises(
            WriteError, match="no response with its correlation data within 1 s"
        ) as caught:
            kom.write("sw.set", True).result(5)
        assert caught.value.reason == "unconfirmed"


def test_a_write_that_cannot_go_out_waits_for_no_confirmation() -> None:
    """A confirmed write refused before publishing (line not connected) fails at once with
    that reason, and leaves nothing waiting for a read-back."""
    cfg = _cfg("nowhere", READ_BACK, host="127.0.0.1:1", publish_qos=0)
    with start(cfg) as kom:
        line = kom.lines["line"]
        with pytest.raises(WriteError) as caught:
            kom.write("sw.set", True).result(5)
        assert caught.value.reason == "not-connected"
        assert not line._confirmations
        assert line.core.counters.unconfirmed_writes == 0


def test_response_on_a_line_that_fell_back_to_3_1_1_fails_at_once() -> None:
    """protocol = "auto" against a broker without MQTT 5: a response-confirmed write fails
    `unconfirmed` at once, saying why, and sends nothing."""
    from ._fakebroker import FakeBroker, PacketType

    with FakeBroker() as fake:
        fake.version_5 = "refuse"
        cfg = _cfg("fb", 'confirm = "response"', host=fake.address, protocol="auto")
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            with pytest.raises(
                WriteError, match=r"needs MQTT 5; the broker speaks 3\.1\.1"
            ) as caught:
                kom.write("sw.set", True).result(5)
            assert caught.value.reason == "unconfirmed"
            assert not kom.lines["line"]._confirmations
        assert fake.packets(PacketType.PUBLISH) == []


@pytest.mark.broker
@pytest.mark.usefixtures("no_backoff")
def test_a_retained_value_does_not_confirm(broker: Mosquitto, topic_prefix: str) -> None:
    """The broker's retained copy of the state, sent when kom subscribes after the write,
    is the old state, not the device's answer: the write stays unconfirmed."""
    from ._kom import Collector, Publisher

    with Publisher(broker.port) as pub:
        pub.publish(f"{topic_prefix}/state", '{"on": true}', retain=True)
    got = Collector()
    cfg = _cfg(topic_prefix, READ_BACK, host=broker.address, topic_filter=f"{topic_prefix}/x")
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        future = kom.write("sw.set", True)
        kom.lines["line"].change_filters([f"{topic_prefix}/state"])
        got.wait(lambda us: any(u.tag == "sw.state" and u.retained for u in us))
        with pytest.raises(WriteError) as caught:
            future.result(5)
    assert caught.value.reason == "unconfirmed"
    assert "no reading since the write" in str(caught.value)
