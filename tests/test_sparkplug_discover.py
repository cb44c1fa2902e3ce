"""Discovery: what BIRTHs declared, listed, and a stations.toml fragment that loads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kom import loads
from kom.sparkplug._discover import fragment, listing, tag_type
from kom.sparkplug._host import Host
from kom.sparkplug._payload import DataType, Out, encode
from kom.sparkplug._topic import parse_topic

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def host_with_births() -> Host:
    host = Host()
    for topic, metrics, seq in (
        (
            "spBv1.0/g1/NBIRTH/n1",
            [
                Out("bdSeq", DataType.UInt64, 0),
                Out("Node Control/Rebirth", DataType.Boolean, False, 1),
            ],
            0,
        ),
        (
            "spBv1.0/g1/DBIRTH/n1/d-1",
            [
                Out("Motor 1/Amps", DataType.Float, 1.5, 2),
                Out("1st", DataType.Int8, 1, 3),
                Out("1st.", DataType.String, "x", 4),
            ],
            1,
        ),
        ("spBv1.0/g2/NBIRTH/n1", [Out("When", DataType.DateTime, T0)], 0),
    ):
        parsed = parse_topic(topic)
        assert parsed is not None
        host.receive(parsed, encode(metrics, T0, seq), T0)
    return host


def test_listing() -> None:
    """Groups, then each node and device with its metrics' names, datatypes and aliases."""
    assert listing(host_with_births()).splitlines() == [
        "group g1",
        "node g1/n1: 2 metrics",
        "  Node Control/Rebirth  Boolean alias 1",
        "  bdSeq  UInt64",
        "device g1/n1/d-1: 3 metrics",
        "  1st  Int8 alias 3",
        "  1st.  String alias 4",
        "  Motor 1/Amps  Float alias 2",
        "group g2",
        "node g2/n1: 1 metric",
        "  When  DateTime",
    ]


def test_fragment_loads_with_valid_names() -> None:
    """The fragment loads: names made valid and distinct, protocol metrics left out."""
    loaded = loads('[line]\nhost = "h"\n' + fragment(host_with_births()))
    stations = {s.name: s for s in loaded.stations}
    assert list(stations) == ["g1_n1", "g1_n1_d-1", "g2_n1"]
    assert stations["g1_n1"].tags == ()
    device = stations["g1_n1_d-1"]
    assert [(t.name, t.type.value, t.address.text if t.address else None) for t in device.tags] == [
        ("_1st", "Ci", "SPB=1st"),
        ("_1st_2", "TxtI", "SPB=1st."),
        ("Motor_1_Amps", "Ai", "SPB=Motor 1/Amps"),
    ]
    assert [t.type.value for t in stations["g2_n1"].tags] == ["TiA"]


@pytest.mark.parametrize(
    ("datatype", "expected"),
    [
        (DataType.Int64, "Ci"),
        (DataType.UInt8, "Ci"),
        (DataType.Double, "Ai"),
        (DataType.Boolean, "Di"),
        (DataType.DateTime, "TiA"),
        (DataType.Text, "TxtI"),
        (DataType.DataSet, "TxtI"),
        (DataType.BooleanArray, "TxtI"),
        (99, "TxtI"),
    ],
)
def test_tag_types(datatype: int, expected: str) -> None:
    """Each datatype suggests the input type its values convert to."""
    assert tag_type(datatype).value == expected
