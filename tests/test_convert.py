"""Payload values to tag values, write values, and the record format of values (SPEC §4, §9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom._convert import converter, format_time, format_value, parse_write_value
from kom._errors import ConversionError
from kom._model import Value, ValueType
from kom._timemask import DEFAULT_MASK, TimeMask, Zone
from tests.strategies import durations, instants, json_values

MASK = TimeMask.parse(DEFAULT_MASK)
PLUS1 = Zone.parse("+01:00")
NAN = float("nan")
INF = float("inf")


def convert(value_type: ValueType, raw: object) -> Value:
    """`raw` converted for a tag of `value_type` with the default mask, in UTC."""
    return converter(value_type, MASK, Zone.UTC)(raw)


def same(a: object, b: object) -> bool:
    """Equal, and of the same type (so that True is not taken for 1 or 1.0)."""
    return type(a) is type(b) and a == b


ACCEPTED = [
    # analog
    (ValueType.Ai, 230.1, 230.1),
    (ValueType.Ai, 230, 230.0),
    (ValueType.Ai, -0.0, -0.0),
    (ValueType.Ai, True, 1.0),
    (ValueType.Ai, False, 0.0),
    (ValueType.Ai, "230.1", 230.1),
    (ValueType.Ai, "+58,890", 58.89),
    (ValueType.Ai, "  -1,5 ", -1.5),
    (ValueType.Ai, "1e3", 1000.0),
    (ValueType.Ai, "42", 42.0),
    (ValueType.Ai, ".5", 0.5),
    (ValueType.Ao, 2**63, 9.223372036854776e18),
    # integer
    (ValueType.Ci, 42, 42),
    (ValueType.Ci, -(2**63), -(2**63)),
    (ValueType.Ci, 2**63 - 1, 2**63 - 1),
    (ValueType.Ci, 42.0, 42),
    (ValueType.Ci, True, 1),
    (ValueType.Ci, "42", 42),
    (ValueType.Ci, " -7 ", -7),
    (ValueType.Ci, "+7", 7),
    (ValueType.Ci, "42.0", 42),
    (ValueType.Ci, "9223372036854775807", 2**63 - 1),
    (ValueType.Co, "1e3", 1000),
    # digital
    (ValueType.Di, True, True),
    (ValueType.Di, False, False),
    (ValueType.Di, 1, True),
    (ValueType.Di, 0, False),
    (ValueType.Di, 1.0, True),
    (ValueType.Di, 0.0, False),
    (ValueType.Di, "true", True),
    (ValueType.Di, "FALSE", False),
    (ValueType.Di, "On", True),
    (ValueType.Di, " off ", False),
    (ValueType.Di, "1", True),
    (ValueType.Do, "0", False),
    # quaternary
    (ValueType.Qi, 0, 0),
    (ValueType.Qi, 3, 3),
    (ValueType.Qi, 2.0, 2),
    (ValueType.Qi, True, 1),
    (ValueType.Qi, "off", 0),
    (ValueType.Qi, "ON", 1),
    (ValueType.Qi, "Trans", 2),
    (ValueType.Qi, " err ", 3),
    (ValueType.Qi, "2", 2),
    # text
    (ValueType.TxtI, "hello", "hello"),
    (ValueType.TxtI, "", ""),
    (ValueType.TxtI, None, "null"),
    (ValueType.TxtI, True, "true"),
    (ValueType.TxtI, 1.5, "1.5"),
    (ValueType.TxtI, 2**70, "1180591620717411303424"),
    (ValueType.TxtI, {"a": [1, "ü"]}, '{"a":[1,"ü"]}'),
    (ValueType.TxtO, [], "[]"),
    (ValueType.TxtI, NAN, "null"),  # JSON has no NaN; orjson writes null
    # absolute time (default mask, UTC)
    (ValueType.TiA, "2026-01-05 10:00:00.123", datetime(2026, 1, 5, 10, 0, 0, 123000, UTC)),
    (ValueType.ToA, "2026-01-05 10:00:00.123+01:00", datetime(2026, 1, 5, 9, 0, 0, 123000, UTC)),
    # relative time
    (ValueType.TiR, 90, timedelta(seconds=90)),
    (ValueType.TiR, 1.5, timedelta(seconds=1.5)),
    (ValueType.TiR, -5, timedelta(seconds=-5)),
    (ValueType.TiR, "90", timedelta(seconds=90)),
    (ValueType.TiR, "-2,5", timedelta(seconds=-2.5)),
    (ValueType.TiR, "00:05:00", timedelta(minutes=5)),
    (ValueType.TiR, "01:02:03.5", timedelta(hours=1, minutes=2, seconds=3.5)),
    (ValueType.TiR, "100:00:00", timedelta(hours=100)),
    (ValueType.TiR, " 0:00:01,25 ", timedelta(seconds=1.25)),
    (ValueType.ToR, "00:00:00.1234567", timedelta(microseconds=123456)),
]


@pytest.mark.parametrize(("value_type", "raw", "expected"), ACCEPTED)
def test_accepted(value_type: ValueType, raw: object, expected: Value) -> None:
    """Each accepted payload form of SPEC §4 converts to the tag's Python type and value."""
    assert same(convert(value_type, raw), expected)


REFUSED = [
    # analog
    (ValueType.Ai, None, "expected a number, found null"),
    (ValueType.Ai, "abc", "expected a number, found 'abc'"),
    (ValueType.Ai, "", "expected a number, found ''"),
    (ValueType.Ai, NAN, "expected a finite number, found nan"),
    (ValueType.Ai, -INF, "expected a finite number, found -inf"),
    (ValueType.Ai, "NaN", "expected a finite number, found 'NaN'"),
    (ValueType.Ai, "inf", "expected a finite number, found 'inf'"),
    (ValueType.Ai, "1e999", "expected a finite number, found '1e999'"),
    (ValueType.Ai, "1_000", "expected a number"),
    (ValueType.Ai, "١٢", "expected a number"),
    (ValueType.Ai, "1,234.5", "expected a number"),
    (ValueType.Ai, "1,2,3", "expected a number"),
    (ValueType.Ai, 10**400, "expected a number within the float range"),
    (ValueType.Ai, [1], "expected a number, found [1]"),
    (ValueType.Ai, {"v": 1}, "expected a number, found {'v': 1}"),
    (ValueType.Ai, "9" * 200, "expected a number"),
    # integer
    (ValueType.Ci, 1.5, "expected an integer, found 1.5"),
    (ValueType.Ci, "1.5", "expected an integer, found '1.5'"),
    (ValueType.Ci, 2**63, "expected a 64-bit integer, found 9223372036854775808"),
    (ValueType.Ci, -(2**63) - 1, "expected a 64-bit integer"),
    (ValueType.Ci, 1e300, "expected a 64-bit integer"),
    (ValueType.Ci, NAN, "expected a finite number"),
    (ValueType.Ci, "inf", "expected a finite number"),
    (ValueType.Ci, None, "expected an integer, found null"),
    (ValueType.Ci, "abc", "expected an integer"),
    # digital
    (ValueType.Di, 2, "expected true/false/on/off/1/0, found 2"),
    (ValueType.Di, 0.5, "expected true/false/on/off/1/0"),
    (ValueType.Di, NAN, "expected true/false/on/off/1/0"),
    (ValueType.Di, "yes", "expected true/false/on/off/1/0, found 'yes'"),
    (ValueType.Di, "1.0", "expected true/false/on/off/1/0"),
    (ValueType.Di, "", "expected true/false/on/off/1/0"),
    (ValueType.Di, None, "expected true/false/on/off/1/0, found null"),
    (ValueType.Di, [True], "expected true/false/on/off/1/0"),
    # quaternary
    (ValueType.Qi, 4, "expected 0..3 or off/on/trans/err, found 4"),
    (ValueType.Qi, -1, "expected 0..3 or off/on/trans/err"),
    (ValueType.Qi, 1.5, "expected 0..3 or off/on/trans/err"),
    (ValueType.Qi, "error", "expected 0..3 or off/on/trans/err, found 'error'"),
    (ValueType.Qi, "4", "expected 0..3 or off/on/trans/err"),
    (ValueType.Qi, None, "expected 0..3 or off/on/trans/err, found null"),
    (ValueType.Qi, INF, "expected 0..3 or off/on/trans/err"),
    # text: only what cannot be written as JSON
    (ValueType.TxtI, {1: object()}, "expected a JSON value"),
    # absolute time
    (ValueType.TiA, "2026-13-05 10:00:00.123", "month must be in 1..12"),
    (ValueType.TiA, 1767607200, f"expected a time like {DEFAULT_MASK!r}, found 1767607200"),
    (ValueType.TiA, None, "found null"),
    # relative time
    (ValueType.TiR, True, "expected seconds or hh:mi:ss[.fff], found true"),
    (ValueType.TiR, None, "expected seconds or hh:mi:ss[.fff], found null"),
    (ValueType.TiR, "-00:05:00", "expected seconds or hh:mi:ss[.fff], found '-00:05:00'"),
    (ValueType.TiR, "05:00", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, "00:60:00", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, "00:00:60", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, "0:0:0", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, "00:00:00.", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, "abc", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, NAN, "expected a finite number"),
    (ValueType.TiR, "inf", "expected a finite number"),
    (ValueType.TiR, 1e300, "expected a duration within"),
    (ValueType.TiR, "1234567890:00:00", "expected seconds or hh:mi:ss[.fff]"),
    (ValueType.TiR, [60], "expected seconds or hh:mi:ss[.fff]"),
]


@pytest.mark.parametrize(("value_type", "raw", "message"), REFUSED)
def test_refused(value_type: ValueType, raw: object, message: str) -> None:
    """Each refused form is a ConversionError that says what was expected and found."""
    with pytest.raises(ConversionError) as info:
        convert(value_type, raw)
    assert message in str(info.value)
    assert info.value.found is raw


def test_found_is_cut_short() -> None:
    """A long value is cut to about 60 characters in the message but kept whole in `found`."""
    raw = "x" * 500
    with pytest.raises(ConversionError) as info:
        convert(ValueType.Ai, raw)
    assert len(str(info.value)) < 100
    assert info.value.found is raw


def test_abstime_uses_mask_and_zone() -> None:
    """An absolute time tag reads with the line's mask and zone."""
    read = converter(ValueType.TiA, TimeMask.parse("UNIXMS"), PLUS1)
    assert read(1767607200123) == datetime(2026, 1, 5, 10, 0, 0, 123000, UTC)
    local = converter(ValueType.TiA, MASK, PLUS1)
    assert local("2026-01-05 10:00:00.000") == datetime(2026, 1, 5, 9, tzinfo=UTC)


PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "analog": (float,),
    "integer": (int,),
    "digital": (bool,),
    "quaternary": (int,),
    "text": (str,),
    "abstime": (datetime,),
    "reltime": (timedelta,),
}


@given(
    raw=json_values,
    value_type=st.sampled_from(ValueType),
    mask=st.sampled_from(["ISO", "UNIX", "UNIXMS", DEFAULT_MASK]),
)
def test_any_json_value(raw: object, value_type: ValueType, mask: str) -> None:
    """Any JSON value gives a value of the tag's Python type or a ConversionError, nothing else."""
    try:
        value = converter(value_type, TimeMask.parse(mask), PLUS1)(raw)
    except ConversionError:
        return
    assert type(value) in PYTHON_TYPES[value_type.kind]
    if value_type.kind == "integer":
        assert -(2**63) <= value < 2**63  # type: ignore[operator]
    if value_type.kind == "quaternary":
        assert value in (0, 1, 2, 3)
    if value_type.kind == "abstime":
        assert value.tzinfo is UTC  # type: ignore[union-attr]


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_analog_text_round_trip(value: float) -> None:
    """A float's text, with a point or a decimal comma, converts back to the same float."""
    assert convert(ValueType.Ai, repr(value)) == value
    assert convert(ValueType.Ai, repr(value).replace(".", ",")) == value


@given(value=st.integers(-(2**63), 2**63 - 1))
def test_integer_text_round_trip(value: int) -> None:
    """Any 64-bit integer's text converts back to the same integer exactly."""
    assert convert(ValueType.Ci, str(value)) == value


@given(value=durations)
def test_reltime_round_trip(value: timedelta) -> None:
    """A duration written as record seconds converts back to the same duration (to 2**33 s)."""
    assert convert(ValueType.TiR, format_value(value)) == value


# --- records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 11, 22, 10, 0, 0, 123456, UTC), "2026-11-22T10:00:00.123Z"),
        (
            datetime(2026, 11, 22, 11, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-22T10:00:00.000Z",
        ),
        (datetime(2026, 11, 22, 10), "2026-11-22T10:00:00.000Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000Z"),
        (timedelta(minutes=5, milliseconds=1), 300.001),
        (timedelta(seconds=-1.5), -1.5),
        (230.1, 230.1),
        (True, True),
        (7, 7),
        ("text", "text"),
        (None, None),
    ],
)
def test_format_value(value: Value, expected: object) -> None:
    """Records carry times as ISO 8601 UTC text with milliseconds and Z, durations as seconds."""
    assert same(format_value(value), expected)


@given(t=instants(1, 9998))
def test_format_time_matches_isoformat(t: datetime) -> None:
    """format_time agrees with datetime.isoformat cut to milliseconds, for every year."""
    assert format_time(t) == t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert TimeMask.parse("ISO").read(format_time(t), PLUS1) == t


# --- writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "raw", "expected"),
    [
        (ValueType.Do, "true", True),
        (ValueType.Do, True, True),
        (ValueType.Do, "0", False),
        (ValueType.Ao, "1.5", 1.5),
        (ValueType.Ao, 2, 2.0),
        (ValueType.Co, "42", 42),
        (ValueType.Co, 42, 42),
        (ValueType.TxtO, "true", "true"),
        (ValueType.TxtO, {"Operation": "GetDescription"}, '{"Operation":"GetDescription"}'),
        (ValueType.ToR, "00:05:00", timedelta(minutes=5)),
        (ValueType.ToR, timedelta(seconds=3), timedelta(seconds=3)),
        (ValueType.ToR, 2.5, timedelta(seconds=2.5)),
        (ValueType.ToA, "2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        (ValueType.ToA, "2026-01-01 01:00:00.000", datetime(2026, 1, 1, tzinfo=UTC)),
        (ValueType.ToA, datetime(2026, 1, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)),
        (
            ValueType.ToA,
            datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
    ],
)
def test_parse_write_value(value_type: ValueType, raw: object, expected: Value) -> None:
    """Write values come from Python values or command-line text, converted like payloads."""
    value = parse_write_value(value_type, raw, MASK, PLUS1)
    assert same(value, expected)
    if isinstance(value, datetime):
        assert value.tzinfo is UTC


@pytest.mark.parametrize(
    ("value_type", "raw", "message"),
    [
        (ValueType.Do, "maybe", "expected true/false/on/off/1/0, found 'maybe'"),
        (ValueType.Co, "1.5", "expected an integer"),
        (ValueType.Ao, "nan", "expected a finite number"),
        (ValueType.ToA, "tomorrow", f"expected a time like {DEFAULT_MASK!r}, found 'tomorrow'"),
        (ValueType.ToA, 1767607200, "expected a time like"),
        (ValueType.ToR, "-00:05:00", "expected seconds or hh:mi:ss[.fff]"),
    ],
)
def test_parse_write_value_refused(value_type: ValueType, raw: object, message: str) -> None:
    """A write value that does not convert is a ConversionError with the usual message."""
    with pytest.raises(ConversionError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_write_value(value_type, raw, MASK, PLUS1)
