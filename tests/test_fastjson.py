"""The msgspec reader of a station's JSON fields gives read_many's answer, or gives up."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import Reason, loads
from kom._address import MISSING, compile_many
from kom._core import LineCore
from kom._fastjson import FAST_FAILURES, compile_fast
from kom._station import Message

from .strategies import documents_with_leaf, json_documents, json_keys

#: Paths into a document: keys and 0-based indexes, like parse_json_address makes.
paths = st.lists(st.one_of(json_keys, st.integers(0, 3)), min_size=1, max_size=4).map(tuple)


def general(steps: list[tuple[Any, ...]], payload: bytes) -> list[Any] | None:
    """What kom read before: orjson and the generated walk (None: orjson refuses it)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return compile_many(steps)(doc)


@given(
    st.lists(documents_with_leaf(), min_size=1, max_size=3),
    st.lists(paths, max_size=3),
    json_documents,
    st.booleans(),
)
def test_same_values_as_orjson_and_the_walk(
    leaves: list[tuple[Any, tuple[Any, ...], Any]],
    others: list[tuple[Any, ...]],
    doc: Any,
    ascii_only: bool,
) -> None:
    """For any document and paths, the fast reader gives read_many's values or gives up."""
    steps = [s for _, s, _ in leaves if s] + others
    if not steps:
        return
    for document in (doc, leaves[0][0]):
        payload = json.dumps(document, ensure_ascii=ascii_only).encode()
        reader = compile_fast(steps)
        if reader is None:
            continue
        try:
            fast = reader(payload)
        except FAST_FAILURES:
            continue
        assert fast == general(steps, payload)
        assert [v is MISSING for v in fast] == [v is MISSING for v in general(steps, payload) or []]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a":{"b":1.5,"c":"x"}}', [1.5, "x"]),
        (b'{"a":{"b":true}}', [True, MISSING]),
        (b'{"z":[1,{"k":2}],"a":{"c":null,"b":-0}}', [0, None]),
        (b'{"a":5}', "gives up"),  # not an object: orjson's walk says MISSING
        (b'{"a":null}', "gives up"),
        (b'{"a":{"b":18446744073709551615}}', "gives up"),  # beyond int64: orjson's own int
        (b'{"a":{"b":123456789012345678901234567890}}', "gives up"),  # orjson: a float
        (b'{"a":{"b":[1]}}', "gives up"),  # a container at a tag's address
        (b'{"a":{"b":NaN}}', "gives up"),
        (b'{"a":{"b":1}} trailing', "gives up"),
        (b'{"a":{"b":1},"x":"\\ud800"}', "gives up"),
        (b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "gives up"),
    ],
)
def test_reads_or_gives_up(payload: bytes, expected: Any) -> None:
    """Addressed fields are read; anything where orjson could answer otherwise gives up."""
    reader = compile_fast([("a", "b"), ("a", "c")])
    assert reader is not None
    if expected == "gives up":
        with pytest.raises(FAST_FAILURES):
            reader(payload)
    else:
        assert reader(payload) == expected


@pytest.mark.parametrize(
    "steps",
    [
        [(0,)],  # the root read as an array
        [("a",), ("a", "b")],  # a value read whole and inside
        [("a", 0), ("a", "b")],  # a node read as an array and as an object
        [("a", 0), ("a", 1, "b")],  # an array's elements read whole and inside
    ],
)
def test_paths_it_cannot_type(steps: list[tuple[Any, ...]]) -> None:
    """Paths that give no one msgspec type leave the station on the general path."""
    assert compile_fast(steps) is None


def test_array_elements_share_one_type() -> None:
    """Fields read in different elements of one array are read in each, in any order."""
    reader = compile_fast([("o", 0, "s"), ("o", 1, "l"), ("o", 1, "s"), ("o", 3, "s")])
    assert reader is not None
    payload = b'{"o":[{"s":1,"l":2},{"l":3,"s":4,"x":[]},{}]}'
    assert reader(payload) == general(
        [("o", 0, "s"), ("o", 1, "l"), ("o", 1, "s"), ("o", 3, "s")], payload
    )


CONFIG = """
[line]
name = "l"
host = "127.0.0.1"
topic_filter = "t/#"
payload_type = "json"
time_zone = "UTC"
time_field = "Agent.Time"
time_mask = "ISO"
[[station]]
name = "s"
address = "t/1"
[[station.tag]]
name = "count"
type = "Ci"
address = "JA=Data.Count"
[[station.tag]]
name = "big"
type = "Ai"
address = "JA=Data.Big"
"""


def updates(payload: bytes) -> list[tuple[Any, ...]]:
    cfg = loads(CONFIG)
    core = LineCore(cfg.lines[0], cfg.stations)
    msg = Message("t/1", payload, datetime(2026, 1, 1, tzinfo=UTC))
    return [(u.tag, u.value, u.quality.value, u.reason) for u in core.process(msg).updates]


def test_decoder_falls_back_for_big_integers() -> None:
    """An integer beyond 64 bits is read as orjson reads it (a float), as before."""
    payload = (
        b'{"Agent":{"Time":"2026-01-01T00:00:00Z"},'
        b'"Data":{"Count":5,"Big":123456789012345678901234567890}}'
    )
    assert updates(payload) == [
        ("s.count", 5, "valid", None),
        ("s.big", 1.2345678901234568e29, "valid", None),
    ]


def test_decoder_on_non_ascii_and_invalid_json() -> None:
    """Non-ASCII payloads and broken JSON take the general path with its reasons."""
    good = '{"Agent":{"Time":"2026-01-01T00:00:00Z"},"Data":{"Count":5,"Big":1,"n":"é"}}'
    assert updates(good.encode())[0] == ("s.count", 5, "valid", None)
    broken = updates(b'{"Agent":{"Time":"2026-01-01T00:00:00Z"},"Data":{"Count":5,}}')
    assert [u[3] for u in broken] == [Reason.PARSE, Reason.PARSE]


def test_decoder_skips_a_huge_number_no_tag_reads() -> None:
    """The one difference kept: 1e400 where no tag reads is skipped (orjson refused it)."""
    payload = b'{"Agent":{"Time":"2026-01-01T00:00:00Z"},"x":1e400,"Data":{"Count":5,"Big":2}}'
    assert updates(payload) == [("s.count", 5, "valid", None), ("s.big", 2.0, "valid", None)]
