"""Sparkplug host rules in a line's core: problem counters, the rebirth interval key, the
host's own STATE, metric Quality properties, and the STATE will across reloads."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from kom import ConfigError, loads
from kom._client import _same_connection
from kom._core import LineCore
from kom._model import Quality, Reason
from kom._station import Message
from kom.sim._sparkplug_sim import EdgeNode
from kom.sparkplug._payload import DataType, Out, decode, encode
from kom.sparkplug._station import state_will

from .test_sparkplug_station import CONFIG, T0, births, core, send


def _ncmds(c: LineCore) -> int:
    assert c.sparkplug is not None
    return sum(1 for topic, *_ in c.sparkplug.outgoing if "/NCMD/" in topic)


def test_seq_gaps_and_rebirths_are_counted_per_line_and_station() -> None:
    """Each seq gap counts on the line and the device's station; the rate-limited request once."""
    c = core()
    births(c)
    assert c.sparkplug is not None
    c.sparkplug.problems.clear()
    send(c, "DDATA", [Out(None, DataType.Float, 5.0, 10)], 7, "pump1")
    send(c, "DDATA", [Out(None, DataType.Float, 6.0, 10)], 9, "pump1")
    for counters in (c.counters, c.station_counters["pump"]):
        assert (counters.seq_gaps, counters.rebirths) == (2, 1)
    assert c.station_counters["node"].seq_gaps == 0
    # Logged once with its cause, whatever the number of gaps, until the node's next NBIRTH.
    gaps = [p for p in c.sparkplug.problems if "seq_gaps" in p]
    assert len(gaps) == 1
    births(c)
    send(c, "DDATA", [Out(None, DataType.Float, 5.0, 10)], 9, "pump1")
    assert len([p for p in c.sparkplug.problems if "seq_gaps" in p]) == 2


def test_unknown_aliases_and_stale_deaths_are_counted() -> None:
    """An undeclared alias counts as unknown_aliases; an NDEATH of another bdSeq as stale_deaths."""
    c = core()
    births(c)
    errors = c.counters.decode_errors  # the births' "auto" in a Ci tag
    send(c, "DDATA", [Out(None, DataType.Float, 5.0, 99)], 2, "pump1")
    assert c.counters.unknown_aliases == 1
    assert c.station_counters["pump"].unknown_aliases == 1
    assert c.counters.rebirths == 1
    out = send(c, "NDEATH", [Out("bdSeq", DataType.UInt64, 7)], None)
    assert out.updates == []
    assert c.counters.stale_deaths == 1
    assert c.station_counters["node"].stale_deaths == 1
    assert c.counters.decode_errors == errors


def test_seq_wraps_from_255_to_0_in_a_line() -> None:
    """A node whose seq goes 254, 255, 0 has no gap and gets no rebirth request (§6.4.5)."""
    c = core()
    births(c)  # NBIRTH 0, DBIRTH 1
    for seq in [*range(2, 256), 0, 1]:
        out = send(c, "DDATA", [Out(None, DataType.Float, float(seq), 10)], seq, "pump1")
        assert out.updates[0].value == float(seq)
    assert (c.counters.seq_gaps, c.counters.rebirths) == (0, 0)
    send(c, "DDATA", [Out(None, DataType.Float, 1.0, 10)], 3, "pump1")
    assert (c.counters.seq_gaps, c.counters.rebirths) == (1, 1)


@pytest.mark.parametrize(("interval", "requests"), [(0, 3), (5, 1), (30, 1)])
def test_rebirth_interval_key(interval: float, requests: int) -> None:
    """sparkplug_rebirth_interval limits rebirth requests per node (0: one per problem)."""
    text = CONFIG.replace("[line]\n", f"[line]\nsparkplug_rebirth_interval = {interval}\n", 1)
    config = loads(text)
    assert config.lines[0].sparkplug_rebirth_interval == interval
    c = LineCore(state_will(config.lines[0], T0), config.stations)
    births(c)
    assert c.sparkplug is not None
    c.sparkplug.outgoing.clear()
    for gap in range(3):
        topic = "spBv1.0/plant/DDATA/edge1/pump1"
        payload = encode([Out(None, DataType.Float, 1.0, 10)], T0, 50 + 2 * gap)
        c.process(Message(topic, payload, T0 + timedelta(seconds=2 * gap)))
    assert _ncmds(c) == requests
    assert c.counters.rebirths == requests


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("-1", "line.sparkplug_rebirth_interval: "),
        ('"5s"', "line.sparkplug_rebirth_interval: "),
        ("7200", "line.sparkplug_rebirth_interval: "),
    ],
)
def test_rebirth_interval_errors_name_the_key(value: str, error: str) -> None:
    """A bad rebirth interval is refused with its key path."""
    text = CONFIG.replace("[line]\n", f"[line]\nsparkplug_rebirth_interval = {value}\n", 1)
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert error in str(info.value)


def _state(online: bool, stamp: int = 5) -> bytes:
    return orjson.dumps({"online": online, "timestamp": stamp})


def test_own_state_offline_is_answered_with_online() -> None:
    """An offline on kom's own STATE topic while connected makes it publish online again, with
    the will's timestamp; its own online, retained messages and other hosts' are left alone."""
    c = core()
    assert c.sparkplug is not None
    c.sparkplug.outgoing.clear()
    topic = "spBv1.0/STATE/scada1"
    c.process(Message(topic, _state(True), T0))
    c.process(Message(topic, _state(False), T0, retain=True))  # the SUBSCRIBE's copy
    c.process(Message("spBv1.0/STATE/other", _state(False), T0))
    c.process(Message(topic, b"not json", T0))
    assert c.sparkplug.outgoing == []
    c.process(Message(topic, _state(False), T0))
    ((out_topic, payload, qos, retain),) = c.sparkplug.outgoing
    assert (out_topic, qos, retain) == (topic, 1, True)
    assert orjson.loads(payload) == {"online": True, "timestamp": int(T0.timestamp() * 1000)}
    assert c.sparkplug.state_republished == 1
    assert "online published again" in c.sparkplug.problems[-1]


def test_own_state_topic_is_subscribed_beside_explicit_filters() -> None:
    """A host id adds its own STATE topic to a line's filters unless one already covers it."""
    explicit = CONFIG.replace("[line]\n", '[line]\ntopic_filter = "spBv1.0/plant/#"\n', 1)
    filters = [f.text for f in loads(explicit).lines[0].topic_filters]
    assert filters == ["spBv1.0/plant/#", "spBv1.0/STATE/scada1"]
    covered = CONFIG.replace("[line]\n", '[line]\ntopic_filter = "spBv1.0/#"\n', 1)
    assert [f.text for f in loads(covered).lines[0].topic_filters] == ["spBv1.0/#"]


def _birth_pressure(c: LineCore, quality: int | None) -> list[tuple[Quality, Reason | None]]:
    send(c, "NBIRTH", [Out("bdSeq", DataType.UInt64, 1)], 0)
    out = send(
        c, "DBIRTH", [Out("Pressure", DataType.Float, 4.25, 10, quality=quality)], 1, "pump1"
    )
    return [(u.quality, u.reason) for u in out.updates if u.tag == "pump.pressure"]


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (None, (Quality.VALID, None)),
        (192, (Quality.VALID, None)),
        (0, (Quality.INVALID, Reason.QUALITY)),
        (500, (Quality.INVALID, Reason.STALE)),
        (-1, (Quality.INVALID, Reason.QUALITY)),
    ],
)
def test_metric_quality_property(quality: int | None, expected: tuple[Quality, Reason]) -> None:
    """§6.4.9.1: a Quality property other than 192 (good) makes the tag invalid, not a decode
    error; 500 reads as stale."""
    c = core()
    assert _birth_pressure(c, quality) == [expected]
    assert c.counters.decode_errors == 0


def test_quality_detail_names_the_code() -> None:
    """The detail of a bad-quality value says which code the edge node sent."""
    c = core()
    send(c, "NBIRTH", [Out("bdSeq", DataType.UInt64, 1)], 0)
    out = send(c, "DBIRTH", [Out("Pressure", DataType.Float, 1.0, 10, quality=0)], 1, "pump1")
    (update,) = [u for u in out.updates if u.tag == "pump.pressure"]
    assert update.value is None
    assert update.detail == "pump.pressure: metric 'Pressure' has Quality 0 (bad) at the edge node"


def test_reload_keeps_the_state_will() -> None:
    """A reload with the same host id keeps the running STATE will (its timestamp), so the
    next CONNECT and its online STATE agree; another host id makes a new one."""
    config = loads(CONFIG)
    running = state_will(config.lines[0], T0).will
    later = T0 + timedelta(minutes=5)
    assert state_will(config.lines[0], later, running).will == running
    other = loads(CONFIG.replace('"scada1"', '"scada2"')).lines[0]
    will = state_will(other, later, running).will
    assert will is not None
    assert will.topic == "spBv1.0/STATE/scada2"
    assert orjson.loads(will.message)["timestamp"] == int(later.timestamp() * 1000)


def test_reload_with_a_host_id_needs_no_reconnection() -> None:
    """A running line with a host id (its STATE will made by kom) and the same file again are
    the same connection; another host id is not (the line reconnects with the new will)."""
    line = loads(CONFIG).lines[0]
    running = state_will(line, T0)
    assert _same_connection(running, line)
    other = loads(CONFIG.replace('"scada1"', '"scada2"')).lines[0]
    assert not _same_connection(running, other)
    changed = loads(CONFIG.replace("[line]\n", "[line]\nsparkplug_rebirth_interval = 9\n", 1))
    assert _same_connection(running, changed.lines[0])


def test_simulator_births_follow_the_rebirth_and_bdseq_rules() -> None:
    """The simulated NBIRTH has `Node Control/Rebirth` = false as a Boolean without an alias
    (§5.17) and bdSeq as an Int64 equal to its NDEATH's (§5.4); every other metric an alias."""
    node = EdgeNode()
    (topic, nbirth), *dbirths = node.births(T0)
    assert topic == "spBv1.0/plant/NBIRTH/edge1"
    metrics = {m.name: m for m in decode(nbirth).metrics}
    rebirth = metrics["Node Control/Rebirth"]
    assert (rebirth.alias, rebirth.datatype, rebirth.value()) == (None, DataType.Boolean, False)
    assert metrics["bdSeq"].datatype == DataType.Int64
    (death,) = decode(node.death()[1]).metrics
    assert (death.name, death.datatype, death.value()) == ("bdSeq", DataType.Int64, 0)
    others = [m for _, p in dbirths for m in decode(p).metrics]
    others += [m for m in metrics.values() if m.name != "Node Control/Rebirth"]
    assert all(m.alias is not None for m in others)


def test_own_offline_of_a_clean_stop_is_not_answered() -> None:
    """Once kom publishes its offline STATE to stop, the copy it receives is not answered."""
    c = core()
    assert c.sparkplug is not None
    c.sparkplug.outgoing.clear()
    offline = c.sparkplug.offline()
    assert offline is not None
    topic, payload = offline
    c.process(Message(topic, payload, T0))
    assert c.sparkplug.outgoing == []


def test_ddeath_marks_the_device_at_its_payload_time() -> None:
    """A DDEATH invalidates the device's tags (reason will) at the DDEATH's own timestamp (§5.7);
    they are received when they arrive."""
    c = core()
    births(c)
    died = T0 - timedelta(seconds=30)
    topic = "spBv1.0/plant/DDEATH/edge1/pump1"
    received = T0 + timedelta(seconds=1)
    out = c.process(Message(topic, encode([], died, 2), received))
    assert {u.tag for u in out.updates} == {"pump.pressure", "pump.started", "pump.mode"}
    assert {(u.reason, u.ts, u.received) for u in out.updates} == {(Reason.WILL, died, received)}
    assert c.counters.seq_gaps == 0


def test_host_application_uses_a_clean_session() -> None:
    """§5.3: a line with a host id has a clean session by default and refuses a persistent one."""
    assert loads(CONFIG).lines[0].effective_clean_session
    without = loads(CONFIG.replace('sparkplug_host_id = "scada1"\n', ""))
    assert not without.lines[0].effective_clean_session
    with pytest.raises(ConfigError) as info:
        loads(CONFIG.replace("[line]\n", "[line]\nclean_session = false\n", 1))
    assert "line.clean_session: a Sparkplug host application" in str(info.value)


def test_reconnection_asks_known_nodes_for_a_rebirth() -> None:
    """After kom's own connection comes back, each edge node it knew born is asked for a
    rebirth (its tags went comm; report by exception would leave quiet ones so)."""
    c = core()
    births(c)
    assert c.sparkplug is not None
    c.sparkplug.outgoing.clear()
    c.lost(T0)
    c.connected(2, T0 + timedelta(seconds=10))
    topics = [t for t, *_ in c.sparkplug.outgoing]
    assert topics == ["spBv1.0/STATE/scada1", "spBv1.0/plant/NCMD/edge1"]
    assert (c.counters.rebirths, c.station_counters["node"].rebirths) == (1, 1)
    assert "kom reconnected" in c.sparkplug.problems[-1]
    # A node that died meanwhile is not asked; the first connection asks nobody.
    send(c, "NDEATH", [Out("bdSeq", DataType.UInt64, 1)], None)
    c.sparkplug.outgoing.clear()
    c.connected(3, T0 + timedelta(seconds=20))
    assert [t for t, *_ in c.sparkplug.outgoing] == ["spBv1.0/STATE/scada1"]
