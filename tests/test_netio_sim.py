"""The NETIO simulator on a real mosquitto, watched by a plain paho client."""

from __future__ import annotations

import _thread
import io
import itertools
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kom.sim import NetioSimulator, parse_broker, run_netio
from kom.sim._netio_model import report_key
from tests._broker import Mosquitto, free_port

TIMEOUT = 5.0
# How long "nothing arrives" must last before a test believes it; far above a loopback round trip.
QUIET = 0.3
# A period long enough that a message arriving within PROMPT was not a periodic one.
LONG_PERIOD = 30.0
PROMPT = 1.0
FAST_PERIOD = 0.2

Message = mqtt.MQTTMessage
SimFactory = Callable[..., NetioSimulator]


class Observer:
    """A paho client on the test's broker that queues every message it receives."""

    def __init__(self, broker: Mosquitto, filters: list[str]) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"observer-{secrets.token_hex(4)}"
        )
        self.messages: queue.Queue[tuple[float, Message]] = queue.Queue()
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put((time.monotonic(), m))
        self.client.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        assert subscribed.wait(TIMEOUT), "no SUBACK for the observer"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # The callbacks refer back to this observer: break the cycle so that paho's __del__
        # closes its sockets when the test lets go, not at a random garbage collection.
        self.client.on_message = None
        self.client.on_subscribe = None

    def next(
        self, match: Callable[[Message], bool] = lambda m: True, timeout: float = TIMEOUT
    ) -> tuple[float, Message]:
        """The next message that matches, with when it arrived; earlier ones are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout} s")
            try:
                arrived, msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if match(msg):
                return arrived, msg

    def publish(self, topic: str, payload: bytes | str) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)


def on(topic: str, payload: bytes | None = None) -> Callable[[Message], bool]:
    return lambda m: m.topic == topic and (payload is None or m.payload == payload)


def document(msg: Message) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(msg.payload)
    return data


def output(msg: Message, output_id: int) -> dict[str, Any]:
    found: dict[str, Any] = document(msg)["Outputs"][output_id - 1]
    return found


def set_outputs(*entries: dict[str, int]) -> bytes:
    return orjson.dumps({"Operation": "SetOutputs", "Outputs": list(entries)})


@pytest.fixture
def client_id() -> str:
    """A device name no other test uses, so its topics are the test's own."""
    return f"netio-test-{secrets.token_hex(3)}"


@pytest.fixture
def observer(broker: Mosquitto, client_id: str) -> Iterator[Observer]:
    """An observer of every topic of the test's device."""
    watcher = Observer(broker, [f"devices/{client_id}/#", f"netio/{client_id}/#"])
    yield watcher
    watcher.close()


@pytest.fixture
def make_sim(broker: Mosquitto, client_id: str) -> Iterator[SimFactory]:
    """Start simulators on the test's broker; each is stopped after the test."""
    made: list[NetioSimulator] = []

    def make(**options: Any) -> NetioSimulator:
        options.setdefault("client_id", client_id)
        options.setdefault("period", FAST_PERIOD)
        sim = NetioSimulator(broker.host, broker.port, **options)
        made.append(sim)
        sim.start()
        assert sim.wait_connected(TIMEOUT), f"{sim!r} did not connect"
        return sim

    yield make
    for sim in made:
        sim.stop()


def test_periodic_state_on_events_topic(
    broker: Mosquitto, make_sim: SimFactory, observer: Observer, client_id: str
) -> None:
    """The state arrives on the events topic every period, with QoS 1, and is never retained."""
    sim = make_sim()
    events = sim.device.events_topic
    arrivals = [observer.next(on(events)) for _ in range(4)]
    for _, msg in arrivals:
        assert msg.qos == 1
        assert not msg.retain
        assert document(msg)["Agent"]["DeviceName"] == client_id
        assert len(document(msg)["Outputs"]) == 4
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert all(FAST_PERIOD * 0.5 < gap < FAST_PERIOD * 3 for gap in gaps), gaps
    # Live deliveries never carry retain; a newcomer is sent retained ones with the flag set.
    late = Observer(broker, [events])
    try:
        time.sleep(QUIET)
        flags = [m.retain for _, m in list(late.messages.queue)]
    finally:
        late.close()
    assert flags
    assert not any(flags)


def test_online_is_published_on_connect(make_sim: SimFactory, observer: Observer) -> None:
    """Connecting publishes `online` on the status topic with QoS 1, then the state."""
    sim = make_sim(period=LONG_PERIOD)
    _, status = observer.next(on(sim.device.status_topic))
    assert (status.payload, status.qos, status.retain) == (b"online", 1, False)
    observer.next(on(sim.device.events_topic), timeout=PROMPT)


def test_toggle_is_obeyed_and_reported_at_once(make_sim: SimFactory, observer: Observer) -> None:
    """A SetOutputs toggle switches the output and a state message with the new State follows."""
    sim = make_sim(period=LONG_PERIOD)
    _, first = observer.next(on(sim.device.events_topic))
    assert output(first, 1)["State"] == 1
    sent = time.monotonic()
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 1, "Action": 4}))
    arrived, msg = observer.next(on(sim.device.events_topic), timeout=PROMPT)
    assert output(msg, 1)["State"] == 0
    assert [o["State"] for o in document(msg)["Outputs"][1:]] == [1, 1, 1]
    assert arrived - sent < PROMPT
    assert sim.device.output_state(1) == 0


def test_short_on_with_delay_reverts(make_sim: SimFactory, observer: Observer) -> None:
    """A short on with Delay switches on, then off again after the delay, each reported."""
    sim = make_sim(period=LONG_PERIOD)
    topic = sim.device.events_topic
    observer.next(on(topic))
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 2, "Action": 0}))
    _, off = observer.next(on(topic), timeout=PROMPT)
    assert output(off, 2)["State"] == 0
    observer.publish(
        sim.device.devicebound_topic, set_outputs({"ID": 2, "Action": 3, "Delay": 400})
    )
    started, pulse = observer.next(on(topic), timeout=PROMPT)
    assert (output(pulse, 2)["State"], output(pulse, 2)["Action"]) == (1, 3)
    assert output(pulse, 2)["Delay"] == 400
    ended, back = observer.next(on(topic), timeout=PROMPT + 0.4)
    assert output(back, 2)["State"] == 0
    assert 0.3 < ended - started < 0.4 + PROMPT


def test_get_description_triggers_a_state_message(make_sim: SimFactory, observer: Observer) -> None:
    """GetDescription makes the device publish its state at once."""
    sim = make_sim(period=LONG_PERIOD)
    observer.next(on(sim.device.events_topic))
    observer.publish(sim.device.devicebound_topic, b'{"Operation":"GetDescription"}')
    _, msg = observer.next(on(sim.device.events_topic), timeout=PROMPT)
    assert document(msg)["Agent"]["Model"] == "NETIO 4All"


def test_bad_commands_are_refused_and_the_device_goes_on(
    make_sim: SimFactory, observer: Observer
) -> None:
    """Malformed commands change nothing and publish nothing; a good one after them works."""
    sim = make_sim(period=LONG_PERIOD)
    observer.next(on(sim.device.events_topic))
    for bad in (b"not json", b"[]", set_outputs({"ID": 9, "Action": 1}), b'{"Operation":"X"}'):
        observer.publish(sim.device.devicebound_topic, bad)
    with pytest.raises(AssertionError, match="no matching message"):
        observer.next(on(sim.device.events_topic), timeout=QUIET)
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 4, "Action": 0}))
    _, msg = observer.next(on(sim.device.events_topic), timeout=PROMPT)
    assert output(msg, 4)["State"] == 0
    assert sim.running


def test_flex_mode_publishes_state_and_load_and_obeys_action(
    make_sim: SimFactory, observer: Observer, client_id: str
) -> None:
    """In MQTT-flex mode every output has state and load topics, and an action topic obeys."""
    sim = make_sim(mode="flex", period=LONG_PERIOD)
    base = f"netio/{client_id}/output"
    seen: dict[str, bytes] = {}
    while len(seen) < 8:
        _, msg = observer.next(lambda m: m.topic.startswith(base))
        assert (msg.qos, msg.retain) == (1, False)
        seen[msg.topic] = msg.payload
    assert {seen[f"{base}/{n}/state"] for n in range(1, 5)} == {b"1"}
    assert all(int(seen[f"{base}/{n}/load"]) > 0 for n in range(1, 5))
    observer.publish(f"{base}/3/action", b"0")
    _, state = observer.next(on(f"{base}/3/state"), timeout=PROMPT)
    assert state.payload == b"0"
    _, load = observer.next(on(f"{base}/3/load"), timeout=PROMPT)
    assert load.payload == b"0"
    assert sim.device.output_state(3) == 0


def test_update_period_0_sends_the_state_only_when_it_changed(
    make_sim: SimFactory, observer: Observer
) -> None:
    """With period 0 the state goes out on connect and on change, never periodically."""
    # Measurements are looked at only hourly here, so nothing changes unless commanded.
    sim = make_sim(period=0, measure_interval=3600)
    topic = sim.device.events_topic
    observer.next(on(topic))
    with pytest.raises(AssertionError, match="no matching message"):
        observer.next(on(topic), timeout=3 * FAST_PERIOD + QUIET)
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 2, "Action": 0}))
    _, msg = observer.next(on(topic), timeout=PROMPT)
    assert output(msg, 2)["State"] == 0
    # A command that changes nothing (output 2 is already off) is not news either.
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 2, "Action": 0}))
    with pytest.raises(AssertionError, match="no matching message"):
        observer.next(on(topic), timeout=QUIET)


def test_update_period_0_reports_measured_values_that_changed(
    make_sim: SimFactory, observer: Observer
) -> None:
    """With period 0, a change of a measured value is sent when it is looked at, and only then."""
    sim = make_sim(period=0, measure_interval=FAST_PERIOD)
    topic = sim.device.events_topic
    keys = [report_key(document(observer.next(on(topic))[1])) for _ in range(4)]
    assert all(a != b for a, b in itertools.pairwise(keys)), "an unchanged state was sent"


def test_inputs_block_carries_id_name_state_and_s0_counter(
    make_sim: SimFactory, observer: Observer
) -> None:
    """The simulated strip has two digital inputs with S0 counters by default."""
    sim = make_sim(period=LONG_PERIOD)
    _, msg = observer.next(on(sim.device.events_topic))
    state = document(msg)
    assert state["Agent"]["NumInputs"] == 2
    assert [(i["ID"], i["Name"]) for i in state["Inputs"]] == [(1, "Input 1"), (2, "Input 2")]
    assert all(i["State"] in (0, 1) and type(i["S0Counter"]) is int for i in state["Inputs"])


def test_flex_mode_ignores_generic_commands(make_sim: SimFactory, observer: Observer) -> None:
    """A flex-mode device is not subscribed to the Generic devicebound topic."""
    sim = make_sim(mode="flex", period=LONG_PERIOD)
    observer.publish(sim.device.devicebound_topic, set_outputs({"ID": 1, "Action": 0}))
    time.sleep(QUIET)
    assert sim.device.output_state(1) == 1


def test_abrupt_stop_makes_the_broker_publish_the_will(
    broker: Mosquitto, make_sim: SimFactory, observer: Observer, client_id: str
) -> None:
    """Dropping the connection makes the broker itself publish `offline` on the status topic."""
    sent: list[tuple[str, bytes]] = []
    sim = make_sim(on_publish=lambda topic, payload: sent.append((topic, payload)))
    status = sim.device.status_topic
    observer.next(on(status, b"online"))
    sim.stop(abrupt=True)
    _, msg = observer.next(on(status))
    assert (msg.payload, msg.qos) == (b"offline", 1)
    assert (status, b"offline") not in sent  # the broker sent it, not the simulator
    broker.wait_for_log(f"Client {client_id} closed its connection")


def test_clean_stop_publishes_offline_and_disconnects(
    broker: Mosquitto, make_sim: SimFactory, observer: Observer, client_id: str
) -> None:
    """A clean stop publishes `offline` itself, then sends DISCONNECT."""
    sent: list[tuple[str, bytes]] = []
    sim = make_sim(on_publish=lambda topic, payload: sent.append((topic, payload)))
    status = sim.device.status_topic
    observer.next(on(status, b"online"))
    sim.stop()
    _, msg = observer.next(on(status))
    assert (msg.payload, msg.qos) == (b"offline", 1)
    assert sent[-1] == (status, b"offline")
    assert not sim.running
    broker.wait_for_log(f"Client {client_id} disconnected")
    # The will was discarded with the DISCONNECT: no second `offline` follows.
    with pytest.raises(AssertionError, match="no matching message"):
        observer.next(on(status), timeout=QUIET)


def test_reconnects_when_the_broker_comes_back(
    broker: Mosquitto, make_sim: SimFactory, observer: Observer
) -> None:
    """After the broker restarts, the simulator connects again and resumes publishing."""
    sim = make_sim()
    observer.close()
    broker.kill()
    deadline = time.monotonic() + TIMEOUT
    while sim.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sim.connected
    broker.restart()
    again = Observer(broker, [sim.device.events_topic])
    try:
        assert sim.wait_connected(TIMEOUT)
        again.next(on(sim.device.events_topic))
        assert sim.connections == 2
    finally:
        again.close()


def test_stop_without_a_broker_returns_quickly() -> None:
    """A simulator that never reached its broker stops at once and raises nothing."""
    sim = NetioSimulator("127.0.0.1", free_port(), period=FAST_PERIOD)
    sim.start()
    assert not sim.wait_connected(0.3)
    began = time.monotonic()
    sim.stop()
    assert time.monotonic() - began < 2.0
    assert not sim.running
    assert sim.connections == 0
    assert sim.last_error is not None


def test_run_netio_prints_each_message_and_returns_0(broker: Mosquitto, client_id: str) -> None:
    """run_netio with verbose prints one line per published message and ends after duration."""
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    code = run_netio(
        broker.address, id=client_id, period=0.1, duration=0.6, verbose=True, out=out, err=err
    )
    assert code == 0, err.getvalue()
    assert time.monotonic() - began < 0.6 + 3.0
    lines = out.getvalue().splitlines()
    assert f"devices/{client_id}/status online" in lines[0]
    events = [line for line in lines if f" devices/{client_id}/messages/events/ " in line]
    assert len(events) >= 3
    assert lines[-1].endswith(f"devices/{client_id}/status offline")


def test_run_netio_stops_cleanly_on_ctrl_c(broker: Mosquitto, client_id: str) -> None:
    """Ctrl-C ends run_netio with exit code 0 after it published `offline`."""
    out, err = io.StringIO(), io.StringIO()
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        code = run_netio(broker.address, id=client_id, verbose=True, out=out, err=err)
    finally:
        timer.cancel()
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines()[-1].endswith(f"devices/{client_id}/status offline")


def test_context_manager_connects_and_leaves_cleanly(
    broker: Mosquitto, observer: Observer, client_id: str
) -> None:
    """A `with` block starts the simulator and stops it cleanly, `offline` included."""
    with NetioSimulator(broker.host, broker.port, client_id=client_id) as sim:
        assert sim.wait_connected(TIMEOUT)
        assert repr(sim).endswith(" connected>")
        observer.next(on(sim.device.status_topic, b"online"))
    observer.next(on(sim.device.status_topic, b"offline"))
    assert not sim.running


def test_run_netio_returns_2_when_it_cannot_connect() -> None:
    """run_netio gives up with exit code 2 when no broker answers within connect_timeout."""
    err = io.StringIO()
    code = run_netio(f"127.0.0.1:{free_port()}", connect_timeout=0.3, err=err)
    assert code == 2
    assert "could not connect" in err.getvalue()


@pytest.mark.parametrize(
    ("broker", "error"),
    [("127.0.0.1:0", "port out of range"), ("a b", "expected HOST"), ("", "expected HOST")],
)
def test_run_netio_refuses_bad_arguments(broker: str, error: str) -> None:
    """A bad broker address ends run_netio with exit code 2 and a message."""
    err = io.StringIO()
    assert run_netio(broker, err=err) == 2
    assert error in err.getvalue()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"mode": "json"}, "mode"),
        ({"outputs": 9}, "outputs"),
        ({"period": -1}, "period"),
        ({"inputs": 9}, "inputs"),
        ({"id": "a/b"}, "client_id"),
    ],
)
def test_run_netio_refuses_bad_options(options: dict[str, Any], error: str) -> None:
    """Bad simulator options end run_netio with exit code 2 before anything connects."""
    err = io.StringIO()
    assert run_netio("127.0.0.1:1", err=err, **options) == 2
    assert error in err.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost", ("localhost", 1883)),
        ("127.0.0.1:18830", ("127.0.0.1", 18830)),
        ("[::1]", ("::1", 1883)),
        ("[::1]:1884", ("::1", 1884)),
        ("::1", ("::1", 1883)),
        (" broker.example:8883 ", ("broker.example", 8883)),
    ],
)
def test_parse_broker(text: str, expected: tuple[str, int]) -> None:
    """HOST[:PORT] and bracketed IPv6 addresses give host and port, 1883 by default."""
    assert parse_broker(text) == expected


def test_repr_is_short() -> None:
    """The repr names the device, its mode, its broker and whether it runs."""
    sim = NetioSimulator("127.0.0.1", 1884, client_id="netio-x", mode="flex")
    assert repr(sim) == "<NetioSimulator netio-x flex 127.0.0.1:1884 idle>"
