"""JSON with a bare dotted version number, as NETIO firmware 2.5.x writes `Agent.Version`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import Reason, load
from kom._core import LineCore
from kom._lenient import loads
from kom._station import Message

from .test_decode import values

ROOT = Path(__file__).resolve().parent.parent
NETIO_TOPIC = "devices/netio-4All-25E0/messages/events/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"Version":2.5.4}', {"Version": "2.5.4"}),
        (b'{"a":{"Version": 3.1.0 ,"b":1}}', {"a": {"Version": "3.1.0", "b": 1}}),
        (b'{"v":[1, 2.5.4.1]}', {"v": [1, "2.5.4.1"]}),
        ('{"Version":2.5.4}', {"Version": "2.5.4"}),
        (b'{"Version":2.5}', {"Version": 2.5}),
    ],
)
def test_a_bare_version_is_read_as_its_text(text: bytes | str, expected: object) -> None:
    """A value like 2.5.4, no JSON number, is read as the text "2.5.4"; the rest as JSON."""
    assert loads(text) == expected


@pytest.mark.parametrize("text", [b'{"Version":2.5.4', b'{"Version":2..4}', b"{'a':1}", b"nope"])
def test_what_is_not_json_even_so_is_refused_as_sent(text: bytes) -> None:
    """A document the repair does not mend raises orjson's error about the document as sent."""
    with pytest.raises(orjson.JSONDecodeError) as info:
        loads(text)
    with pytest.raises(orjson.JSONDecodeError) as strict:
        orjson.loads(text)
    assert str(info.value) == str(strict.value)


INT64 = st.integers(-(2**63), 2**63 - 1)


@given(st.recursive(st.none() | st.booleans() | INT64 | st.text(), st.lists))
def test_valid_json_reads_as_orjson_reads_it(value: object) -> None:
    """Any well-formed document reads exactly as orjson reads it."""
    text = orjson.dumps(value)
    assert loads(text) == orjson.loads(text)


def test_the_netio_profile_reads_a_power_din_document_with_a_bare_version() -> None:
    """The 4PZ's netio.json of the NETIO documents (Version 2.5.4 unquoted) fills the profile."""
    cfg = load(ROOT / "examples" / "netio-4all.toml")
    core = LineCore(cfg.lines[0], cfg.stations)
    payload = (ROOT / "tests" / "data" / "netio-4pz-fw254.json").read_bytes()
    got = values(core.process(Message(NETIO_TOPIC, payload, datetime.now(UTC))).updates)
    assert got["firmware"] == "2.5.4"
    assert got["model"] == "4PZ"
    assert got["in1_s0_counter"] == 55
    assert got["out3_load"] is Reason.MISSING  # a free contact: no metering
    assert Reason.PARSE not in got.values()
