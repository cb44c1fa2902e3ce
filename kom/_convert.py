"""Payload values to tag values and back (SPEC §4 "Value types", §9 record format).

`converter` is called once per tag when the configuration is loaded; the function it returns
runs once per tag per message, so each kind has its own function with the common JSON type
tested first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from ._errors import ConversionError, TimeMaskError
from ._model import Value, ValueType
from ._timemask import TimeMask, Zone, short_repr

__all__ = ["converter", "format_time", "format_value", "parse_write_value"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Longer numeric strings are refused unread: int() of a huge digit string is quadratic.
_MAX_NUMBER_TEXT = 100
_isfinite = math.isfinite

_DIGITAL_WORDS = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False}
_QUATERNARY_WORDS = {"off": 0, "on": 1, "trans": 2, "err": 3, "0": 0, "1": 1, "2": 2, "3": 3}
_ISO = TimeMask.parse("ISO")
# Hours may exceed 24 (nine digits stay within timedelta's range); minutes and seconds have two
# digits; a sign is for numbers only.
_HMS = re.compile(r"\s*(\d{1,9}):([0-5]\d):([0-5]\d)(?:[.,](\d+))?\s*", re.ASCII)


def _refuse(expected: str, raw: object) -> ConversionError:
    return ConversionError(f"expected {expected}, found {short_repr(raw)}", found=raw)


def _number(raw: object, expected: str) -> int | float:
    """A finite int or float from a number, a boolean (0/1) or a numeric string.

    Strings may have blanks around them and a decimal comma (`+58,890`); `1_000`, non-ASCII
    digits, `nan` and `inf` are refused although Python's int() and float() take them.
    """
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return int(raw)
    if isinstance(raw, float):
        if _isfinite(raw):
            return float(raw)
        raise _refuse("a finite number", raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.isascii() and "_" not in text and len(text) <= _MAX_NUMBER_TEXT:
            try:
                return int(text)
            except ValueError:
                pass
            if "," in text and "." not in text:
                text = text.replace(",", ".", 1)
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if _isfinite(number):
                    return number
                raise _refuse("a finite number", raw)
    raise _refuse(expected, raw)


def _analog(raw: object) -> float:
    if type(raw) is float and _isfinite(raw):
        return raw
    number = _number(raw, "a number")
    try:
        return float(number)
    except OverflowError:
        raise _refuse("a number within the float range", raw) from None


def _integer(raw: object) -> int:
    if type(raw) is int:
        number: int | float = raw
    else:
        number = _number(raw, "an integer")
        if type(number) is float:
            if not number.is_integer():
                raise _refuse("an integer", raw)
            number = int(number)
    if _INT64_MIN <= number <= _INT64_MAX:
        return int(number)
    raise _refuse("a 64-bit integer", raw)


def _digital(raw: object) -> bool:
    if type(raw) is bool:
        return raw
    if isinstance(raw, str):
        state = _DIGITAL_WORDS.get(raw)
        if state is None:
            state = _DIGITAL_WORDS.get(raw.strip().lower())
        if state is not None:
            return state
    elif isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    raise _refuse("true/false/on/off/1/0", raw)


def _quaternary(raw: object) -> int:
    if type(raw) is int and 0 <= raw <= 3:
        return raw
    if isinstance(raw, str):
        state = _QUATERNARY_WORDS.get(raw)
        if state is None:
            state = _QUATERNARY_WORDS.get(raw.strip().lower())
        if state is not None:
            return state
    elif isinstance(raw, int | float) and raw in (0, 1, 2, 3):  # false/true read as off/on
        return int(raw)
    raise _refuse("0..3 or off/on/trans/err", raw)


def _text(raw: object) -> str:
    if type(raw) is str:
        return raw
    if isinstance(raw, str):  # a StrEnum from a Python caller: its text, not JSON
        return str(raw)
    try:
        # NaN and infinities (from Python callers; JSON has none) come out as null.
        return orjson.dumps(raw).decode()
    except orjson.JSONEncodeError:
        pass
    # orjson refuses integers beyond 64 bits, dict keys that are not strings and nesting past
    # 255 levels; the standard library takes the first two.
    try:
        return json.dumps(raw, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise _refuse("a JSON value", raw) from None


def _reltime(raw: object) -> timedelta:
    if isinstance(raw, str) and ":" in raw:
        m = _HMS.fullmatch(raw)
        if m is None:
            raise _refuse("seconds or hh:mi:ss[.fff]", raw)
        hours, minutes, seconds, fraction = m.groups()
        return timedelta(
            hours=int(hours),
            minutes=int(minutes),
            seconds=int(seconds),
            microseconds=int(fraction[:6].ljust(6, "0")) if fraction else 0,
        )
    if isinstance(raw, bool):
        raise _refuse("seconds or hh:mi:ss[.fff]", raw)
    number = _number(raw, "seconds or hh:mi:ss[.fff]")
    try:
        return timedelta(seconds=number)
    except OverflowError:
        raise _refuse("a duration within ±999999999 days", raw) from None


_BY_KIND: dict[str, Callable[[object], Value]] = {
    "analog": _analog,
    "integer": _integer,
    "digital": _digital,
    "quaternary": _quaternary,
    "text": _text,
    "reltime": _reltime,
}


def converter(value_type: ValueType, mask: TimeMask, zone: Zone) -> Callable[[object], Value]:
    """The function that turns one raw value into a `value_type` value (SPEC §4 table).

    The raw value is any JSON value, or a string from a topic group. The function raises
    ConversionError (with `found`) and nothing else; NaN and infinities are refused for every
    numeric kind, null for every kind but text. `mask` and `zone` are used by TiA/ToA only.
    """
    kind = value_type.kind
    if kind != "abstime":
        return _BY_KIND[kind]
    read = mask.read

    def abstime(raw: object) -> datetime:
        try:
            return read(raw, zone)
        except TimeMaskError as exc:
            raise ConversionError(str(exc), found=raw) from None

    return abstime


def parse_write_value(value_type: ValueType, raw: object, mask: TimeMask, zone: Zone) -> Value:
    """The value to write to an output tag, from a Python value or command-line text.

    Converts like a payload value of the same type (`"true"`, `"1.5"`, `"00:05:00"`), and
    also takes a datetime for absolute time (naive is read in `zone`), a timedelta for relative
    time, and ISO 8601 text for absolute time whatever the mask. Raises ConversionError.
    """
    kind = value_type.kind
    if kind == "abstime":
        if isinstance(raw, datetime):
            try:
                return raw.astimezone(UTC) if raw.tzinfo is not None else zone.localize(raw)
            except (OverflowError, OSError, ValueError):  # beyond datetime's range in UTC
                raise _refuse("a time within years 1-9999 in UTC", raw) from None
        try:
            return mask.read(raw, zone)
        except TimeMaskError as exc:
            if isinstance(raw, str) and mask != _ISO:
                try:
                    return _ISO.read(raw, zone)
                except TimeMaskError:
                    pass
            raise ConversionError(str(exc), found=raw) from None
    if kind == "reltime" and isinstance(raw, timedelta):
        return raw
    return _BY_KIND[kind](raw)


def format_time(dt: datetime) -> str:
    """`dt` as ISO 8601 UTC with milliseconds and `Z`: `2026-11-22T10:00:00.123Z`.

    Sub-millisecond digits are cut, not rounded, like datetime.isoformat(). A naive `dt` is
    taken as UTC.
    """
    if dt.tzinfo is not UTC and dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    # %-formatting of the fields is about twice as fast as strftime or isoformat(timespec=).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031  # see above
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        dt.microsecond // 1000,
    )


def format_value(value: Value) -> object:
    """`value` as a record carries it: times as `format_time` text, durations as float seconds."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
