"""Values every part of kom shares: value types, qualities, reasons and the update record."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import NamedTuple

#: A tag's value as kom hands it out: float (A), int (C, Q), bool (D), str (Txt),
#: datetime in UTC (TiA/ToA), timedelta (TiR/ToR), or None when invalid.
Value = float | int | bool | str | datetime | timedelta | None


class ValueType(enum.Enum):
    """The I/O tag value types of SPEC section 4; the value is the configuration spelling."""

    # Members are singletons: hash them by identity, in C (Enum's own __hash__ is Python code,
    # and loading 100,000 tags looks these up in dictionaries half a million times).
    __hash__ = object.__hash__

    Ai = "Ai"
    Ao = "Ao"
    Ci = "Ci"
    Co = "Co"
    Di = "Di"
    Do = "Do"
    Qi = "Qi"
    TxtI = "TxtI"
    TxtO = "TxtO"
    TiA = "TiA"
    ToA = "ToA"
    TiR = "TiR"
    ToR = "ToR"

    @property
    def is_output(self) -> bool:
        return self in _OUTPUTS

    @property
    def kind(self) -> str:
        """The conversion family: analog, integer, digital, quaternary, text, abstime, reltime."""
        return _KIND[self]


_OUTPUTS = frozenset(
    {ValueType.Ao, ValueType.Co, ValueType.Do, ValueType.TxtO, ValueType.ToA, ValueType.ToR}
)
_KIND = {
    ValueType.Ai: "analog",
    ValueType.Ao: "analog",
    ValueType.Ci: "integer",
    ValueType.Co: "integer",
    ValueType.Di: "digital",
    ValueType.Do: "digital",
    ValueType.Qi: "quaternary",
    ValueType.TxtI: "text",
    ValueType.TxtO: "text",
    ValueType.TiA: "abstime",
    ValueType.ToA: "abstime",
    ValueType.TiR: "reltime",
    ValueType.ToR: "reltime",
}


class Quality(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"


class Reason(enum.StrEnum):
    """Why a value is invalid (SPEC sections 2-4, 7, 8)."""

    MISSING = "missing"
    PARSE = "parse"
    TYPE = "type"
    ENCODING = "encoding"
    TIME = "time"
    LIMITS = "limits"
    WILL = "will"
    COMM = "comm"
    STALE = "stale"
    QUALITY = "quality"  # the source itself reports the value bad (Sparkplug B Quality property)


#: Builds a NamedTuple record from the tuple of its fields, skipping NamedTuple's Python-level
#: `__new__`: kom builds an Update per tag and a few records per message, where that call shows.
new_record = tuple.__new__


class Update(NamedTuple):
    """One value handed out by kom.

    A NamedTuple rather than an attrs class: kom builds one per tag per message
    (hundreds of thousands a second), and a tuple is built in 0.17 µs against 0.40 µs
    for a frozen attrs class with the same fields.
    """

    tag: str
    value: Value
    quality: Quality
    reason: Reason | None
    ts: datetime
    received: datetime
    topic: str | None
    detail: str | None = None
    #: The message was a retained one: the broker's last stored value, sent on subscribing,
    #: not a reading that just happened (with no time in the payload, `ts` is when kom
    #: received it, not when the value was measured).
    retained: bool = False

    @property
    def valid(self) -> bool:
        return self.quality is Quality.VALID
