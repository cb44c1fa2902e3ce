"""Tag addresses: the JA= grammar, its readers, JP= expressions and the address kinds (SPEC §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom._address import (
    MISSING,
    Address,
    AddressSyntaxError,
    Kind,
    Step,
    check_type,
    compile_many,
    compile_steps,
    format_json_address,
    parse_address,
    parse_json_address,
)
from kom._model import ValueType
from tests.strategies import documents_with_leaf

NETIO = orjson.loads((Path(__file__).parent / "data" / "netio-4all-state.json").read_bytes())


# --- the JA= grammar -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("a.b.c", ("a", "b", "c")),
        ("rx.gwrxf[1].time", ("rx", "gwrxf", 0, "time")),
        ("[1].batt_cell_v_avg", (0, "batt_cell_v_avg")),
        ("$", ()),
        ('a["x.y"]', ("a", "x.y")),
        ('["x.y"].z', ("x.y", "z")),
        ('a["x"]["y"]', ("a", "x", "y")),
        ('a["q\\"]"]', ("a", 'q"]')),
        ('a[""]', ("a", "")),
        ("[1][2]", (0, 1)),
        ("Outputs[10].State", ("Outputs", 9, "State")),
        ("a b.c-d", ("a b", "c-d")),
        ("温度.值", ("温度", "值")),
        ('["$"]', ("$",)),
    ],
)
def test_ja_accepted(text: str, steps: tuple[Step, ...]) -> None:
    """JA= paths: keys by dots, 1-based indexes, a leading index, `$`, quoted keys."""
    assert parse_json_address(text) == steps


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a..b", "empty key at position 3 in 'a..b'"),
        ("a[0]", "indexes start at 1, found [0] in 'a[0]'"),
        ("a[x]", "an index is a whole number from 1, found [x] in 'a[x]'"),
        ("a[-1]", "an index is a whole number from 1, found [-1]"),
        ("a[1.5]", "an index is a whole number from 1, found [1.5]"),
        ("a[ 1]", "an index is a whole number from 1"),
        ("a[\u0661]", "an index is a whole number from 1"),
        ("a[]", "an index is a whole number from 1, found []"),
        ("a[", "unclosed '[' at position 2 in 'a['"),
        ('a["x]', "unclosed '['"),
        ('a["x"', "unclosed '['"),
        ("", "an empty JSON address (use JA=$ for the whole payload)"),
        (".a", "empty key at position 1 in '.a'"),
        ("a.", "'a.' ends with a dot"),
        ("a.[1]", "a dot followed by '['"),
        ("a[1]b", "unexpected 'b' at position 5"),
        ("a[1]]", "unexpected ']'"),
        ('a["\\x"]', "bad quoted key"),
    ],
)
def test_ja_refused(text: str, message: str) -> None:
    """A malformed JA= path is an AddressSyntaxError that says where and what."""
    with pytest.raises(AddressSyntaxError) as info:
        parse_json_address(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("steps", "text"),
    [
        ((), "$"),
        (("a", "b"), "a.b"),
        ((0, "a", 1), "[1].a[2]"),
        (("a.b",), '["a.b"]'),
        (("x", "a.b"), 'x["a.b"]'),
        (("$",), '["$"]'),
        (("",), '[""]'),
        (("a[1]",), '["a[1]"]'),
        (('q"',), 'q"'),
        ((" padded ",), '[" padded "]'),
        (("x", " padded"), 'x[" padded"]'),
    ],
)
def test_ja_format(steps: tuple[Step, ...], text: str) -> None:
    """The formatter writes plain paths plainly and quotes what the grammar would misread."""
    assert format_json_address(steps) == text
    assert parse_json_address(text) == steps


# --- readers -------------------------------------------------------------------------------

DOC: Any = {
    "a": {"b": [10, {"c": "x"}], "s": "text", "n": None, "t": True, "i": 1, "e": [], "o": {}},
    "1": "key one",
    "list": [[1, 2], [3]],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b[1]", 10),
        ("a.b[2].c", "x"),
        ("a.s", "text"),
        ("a.n", None),
        ("a.t", True),
        ("a.e", []),
        ("a.o", {}),
        ("1", "key one"),
        ('["1"]', "key one"),
        ("list[1][2]", 2),
        ("list[2][1]", 3),
        ("$", DOC),
        # missing keys and indexes
        ("nothing", MISSING),
        ("a.nothing", MISSING),
        ("a.b[3]", MISSING),
        ("a.b[99999999999999999999]", MISSING),
        ("list[2][2]", MISSING),
        ("a.e[1]", MISSING),
        # stepping into something that is not an object or an array
        ("a.s.x", MISSING),
        ("a.s[1]", MISSING),
        ('a.s["0"]', MISSING),
        ("a.n.x", MISSING),
        ("a.n[1]", MISSING),
        ("a.t[1]", MISSING),
        ("a.i[1]", MISSING),
        ("a.i.x", MISSING),
        ("a.b[1].x", MISSING),
        # keys and indexes are not interchangeable, and true is not 1
        ("[1]", MISSING),
        ("a[1]", MISSING),
        ('list["1"]', MISSING),
        ("a.b.c", MISSING),
    ],
)
def test_reader(text: str, expected: object) -> None:
    """A compiled JA= reader finds the value, or MISSING without raising."""
    read = compile_steps(parse_json_address(text))
    found = read(DOC)
    if expected is MISSING:
        assert found is MISSING
    else:
        assert found == expected
        assert type(found) is type(expected)


@pytest.mark.parametrize("doc", ["text", 5, 1.5, True, None, [], {}, [1], ["a"], {"b": 1}])
@pytest.mark.parametrize("text", ["a", "a.b", "[1]", "[1].a", "a[1]", '["a"]'])
def test_reader_never_raises(doc: object, text: str) -> None:
    """Readers on documents of any shape return MISSING rather than raise."""
    read = compile_steps(parse_json_address(text))
    found = read(doc)
    assert found is MISSING or found in (1, "a")


@pytest.mark.parametrize(
    ("doc", "steps"),
    [
        ([True, False], (True,)),  # a bool step must not index a list as 1
        ({"1": "x"}, (0,)),  # an index does not read an object
        ("abc", (0,)),  # a string must not be indexed
        ("abc", (0, "a")),
        ({"a": "abc"}, ("a", 0)),
        ({"a": "abc"}, ("a", "0")),
    ],
)
def test_reader_no_confusion(doc: object, steps: tuple[Any, ...]) -> None:
    """Strings are not indexed, objects not indexed by number, and bools are no indexes."""
    assert compile_steps(steps)(doc) is MISSING


@settings(max_examples=200, deadline=None)
@given(documents_with_leaf())
def test_ja_round_trip(case: tuple[object, tuple[Step, ...], object]) -> None:
    """Property (a): any leaf of any document is read back through its formatted JA= path."""
    doc, steps, leaf = case
    text = format_json_address(steps)
    assert parse_json_address(text) == steps
    assert compile_steps(parse_json_address(text))(doc) is leaf


@settings(max_examples=200, deadline=None)
@given(documents_with_leaf())
def test_ja_round_trip_as_tag_address(case: tuple[object, tuple[Step, ...], object]) -> None:
    """The formatted path also survives as a whole tag address `JA=...` (which is stripped)."""
    doc, steps, leaf = case
    address = parse_address("JA=" + format_json_address(steps))
    assert address.kind is Kind.JSON
    assert address.steps == steps
    assert address.read is not None
    assert address.read(doc) is leaf


# --- JP= -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("JP=$.Outputs[?(@.ID==2)].State", 1),
        ("JP=$.Outputs[?(@.ID==3)].State", 0),
        ("JP=$.Outputs[?(@.ID==2)].Current", 1167),
        ("JP=$.Outputs[?(@.Load > 200)].ID", 2),
        ("JP=$.Outputs[?(@.ID==9)].State", MISSING),
        ("JP=$.GlobalMeasure.Voltage", 229.7),
        ("JP=$..TotalEnergy", 787),
        ("JP=$.Outputs[0].Name", "Power output 1"),
        ("JP=$.Agent.Nothing", MISSING),
        ("jp= $.Agent.Model", "NETIO 4All"),
    ],
)
def test_jsonpath_on_netio(text: str, expected: object) -> None:
    """JP= takes jsonpath-ng extended syntax (filters included); the first match, or MISSING."""
    address = parse_address(text)
    assert address.kind is Kind.JSONPATH
    assert address.read is not None
    found = address.read(NETIO)
    assert found is MISSING if expected is MISSING else found == expected


@pytest.mark.parametrize("doc", ["text", 5, None, [1, "a"], {"Outputs": "x"}, {"Outputs": [1]}])
def test_jsonpath_never_raises(doc: object) -> None:
    """A JP= filter over a document of unexpected shape gives MISSING, never an exception."""
    address = parse_address("JP=$.Outputs[?(@.ID==2)].State")
    assert address.read is not None
    assert address.read(doc) is MISSING


@pytest.mark.parametrize(
    "text", ["JP=", "JP=$.[", "JP=$..", "JP=$[?(@.a==", "JP=)", "JP=$.a[", "JP=@@@", "JP=$[?(]"]
)
def test_jsonpath_malformed(text: str) -> None:
    """A malformed JP= expression is an AddressSyntaxError when the address is parsed."""
    with pytest.raises(AddressSyntaxError):
        parse_address(text)


# --- address kinds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("IN_TOPIC", Kind.IN_TOPIC),
        ("in_data", Kind.IN_DATA),
        (" IN_ID ", Kind.IN_ID),
        ("ACK_ID", Kind.ACK_ID),
        ("OUT_TOPIC", Kind.OUT_TOPIC),
        ("OUT_VALUE", Kind.OUT_VALUE),
        ("JA=a", Kind.JSON),
        ("ja=a", Kind.JSON),
        ("JA= a.b ", Kind.JSON),
        ("JP=$.a", Kind.JSONPATH),
        ("TOPIC=device", Kind.TOPIC),
    ],
)
def test_address_kind(text: str, kind: Kind) -> None:
    """Address kinds are read in any case, with blanks around them ignored."""
    address = parse_address(text)
    assert address.kind is kind
    assert address.is_json is (kind in (Kind.JSON, Kind.JSONPATH))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("JX=foo", "unknown address 'JX=foo' (expected IN_TOPIC, IN_DATA, IN_ID, JA=, JP="),
        ("", "unknown address ''"),
        ("IN_TOPICS", "unknown address 'IN_TOPICS'"),
        ("JA=", "an empty JSON address"),
        ("TOPIC=", "TOPIC= takes a regex group name, found ''"),
        ("TOPIC=a-b", "TOPIC= takes a regex group name, found 'a-b'"),
        ("TOPIC=1a", "TOPIC= takes a regex group name"),
        ("PROP=colour", "PROP= takes one of content_type, response_topic, correlation_data,"),
        ("PROP=user:", "found 'user:'"),
    ],
)
def test_address_refused(text: str, message: str) -> None:
    """An unknown or incomplete address is an AddressSyntaxError listing what is expected."""
    with pytest.raises(AddressSyntaxError) as info:
        parse_address(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "props", "value"),
    [
        ("PROP=content_type", {"content_type": "text/plain"}, "text/plain"),
        ("prop= message_expiry_interval", {"message_expiry_interval": 9}, 9),
        ("PROP=correlation_data", {"correlation_data": b"r\xff1"}, "r\\xff1"),
        ("PROP=user:site", {"user_property": (("a", "1"), ("site", "n"), ("site", "s"))}, "n"),
        ("PROP=user:site", {"user_property": (("a", "1"),)}, MISSING),
        ("PROP=response_topic", {}, MISSING),
    ],
)
def test_prop_addresses_read_mqtt5_properties(
    text: str, props: dict[str, object], value: object
) -> None:
    """PROP= reads one PUBLISH property (the first user property of a key); absent is MISSING."""
    address = parse_address(text)
    assert address.kind is Kind.PROP
    assert address.read is not None
    assert address.read(props) == value


def test_address_steps_and_group() -> None:
    """A JA= address keeps its steps and a TOPIC= address its group; text is the stripped input."""
    ja = parse_address(" JA=rx.gwrxf[1].time ")
    assert (ja.text, ja.steps, ja.group) == (
        "JA=rx.gwrxf[1].time",
        ("rx", "gwrxf", 0, "time"),
        None,
    )
    topic = parse_address("TOPIC=dev")
    assert (topic.steps, topic.group, topic.read) == ((), "dev", None)
    assert parse_address("IN_ID") == Address("IN_ID", Kind.IN_ID)


@pytest.mark.parametrize(
    ("text", "value_type", "problem"),
    [
        ("IN_ID", ValueType.Ci, None),
        ("IN_ID", ValueType.Ai, "IN_ID needs type Ci, found Ai"),
        ("ACK_ID", ValueType.Co, None),
        ("ACK_ID", ValueType.Ci, "ACK_ID needs type Co, found Ci"),
        ("IN_TOPIC", ValueType.TxtI, None),
        ("IN_DATA", ValueType.TxtO, "IN_DATA needs type TxtI, found TxtO"),
        ("OUT_TOPIC", ValueType.TxtO, None),
        ("OUT_VALUE", ValueType.TxtI, "OUT_VALUE needs type TxtO, found TxtI"),
        ("JA=a", ValueType.TiA, None),
        ("JA=a", ValueType.Ao, None),
        ("JA=a", ValueType.TxtO, None),
        ("JA=a", ValueType.ToR, None),
        ("JP=$.a", ValueType.Qi, None),
        ("JP=$.a", ValueType.Co, None),
        ("TOPIC=g", ValueType.Do, None),
        ("BIN=d@0:u8", ValueType.ToA, None),
    ],
)
def test_check_type(text: str, value_type: ValueType, problem: str | None) -> None:
    """Fixed addresses take one type; JSON, topic and binary addresses take every type."""
    assert check_type(parse_address(text), value_type) == problem


@settings(max_examples=200, deadline=None)
@given(st.lists(documents_with_leaf(), min_size=1, max_size=5), st.data())
def test_one_reader_for_many_paths_reads_as_each_alone(
    cases: list[tuple[object, tuple[Step, ...], object]], data: st.DataObject
) -> None:
    """The generated reader of a station's JA= paths (shared prefixes walked once) finds, on any
    document, what each path's own reader finds: present leaves and MISSING alike."""
    doc = cases[0][0]
    paths = [steps for _, steps, _ in cases]
    paths += data.draw(st.lists(st.sampled_from(paths).map(lambda p: (*p[:-1], 0)), max_size=2))
    found = compile_many(paths)(doc)
    assert len(found) == len(paths)
    for value, steps in zip(found, paths, strict=True):
        alone = compile_steps(steps)(doc)
        assert value is alone or (value == alone and type(value) is type(alone))
