"""Time masks and time zones: reading and writing source timestamps (SPEC §2 `time_mask`, §7).

Pure: the clock is never read here. A mask is compiled once (`TimeMask.parse`) and then reads
one raw timestamp per message, so `read` avoids work that `parse` can do instead.
"""

from __future__ import annotations

import abc
import functools
import math
import re
import reprlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar

import attrs

from ._errors import TimeMaskError

__all__ = ["DEFAULT_MASK", "TimeMask", "Zone", "short_repr"]

DEFAULT_MASK = "yyyy-mm-dd hh:mi:ss.mss"

_UTC = UTC  # datetime's, named apart from Zone.UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)", re.ASCII)

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = 4
_repr.maxlevel = 2


def short_repr(raw: object) -> str:
    """`raw` as messages show it: JSON words for null and booleans, about 60 characters at most."""
    if raw is None:
        return "null"
    if raw is True:
        return "true"
    if raw is False:
        return "false"
    # reprlib bounds the work as well as the text: a bad value may be a 1 MiB array.
    return _repr.repr(raw)


@attrs.frozen(repr=False)
class Zone:
    """How a timestamp without its own offset is read: system local time, UTC or a fixed offset.

    Build one with `Zone.parse`. `tzinfo` is None for `local`, which follows the system's rules
    (daylight saving included) at each instant rather than an offset frozen at start-up.
    """

    text: str
    tzinfo: timezone | None

    UTC: ClassVar[Zone]
    LOCAL: ClassVar[Zone]

    @classmethod
    def parse(cls, text: str) -> Zone:
        """The zone spelt `local`, `UTC`, `Z` (any case), `+01:00`, `-05:30` or `+0100`.

        Raises TimeMaskError for anything else. A zero offset is `Zone.UTC`.
        """
        lowered = text.strip().lower()
        if lowered == "local":
            return cls.LOCAL
        if lowered == "utc":
            return cls.UTC
        tz = _fixed_offset(lowered)
        if tz is None:
            raise TimeMaskError(
                f"unknown time zone {text!r} (expected local, UTC or an offset like +01:00)"
            )
        if tz is _UTC:
            return cls.UTC
        return cls(tz.tzname(None)[3:], tz)

    def localize(self, naive: datetime) -> datetime:
        """The aware UTC instant that wall-clock time `naive` names in this zone.

        For `local`, a time that falls twice (autumn change) is the first one, and a time that
        does not exist (spring change) is read with the offset before the change.
        """
        if self.tzinfo is None:
            # A naive datetime's astimezone() reads it with the system's rules at that date.
            return naive.astimezone(_UTC)
        return naive.replace(tzinfo=self.tzinfo).astimezone(_UTC)

    def wall_clock(self, dt: datetime) -> datetime:
        """`dt` (aware; naive is taken as UTC) as an aware datetime on this zone's wall clock."""
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=_UTC)
        return dt.astimezone(self.tzinfo)

    def __repr__(self) -> str:
        return f"Zone({self.text!r})"


Zone.UTC = Zone("UTC", _UTC)
Zone.LOCAL = Zone("local", None)


@functools.lru_cache(maxsize=256)
def _fixed_offset(text: str) -> timezone | None:
    """The timezone for `Z`, `+01:00`, `+0100` or `+01`, or None when `text` is not an offset."""
    if text in ("z", "Z"):
        return _UTC
    m = _OFFSET.fullmatch(text)
    if m is None:
        if len(text) == 3 and text[0] in "+-" and text[1:].isdigit() and text[1:].isascii():
            m = _OFFSET.fullmatch(text + "00")
        if m is None:
            return None
    sign, hours, minutes = m.groups()
    if int(minutes) > 59:
        return None
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if not delta:
        return _UTC
    if delta >= timedelta(hours=24):
        return None
    return timezone(-delta if sign == "-" else delta)


@attrs.frozen(repr=False)
class TimeMask(abc.ABC):
    """A compiled time mask: reads a payload's timestamp, and writes one back.

    Build one with `TimeMask.parse`. `read` returns an aware UTC datetime or raises
    TimeMaskError naming the mask and what was found; `format` is its inverse.
    """

    text: str

    DEFAULT: ClassVar[TimeMask]

    @staticmethod
    def parse(text: str) -> TimeMask:
        """Compile `text`: `UNIX`, `UNIXMS`, `ISO` (any case) or a mask of tokens and literals.

        Tokens (any case): `yyyy`, `yy` (2000+yy), `mm`, `dd`, `hh`, `mi`, `ss`, `mss`
        (milliseconds); every other character is literal. Fields a mask leaves out are those of
        1970-01-01 00:00:00.000. Raises TimeMaskError for a mask with no token or a field twice.
        """
        special = text.strip().upper()
        if special == "UNIX":
            return _EpochMask(special, 1)
        if special == "UNIXMS":
            return _EpochMask(special, 1000)
        if special == "ISO":
            return _IsoMask(special)
        return _PatternMask(text, *_compile(text))

    @abc.abstractmethod
    def read(self, raw: object, zone: Zone) -> datetime:
        """The aware UTC instant `raw` names; a time without an offset is read in `zone`."""

    @abc.abstractmethod
    def format(self, dt: datetime, zone: Zone) -> str | int | float:
        """`dt` written the way this mask reads it (UNIX: int or float seconds; UNIXMS: int ms)."""

    def _refuse(self, raw: object, why: str = "") -> TimeMaskError:
        expected = {
            "UNIX": "seconds since 1970 (UNIX)",
            "UNIXMS": "milliseconds since 1970 (UNIXMS)",
        }.get(self.text, f"a time like {self.text!r}")
        message = f"expected {expected}, found {short_repr(raw)}"
        return TimeMaskError(f"{message}: {why}" if why else message)

    def __repr__(self) -> str:
        return f"TimeMask({self.text!r})"


@attrs.frozen(repr=False)
class _IsoMask(TimeMask):
    """ISO 8601: `T` or space, `Z` or an offset or none, fractions of a second or none."""

    def read(self, raw: object, zone: Zone) -> datetime:
        if type(raw) is not str:
            raise self._refuse(raw)
        try:
            # The C parser takes the common forms in well under a microsecond.
            dt = datetime.fromisoformat(raw)
        except ValueError as exc:
            # Rare forms it refuses: lower-case `t`/`z`, surrounding blanks.
            try:
                dt = datetime.fromisoformat(raw.strip().upper())
            except ValueError:
                raise self._refuse(raw, str(exc)) from None
        if dt.tzinfo is _UTC:  # `Z` or `+00:00`: already what kom keeps (one call fewer)
            return dt
        return _to_utc(self, raw, dt, zone)

    def format(self, dt: datetime, zone: Zone) -> str:
        text = zone.wall_clock(dt).isoformat(timespec="milliseconds")
        return text[:-6] + "Z" if text.endswith("+00:00") else text


@attrs.frozen(repr=False)
class _EpochMask(TimeMask):
    """`UNIX` (per_second 1) or `UNIXMS` (per_second 1000): a number since 1970-01-01 UTC."""

    per_second: int

    def read(self, raw: object, zone: Zone) -> datetime:
        number = _epoch_number(raw)
        if number is None:
            raise self._refuse(raw)
        try:
            if self.per_second == 1:
                return _EPOCH + timedelta(seconds=number)
            return _EPOCH + timedelta(milliseconds=number)
        except OverflowError:
            raise self._refuse(raw, "out of range") from None

    def format(self, dt: datetime, zone: Zone) -> int | float:
        delta = Zone.UTC.wall_clock(dt) - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if self.per_second == 1000:
            return micros // 1000
        # int / int is correctly rounded, so the float reads back to the same microsecond.
        return micros // 1_000_000 if micros % 1_000_000 == 0 else micros / 1_000_000


def _epoch_number(raw: object) -> int | float | None:
    if type(raw) is int:
        return raw
    if type(raw) is float:
        return raw if math.isfinite(raw) else None
    if type(raw) is str:
        text = raw.strip()
        # int()/float() also take `1_000` and non-ASCII digits; a timestamp should not.
        if text.isascii() and "_" not in text and len(text) <= 40:
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
        return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return int(raw)
    if isinstance(raw, float):
        return float(raw) if math.isfinite(raw) else None
    return None


# Field slots of datetime(year, month, day, hour, minute, second, microsecond).
_YEAR, _MONTH, _DAY, _HOUR, _MINUTE, _SECOND, _MICRO = range(7)
_FIELD_NAMES = ("year", "month", "day", "hour", "minute", "second", "millisecond")

# Longest first, so that `yyyy` is not read as `yy` twice and `mss` not as `mm`.
_TOKENS = ("yyyy", "mss", "yy", "mm", "mi", "dd", "hh", "ss")
_TOKEN_SLOT = {
    "yyyy": _YEAR,
    "yy": _YEAR,
    "mm": _MONTH,
    "dd": _DAY,
    "hh": _HOUR,
    "mi": _MINUTE,
    "ss": _SECOND,
    "mss": _MICRO,
}


def _year2(digits: str) -> int:
    return 2000 + int(digits)


_MICRO_SCALE = (0, 100_000, 10_000, 1000, 100, 10, 1)


def _micros(digits: str) -> int:
    # 3 digits are milliseconds; up to 6 (accepted when a literal follows) are microseconds.
    return int(digits) * _MICRO_SCALE[len(digits)]


_Piece = str | tuple[str, int]
_Slot = tuple[int, Callable[[str], int]]


def _is_token(chunk: str, token: str) -> bool:
    return chunk.isascii() and chunk.lower() == token


def _compile(text: str) -> tuple[re.Pattern[str], tuple[_Slot, ...], tuple[_Piece, ...]]:
    """The regular expression, group slots and format pieces of mask `text`."""
    pieces: list[_Piece] = []
    i = 0
    while i < len(text):
        # Slice by slice: str.lower() of the whole text may change its length ("İ").
        token = next((t for t in _TOKENS if _is_token(text[i : i + len(t)], t)), None)
        if token is None:
            if pieces and isinstance(pieces[-1], str):
                pieces[-1] += text[i]
            else:
                pieces.append(text[i])
            i += 1
        else:
            pieces.append((token, _TOKEN_SLOT[token]))
            i += len(token)
    tokens = [p for p in pieces if isinstance(p, tuple)]
    if not tokens:
        raise TimeMaskError(
            f"time mask {text!r} has no date or time token "
            "(expected yyyy, yy, mm, dd, hh, mi, ss, mss, or UNIX, UNIXMS, ISO)"
        )
    seen: dict[int, str] = {}
    for token, slot in tokens:
        if slot in seen:
            hint = " (minutes are 'mi')" if token == seen[slot] == "mm" else ""
            raise TimeMaskError(
                f"time mask {text!r} has the {_FIELD_NAMES[slot]} twice: "
                f"{seen[slot]!r} and {token!r}{hint}"
            )
        seen[slot] = token
    parts: list[str] = []
    slots: list[_Slot] = []
    for n, piece in enumerate(pieces):
        if isinstance(piece, str):
            parts.append(re.escape(piece))
            continue
        token, slot = piece
        # A field next to a literal may be short ("5:07"); next to another field it has its
        # full width, or "yyyymmdd" would be ambiguous.
        tight = n + 1 < len(pieces) and isinstance(pieces[n + 1], tuple)
        if token == "yyyy":
            parts.append(r"(\d{4})")
        elif token == "mss":
            parts.append(r"(\d{3})" if tight else r"(\d{3,6})")
        else:
            parts.append(r"(\d{2})" if tight or token == "yy" else r"(\d{1,2})")
        slots.append((slot, _year2 if token == "yy" else _micros if token == "mss" else int))
    # A value may carry its own offset after the masked part (SPEC §7).
    parts.append(r"(?:\s?(Z|[+-]\d\d(?::?\d\d)?))?")
    pattern = re.compile("".join(parts), re.ASCII | re.IGNORECASE)
    return pattern, tuple(slots), tuple(pieces)


@attrs.frozen(repr=False)
class _PatternMask(TimeMask):
    """A mask of tokens and literals, read with one precompiled regular expression."""

    _pattern: re.Pattern[str] = attrs.field(eq=False)
    _slots: tuple[_Slot, ...] = attrs.field(eq=False)
    _pieces: tuple[_Piece, ...] = attrs.field(eq=False)

    def read(self, raw: object, zone: Zone) -> datetime:
        if type(raw) is not str:
            raise self._refuse(raw)
        m = self._pattern.fullmatch(raw)
        if m is None:
            m = self._pattern.fullmatch(raw.strip())
            if m is None:
                raise self._refuse(raw)
        f = [1970, 1, 1, 0, 0, 0, 0]
        groups = m.groups()
        for (slot, convert), digits in zip(self._slots, groups, strict=False):
            f[slot] = convert(digits)
        offset = groups[-1]
        if offset is None:
            tz = zone.tzinfo
        else:
            tz = _fixed_offset(offset)
            if tz is None:
                raise self._refuse(raw, f"bad offset {offset!r}")
        try:
            dt = datetime(f[0], f[1], f[2], f[3], f[4], f[5], f[6], tz)
        except ValueError as exc:  # month 13, February 30, hour 24, ...
            raise self._refuse(raw, str(exc)) from None
        return dt if tz is _UTC else _to_utc(self, raw, dt, zone)

    def format(self, dt: datetime, zone: Zone) -> str:
        local = zone.wall_clock(dt)
        fields = (
            local.year,
            local.month,
            local.day,
            local.hour,
            local.minute,
            local.second,
            local.microsecond // 1000,
        )
        out: list[str] = []
        for piece in self._pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            token, slot = piece
            value = fields[slot]
            if token == "yy":
                if not 2000 <= value <= 2099:
                    raise TimeMaskError(f"year {value} cannot be written with 'yy' (2000-2099)")
                value -= 2000
            out.append(f"{value:0{len(token)}d}")
        return "".join(out)


def _to_utc(mask: TimeMask, raw: object, dt: datetime, zone: Zone) -> datetime:
    """`dt` as aware UTC; naive `dt` is read in `zone`."""
    try:
        if dt.tzinfo is None:
            return zone.localize(dt)
        return dt if dt.tzinfo is _UTC else dt.astimezone(_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        # Near year 1 or 9999 the shift to UTC leaves datetime's range (or the C library's).
        raise mask._refuse(raw, str(exc) or "out of range") from None


TimeMask.DEFAULT = TimeMask.parse(DEFAULT_MASK)
