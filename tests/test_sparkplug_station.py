"""Sparkplug stations: configuration, and a line's core turning node messages into updates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import ConfigError, loads
from kom._core import LineCore
from kom._model import Quality, Reason
from kom._station import Message, StationState
from kom.sparkplug import sparkplug_b_pb2 as pb
from kom.sparkplug._payload import DataType, Out, decode, encode
from kom.sparkplug._station import state_will

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

CONFIG = """
[line]
host = "127.0.0.1"
sparkplug_host_id = "scada1"

[[station]]
name = "node"
sparkplug = "plant/edge1"
[[station.tag]]
name = "uptime"
type = "Ci"
address = "SPB=Uptime"

[[station]]
name = "pump"
sparkplug = "plant/edge1/pump1"
[[station.tag]]
name = "pressure"
type = "Ai"
address = "SPB=Pressure"
[[station.tag]]
name = "started"
type = "TiA"
address = "SPB=Started"
[[station.tag]]
name = "mode"
type = "Ci"
address = "SPB=Mode"
[[station.tag]]
name = "speed_cmd"
type = "Co"
address = "SPB=Speed"
"""


def _raw_payload(metrics: list[tuple[str | None, int, int, int | None]]) -> bytes:
    """A payload with any datatype beside any integer, as a wrong or hostile node may send."""
    p = pb.Payload(timestamp=1)
    for name, datatype, number, alias in metrics:
        m = p.metrics.add(datatype=datatype, long_value=number)
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
    data: bytes = p.SerializeToString()
    return data


def core() -> LineCore:
    config = loads(CONFIG)
    line = state_will(config.lines[0], T0)
    c = LineCore(line, config.stations)
    c.connected(1)
    return c


def send(c: LineCore, kind: str, metrics: list[Out], seq: int | None, device: str | None = None):  # type: ignore[no-untyped-def]
    topic = f"spBv1.0/plant/{kind}/edge1" + (f"/{device}" if device else "")
    return c.process(Message(topic, encode(metrics, T0, seq), T0))


def births(c: LineCore) -> None:
    send(c, "NBIRTH", [Out("bdSeq", DataType.UInt64, 1), Out("Uptime", DataType.Int64, 5, 1)], 0)
    send(
        c,
        "DBIRTH",
        [
            Out("Pressure", DataType.Float, 4.25, 10),
            Out("Started", DataType.DateTime, T0, 11),
            Out("Mode", DataType.String, "auto", 12),
            Out("Speed", DataType.Int32, 1450, 13),
        ],
        1,
        "pump1",
    )


def test_config_derives_filters_and_addresses() -> None:
    """Sparkplug stations are chosen by key; a line of them subscribes to their nodes and to
    its host's own STATE topic only."""
    config = loads(CONFIG)
    line = config.lines[0]
    assert [f.text for f in line.topic_filters] == [
        "spBv1.0/plant/+/edge1/#",
        "spBv1.0/STATE/scada1",
    ]
    assert line.sparkplug_host_id == "scada1"
    assert [s.sparkplug for s in config.stations] == ["plant/edge1", "plant/edge1/pump1"]
    assert config.stations[1].tags[0].address is not None
    assert config.stations[1].tags[0].address.metric == "Pressure"


def test_explicit_topic_filter_is_kept() -> None:
    """A line's own topic_filter is not replaced."""
    config = loads(CONFIG.replace('sparkplug_host_id = "scada1"', 'topic_filter = "spBv1.0/#"'))
    assert [f.text for f in config.lines[0].topic_filters] == ["spBv1.0/#"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            ('sparkplug = "plant/edge1"', 'sparkplug = "plant"'),
            'station[1].sparkplug: expected "group/node"',
        ),
        (
            ('sparkplug = "plant/edge1"', 'sparkplug = "pl+ant/edge1"'),
            "station[1].sparkplug: may not contain '+'",
        ),
        (
            ('sparkplug = "plant/edge1"\n', 'sparkplug = "plant/edge1"\naddress = "x"\n'),
            "station[1].address: a Sparkplug station",
        ),
        (
            ('address = "SPB=Uptime"', 'address = "IN_TOPIC"'),
            "station[1].tag[1].address: a Sparkplug station's tags use SPB=",
        ),
        (
            ('address = "SPB=Uptime"', 'address = "SPB="'),
            "station[1].tag[1].address: SPB= takes a Sparkplug metric name",
        ),
        (
            ('sparkplug_host_id = "scada1"', 'sparkplug_host_id = "a/b"'),
            "line.sparkplug_host_id: may not contain '/'",
        ),
        (
            ('sparkplug_host_id = "scada1"', 'sparkplug_host_id = "s"\nwill = { topic = "x" }'),
            "line.will: sparkplug_host_id makes the will",
        ),
        (
            ('sparkplug = "plant/edge1"\n', 'sparkplug = "plant/edge1"\npayload_type = "json"\n'),
            "station[1].payload_type: a Sparkplug station reads",
        ),
    ],
)
def test_config_errors(change: tuple[str, str], error: str) -> None:
    """Each Sparkplug mistake is an error at its key path."""
    text = CONFIG.replace(change[0], change[1], 1)
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


ORDINARY = """
[line]
host = "h"
[[station]]
name = "s"
address = "t"
[[station.tag]]
name = "a"
type = "Ai"
address = "SPB=x"
"""


def test_spb_needs_a_sparkplug_station() -> None:
    """SPB= on an ordinary station, or a sparkplug_b line's station without a key, is refused."""
    with pytest.raises(ConfigError, match=r"station\[1\].tag\[1\].address: SPB= is for Sparkplug"):
        loads(ORDINARY)
    text = ORDINARY.replace('host = "h"', 'host = "h"\npayload_type = "sparkplug_b"')
    with pytest.raises(
        ConfigError, match=r"station\[1\].sparkplug: required on a sparkplug_b line"
    ):
        loads(text)


def test_birth_and_data_fill_spb_tags() -> None:
    """BIRTH values fill the stations' tags, typed, with the metrics' source times."""
    c = core()
    out = send(
        c, "NBIRTH", [Out("bdSeq", DataType.UInt64, 1), Out("Uptime", DataType.Int64, 5, 1)], 0
    )
    assert [(u.tag, u.value, u.quality) for u in out.updates] == [("node.uptime", 5, Quality.VALID)]
    assert out.route.rule == "sparkplug"
    out = send(
        c,
        "DBIRTH",
        [
            Out("Pressure", DataType.Float, 4.25, 10),
            Out("Started", DataType.DateTime, T0, 11),
            Out("Mode", DataType.String, "auto", 12),
        ],
        1,
        "pump1",
    )
    got = {u.tag: (u.value, u.reason) for u in out.updates}
    assert got == {
        "pump.pressure": (4.25, None),
        "pump.started": (T0, None),
        "pump.mode": (None, Reason.TYPE),  # a String metric in a Ci tag
    }
    own = datetime(2026, 12, 1, 7, 59, tzinfo=UTC)
    out = send(c, "DDATA", [Out(None, DataType.Float, 4.5, 10, timestamp=own)], 2, "pump1")
    assert [(u.tag, u.value, u.ts, u.received, u.retained) for u in out.updates] == [
        ("pump.pressure", 4.5, own, T0, False)
    ]


def test_null_metric_is_invalid() -> None:
    """is_null makes the tag invalid with reason missing."""
    c = core()
    births(c)
    out = send(c, "DDATA", [Out(None, DataType.Float, None, 10)], 2, "pump1")
    (u,) = out.updates
    assert (u.tag, u.value, u.quality, u.reason) == (
        "pump.pressure",
        None,
        Quality.INVALID,
        Reason.MISSING,
    )
    assert "null" in (u.detail or "")


def test_ndeath_is_a_will_for_node_and_devices_and_birth_clears_it() -> None:
    """NDEATH (with the birth's bdSeq) makes both stations' inputs invalid (will); NBIRTH clears."""
    c = core()
    births(c)
    out = send(c, "NDEATH", [Out("bdSeq", DataType.UInt64, 1)], None)
    reasons = {(u.tag, u.reason) for u in out.updates}
    assert reasons == {
        ("node.uptime", Reason.WILL),
        ("pump.pressure", Reason.WILL),
        ("pump.started", Reason.WILL),
        ("pump.mode", Reason.WILL),
    }
    assert [s.state for s in c.stations] == [StationState.WILL, StationState.WILL]
    assert c.counters.wills == 2
    births(c)
    assert [s.state for s in c.stations] == [StationState.ON, StationState.ON]


def test_seq_gap_queues_a_rebirth_ncmd_and_keeps_the_data() -> None:
    """A seq gap keeps the message's values and queues an NCMD Rebirth (QoS 0, not retained)."""
    c = core()
    births(c)
    assert c.sparkplug is not None
    c.sparkplug.outgoing.clear()
    out = send(c, "DDATA", [Out(None, DataType.Float, 5.0, 10)], 7, "pump1")
    assert [u.value for u in out.updates] == [5.0]
    ((topic, payload, qos, retain),) = c.sparkplug.outgoing
    assert (topic, qos, retain) == ("spBv1.0/plant/NCMD/edge1", 0, False)
    assert [(m.name, m.value()) for m in decode(payload).metrics] == [
        ("Node Control/Rebirth", True)
    ]
    gap, request = c.sparkplug.problems[-2:]
    assert gap.startswith("spBv1.0/plant/DDATA/edge1/pump1: seq 7 after 1 (counted in seq_gaps")
    assert request == (
        "asking plant/edge1 for a rebirth (NCMD Node Control/Rebirth): "
        "spBv1.0/plant/DDATA/edge1/pump1: seq 7 after 1"
    )


def test_state_online_repeats_the_will_timestamp() -> None:
    """The STATE will is offline with a timestamp; the online STATE on connect carries it too."""
    config = loads(CONFIG)
    line = state_will(config.lines[0], T0)
    assert line.will is not None
    assert (line.will.topic, line.will.qos, line.will.retain) == ("spBv1.0/STATE/scada1", 1, True)
    stamp = int(T0.timestamp() * 1000)
    assert orjson.loads(line.will.message) == {"online": False, "timestamp": stamp}
    c = LineCore(line, config.stations)
    c.connected(1)
    assert c.sparkplug is not None
    ((topic, payload, qos, retain),) = c.sparkplug.outgoing
    assert (topic, qos, retain) == ("spBv1.0/STATE/scada1", 1, True)
    assert orjson.loads(payload) == {"online": True, "timestamp": stamp}


def test_write_command_uses_the_birth_alias() -> None:
    """An SPB= output tag becomes a DCMD by alias with the BIRTH's datatype."""
    c = core()
    births(c)
    assert c.sparkplug is not None
    station = c.by_name["pump"].config
    tag = station.tag("speed_cmd")
    assert tag is not None
    topic, payload = c.sparkplug.command(station, tag, 1200, T0)
    assert topic == "spBv1.0/plant/DCMD/edge1/pump1"
    (m,) = decode(payload).metrics
    assert (m.name, m.alias, m.datatype, m.value()) == (None, 13, 0, 1200)


def test_other_topics_on_a_sparkplug_line() -> None:
    """STATE messages are ignored and unknown nodes unrouted; neither raises."""
    c = core()
    assert c.process(Message("spBv1.0/STATE/other", b'{"online":true}', T0)).station is None
    assert c.counters.ignored == 1
    out = send(c, "NBIRTH", [Out("bdSeq", DataType.UInt64, 0)], 0)
    assert out.station is not None  # plant/edge1 has a station
    out = c.process(Message("spBv1.0/plant/NBIRTH/other", encode([], T0, 0), T0))
    assert out.station is None
    assert c.counters.unrouted == 1


@given(
    st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "STATE"]),
    st.sampled_from([None, "pump1", "other"]),
    st.one_of(
        st.binary(max_size=64),
        st.lists(
            st.tuples(
                st.sampled_from(["Pressure", "Started", "Mode", "bdSeq", None]),
                st.sampled_from(list(DataType)),
                st.integers(0, 2**64 - 1),
                st.one_of(st.none(), st.integers(0, 20)),
            ),
            max_size=5,
        ).map(_raw_payload),
    ),
    st.one_of(st.none(), st.integers(0, 255)),
)
def test_no_message_raises(kind: str, device: str | None, data: bytes, seq: int | None) -> None:
    """Whatever arrives on a Sparkplug topic, the core answers without raising."""
    c = core()
    births(c)
    topic = f"spBv1.0/plant/{kind}/edge1" + (f"/{device}" if device else "")
    if seq is not None and data[:1] != b"\xff":
        data += bytes([0x18, seq])  # field 3 (seq), varint
    out = c.process(Message(topic, data, T0))
    assert all(u.tag.startswith(("node.", "pump.")) for u in out.updates)


def test_counters_of_bad_payloads_and_commands() -> None:
    """A bad payload is its station's message and a decode error; other hosts' NCMDs are ignored."""
    c = core()
    out = c.process(Message("spBv1.0/plant/NDATA/edge1", b"\xff\xff", T0))
    assert (out.station.name if out.station else None, out.route.rule) == ("node", "sparkplug")
    assert (c.counters.decode_errors, c.counters.routed) == (1, 1)
    assert c.station_counters["node"].decode_errors == 1
    out = c.process(Message("spBv1.0/plant/NCMD/edge1", b"", T0))
    assert out.station is None
    assert c.counters.ignored == 1


def test_time_bounds_and_staleness_apply_to_sparkplug_stations() -> None:
    """max_past makes an old metric time invalid (time); a Sparkplug event keeps a station fresh."""
    text = CONFIG.replace('name = "pump"\n', 'name = "pump"\nmax_past = 60\nstale_after = 5\n')
    config = loads(text)
    c = LineCore(config.lines[0], config.stations)
    c.connected(1)
    births(c)
    old = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    out = send(c, "DDATA", [Out(None, DataType.Float, 4.5, 10, timestamp=old)], 2, "pump1")
    (u,) = out.updates
    assert (u.tag, u.reason) == ("pump.pressure", Reason.TIME)
    assert "behind the receive time" in (u.detail or "")
    assert c.stale(T0 + timedelta(seconds=4)) == []
    stale = c.stale(T0 + timedelta(seconds=6))
    assert {x.tag for x in stale} >= {"pump.pressure"}
    assert all(x.reason is Reason.STALE for x in stale)
