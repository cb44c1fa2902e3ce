"""Each edge node's state in a host application: births, aliases, seq, bdSeq, rebirths (§5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom.sparkplug._host import REBIRTH_METRIC, Host, Kind, Outcome, Problem
from kom.sparkplug._payload import DataType, Out, decode, encode
from kom.sparkplug._topic import parse_topic

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
G, N = "plant", "edge1"


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{G}/{kind}/{N}" + (f"/{device}" if device else "")


def feed(
    host: Host,
    kind: str,
    metrics: list[Out],
    seq: int | None,
    device: str | None = None,
    *,
    at: datetime = T0,
) -> Outcome:
    parsed = parse_topic(topic(kind, device))
    assert parsed is not None
    return host.receive(parsed, encode(metrics, at, seq), at)


def born(host: Host, bd_seq: int = 4) -> None:
    feed(
        host,
        "NBIRTH",
        [Out("bdSeq", DataType.UInt64, bd_seq), Out("Temp", DataType.Double, 1.0, 1)],
        0,
    )
    feed(
        host,
        "DBIRTH",
        [Out("Level", DataType.Int16, -2, 10), Out("Name", DataType.String, "a", 11)],
        1,
        "d1",
    )


def test_birth_declares_names_aliases_and_values() -> None:
    """An NBIRTH and a DBIRTH give every metric's value, stamped with the payload time."""
    host = Host()
    out = feed(
        host, "NBIRTH", [Out("bdSeq", DataType.UInt64, 4), Out("Temp", DataType.Double, 1.5, 1)], 0
    )
    (event,) = out.events
    assert (event.kind, event.key) == (Kind.BIRTH, "plant/edge1")
    assert [(v.name, v.value, v.ts) for v in event.values] == [("bdSeq", 4, T0), ("Temp", 1.5, T0)]
    assert out.rebirth is None
    node = host.nodes[G, N]
    assert (node.born, node.bd_seq, node.seq) == (True, 4, 0)
    assert repr(node) == "<Node plant/edge1 born seq=0 devices=0>"
    assert repr(host) == "<Host nodes=1>"


def test_data_by_alias_resolves_to_birth_names_and_datatypes() -> None:
    """DDATA with aliases only (and no datatype) reads as the DBIRTH declared them."""
    host = Host()
    born(host)
    message = encode([Out(None, DataType.Int16, -7, 10)], T0, 2)
    raw = decode(message)
    assert raw.metrics[0].name is None
    # The datatype left out, as some edge nodes do: the BIRTH's (Int16) gives the sign.
    from kom.sparkplug import sparkplug_b_pb2 as pb

    p = pb.Payload(seq=2, timestamp=1)
    p.metrics.add(alias=10, int_value=(-7) & 0xFFFFFFFF)
    parsed = parse_topic(topic("DDATA", "d1"))
    assert parsed is not None
    out = host.receive(parsed, p.SerializeToString(), T0)
    (event,) = out.events
    assert (event.kind, event.key) == (Kind.DATA, "plant/edge1/d1")
    assert [(v.name, v.value) for v in event.values] == [("Level", -7)]
    assert out.rebirth is None


def test_metric_time_is_the_source_time() -> None:
    """A metric's own timestamp wins over the payload's; without either, the receive time."""
    host = Host()
    born(host)
    own = T0 - timedelta(minutes=5)
    out = feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10, timestamp=own)], 2, "d1")
    assert out.events[0].values[0].ts == own


@pytest.mark.parametrize(
    ("seqs", "rebirths"),
    [
        ([2, 3, 4], 0),  # in order after the births (0, 1)
        ([2, 4], 1),  # one lost
        ([3], 1),  # the first after the births lost
        ([2, 2], 1),  # repeated
        ([2, 3, 9, 10, 20], 1),  # two gaps within the rate limit: one request
    ],
)
def test_seq_gap_requests_a_rebirth(seqs: list[int], rebirths: int) -> None:
    """A DATA seq other than the previous + 1 asks the node for a rebirth, rate-limited."""
    host = Host()
    born(host)
    requests = [
        feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10)], s, "d1").rebirth for s in seqs
    ]
    sent = [r for r in requests if r is not None]
    assert len(sent) == rebirths
    for topic_, data in sent:
        assert topic_ == "spBv1.0/plant/NCMD/edge1"
        (metric,) = decode(data).metrics
        assert (metric.name, metric.value()) == (REBIRTH_METRIC, True)


def test_seq_wraps_at_256() -> None:
    """After 255 comes 0 (§6.4.5), not a gap."""
    host = Host()
    born(host)
    host.nodes[G, N].seq = 254
    assert feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10)], 255, "d1").rebirth is None
    assert feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10)], 0, "d1").rebirth is None


def test_rebirth_rate_limit_opens_again() -> None:
    """A second gap after the rebirth interval asks again."""
    host = Host(rebirth_interval=5)
    born(host)
    assert feed(host, "DDATA", [], 9, "d1", at=T0).rebirth is not None
    assert feed(host, "DDATA", [], 20, "d1", at=T0 + timedelta(seconds=4)).rebirth is None
    assert feed(host, "DDATA", [], 30, "d1", at=T0 + timedelta(seconds=6)).rebirth is not None
    assert host.nodes[G, N].rebirths == 2


def test_unknown_alias_requests_a_rebirth_and_is_skipped() -> None:
    """An alias no BIRTH declared is left out of the values and asks for a rebirth."""
    host = Host()
    born(host)
    out = feed(
        host, "DDATA", [Out(None, DataType.Int16, 1, 99), Out(None, DataType.Int16, 3, 10)], 2, "d1"
    )
    assert [v.name for v in out.events[0].values] == ["Level"]
    assert out.rebirth is not None
    assert out.problems[0].kind is Problem.UNKNOWN_ALIAS
    assert "alias 99" in out.problems[0].text


def test_node_alias_is_not_a_device_alias() -> None:
    """An alias declared by the node's NBIRTH does not resolve in a device's DDATA."""
    host = Host()
    born(host)
    out = feed(host, "DDATA", [Out(None, DataType.Double, 1.0, 1)], 2, "d1")
    assert out.rebirth is not None
    assert out.events[0].values == []


@pytest.mark.parametrize("kind", ["NDATA", "DDATA", "DBIRTH", "DDEATH"])
def test_messages_of_an_unborn_node_request_a_rebirth(kind: str) -> None:
    """Without an NBIRTH nothing can be resolved: no values, a rebirth request."""
    host = Host()
    device = "d1" if kind.startswith("D") else None
    out = feed(host, kind, [Out("x", DataType.Boolean, True)], 5, device)
    assert out.events == []
    assert out.rebirth is not None


def test_data_of_an_unborn_device_requests_a_rebirth() -> None:
    """DDATA of a device without a DBIRTH is not guessed at."""
    host = Host()
    born(host)
    out = feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10)], 2, "d2")
    assert out.events == []
    assert out.rebirth is not None


def test_ndeath_with_the_birth_bdseq_kills_node_and_devices() -> None:
    """An NDEATH with the NBIRTH's bdSeq is the death of the node and of its born devices."""
    host = Host()
    born(host, bd_seq=4)
    out = feed(host, "NDEATH", [Out("bdSeq", DataType.UInt64, 4)], None)
    assert [(e.kind, e.key) for e in out.events] == [
        (Kind.DEATH, "plant/edge1"),
        (Kind.DEATH, "plant/edge1/d1"),
    ]
    assert not host.nodes[G, N].born
    # DATA after the death, before a new birth: a rebirth request.
    assert feed(host, "NDATA", [], 2).rebirth is not None


def test_ndeath_of_an_older_session_is_ignored() -> None:
    """An NDEATH whose bdSeq is not the current NBIRTH's (a late will) changes nothing."""
    host = Host()
    born(host, bd_seq=5)
    out = feed(host, "NDEATH", [Out("bdSeq", DataType.UInt64, 4)], None)
    assert out.events == []
    assert host.nodes[G, N].born
    assert host.stale_deaths == 1
    assert out.problems[0].kind is Problem.STALE_DEATH
    assert "bdSeq 4" in out.problems[0].text


def test_ddeath_then_dbirth() -> None:
    """DDEATH kills the device alone; its next DBIRTH brings it back with values."""
    host = Host()
    born(host)
    out = feed(host, "DDEATH", [], 2, "d1")
    assert [(e.kind, e.key) for e in out.events] == [(Kind.DEATH, "plant/edge1/d1")]
    assert feed(host, "DDATA", [Out(None, DataType.Int16, 1, 10)], 3, "d1").events == []
    host = Host()
    born(host)
    feed(host, "DDEATH", [], 2, "d1")
    again = feed(host, "DBIRTH", [Out("Level", DataType.Int16, 5, 10)], 3, "d1")
    assert [(e.kind, [v.value for v in e.values]) for e in again.events] == [(Kind.BIRTH, [5])]


def test_new_nbirth_forgets_the_old_session() -> None:
    """A new NBIRTH resets seq and aliases, and devices must birth again."""
    host = Host()
    born(host)
    feed(host, "NBIRTH", [Out("bdSeq", DataType.UInt64, 5)], 0)
    node = host.nodes[G, N]
    assert (node.bd_seq, node.seq, node.devices, node.aliases) == (5, 0, {}, {})


def test_bad_payload_is_counted_not_raised() -> None:
    """A payload that does not decode is a problem and a count, never an exception."""
    host = Host()
    parsed = parse_topic(topic("NDATA"))
    assert parsed is not None
    out = host.receive(parsed, b"\xff\xff", T0)
    assert out.events == []
    assert host.decode_errors == 1


def test_commands_are_ignored() -> None:
    """NCMD/DCMD on the broker are what hosts send; a host does not read them."""
    host = Host()
    parsed = parse_topic(topic("NCMD"))
    assert parsed is not None
    assert host.receive(parsed, b"", T0).ignored


def test_command_by_alias_when_the_birth_gave_one() -> None:
    """A write to a declared metric goes by alias with the BIRTH's datatype; else by name."""
    host = Host()
    born(host)
    topic_, data = host.command(("plant", "edge1", "d1"), "Level", DataType.Int64, -3, T0)
    assert topic_ == "spBv1.0/plant/DCMD/edge1/d1"
    (m,) = decode(data).metrics
    # By alias, without the datatype (§6.4.6): the edge node knows it from its BIRTH.
    assert (m.name, m.alias, m.datatype, m.value(DataType.Int16)) == (None, 10, 0, -3)
    topic_, data = host.command(("plant", "edge1"), "Other", DataType.Boolean, True, T0)
    assert topic_ == "spBv1.0/plant/NCMD/edge1"
    (m,) = decode(data).metrics
    assert (m.name, m.alias, m.value()) == ("Other", None, True)


@given(st.lists(st.integers(0, 255), max_size=30))
def test_rebirth_requested_exactly_when_seq_breaks(seqs: list[int]) -> None:
    """Without rate limiting, a DATA asks for a rebirth exactly when its seq is not last + 1."""
    host = Host(rebirth_interval=0)
    born(host)
    last = 1
    for s in seqs:
        out = feed(host, "DDATA", [], s, "d1")
        assert (out.rebirth is not None) == (s != (last + 1) % 256)
        last = s


def test_topics() -> None:
    """Sparkplug topics parse to group, type, node, device; others and STATE do not."""
    assert parse_topic("spBv1.0/g/DDATA/n/d") == ("g", "DDATA", "n", "d")
    assert parse_topic("spBv1.0/g/NBIRTH/n") == ("g", "NBIRTH", "n", None)
    for text in (
        "spBv1.0/STATE/kom",
        "spBv1.0/g/DDATA/n",
        "spBv1.0/g/NDATA/n/d",
        "a/b",
        "spBv1.0//NDATA/n",
    ):
        assert parse_topic(text) is None
