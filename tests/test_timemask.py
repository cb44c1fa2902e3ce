"""Time zones and time masks: parsing, reading, writing, and their round trips (SPEC §2, §7)."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom._errors import TimeMaskError
from kom._timemask import DEFAULT_MASK, TimeMask, Zone, short_repr
from tests.strategies import fixed_zones, instants, json_values, time_masks

PLUS1 = Zone.parse("+01:00")
DEFAULT = TimeMask.parse(DEFAULT_MASK)


#: An aware UTC datetime from its fields.
utc = functools.partial(datetime, tzinfo=UTC)


@pytest.fixture
def prague() -> Iterator[None]:
    """The process's local time zone is Europe/Prague (CET/CEST) for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Prague"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# --- Zone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("UTC", timedelta(0)),
        ("utc", timedelta(0)),
        ("+01:00", timedelta(hours=1)),
        ("-05:30", timedelta(hours=-5, minutes=-30)),
        ("+0100", timedelta(hours=1)),
        ("+00:00", timedelta(0)),
        ("-00:00", timedelta(0)),
        ("+23:59", timedelta(hours=23, minutes=59)),
    ],
)
def test_zone_parse_fixed(text: str, offset: timedelta) -> None:
    """Fixed zones are UTC or an offset written with or without a colon."""
    zone = Zone.parse(text)
    assert zone.tzinfo is not None
    assert zone.tzinfo.utcoffset(None) == offset


@pytest.mark.parametrize("text", ["local", "LOCAL", "Local"])
def test_zone_parse_local(text: str) -> None:
    """`local` in any case is the system's local time."""
    assert Zone.parse(text) is Zone.LOCAL
    assert Zone.LOCAL.tzinfo is None


@pytest.mark.parametrize(
    "text",
    ["", "CET", "Europe/Prague", "+1", "+01:60", "+24:00", "01:00", "+01:00:00", "+\u0661:\u0660"],
)
def test_zone_parse_refused(text: str) -> None:
    """Anything but local, UTC or a ±hh:mm offset is a TimeMaskError that names the text."""
    with pytest.raises(TimeMaskError, match="unknown time zone"):
        Zone.parse(text)


def test_zone_repr_and_equality() -> None:
    """Zones show their canonical text and compare by it."""
    assert repr(Zone.parse("+0100")) == "Zone('+01:00')"
    assert Zone.parse("+0100") == PLUS1
    assert Zone.parse("+00:00") is Zone.UTC
    assert repr(Zone.LOCAL) == "Zone('local')"


def test_zone_localize_fixed() -> None:
    """A fixed zone subtracts its offset to reach UTC."""
    assert PLUS1.localize(datetime(2026, 1, 5, 10)) == utc(2026, 1, 5, 9)
    assert PLUS1.localize(datetime(2026, 1, 5, 10)).tzinfo is UTC
    assert Zone.UTC.localize(datetime(2026, 1, 5, 10)) == utc(2026, 1, 5, 10)


@pytest.mark.usefixtures("prague")
def test_zone_local_follows_daylight_saving() -> None:
    """`local` uses the offset in force at each date, winter and summer."""
    assert Zone.LOCAL.localize(datetime(2026, 1, 15, 12)) == utc(2026, 1, 15, 11)
    assert Zone.LOCAL.localize(datetime(2026, 7, 15, 12)) == utc(2026, 7, 15, 10)
    assert DEFAULT.read("2026-07-15 12:00:00.000", Zone.LOCAL) == utc(2026, 7, 15, 10)
    assert DEFAULT.format(utc(2026, 7, 15, 10), Zone.LOCAL) == "2026-07-15 12:00:00.000"
    assert DEFAULT.format(utc(2026, 1, 15, 11), Zone.LOCAL) == "2026-01-15 12:00:00.000"


# --- TimeMask.parse -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("UNIX", "UNIX"), ("unix", "UNIX"), ("UnixMs", "UNIXMS"), ("iso", "ISO"), (" ISO ", "ISO")],
)
def test_special_masks_any_case(text: str, canonical: str) -> None:
    """UNIX, UNIXMS and ISO are recognised in any case and keep an upper-case name."""
    mask = TimeMask.parse(text)
    assert mask.text == canonical
    assert mask == TimeMask.parse(canonical)
    assert hash(mask) == hash(TimeMask.parse(canonical))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no date or time token"),
        ("abc", "no date or time token"),
        ("y-m-d", "no date or time token"),
        ("yyyy yy", "year twice"),
        ("yyyy-mm-dd hh:mm:ss", r"month twice: 'mm' and 'mm' \(minutes are 'mi'\)"),
        ("ss ss", "second twice"),
    ],
)
def test_mask_refused(text: str, message: str) -> None:
    """A mask without any token, or with a field twice, is refused with the reason."""
    with pytest.raises(TimeMaskError, match=message):
        TimeMask.parse(text)


def test_mask_repr_and_default() -> None:
    """A mask shows its text; TimeMask.DEFAULT is the SPEC's default mask."""
    assert repr(DEFAULT) == "TimeMask('yyyy-mm-dd hh:mi:ss.mss')"
    assert TimeMask.DEFAULT == DEFAULT
    assert TimeMask.parse("YYYY-MM-DD") != TimeMask.parse("yyyy-mm-dd")  # compared by text


def test_mask_base_class_is_abstract() -> None:
    """TimeMask itself cannot be built: masks come from TimeMask.parse."""
    with pytest.raises(TypeError):
        TimeMask("ISO")  # type: ignore[abstract]


# --- reading text masks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "raw", "zone", "expected"),
    [
        (DEFAULT_MASK, "2026-01-05 10:00:00.123", Zone.UTC, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123", PLUS1, utc(2026, 1, 5, 9, 0, 0, 123000)),
        (DEFAULT_MASK, "2026-1-5 3:04:05.007", Zone.UTC, utc(2026, 1, 5, 3, 4, 5, 7000)),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123456", Zone.UTC, utc(2026, 1, 5, 10, 0, 0, 123456)),
        (DEFAULT_MASK, " 2026-01-05 10:00:00.123\n", Zone.UTC, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123Z", PLUS1, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123z", PLUS1, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123+02:00", PLUS1, utc(2026, 1, 5, 8, 0, 0, 123000)),
        (
            DEFAULT_MASK,
            "2026-01-05 10:00:00.123 -0530",
            Zone.UTC,
            utc(2026, 1, 5, 15, 30, 0, 123000),
        ),
        (DEFAULT_MASK, "2026-01-05 10:00:00.123+02", Zone.UTC, utc(2026, 1, 5, 8, 0, 0, 123000)),
        ("YYYY-MM-DD HH:MI:SS", "2026-01-05 10:00:00", Zone.UTC, utc(2026, 1, 5, 10)),
        ("yyyymmddhhmiss", "20260105100000", Zone.UTC, utc(2026, 1, 5, 10)),
        ("dd.mm.yy hh:mi", "5.1.26 3:04", Zone.UTC, utc(2026, 1, 5, 3, 4)),
        ("dd/mm/yyyy", "31/12/1999", Zone.UTC, utc(1999, 12, 31)),
        ("yyyy-mm-ddThh:mi:ss", "2026-01-05t10:00:00", Zone.UTC, utc(2026, 1, 5, 10)),
        ("hh:mi", "10:30", Zone.UTC, utc(1970, 1, 1, 10, 30)),
        ("yyyy", "2026", Zone.UTC, utc(2026, 1, 1)),
    ],
)
def test_mask_read_accepted(mask: str, raw: str, zone: Zone, expected: datetime) -> None:
    """A text mask reads its fields, in the zone unless the value carries an offset."""
    read = TimeMask.parse(mask).read(raw, zone)
    assert read == expected
    assert read.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("2026-13-05 10:00:00.123", "month must be in 1..12"),
        ("2026-02-30 10:00:00.123", "day is out of range"),
        ("2026-01-05 24:00:00.123", "hour must be in 0..23"),
        ("2026-01-05 10:60:00.123", "minute must be in 0..59"),
        ("2026-01-05 10:00:60.123", "second must be in 0..59"),
        ("0000-01-05 10:00:00.123", "year 0 is out of range"),
        ("2026-01-05 10:00:00.123+25:00", "bad offset"),
        ("2026-01-05 10:00:00.12", ""),
        ("2026-01-05 10:00:00", ""),
        ("2026/01/05 10:00:00.123", ""),
        ("2026-01-05 10:00:00.123 extra", ""),
        ("٢٠٢٦-01-05 10:00:00.123", ""),
        ("", ""),
        (1767607200, ""),
        (None, ""),
        (True, ""),
        (["2026-01-05 10:00:00.123"], ""),
    ],
)
def test_mask_read_refused(raw: object, why: str) -> None:
    """A value that does not fit the mask is a TimeMaskError naming the mask and the value."""
    with pytest.raises(TimeMaskError) as info:
        DEFAULT.read(raw, Zone.UTC)
    message = str(info.value)
    assert message.startswith(f"expected a time like {DEFAULT_MASK!r}, found {short_repr(raw)}")
    assert why in message


def test_mask_read_out_of_datetime_range() -> None:
    """A valid wall-clock time that leaves datetime's range in UTC is a TimeMaskError."""
    with pytest.raises(TimeMaskError):
        DEFAULT.read("0001-01-01 00:00:00.000", PLUS1)
    with pytest.raises(TimeMaskError):
        DEFAULT.read("9999-12-31 23:59:59.999-01:00", Zone.UTC)


# --- ISO ----------------------------------------------------------------------------------

ISO = TimeMask.parse("ISO")


@pytest.mark.parametrize(
    ("raw", "zone", "expected"),
    [
        ("2026-01-05T10:00:00Z", PLUS1, utc(2026, 1, 5, 10)),
        ("2026-01-05T10:00:00.123Z", PLUS1, utc(2026, 1, 5, 10, 0, 0, 123000)),
        ("2026-01-05 10:00:00.5+01:00", Zone.UTC, utc(2026, 1, 5, 9, 0, 0, 500000)),
        ("2026-01-05T10:00:00.123456789-05:30", Zone.UTC, utc(2026, 1, 5, 15, 30, 0, 123456)),
        ("2026-01-05T10:00:00+0100", Zone.UTC, utc(2026, 1, 5, 9)),
        ("2026-01-05T10:00:00", PLUS1, utc(2026, 1, 5, 9)),
        ("2026-01-05", Zone.UTC, utc(2026, 1, 5)),
        ("20260105T100000Z", Zone.UTC, utc(2026, 1, 5, 10)),
        ("2026-01-05t10:00:00z", Zone.UTC, utc(2026, 1, 5, 10)),
        (" 2026-01-05T10:00:00Z ", Zone.UTC, utc(2026, 1, 5, 10)),
    ],
)
def test_iso_read_accepted(raw: str, zone: Zone, expected: datetime) -> None:
    """ISO reads T or space, Z or an offset or none (then the zone), any fraction."""
    read = ISO.read(raw, zone)
    assert read == expected
    assert read.tzinfo is UTC


@pytest.mark.parametrize(
    "raw",
    ["2026-01-05T25:00:00Z", "2026-13-01", "yesterday", "", 1767607200, 1767607200.5, None, False],
)
def test_iso_read_refused(raw: object) -> None:
    """ISO takes only ISO 8601 strings with fields in range."""
    with pytest.raises(TimeMaskError, match=r"^expected a time like 'ISO', found "):
        ISO.read(raw, Zone.UTC)


# --- UNIX and UNIXMS ----------------------------------------------------------------------

UNIX = TimeMask.parse("UNIX")
UNIXMS = TimeMask.parse("UNIXMS")


@pytest.mark.parametrize(
    ("mask", "raw", "expected"),
    [
        (UNIX, 1767607200, utc(2026, 1, 5, 10)),
        (UNIX, 1767607200.123, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (UNIX, "1767607200", utc(2026, 1, 5, 10)),
        (UNIX, " 1767607200.5 ", utc(2026, 1, 5, 10, 0, 0, 500000)),
        (UNIX, 0, utc(1970, 1, 1)),
        (UNIX, -86400, utc(1969, 12, 31)),
        (UNIXMS, 1767607200123, utc(2026, 1, 5, 10, 0, 0, 123000)),
        (UNIXMS, "1767607200123", utc(2026, 1, 5, 10, 0, 0, 123000)),
        (UNIXMS, 1767607200123.5, utc(2026, 1, 5, 10, 0, 0, 123500)),
    ],
)
def test_epoch_read_accepted(mask: TimeMask, raw: object, expected: datetime) -> None:
    """UNIX and UNIXMS read numbers and numeric strings, whatever the zone."""
    read = mask.read(raw, PLUS1)
    assert read == expected
    assert read.tzinfo is UTC


@pytest.mark.parametrize(
    "raw",
    [
        True,
        None,
        "abc",
        "",
        "1_767_607_200",
        "\u0661\u0667",  # Arabic-Indic digits: float() takes them, a timestamp may not
        float("nan"),
        float("inf"),
        "-inf",
        "NaN",
        1e20,
        10**30,
        [1767607200],
        {"t": 1},
    ],
)
@pytest.mark.parametrize("mask", [UNIX, UNIXMS])
def test_epoch_read_refused(mask: TimeMask, raw: object) -> None:
    """Booleans, non-numbers, NaN, infinities and out-of-range numbers are TimeMaskErrors."""
    with pytest.raises(
        TimeMaskError, match=r"^expected (milli)?seconds since 1970 \(UNIX(MS)?\), found "
    ):
        mask.read(raw, Zone.UTC)


# --- format -------------------------------------------------------------------------------

T = utc(2026, 1, 5, 10, 0, 0, 123456)


@pytest.mark.parametrize(
    ("mask", "zone", "expected"),
    [
        (DEFAULT_MASK, Zone.UTC, "2026-01-05 10:00:00.123"),
        (DEFAULT_MASK, PLUS1, "2026-01-05 11:00:00.123"),
        ("dd.mm.yy hh:mi", Zone.UTC, "05.01.26 10:00"),
        ("YYYYMMDD", Zone.UTC, "20260105"),
        ("ISO", Zone.UTC, "2026-01-05T10:00:00.123Z"),
        ("ISO", PLUS1, "2026-01-05T11:00:00.123+01:00"),
        ("UNIX", PLUS1, 1767607200.123456),
        ("UNIXMS", PLUS1, 1767607200123),
    ],
)
def test_format(mask: str, zone: Zone, expected: object) -> None:
    """format writes an instant the way the mask reads it."""
    assert TimeMask.parse(mask).format(T, zone) == expected


def test_format_unix_whole_seconds_is_int() -> None:
    """UNIX gives an int for whole seconds and a float otherwise; a naive time is taken as UTC."""
    assert UNIX.format(utc(2026, 1, 5, 10), Zone.UTC) == 1767607200
    assert type(UNIX.format(utc(2026, 1, 5, 10), Zone.UTC)) is int
    assert UNIX.format(datetime(2026, 1, 5, 10), Zone.UTC) == 1767607200


def test_format_yy_outside_its_century() -> None:
    """`yy` cannot write a year outside 2000-2099."""
    with pytest.raises(TimeMaskError, match="year 1999 cannot be written with 'yy'"):
        TimeMask.parse("dd.mm.yy").format(utc(1999, 12, 31), Zone.UTC)


# --- properties ---------------------------------------------------------------------------


@given(mask=time_masks(), data=st.data(), zone=fixed_zones)
def test_mask_round_trip(mask: tuple[str, bool], data: st.DataObject, zone: Zone) -> None:
    """Any full mask reads back the instant it wrote, in UTC and fixed-offset zones."""
    text, two_digit_year = mask
    compiled = TimeMask.parse(text)
    # Keep the wall-clock year inside the range the mask can write, whatever the offset.
    t = data.draw(instants(2001, 2098) if two_digit_year else instants(1971, 2198))
    assert compiled.read(compiled.format(t, zone), zone) == t


@given(t=instants(), zone=fixed_zones, name=st.sampled_from(["UNIX", "UNIXMS", "ISO"]))
def test_special_round_trip(t: datetime, zone: Zone, name: str) -> None:
    """UNIX, UNIXMS and ISO read back the instant they wrote."""
    mask = TimeMask.parse(name)
    assert mask.read(mask.format(t, zone), zone) == t


@given(raw=json_values, name=st.sampled_from(["UNIX", "UNIXMS", "ISO", DEFAULT_MASK]))
def test_read_any_json_value(raw: object, name: str) -> None:
    """Any JSON value reads as an aware UTC datetime or raises TimeMaskError, nothing else."""
    try:
        read = TimeMask.parse(name).read(raw, PLUS1)
    except TimeMaskError:
        return
    assert read.tzinfo is UTC


@given(text=st.text(max_size=30))
def test_parse_any_text(text: str) -> None:
    """Any mask text compiles or raises TimeMaskError, nothing else."""
    with contextlib.suppress(TimeMaskError):
        TimeMask.parse(text)


def test_short_repr() -> None:
    """Found values are shown as JSON words or a repr of about 60 characters at most."""
    assert short_repr(None) == "null"
    assert short_repr(True) == "true"
    assert short_repr("abc") == "'abc'"
    assert len(short_repr("x" * 1000)) <= 64
    assert len(short_repr(list(range(10_000)))) <= 64
    assert short_repr(PLUS1) == repr(PLUS1)
