"""Decoding messages into updates through a line's core and its stations (SPEC §3-5, §7, §8)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom._config import load, loads
from kom._core import LineCore, Processed
from kom._errors import AckError
from kom._model import Quality, Reason, Update, Value, ValueType
from kom._router import Rule
from kom._station import TRANSITIONS, IllegalTransition, Message, Station, StationState
from tests.strategies import payloads

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "examples"


def core_of(text: str) -> LineCore:
    """The core of the (only) line of a dedented configuration."""
    cfg = loads(textwrap.dedent(text))
    line = cfg.lines[0]
    return LineCore(line, cfg.stations_of(line.name))


def msg(topic: str, payload: bytes | str, qos: int = 0, mid: int = 0, at: int = 0) -> Message:
    """A message received `at` seconds after T0."""
    data = payload.encode() if isinstance(payload, str) else payload
    return Message(topic, data, T0 + timedelta(seconds=at), qos, mid if qos else 0)


def by_tag(updates: list[Update]) -> dict[str, Update]:
    """The updates keyed by their tag's short name."""
    return {u.tag.split(".", 1)[1]: u for u in updates}


def state_of(station: Station) -> StationState:
    """The station's state now (a call, so that type checkers do not keep an earlier one)."""
    return station.state


def values(updates: list[Update]) -> dict[str, Value]:
    """Each tag's value, or its reason when invalid."""
    return {name: u.value if u.valid else u.reason for name, u in by_tag(updates).items()}


JSON_STATION = """
    [line]
    host = "broker"
    payload_type = "json"
    {line}

    [[station]]
    name = "s"
    address = "dev/(?P<device>[^/]+)/data"

    [[station.tag]]
    name = "id"
    type = "Ci"
    address = "IN_ID"

    [[station.tag]]
    name = "b"
    type = "Ai"
    address = "JA=b"

    [[station.tag]]
    name = "device"
    type = "TxtI"
    address = "TOPIC=device"

    [[station.tag]]
    name = "data"
    type = "TxtI"
    address = "IN_DATA"

    [[station.tag]]
    name = "a"
    type = "TxtI"
    address = "JA=a"

    [[station.tag]]
    name = "topic"
    type = "TxtI"
    address = "IN_TOPIC"

    [[station.tag]]
    name = "out"
    type = "Ao"
    publish = {{ topic = "dev/{{device}}/cmd" }}
"""


def json_core(line: str = "") -> LineCore:
    """A JSON line with one station of every input address kind, in a scrambled order."""
    return core_of(JSON_STATION.format(line=line))


# --- order, IN_ID, the routing result -------------------------------------------------------


def test_update_order() -> None:
    """IN_TOPIC, IN_DATA, then JSON and topic tags in configuration order, and IN_ID last."""
    result = json_core().process(msg("dev/d1/data", '{"a":"x","b":2}', qos=1, mid=7))
    assert [u.tag for u in result.updates] == [
        "s.topic",
        "s.data",
        "s.b",
        "s.device",
        "s.a",
        "s.id",
    ]
    assert values(result.updates) == {
        "topic": "dev/d1/data",
        "data": '{"a":"x","b":2}',
        "b": 2.0,
        "device": "d1",
        "a": "x",
        "id": 7,
    }
    assert all(u.quality is Quality.VALID and u.reason is None for u in result.updates)
    assert all(u.topic == "dev/d1/data" for u in result.updates)
    assert result.settled
    assert result.route.rule is Rule.REGEX
    assert result.station is not None
    assert result.station.name == "s"


@pytest.mark.parametrize(
    ("qos", "mid", "in_id"), [(0, 0, 0), (0, 99, 0), (1, 1, 1), (1, 65535, 65535), (2, 42, 42)]
)
def test_in_id(qos: int, mid: int, in_id: int) -> None:
    """IN_ID is 0 for QoS 0 and the packet identifier for QoS 1 and 2."""
    message = Message("dev/d/data", b"{}", T0, qos, mid)
    update = by_tag(json_core().process(message).updates)["id"]
    assert (update.value, type(update.value), update.valid) == (in_id, int, True)


def test_unrouted_counted() -> None:
    """A message no station takes gives no updates and is counted as unrouted."""
    core = json_core()
    result = core.process(msg("other/topic", "{}"))
    assert result == Processed([], True, None, result.route)
    assert result.route.rule is Rule.UNROUTED
    assert (core.counters.received, core.counters.unrouted, core.counters.routed) == (1, 1, 0)


# --- bad payloads ----------------------------------------------------------------------------


def test_invalid_utf8() -> None:
    """Invalid UTF-8 makes IN_DATA invalid (`encoding`) and the JSON tags invalid (`parse`)."""
    updates = by_tag(json_core().process(msg("dev/d/data", b'{"a":"\xff"}')).updates)
    assert (updates["data"].reason, updates["data"].value) == (Reason.ENCODING, None)
    assert updates["a"].reason is Reason.PARSE
    assert updates["b"].reason is Reason.PARSE
    assert [updates[name].valid for name in ("topic", "device", "id")] == [True, True, True]


def test_invalid_utf8_text_line() -> None:
    """On a text line, invalid UTF-8 makes IN_DATA invalid with reason `encoding`."""
    core = core_of(
        """
        [line]
        host = "broker"
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "data"
        type = "TxtI"
        address = "IN_DATA"
        """
    )
    (update,) = core.process(msg("t", b"ok \xc3\x28")).updates
    assert (update.quality, update.reason, update.value) == (Quality.INVALID, Reason.ENCODING, None)
    assert update.detail is not None
    assert "UTF-8" in update.detail
    (update,) = core.process(msg("t", "grüß".encode())).updates
    assert update.value == "grüß"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b'{"a":1,}',
        b"not json",
        b'{"a":NaN,"b":1}',
        b'{"b":Infinity}',
        b'{"b":-Infinity}',
        b"NaN",
        b'{"b":1e999}',
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000,
        b"\x00\x01",
    ],
    ids=lambda p: repr(p[:12]),
)
def test_not_json(payload: bytes) -> None:
    """Invalid JSON (NaN, Infinity, deep nesting too) makes every JSON tag `parse`, no raise."""
    core = json_core()
    updates = by_tag(core.process(msg("dev/d/data", payload)).updates)
    for name in ("a", "b"):
        assert (updates[name].reason, updates[name].value) == (Reason.PARSE, None)
        assert "not JSON" in str(updates[name].detail)
    assert updates["device"].valid
    assert updates["topic"].valid
    assert core.counters.decode_errors >= 2


def test_missing() -> None:
    """A JSON address with nothing there gives `missing`, with the tag and address named."""
    updates = by_tag(json_core().process(msg("dev/d/data", '{"a":"x","c":1}')).updates)
    assert updates["a"].valid
    assert (updates["b"].reason, updates["b"].value) == (Reason.MISSING, None)
    assert updates["b"].detail == "s.b: nothing at this address"


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        ('{"b":"abc"}', "'abc'"),
        ('{"b":[1,2]}', "[1, 2]"),
        ('{"b":{"x":1}}', "{'x': 1}"),
        ('{"b":null}', "null"),
    ],
)
def test_wrong_type(payload: str, found: str) -> None:
    """A value the tag's type cannot take is `type`, naming the tag, the address and the value."""
    update = by_tag(json_core().process(msg("dev/d/data", payload)).updates)["b"]
    assert (update.quality, update.reason, update.value) == (Quality.INVALID, Reason.TYPE, None)
    assert update.detail is not None
    assert update.detail.startswith("s.b: ")
    assert found in update.detail


def test_text_of_json_values() -> None:
    """A TxtI tag takes any JSON value as its compact JSON text."""
    updates = by_tag(json_core().process(msg("dev/d/data", '{"a":{"x":[1, true]}}')).updates)
    assert updates["a"].value == '{"x":[1,true]}'


def test_max_payload_json() -> None:
    """A payload over max_payload is not parsed: the JSON tags are invalid with `parse`."""
    core = json_core("max_payload = 16")
    updates = by_tag(core.process(msg("dev/d/data", '{"a":"0123456789"}')).updates)
    assert updates["a"].reason is Reason.PARSE
    assert updates["a"].detail is not None
    assert "max_payload" in updates["a"].detail
    assert updates["data"].reason is Reason.PARSE
    small = by_tag(core.process(msg("dev/d/data", '{"a":"01"}')).updates)
    assert small["a"].value == "01"
    assert small["data"].value == '{"a":"01"}'


def test_max_payload_text() -> None:
    """On a text line too, a payload over max_payload is no valid IN_DATA (SPEC §8)."""
    core = core_of(
        """
        [line]
        host = "broker"
        max_payload = 4
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "data"
        type = "TxtI"
        address = "IN_DATA"
        """
    )
    (update,) = core.process(msg("t", b"12345")).updates
    assert (update.quality, update.reason) == (Quality.INVALID, Reason.PARSE)
    (update,) = core.process(msg("t", b"1234")).updates
    assert update.value == "1234"


def test_deep_json_within_limits() -> None:
    """Deep but parseable JSON is read without error, also by a recursive JSONPath."""
    core = core_of(
        """
        [line]
        host = "broker"
        payload_type = "json"
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "deep"
        type = "Ci"
        address = "JP=$..x"
        [[station.tag]]
        name = "first"
        type = "TxtI"
        address = "JA=[1]"
        """
    )
    depth = 500  # 1000 levels: within orjson's limit of 1024
    payload = b'[{"y":' * depth + b'{"x":5}' + b"}]" * depth
    updates = by_tag(core.process(msg("t", payload)).updates)
    assert updates["deep"].value == 5 or updates["deep"].reason is Reason.MISSING
    # Too deep for compact JSON text: refused as a value, not raised.
    assert updates["first"].valid or updates["first"].reason is Reason.TYPE


# --- time ------------------------------------------------------------------------------------

TIME_STATION = """
    [line]
    host = "broker"
    payload_type = "json"
    time_field = "Agent.Time"
    {line}

    [[station]]
    name = "s"
    address = "t"

    [[station.tag]]
    name = "topic"
    type = "TxtI"
    address = "IN_TOPIC"

    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"
"""


@pytest.mark.parametrize(
    ("line", "time", "ts"),
    [
        (
            'time_mask = "dd.mm.yyyy hh:mi:ss"\ntime_zone = "+01:00"',
            '"22.11.2026 11:00:00"',
            datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        ),
        (
            'time_mask = "yyyy-mm-dd hh:mi:ss.mss"\ntime_zone = "UTC"',
            '"2026-11-22 09:30:00.250"',
            datetime(2026, 11, 22, 9, 30, 0, 250000, tzinfo=UTC),
        ),
        (
            'time_mask = "ISO"\ntime_zone = "-05:00"',
            '"2026-11-22T10:00:00+02:00"',
            datetime(2026, 11, 22, 8, 0, tzinfo=UTC),
        ),
        ('time_mask = "UNIX"', "1795341600", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
        (
            'time_mask = "UNIXMS"',
            "1795341600500",
            datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC),
        ),
    ],
)
def test_source_time(line: str, time: str, ts: datetime) -> None:
    """The time field, read with the mask in the zone unless it has an offset, stamps all values."""
    core = core_of(TIME_STATION.format(line=line))
    payload = f'{{"Agent":{{"Time":{time}}},"v":1}}'
    updates = core.process(msg("t", payload, at=5)).updates
    assert [u.ts for u in updates] == [ts, ts]
    assert [u.received for u in updates] == [T0 + timedelta(seconds=5)] * 2
    assert all(u.valid for u in updates)
    assert ts.tzinfo is UTC


def test_missing_time_uses_receive_time() -> None:
    """Without the time field, the receive time is the source time and the station notes it."""
    core = core_of(TIME_STATION.format(line='time_mask = "ISO"'))
    updates = core.process(msg("t", '{"v":1}', at=3)).updates
    assert [u.ts for u in updates] == [T0 + timedelta(seconds=3)] * 2
    assert all(u.valid for u in updates)
    assert core.stations[0].decoder.time_missing


def test_no_time_field_uses_receive_time() -> None:
    """A line without a time field stamps values with the receive time, with no note."""
    updates = json_core().process(msg("dev/d/data", '{"a":"x"}', at=9)).updates
    assert {u.ts for u in updates} == {T0 + timedelta(seconds=9)}


@pytest.mark.parametrize("time", ['"yesterday"', '"2026-13-45T99:00:00Z"', "true", "[1]", '""'])
def test_unreadable_time(time: str) -> None:
    """An unreadable time field makes the message's JSON values invalid with reason `time`."""
    core = core_of(TIME_STATION.format(line='time_mask = "ISO"'))
    updates = by_tag(core.process(msg("t", f'{{"Agent":{{"Time":{time}}},"v":1}}')).updates)
    assert (updates["v"].reason, updates["v"].value) == (Reason.TIME, None)
    assert updates["v"].ts == T0
    assert updates["topic"].valid


# --- station will and modes -----------------------------------------------------------------

WILL_STATION = """
    [line]
    host = "broker"
    payload_type = "json"

    [[station]]
    name = "s"
    address = "d/state"
    will_topic = "d/status"
    {will_payload}

    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"

    [[station.tag]]
    name = "data"
    type = "TxtI"
    address = "IN_DATA"

    [[station.tag]]
    name = "cmd"
    type = "Do"
    publish = {{ topic = "d/cmd" }}

    [[station]]
    name = "status"
    address = "d/status"

    [[station.tag]]
    name = "text"
    type = "TxtI"
    address = "IN_DATA"
"""


@pytest.mark.parametrize("connected", [True, False])
def test_will_invalidates_inputs(connected: bool) -> None:
    """A will makes the station and its inputs `will`; the next message routed to it clears that."""
    core = core_of(WILL_STATION.format(will_payload='will_payload = "offline"'))
    if connected:
        core.connected(1)
    station = core.by_name["s"]
    assert core.process(msg("d/state", '{"v":1}')).updates
    result = core.process(msg("d/status", "offline", at=1))
    assert result.route.rule is Rule.WILL
    assert result.station is station
    assert station.state is StationState.WILL
    assert {u.tag: (u.quality, u.reason, u.value) for u in result.updates} == {
        "s.v": (Quality.INVALID, Reason.WILL, None),
        "s.data": (Quality.INVALID, Reason.WILL, None),
    }
    assert all(u.ts == T0 + timedelta(seconds=1) for u in result.updates)
    assert core.counters.wills == 1
    # The next message routed to the station clears the error.
    updates = core.process(msg("d/state", '{"v":2}', at=2)).updates
    assert state_of(station) is StationState.ON
    assert values(updates) == {"v": 2.0, "data": '{"v":2}'}


def test_will_payload_mismatch_clears_and_routes() -> None:
    """On the will topic, another payload clears the will error and is routed as usual."""
    core = core_of(WILL_STATION.format(will_payload='will_payload = "offline"'))
    core.connected(1)
    core.process(msg("d/status", "offline"))
    assert state_of(core.by_name["s"]) is StationState.WILL
    result = core.process(msg("d/status", "online"))
    assert state_of(core.by_name["s"]) is StationState.ON
    assert result.route.rule is Rule.EXACT
    assert result.station is core.by_name["status"]
    assert values(result.updates) == {"text": "online"}


def test_will_without_payload() -> None:
    """Without will_payload, any message on the will topic is the will."""
    core = core_of(WILL_STATION.format(will_payload=""))
    for payload in ("offline", "", "anything"):
        result = core.process(msg("d/status", payload))
        assert result.route.rule is Rule.WILL
        assert core.by_name["s"].state is StationState.WILL
        assert {u.reason for u in result.updates} == {Reason.WILL}


@pytest.mark.parametrize("mode", ["off", "simulation"])
def test_inactive_station_ignores(mode: str) -> None:
    """A station that is off or simulated ignores messages and its will."""
    text = WILL_STATION.format(will_payload="").replace(
        'address = "d/state"', f'address = "d/state"\nmode = "{mode}"'
    )
    core = core_of(text)
    station = core.by_name["s"]
    assert station.state is StationState(mode)
    assert core.process(msg("d/state", '{"v":1}')).updates == []
    assert core.process(msg("d/status", "offline")).updates == []
    assert station.state is StationState(mode)
    assert core.counters.ignored == 1
    assert not station.active


def test_lost_and_connected() -> None:
    """A lost line makes active stations' inputs `comm`; a new connection leaves comm error."""
    core = core_of(WILL_STATION.format(will_payload=""))
    core.connected(1)
    updates = core.lost(T0)
    assert {u.tag for u in updates} == {"s.v", "s.data", "status.text"}
    assert {u.reason for u in updates} == {Reason.COMM}
    assert {s.state for s in core.stations} == {StationState.COMM}
    assert core.lost(T0) == []
    core.connected(2)
    assert {s.state for s in core.stations} == {StationState.ON}


# --- station states --------------------------------------------------------------------------

_ALL = list(StationState)
_ILLEGAL = [(a, b) for a in _ALL for b in _ALL if a is not b and b not in TRANSITIONS[a]]
_LEGAL = [(a, b) for a in _ALL for b in _ALL if a is b or b in TRANSITIONS[a]]


def _station(state: StationState) -> Station:
    core = core_of(WILL_STATION.format(will_payload=""))
    station = core.by_name["s"]
    station.state = state
    return station


def test_illegal_transitions_exist() -> None:
    """The station's state table forbids a will while off or simulated."""
    assert (StationState.OFF, StationState.WILL) in _ILLEGAL
    assert (StationState.SIMULATION, StationState.WILL) in _ILLEGAL


@pytest.mark.parametrize(("start", "to"), _ILLEGAL)
def test_illegal_transition_raises(start: StationState, to: StationState) -> None:
    """A move along no edge of the state table raises IllegalTransition and changes nothing."""
    station = _station(start)
    with pytest.raises(IllegalTransition, match=f"station 's': {start.value} -> {to.value}"):
        station.move(to)
    assert station.state is start


@pytest.mark.parametrize(("start", "to"), _LEGAL)
def test_legal_transition(start: StationState, to: StationState) -> None:
    """A move along an edge (or to the same state) takes effect."""
    station = _station(start)
    station.move(to)
    assert station.state is to


def test_station_repr() -> None:
    """A station's repr shows its name, state and held messages."""
    assert repr(_station(StationState.ON)) == "<Station 's' on held=0>"


# --- processing of input values --------------------------------------------------------------


def processed(tag: str, *raw: str) -> list[Value | Reason | None]:
    """The reported value (or reason) of tag `t` with options `tag` for each JSON value `raw`.

    A value that is not reported gives None in the list.
    """
    core = core_of(
        """
        [line]
        host = "broker"
        payload_type = "json"
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "t"
        address = "JA=v"
        """
        + textwrap.indent(textwrap.dedent(tag), "        ")
    )
    out: list[Value | Reason | None] = []
    for i, value in enumerate(raw):
        updates = core.process(msg("t", f'{{"v":{value}}}', at=i)).updates
        out.append(None if not updates else values(updates)["t"])
    return out


@pytest.mark.parametrize(
    ("tag", "raw", "reported"),
    [
        ('type = "Di"\ninvert = true', ["true", "false"], [False, True]),
        ('type = "Di"\ninvert = true\non_change = false', ["1", "1"], [False, False]),
        ('type = "Ai"\nscale = [2, 1]', ["3", "0.5"], [7.0, 2.0]),
        ('type = "Ci"\nscale = [10, -1]', ["3"], [29]),
        ('type = "Ai"\nmin = 0\nmax = 10\nlimits = "clamp"', ["12", "-3", "5"], [10.0, 0.0, 5.0]),
        ('type = "Ai"\nmin = 0\nmax = 10', ["12", "5"], [Reason.LIMITS, 5.0]),
        ('type = "Ai"\nmax = 10\nlimits = "discard"', ["11"], [Reason.LIMITS]),
        ('type = "Ai"\nscale = [10, 0]\nmax = 50', ["4", "6"], [40.0, Reason.LIMITS]),
        (
            'type = "Ai"\ndeadband = 0.5',
            ["10", "10.3", "10.6", "10.2", "9.9"],
            [10.0, None, 10.6, None, 9.9],
        ),
        ('type = "Ai"\non_change = true', ["1", "1", "2", "1"], [1.0, None, 2.0, 1.0]),
        ('type = "Ai"', ["1", "1"], [1.0, 1.0]),
        # digital tags report changes only, unless told otherwise
        ('type = "Di"', ["true", "true", "false", "0", "1"], [True, None, False, None, True]),
        ('type = "Di"\non_change = false', ["true", "true"], [True, True]),
        # an invalid value is always reported, and so is the valid one after it
        ('type = "Di"', ["true", '"x"', '"x"', "true"], [True, Reason.TYPE, Reason.TYPE, True]),
        ('type = "Ai"\ndeadband = 5', ["1", '"x"', "2"], [1.0, Reason.TYPE, 2.0]),
    ],
)
def test_processing(tag: str, raw: list[str], reported: list[Value | Reason | None]) -> None:
    """Inversion, scaling, limits, dead band and change-only reporting, in SPEC §4's order."""
    assert processed(tag, *raw) == reported


def test_will_resets_change_filter() -> None:
    """After a will, the first value is reported again even when it did not change."""
    core = core_of(
        """
        [line]
        host = "broker"
        payload_type = "json"
        [[station]]
        name = "s"
        address = "t"
        will_topic = "w"
        [[station.tag]]
        name = "t"
        type = "Di"
        address = "JA=v"
        """
    )
    assert values(core.process(msg("t", '{"v":true}')).updates) == {"t": True}
    core.process(msg("w", ""))
    assert values(core.process(msg("t", '{"v":true}')).updates) == {"t": True}


# --- ACK_ID ----------------------------------------------------------------------------------

ACK_STATION = """
    [line]
    host = "broker"
    payload_type = "json"
    max_held = {max_held}

    [[station]]
    name = "s"
    address = "t"

    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"

    [[station.tag]]
    name = "id"
    type = "Ci"
    address = "IN_ID"

    [[station.tag]]
    name = "ack"
    type = "Co"
    address = "ACK_ID"
"""


def ack_core(max_held: int = 100) -> LineCore:
    """A line with one station that acknowledges its messages with ACK_ID."""
    return core_of(ACK_STATION.format(max_held=max_held))


def test_ack_holds_until_acknowledged() -> None:
    """The first message's updates go out at once; the next waits for ACK_ID = IN_ID."""
    core = ack_core()
    station = core.by_name["s"]
    assert station.uses_ack
    first = core.process(msg("t", '{"v":1}', qos=1, mid=5))
    assert values(first.updates) == {"v": 1.0, "id": 5}
    assert not first.settled
    second = core.process(msg("t", '{"v":2}', qos=2, mid=6))
    assert (second.updates, second.settled) == ([], False)
    third = core.process(msg("t", '{"v":3}', qos=1, mid=7))
    assert (third.updates, third.settled) == ([], False)
    assert len(station.held) == 2

    finished, delivery = station.acknowledge(5)
    assert finished.mid == 5
    assert delivery is not None
    assert values(delivery.updates) == {"v": 2.0, "id": 6}
    assert delivery.awaiting_ack
    finished, delivery = station.acknowledge(6)
    assert delivery is not None
    assert values(delivery.updates) == {"v": 3.0, "id": 7}
    finished, delivery = station.acknowledge(7)
    assert (finished.mid, delivery) == (7, None)
    assert station.current is None
    # Nothing is held any more: the next message goes out at once.
    assert values(core.process(msg("t", '{"v":4}')).updates) == {"v": 4.0, "id": 0}


@pytest.mark.parametrize("wrong", [6, 0, -5, "5", 5.0, True, None])
def test_ack_wrong_value(wrong: object) -> None:
    """ACK_ID with another value than IN_ID raises AckError and releases nothing."""
    core = ack_core()
    station = core.by_name["s"]
    core.process(msg("t", '{"v":1}', qos=1, mid=5))
    core.process(msg("t", '{"v":2}', qos=1, mid=6))
    with pytest.raises(AckError, match="ACK_ID must be 5"):
        station.acknowledge(wrong)
    assert station.current is not None
    assert station.current.mid == 5
    assert len(station.held) == 1


def test_ack_qos0_is_zero() -> None:
    """A QoS 0 message is acknowledged with 0, its IN_ID."""
    core = ack_core()
    station = core.by_name["s"]
    core.process(msg("t", '{"v":1}'))
    core.process(msg("t", '{"v":2}'))
    _, delivery = station.acknowledge(0)
    assert delivery is not None
    assert values(delivery.updates) == {"v": 2.0, "id": 0}


def test_ack_nothing_held() -> None:
    """ACK_ID with no message to acknowledge is an AckError."""
    station = ack_core().by_name["s"]
    with pytest.raises(AckError, match="holds no message"):
        station.acknowledge(0)


def test_ack_qos0_overflow_counted() -> None:
    """QoS 0 messages beyond max_held are counted as overflow, not held and not silent."""
    core = ack_core(max_held=2)
    station = core.by_name["s"]
    core.process(msg("t", '{"v":0}'))
    for v in (1, 2):
        assert core.process(msg("t", f'{{"v":{v}}}')).updates == []
    assert len(station.held) == 2
    result = core.process(msg("t", '{"v":3}'))
    assert (result.updates, result.settled) == ([], True)
    assert (station.overflow, core.counters.overflow, core.station_counters["s"].overflow) == (
        1,
        1,
        1,
    )
    assert len(station.held) == 2
    # QoS 1/2 are bounded by the broker's window and still held.
    core.process(msg("t", '{"v":4}', qos=1, mid=9))
    assert len(station.held) == 3


def test_ack_dropped_after_reconnect() -> None:
    """After a reconnection, held QoS 1/2 of the old connection are dropped; QoS 0 goes out."""
    core = ack_core()
    station = core.by_name["s"]
    core.connected(1)
    core.process(Message("t", b'{"v":1}', T0, 1, 1, generation=1))
    core.process(Message("t", b'{"v":2}', T0, 1, 2, generation=1))
    core.process(Message("t", b'{"v":3}', T0, 0, 0, generation=1))
    core.lost(T0)
    released = core.connected(2)
    # The held QoS 0 message goes out now instead of waiting to be overtaken by new ones.
    assert station.current is not None
    assert station.current.payload == b'{"v":3}'
    assert list(station.held) == []
    assert [u.value for u in released if u.tag == "s.v"] == [3.0]


# --- the NETIO profile -----------------------------------------------------------------------

NETIO_TYPES: dict[ValueType, type] = {
    ValueType.Ai: float,
    ValueType.Ci: int,
    ValueType.Di: bool,
    ValueType.TiA: datetime,
    ValueType.TiR: timedelta,
    ValueType.TxtI: str,
}


def test_netio_document() -> None:
    """The NETIO 4All state document gives every input tag of the profile, valid and typed."""
    cfg = load(EXAMPLES / "netio-4all.toml")
    core = LineCore(cfg.lines[0], cfg.stations)
    payload = (DATA / "netio-4all-state.json").read_bytes()
    doc = orjson.loads(payload)
    result = core.process(msg("devices/netio-4All-25E0/messages/events/", payload, 1, 3))
    updates = by_tag(result.updates)
    (station,) = cfg.stations
    inputs = [t for t in station.tags if t.address is not None]
    assert set(updates) == {t.name for t in inputs}
    for tag in inputs:
        update = updates[tag.name]
        assert update.valid, update
        assert type(update.value) is NETIO_TYPES[tag.type], (tag.name, update.value)
    when = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert {u.ts for u in result.updates} == {when}
    measure = doc["GlobalMeasure"]
    expected: dict[str, Value] = {
        "device_time": when,
        "uptime": timedelta(seconds=doc["Agent"]["Uptime"]),
        "voltage": measure["Voltage"],
        "frequency": measure["Frequency"],
        "total_current": float(measure["TotalCurrent"]),
        "power_factor": measure["OverallPowerFactor"],
        "total_load": float(measure["TotalLoad"]),
        "total_energy": measure["TotalEnergy"],
        "energy_start": datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        "out1_state_by_id": doc["Outputs"][0]["State"] == 1,
        "phase": measure["Phase"],
    }
    agent = doc["Agent"]
    for key, name in [
        ("Model", "model"),
        ("DeviceName", "device_name"),
        ("MAC", "mac"),
        ("SerialNumber", "serial_number"),
        ("JSONVer", "json_version"),
        ("Version", "firmware"),
        ("NumOutputs", "num_outputs"),
        ("NumInputs", "num_inputs"),
    ]:
        expected[name] = agent[key]
    for output in doc["Outputs"]:
        n = output["ID"]
        expected[f"out{n}_state"] = output["State"] == 1
        for key, name in [
            ("Load", "load"),
            ("Current", "current"),
            ("Energy", "energy"),
            ("PowerFactor", "power_factor"),
            ("Phase", "phase"),
            ("ReverseEnergy", "reverse_energy"),
        ]:
            expected[f"out{n}_{name}"] = float(output[key])
        expected[f"out{n}_name"] = output["Name"]
        expected[f"out{n}_running_action"] = output["Action"]
        expected[f"out{n}_delay"] = output["Delay"]
    for item in doc["Inputs"]:
        n = item["ID"]
        expected[f"in{n}_state"] = item["State"] == 1
        expected[f"in{n}_s0_counter"] = item["S0Counter"]
        expected[f"in{n}_name"] = item["Name"]
    assert values(result.updates) == expected


def test_netio_will() -> None:
    """The NETIO profile's status topic with `offline` invalidates the strip's values."""
    cfg = load(EXAMPLES / "netio-4all.toml")
    core = LineCore(cfg.lines[0], cfg.stations)
    result = core.process(msg("devices/netio-4All-25E0/status", "offline"))
    assert result.updates
    assert {u.reason for u in result.updates} == {Reason.WILL}
    online = core.process(msg("devices/netio-4All-25E0/status", "online"))
    assert online.route.rule is Rule.UNROUTED
    assert core.stations[0].state is StationState.ON


# --- property (d): nothing a broker sends makes the core raise -------------------------------

CONFIGURATIONS = [
    JSON_STATION.format(line=""),
    JSON_STATION.format(line='time_field = "t"\ntime_mask = "ISO"\nmax_payload = 64'),
    JSON_STATION.format(line='time_field = "[1]"\ntime_mask = "UNIXMS"'),
    ACK_STATION.format(max_held=2),
    WILL_STATION.format(will_payload='will_payload = "offline"'),
    WILL_STATION.format(will_payload=""),
    """
    [line]
    host = "broker"
    [[station]]
    name = "s"
    address = "#"
    [[station.tag]]
    name = "data"
    type = "TxtI"
    address = "IN_DATA"
    [[station.tag]]
    name = "topic"
    type = "TxtI"
    address = "IN_TOPIC"
    """,
    """
    [line]
    host = "broker"
    payload_type = "json"
    [[station]]
    name = "s"
    address = ".*"
    will_topic = "w"
    [[station.tag]]
    name = "q"
    type = "Qi"
    address = "JA=$"
    [[station.tag]]
    name = "abs"
    type = "TiA"
    address = "JA=[1]"
    [[station.tag]]
    name = "rel"
    type = "TiR"
    address = "JP=$..r"
    [[station.tag]]
    name = "c"
    type = "Ci"
    address = "JA=a.b[2]"
    scale = [3, 1]
    min = -5
    max = 1e6
    limits = "clamp"
    [[station.tag]]
    name = "d"
    type = "Di"
    address = "JA=[1]"
    invert = true
    [[station.tag]]
    name = "a"
    type = "Ai"
    address = "JA=$"
    deadband = 0.5
    scale = [1e300, 0]
    """,
]
_CORES = [loads(textwrap.dedent(text)) for text in CONFIGURATIONS]
_TOPICS = ["dev/x/data", "d/state", "d/status", "t", "w", "dev//data", "dev/data"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(range(len(CONFIGURATIONS))),
    st.lists(
        st.tuples(
            st.sampled_from(_TOPICS) | st.text(max_size=12),
            payloads | st.sampled_from([b"offline", b"online"]),
            st.sampled_from([0, 1, 2]),
            st.integers(1, 65535),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_decoding_never_raises(
    which: int, messages: list[tuple[str, bytes, int, int, bool]], connect_first: bool
) -> None:
    """Property (d): any topics and payloads, on any configuration, give updates, never raise."""
    cfg = _CORES[which]
    core = LineCore(cfg.lines[0], cfg.stations)
    if connect_first:
        core.connected(1)
    invalid = 0
    for i, (topic, payload, qos, mid, dup) in enumerate(messages):
        message = Message(topic, payload, T0 + timedelta(seconds=i), qos, mid if qos else 0, dup)
        result = core.process(message)
        for update in result.updates:
            assert update.valid is (update.reason is None)
            assert update.valid or update.value is None
            assert update.ts.tzinfo is not None
            invalid += update.reason not in (None, Reason.WILL, Reason.COMM)
        assert core.counters.decode_errors == invalid
        station = result.station
        if station is not None and station.current is not None and i % 2:
            current = station.current
            station.acknowledge(current.mid if current.qos else 0)
    assert core.counters.received == len(messages)


def test_a_held_message_keeps_its_own_topic_groups() -> None:
    """A message held behind ACK_ID is decoded with its own topic's regex groups when released."""
    core = core_of(
        """
        [line]
        host = "h"
        [[station]]
        name = "jobs"
        address = "jobs/(?P<who>[a-z]+)"
        [[station.tag]]
        name = "who"
        type = "TxtI"
        address = "TOPIC=who"
        [[station.tag]]
        name = "ack"
        type = "Co"
        address = "ACK_ID"
        """
    )
    first = core.process(msg("jobs/alice", "{}", qos=1, mid=1))
    assert values(first.updates) == {"who": "alice"}
    core.process(msg("jobs/bob", "{}", qos=1, mid=2))
    _, released = core.by_name["jobs"].acknowledge(1)
    assert released is not None
    assert values(released.updates) == {"who": "bob"}


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["1", "0", "on", "+58,890", "12.0", "nan", "2026-01-01 10:00:00.000"]),
)


@settings(max_examples=300, deadline=None)
@given(raw=JSON_SCALARS, value_type=st.sampled_from(["Ai", "Ci", "Di", "Qi", "TxtI", "TiA", "TiR"]))
def test_the_generated_fast_path_agrees_with_the_converters(raw: object, value_type: str) -> None:
    """Whatever the raw JSON value, the decoded update equals the type's converter's answer."""
    from kom._convert import converter
    from kom._timemask import TimeMask, Zone

    core = core_of(
        f"""
        [line]
        host = "h"
        payload_type = "json"
        time_zone = "UTC"
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "x"
        type = "{value_type}"
        address = "JA=a.x"
        on_change = false
        """
    )
    try:
        payload = orjson.dumps({"a": {"x": raw}})
    except orjson.JSONEncodeError:
        return  # not representable as JSON (an integer beyond 64 bits): nothing to decode
    (update,) = core.process(msg("t", payload)).updates
    convert = converter(ValueType(value_type), TimeMask.parse("yyyy-mm-dd hh:mi:ss.mss"), Zone.UTC)
    try:
        expected = convert(orjson.loads(payload)["a"]["x"])
    except Exception:
        assert (update.quality, update.reason) == (Quality.INVALID, Reason.TYPE)
    else:
        assert update.valid
        assert update.value == expected
        assert type(update.value) is type(expected)


@settings(max_examples=300, deadline=None)
@given(
    raw=JSON_SCALARS
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    | st.datetimes().map(lambda d: d.isoformat(sep=" ", timespec="milliseconds"))
)
def test_a_tag_on_the_time_field_agrees_with_the_converter(raw: object) -> None:
    """A TiA tag reading the line's own time field: the converter's answer, which is the time."""
    from kom._convert import converter
    from kom._timemask import TimeMask, Zone

    core = core_of(
        """
        [line]
        host = "h"
        payload_type = "json"
        time_zone = "+01:00"
        time_mask = "ISO"
        time_field = "a.x"
        [[station]]
        name = "s"
        address = "t"
        [[station.tag]]
        name = "x"
        type = "TiA"
        address = "JA=a.x"
        on_change = false
        [[station.tag]]
        name = "y"
        type = "TiA"
        address = "JA=a.y"
        on_change = false
        """
    )
    try:
        payload = orjson.dumps({"a": {"x": raw, "y": raw}})
    except orjson.JSONEncodeError:
        return
    updates = core.process(msg("t", payload)).updates
    convert = converter(ValueType.TiA, TimeMask.parse("ISO"), Zone.parse("+01:00"))
    try:
        expected = convert(orjson.loads(payload)["a"]["x"])
    except Exception:
        assert [u.reason for u in updates] == [Reason.TIME, Reason.TIME]
    else:
        assert [(u.value, u.ts) for u in updates] == [(expected, expected)] * 2


def test_stations_of_one_layout_share_generated_code() -> None:
    """One code object and one globals dictionary for every station of a layout (the
    interpreter's caches for global names stay warm across stations); each station's own
    tag names reach its updates."""
    core = core_of(
        """
        [line]
        host = "broker"
        payload_type = "json"
        """
        + "".join(
            f"""
        [[station]]
        name = "d{n}"
        address = "dev/{n}"
        [[station.tag]]
        name = "v"
        type = "Ai"
        address = "JA=a.v"
        [[station.tag]]
        name = "on"
        type = "Di"
        address = "JA=a.on"
        """
            for n in range(3)
        )
    )
    middles = [station.decoder._decode_middle for station in core.stations]
    assert len({id(f.__code__) for f in middles}) == 1
    assert len({id(f.__globals__) for f in middles}) == 1
    for n in range(3):
        result = core.process(msg(f"dev/{n}", '{"a":{"v":1.5,"on":true}}'))
        assert [(u.tag, u.value, u.valid) for u in result.updates] == [
            (f"d{n}.v", 1.5, True),
            (f"d{n}.on", True, True),
        ]


PLAIN_STATION = """
    [line]
    host = "broker"
    payload_type = "json"
    time_field = "t"
    time_mask = "ISO"
    max_future = 3600

    [[station]]
    name = "s"
    address = "d/1"

    [[station.tag]]
    name = "a"
    type = "Ai"
    address = "JA=m.a"

    [[station.tag]]
    name = "c"
    type = "Ci"
    address = "JA=m.c"

    [[station.tag]]
    name = "d"
    type = "Di"
    address = "JA=o[1].d"
    on_change = false

    [[station.tag]]
    name = "x"
    type = "TxtI"
    address = "JA=o[2].x"

    [[station.tag]]
    name = "r"
    type = "TiR"
    address = "JA=r"

    [[station.tag]]
    name = "t"
    type = "TiA"
    address = "JA=t"
"""

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=False),
    st.sampled_from(["2026-11-22T10:00:00+00:00", "2026-11-22T10:00:00", "nope", "1"]),
    st.text(max_size=4),
)


_ANY_DOC = st.fixed_dictionaries(
    {},
    optional={
        "m": st.fixed_dictionaries({}, optional={"a": _scalars, "c": _scalars}) | _scalars,
        "o": st.lists(
            st.fixed_dictionaries({}, optional={"d": _scalars, "x": _scalars}), max_size=3
        ),
        "r": _scalars,
        "t": _scalars | st.sampled_from(["2026-11-22T10:00:00+00:00", "2030-01-01T00:00:00Z"]),
    },
)
#: Documents the short way takes, mostly: every value of its tag's type.
_GOOD_DOC = st.fixed_dictionaries(
    {
        "m": st.fixed_dictionaries(
            {
                "a": st.floats(allow_nan=False, allow_infinity=False)
                | st.integers(-(2**53), 2**53),
                "c": st.integers(-(2**63), 2**63 - 1),
            }
        ),
        "o": st.tuples(
            st.fixed_dictionaries({"d": st.booleans() | st.sampled_from([0, 1])}),
            st.fixed_dictionaries({"x": st.text(max_size=5)}),
        ).map(list),
        "r": st.integers(0, 10**9),
        "t": st.sampled_from(["2026-11-22T09:59:00+00:00", "2026-11-22T10:00:00+00:00"]),
    },
)


@given(_GOOD_DOC | _ANY_DOC, st.booleans())
@settings(max_examples=300)
def test_the_short_way_decodes_as_the_general_path(doc: dict[str, object], retain: bool) -> None:
    """A plain JSON station's short way (all values fast) gives what every rule gives."""
    core = core_of(PLAIN_STATION)
    decoder = core.stations[0].decoder
    assert decoder._plain
    message = Message("d/1", json.dumps(doc).encode(), T0, 0, 0, False, retain)
    general = core_of(PLAIN_STATION).stations[0].decoder
    assert decoder.decode(message, {}) == general._decode(message, {})
    assert decoder.decode(message, {}) == general._decode(message, {})  # and again (no state)
    assert decoder.invalid == general.invalid
    assert decoder.time_missing == general.time_missing
