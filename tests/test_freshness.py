"""Staleness and time sanity (SPEC §16), a station's own time zone, and output tags read back."""

from __future__ import annotations

import logging
import textwrap
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import Reason
from kom._config import loads
from kom._core import LineCore
from kom._errors import ConfigError
from kom._freshness import StaleClock, time_bounds
from kom._line import Batch, Line
from kom._mqtt import RawMessage
from kom._station import Message, StationState

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start
from .test_decode import core_of
from .test_decode import values as results

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """The instant `seconds` after T0."""
    return T0 + timedelta(seconds=seconds)


# --- time_bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_future", "max_past", "offset", "refused"),
    [
        (None, None, 1e9, None),
        (60, None, 60, None),
        (60, None, 60.001, "ahead"),
        (60, None, -1e9, None),
        (None, 3600, -3600, None),
        (None, 3600, -3600.001, "behind"),
        (None, 3600, 1e9, None),
        (5, 5, 0, None),
        (5, 5, -6, "behind"),
    ],
)
def test_time_bounds(
    max_future: float | None, max_past: float | None, offset: float, refused: str | None
) -> None:
    """A source time beyond max_future ahead of, or max_past behind, the receive time is refused."""
    check = time_bounds(max_future, max_past)
    if max_future is None and max_past is None:
        assert check is None
        return
    assert check is not None
    problem = check(at(offset), T0)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None
        assert refused in problem


# --- StaleClock: a table, then against a reference ----------------------------------------------


def test_stale_clock_table() -> None:
    """A station goes stale once per quiet spell, counted from its last message or the start."""
    clock = StaleClock({0: 10, 2: 5})
    assert clock.due(at(0)) == []  # the counts start here
    clock.seen(0, at(3))
    assert clock.due(at(4.9)) == []
    assert clock.due(at(5)) == [2]
    assert clock.due(at(6)) == []  # once
    assert clock.due(at(13)) == [0]
    assert clock.stale == {0, 2}
    clock.seen(2, at(20))  # the next message ends the spell...
    clock.seen(1, at(20))  # (a station without stale_after is not watched)
    assert clock.stale == {0}
    assert clock.due(at(24.9)) == []
    assert clock.due(at(25)) == [2]  # ...and a new one can begin
    clock.restart()
    assert clock.stale == frozenset()
    assert clock.due(at(100)) == []
    assert clock.due(at(105)) == [2]
    assert repr(clock) == "<StaleClock watched=2 stale=[2]>"


def _reference(
    after: dict[int, float], events: list[tuple[float, int | None]]
) -> list[tuple[float, list[int]]]:
    """What each `due` call should return, computed from the whole history at that moment."""
    out: list[tuple[float, list[int]]] = []
    last: dict[int, float] = {}
    reported: dict[int, float] = {}  # station -> the `last` its staleness was reported for
    started: float | None = None
    for now, station in events:
        if station is not None:
            if station in after:
                last[station] = now
            continue
        if started is None:
            started = now
        due = []
        for index, seconds in sorted(after.items()):
            since = last.get(index, started)
            if now - since >= seconds and reported.get(index) != since:
                reported[index] = since
                due.append(index)
        out.append((now, due))
    return out


@given(
    st.dictionaries(st.integers(0, 4), st.integers(1, 20), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(0, 5))), max_size=40),
)
def test_stale_clock_agrees_with_reference(
    after: dict[int, int], steps: list[tuple[int, int | None]]
) -> None:
    """Against a reference that recomputes from the whole history, for any messages and checks."""
    clock = StaleClock(after)
    now = 0.0
    events: list[tuple[float, int | None]] = []
    got: list[tuple[float, list[int]]] = []
    for gap, station in steps:
        now += gap
        events.append((now, station))
        if station is None:
            got.append((now, sorted(clock.due(at(now)))))
        else:
            clock.seen(station, at(now))
    assert got == _reference(after, events)


# --- through the core ----------------------------------------------------------------------------

STALE_LINE = """
    [line]
    host = "broker"
    payload_type = "json"

    [[station]]
    name = "a"
    address = "a"
    stale_after = 30
    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"
    [[station.tag]]
    name = "raw"
    type = "TxtI"
    address = "IN_DATA"

    [[station]]
    name = "b"
    address = "b"
    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"
"""


def test_stale_updates_from_the_core() -> None:
    """A station quiet for stale_after gets one `stale` update per input; a message ends it."""
    core = core_of(STALE_LINE)
    core.connected(1)
    assert core.stale(at(0)) == []
    core.process(Message("a", b'{"v":1}', at(10)))
    core.process(Message("b", b'{"v":1}', at(10)))
    assert core.stale(at(39)) == []
    stale = core.stale(at(40))
    assert [(u.tag, u.quality.value, u.reason) for u in stale] == [
        ("a.raw", "invalid", Reason.STALE),
        ("a.v", "invalid", Reason.STALE),
    ]
    assert {(u.ts, u.received, u.topic) for u in stale} == {(at(40), at(40), None)}
    assert stale[0].detail == "station 'a': no message for 30 s"
    assert core.stale(at(100)) == []
    assert core.counters.stale == 1
    assert core.station_counters["a"].stale == 1
    back = core.process(Message("a", b'{"v":2}', at(101))).updates
    assert results(back) == {"raw": '{"v":2}', "v": 2.0}


def test_no_stale_report_for_a_station_that_is_not_on() -> None:
    """A station off, simulated or in will or communication error reports no staleness."""
    core = core_of(STALE_LINE)
    core.connected(1)
    core.stale(at(0))
    core.stations[0].move(StationState.OFF)
    assert core.stale(at(31)) == []
    assert core.counters.stale == 0


def test_a_station_switched_back_on_still_goes_stale() -> None:
    """A station off when its count ran out goes stale once on again, stale_after after."""
    core = core_of(STALE_LINE)
    core.connected(1)
    core.stale(at(0))
    core.stations[0].move(StationState.OFF)
    assert core.stale(at(31)) == []
    core.stations[0].move(StationState.ON)
    core.switched_on("a", at(40))
    assert core.stale(at(69)) == []
    assert {u.reason for u in core.stale(at(70))} == {Reason.STALE}
    assert core.counters.stale == 1


def test_a_line_without_stale_after_has_no_clock() -> None:
    """Without stale_after on any station, the line keeps no staleness clock at all."""
    core = core_of(STALE_LINE.replace("stale_after = 30", ""))
    assert core.staleness is None
    assert core.stale(at(1000)) == []


TIME_LINE = """
    [line]
    host = "broker"
    payload_type = "json"
    time_field = "t"
    time_mask = "UNIX"
    {line}

    [[station]]
    name = "s"
    address = "s"
    {station}
    [[station.tag]]
    name = "topic"
    type = "TxtI"
    address = "IN_TOPIC"
    [[station.tag]]
    name = "v"
    type = "Ai"
    address = "JA=v"
    [[station.tag]]
    name = "at"
    type = "TiA"
    address = "JA=t"
"""

NOW = 1795341600  # 2026-11-22T10:00:00Z


@pytest.mark.parametrize(
    ("line", "station", "time", "valid"),
    [
        ("", "", "99999999999", True),  # year 5138: read, and accepted without bounds
        ("", "", "-5e9", True),  # year 1811
        ("max_future = 300", "", "99999999999", False),
        ("max_past = 86400", "", "-5e9", False),
        ("max_future = 300", "", "-5e9", True),  # only the bound that is set applies
        ("max_future = 300\nmax_past = 300", "", str(NOW + 299), True),
        ("max_future = 300\nmax_past = 300", "", str(NOW + 301), False),
        ("max_future = 300\nmax_past = 300", "", str(NOW - 301), False),
        ("max_future = 300", "max_future = 600", str(NOW + 500), True),  # the station's wins
        ("", "max_past = 10", str(NOW - 11), False),
    ],
)
def test_time_sanity(line: str, station: str, time: str, valid: bool) -> None:
    """max_future / max_past make a message's content `time` invalid, stamped with its receipt."""
    core = core_of(TIME_LINE.format(line=line, station=station))
    updates = core.process(Message("s", f'{{"t":{time},"v":1}}'.encode(), at(0))).updates
    got = results(updates)
    assert got["topic"] == "s"  # IN_TOPIC stays valid, as with an unreadable time
    if valid:
        assert got["v"] == 1.0
        assert isinstance(got["at"], datetime)
        assert {u.ts for u in updates} == {got["at"]}
    else:
        assert (got["v"], got["at"]) == (Reason.TIME, Reason.TIME)
        assert {u.ts for u in updates} == {at(0)}
        (v,) = [u for u in updates if u.tag == "s.v"]
        assert v.detail is not None
        assert " the receive time (max_" in v.detail


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[line]\nmax_future = 0", "line.max_future: expected a number of seconds > 0, found 0"),
        ("[line]\nmax_past = -1", "line.max_past: expected a number of seconds > 0"),
        ("[line]\nmax_past = true", "line.max_past: expected an integer or a number"),
        (
            "[[station]]\nstale_after = 0",
            "station[1].stale_after: expected a number of seconds > 0",
        ),
        ('[[station]]\ntime_zone = "Europe/Prague"', "station[1].time_zone: unknown time zone"),
        (
            "[[station]]\nmax_future = nan",
            "station[1].max_future: expected a number of seconds > 0",
        ),
        # Beyond any date Python can hold: refused here, not an OverflowError in the line.
        ("[line]\nmax_future = 1e300", "line.max_future: expected at most 1000000000 seconds"),
        ("[line]\nmax_past = inf", "line.max_past: expected a number of seconds > 0"),
        (
            "[[station]]\nstale_after = 1e12",
            "station[1].stale_after: expected at most 1000000000 seconds (about 31 years)",
        ),
    ],
)
def test_configuration_errors(text: str, message: str) -> None:
    """The keys of SPEC §16 and a station's time zone are checked at their key paths."""
    line = '[line]\nhost = "b"\n'
    station = '[[station]]\nname = "s"\naddress = "s"\n'
    if text.startswith("[line]"):
        body = line + text.removeprefix("[line]\n") + "\n" + station
    else:
        body = line + station + text.removeprefix("[[station]]\n") + "\n"
    with pytest.raises(ConfigError) as info:
        loads(body)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


# --- a station's own time zone ------------------------------------------------------------------

ZONE_LINE = """
    [line]
    host = "broker"
    payload_type = "json"
    time_field = "t"
    time_mask = "yyyy-mm-dd hh:mi:ss"
    time_zone = "+01:00"

    [[station]]
    name = "here"
    address = "here"
    [[station.tag]]
    name = "at"
    type = "TiA"
    address = "JA=at"

    [[station]]
    name = "there"
    address = "there"
    time_zone = "-05:00"
    [[station.tag]]
    name = "at"
    type = "TiA"
    address = "JA=at"
    [[station.tag]]
    name = "set"
    type = "ToA"
    address = "JA=set"
    default = "2026-11-22 10:00:00"
"""


def test_station_time_zone_overrides_the_line() -> None:
    """A station's time_zone reads its time field, its time tags and its defaults."""
    cfg = loads(textwrap.dedent(ZONE_LINE))
    core = LineCore(cfg.lines[0], cfg.stations)
    payload = b'{"t":"2026-11-22 10:00:00","at":"2026-11-22 12:00:00","set":"2026-11-22 13:00:00"}'
    here = core.process(Message("here", payload, at(0))).updates
    there = core.process(Message("there", payload, at(0))).updates
    assert [(u.ts, u.value) for u in here] == [(at(-3600), at(3600 * 1))]
    assert [(u.ts, u.value) for u in there] == [
        (at(5 * 3600), at(7 * 3600)),
        (at(5 * 3600), at(8 * 3600)),
    ]
    (tag,) = [t for t in cfg.stations[1].tags if t.name == "set"]
    assert tag.default == at(5 * 3600)
    assert cfg.stations[1].time_zone is not None
    assert cfg.stations[1].time_zone.text == "-05:00"


def test_stations_of_one_type_in_two_zones_do_not_share_a_decoder() -> None:
    """Repeated tag tables in different zones keep their own readers (plans are per zone)."""
    tags = '[[station.tag]]\nname = "at"\ntype = "TiA"\naddress = "JA=at"\n'
    text = '[line]\nhost = "b"\npayload_type = "json"\ntime_zone = "+01:00"\n'
    for name, zone in (("a", ""), ("b", 'time_zone = "-05:00"'), ("c", "")):
        text += f'[[station]]\nname = "{name}"\naddress = "{name}"\n{zone}\n{tags}'
    cfg = loads(text)
    core = LineCore(cfg.lines[0], cfg.stations)
    payload = b'{"at":"2026-11-22 10:00:00.000"}'
    values = {
        s.name: core.process(Message(s.address, payload, at(0))).updates[0].value
        for s in cfg.stations
    }
    assert values == {"a": at(-3600), "b": at(5 * 3600), "c": at(-3600)}


# --- JA= on output types: the device reports the output's state --------------------------------

OUTPUT_LINE = """
    [line]
    host = "broker"
    payload_type = "json"

    [[station]]
    name = "pump"
    address = "pump/state"
    [[station.tag]]
    name = "speed"
    type = "Ao"
    address = "JA=speed"
    publish = { topic = "pump/set", payload = '{"speed":{value}}' }
    [[station.tag]]
    name = "run"
    type = "Do"
    address = "JA=run"
    [[station.tag]]
    name = "count"
    type = "Co"
    address = "JP=$.counters[0]"
    [[station.tag]]
    name = "note"
    type = "TxtO"
    address = "JA=note"
    [[station.tag]]
    name = "delay"
    type = "ToR"
    address = "JA=delay"
    [[station.tag]]
    name = "at"
    type = "ToA"
    address = "JA=at"
"""


def test_output_types_read_the_reported_state() -> None:
    """JA= and JP= on Ao, Do, Co, TxtO, ToR and ToA fill them from the device's messages."""
    core = core_of(OUTPUT_LINE)
    payload = (
        b'{"speed":12.5,"run":"on","counters":[7],"note":"ok","delay":"00:01:30",'
        b'"at":"2026-11-22 10:00:00.000"}'
    )
    updates = core.process(Message("pump/state", payload, at(0))).updates
    got = results(updates)
    assert got["speed"] == 12.5
    assert got["run"] is True
    assert got["count"] == 7
    assert got["note"] == "ok"
    assert got["delay"] == timedelta(seconds=90)
    assert isinstance(got["at"], datetime)
    assert core.stations[0].decoder.input_tags == tuple(
        f"pump.{n}" for n in ("speed", "run", "count", "note", "delay", "at")
    )
    lost = core.lost(at(1))
    assert {u.tag for u in lost} == {f"pump.{n}" for n in got}
    assert {u.reason for u in lost} == {Reason.COMM}


# --- a text payload has no time field to miss ---------------------------------------------------


@pytest.mark.parametrize(
    ("line", "warned"),
    [
        ('payload_type = "text"', False),
        ('payload_type = "json"', True),
        ('payload_type = "json"\nignore_missing_time = true', False),
        ('payload_type = "json"\ntime_field = "t"', False),
    ],
)
def test_missing_time_warning(line: str, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Only a JSON station without a time field warns (once); a text payload never does."""
    cfg = loads(
        f'[line]\nhost = "b"\n{line}\n[[station]]\nname = "s"\naddress = "s"\n'
        '[[station.tag]]\nname = "d"\ntype = "TxtI"\naddress = "IN_DATA"\n'
    )
    batches: list[Batch] = []
    line_ = Line(cfg.lines[0], cfg.stations, batches.append)
    caplog.set_level(logging.WARNING, logger="kom.line")
    for _ in range(2):
        line_.message(RawMessage(b"s", b'{"t":"2026-11-22 10:00:00.000"}', 0, 0, False, False))
    warnings = [r.getMessage() for r in caplog.records if "no time field" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings == [
            "line line: station s: no time field configured (time_field); "
            "values take the receive time"
        ]


# --- against a real broker ---------------------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_stale_against_a_real_broker(broker: Mosquitto, topic_prefix: str) -> None:
    """A silent station's inputs turn `stale` once, and the next message restores them."""
    body = f"""
[[station]]
name = "dev"
address = "{topic_prefix}/dev"
stale_after = 0.5
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=v"
"""
    cfg = config(
        body,
        host=broker.address,
        client_id="kom-stale",
        topic_filter=f"{topic_prefix}/#",
        payload_type="json",
    )
    got = Collector()
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        pub.publish(f"{topic_prefix}/dev", '{"v": 1.5}')
        got.wait(lambda us: any(u.reason is Reason.STALE for u in us))
        pub.publish(f"{topic_prefix}/dev", '{"v": 2.5}')
        got.wait(lambda us: any(u.value == 2.5 for u in us))
        got.wait(lambda us: sum(u.reason is Reason.STALE for u in us) >= 2)
        seen = [(u.value, u.reason) for u in got.of("dev.v")]
        assert seen[:4] == [(1.5, None), (None, Reason.STALE), (2.5, None), (None, Reason.STALE)]
        assert kom.counters()["line"].stale >= 2


def test_written_time_is_read_in_the_station_zone() -> None:
    """A ToA write without an offset is read in the station's own time zone."""
    cfg = loads(
        '[line]\nhost = "b"\ntime_zone = "+01:00"\n'
        '[[station]]\nname = "s"\naddress = "s"\nmode = "simulation"\ntime_zone = "-05:00"\n'
        '[[station.tag]]\nname = "at"\ntype = "ToA"\npublish = { topic = "s/set" }\n'
    )
    batches: list[Batch] = []
    line = Line(cfg.lines[0], cfg.stations, batches.append)
    line.write("s", "at", "2026-11-22 10:00:00.000").result(5)
    assert [u.value for b in batches for u in b.updates] == [at(5 * 3600)]


def test_time_bounds_change_without_reconnecting() -> None:
    """A reload that changes only max_future / max_past keeps the line's session."""
    from kom._client import _same_connection

    line = loads('[line]\nhost = "b"\nmax_future = 60\n').lines[0]
    assert _same_connection(line, attrs.evolve(line, max_future=5.0, max_past=3600.0))
    assert not _same_connection(line, attrs.evolve(line, keep_alive=30))
