"""A station's decoding and state, without I/O: message in, updates out (SPEC §3-5, §7).

The line feeds each routed message to its station; the station answers with the updates
to hand out, holds messages while an ACK_ID is awaited, and keeps its state (on, off,
simulation, will error, communication error) as an explicit table.
"""

from __future__ import annotations

import enum
import functools
import types
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import attrs
import orjson

from ._address import MISSING, Kind, Step, compile_many
from ._binary import BinaryDataError, field_reader
from ._config import LineConfig, StationConfig, TagConfig
from ._convert import converter
from ._errors import AckError, ConversionError, KomError, TimeMaskError
from ._fastjson import FAST_FAILURES, compile_fast
from ._freshness import time_bounds
from ._lenient import loads as lenient_json
from ._model import Quality, Reason, Update, Value, ValueType, new_record
from ._processing import Processing
from ._timemask import Zone

VALID = Quality.VALID
INVALID = Quality.INVALID
INPUT_KINDS = frozenset(
    {
        Kind.IN_TOPIC,
        Kind.IN_DATA,
        Kind.IN_ID,
        Kind.JSON,
        Kind.JSONPATH,
        Kind.TOPIC,
        Kind.BINARY,
        Kind.PROP,
    }
)


class Message(NamedTuple):
    """One received PUBLISH as the core sees it; `generation` counts connections."""

    topic: str
    payload: bytes
    received: datetime
    qos: int = 0
    mid: int = 0
    dup: bool = False
    retain: bool = False
    generation: int = 0
    #: MQTT 5 PUBLISH properties (None on 3.1.1 or when the PUBLISH has none).
    properties: dict[str, Any] | None = None


class StationState(enum.Enum):
    ON = "on"
    OFF = "off"
    SIMULATION = "simulation"
    WILL = "will"
    COMM = "comm"


_ON = StationState.ON


class IllegalTransition(KomError, RuntimeError):
    """A station was asked to move between two states that have no edge."""


_S = StationState
TRANSITIONS: Mapping[StationState, frozenset[StationState]] = {
    _S.ON: frozenset({_S.WILL, _S.COMM, _S.OFF, _S.SIMULATION}),
    _S.WILL: frozenset({_S.ON, _S.COMM, _S.OFF, _S.SIMULATION}),
    _S.COMM: frozenset({_S.ON, _S.OFF, _S.SIMULATION}),
    _S.OFF: frozenset({_S.ON, _S.COMM, _S.SIMULATION}),
    _S.SIMULATION: frozenset({_S.ON, _S.COMM, _S.OFF}),
}


class _Reader(NamedTuple):
    full: str
    kind: Kind
    read: Callable[[Any], Any] | None
    group: str | None
    convert: Callable[[object], Value]
    processing: Processing | None
    filtered: bool
    slot: int = -1  # the JA= value's place in the list read_many() returns
    kind_name: str = ""  # the value type's conversion family (ValueType.kind)


_NO_TIME: Any = object()  # no raw time field: never the object a tag reads


class Decoder:
    """Turns one message into the updates of a station's input tags, in SPEC §4 order.

    This runs for every message, so it is written for speed: all JA= paths of the
    station are read by one generated function (`compile_many`), and updates are built
    as plain tuples.
    """

    def __init__(self, station: StationConfig, line: LineConfig, plan: _Plan | None = None) -> None:
        """`plan` is `_plan(station, line)`, which stations with the same tags may share."""
        self.station = station.name
        self._line = line
        plan = plan or _plan(station, line)
        prefix = station.name + "."
        first, middle, last, props = (
            tuple(new_record(_Reader, (prefix + r.full, *r[1:])) for r in readers)
            for readers in (plan.first, plan.middle, plan.last, plan.props)
        )
        self._first = first
        self._middle = middle
        self._last = last
        self._props = props
        self._json = plan.json
        self._time_slot = plan.time_slot
        self._payload_slot = plan.payload_slot
        self._read_many = plan.read_many
        self._read_fast = plan.read_fast
        self._decode_middle = _compile_middle(self._middle, self._slow)
        self._all_fast = _compile_all_fast(self._middle)
        self._mask = line.time_mask
        self._zone = station.time_zone or line.time_zone
        #: SPEC §16: max_future / max_past (the station's, else the line's); None when off.
        self._time_check = time_bounds(
            station.max_future if station.max_future is not None else line.max_future,
            station.max_past if station.max_past is not None else line.max_past,
        )
        self._max_payload = line.max_payload
        self.input_tags = tuple(r.full for r in (*first, *middle, *last, *props))
        #: Invalid updates handed out so far (the core counts them as decode errors).
        self.invalid = 0
        #: Last reported (value, valid) per tag with dead band or change-only filtering.
        self.last: dict[str, tuple[Value, bool]] = {}
        #: Set when a message had no time field, or a JSON station has none configured (SPEC
        #: §7: the line warns once per station unless ignore_missing_time). A text payload
        #: has no fields: its values take the receive time without a warning.
        self.time_missing = plan.json and self._time_slot < 0
        #: A JSON station of plain JA= tags and the line's time field (the common device):
        #: `decode` tries the short way first.
        self._plain = (
            self._all_fast is not None
            and self._read_fast is not None
            and self._time_slot >= 0
            and not (first or last or props)
        )

    def decode(self, msg: Message, groups: Mapping[str, str | None]) -> list[Update]:
        """The updates for `msg`; never raises for any payload or topic."""
        if self._plain:
            # The short way: a readable ASCII document with a good time and every value of
            # its tag's type. Anything else, at any step, takes `_decode`, from the start.
            payload = msg.payload
            if len(payload) <= self._max_payload and payload.isascii():
                try:
                    raws = self._read_fast(payload)  # type: ignore[misc]
                except FAST_FAILURES:
                    raws = None
                if raws is not None:
                    traw = raws[self._time_slot]
                    if traw is not MISSING:
                        try:
                            ts = self._mask.read(traw, self._zone)
                        except TimeMaskError:
                            ts = None
                        received = msg.received
                        check = self._time_check
                        if ts is not None and (check is None or check(ts, received) is None):
                            updates = self._all_fast(  # type: ignore[misc]
                                raws, ts, received, msg.topic, traw
                            )
                            if updates is not None:
                                return _retained(updates, False) if msg.retain else updates
        return self._decode(msg, groups)

    def _decode(self, msg: Message, groups: Mapping[str, str | None]) -> list[Update]:
        """`decode`, every case."""
        received = msg.received
        ts = received
        doc: Any = MISSING
        raws: Sequence[Any] = ()
        failure: tuple[Reason, str] | None = None
        traw: Any = _NO_TIME  # the raw time field, once it has been read as `ts`
        payload = msg.payload
        # SPEC §8: a huge payload is refused on any line, IN_DATA included.
        too_big: tuple[Reason, str] | None = None
        if len(payload) > self._max_payload:
            too_big = (Reason.PARSE, f"payload of {len(payload)} bytes is over max_payload")
        if self._json and (self._middle or self._time_slot >= 0):
            fast: list[Any] | None = None
            if too_big is not None:
                failure = too_big
            else:
                if self._read_fast is not None and payload.isascii():
                    # msgspec decodes the addressed fields alone (kom/_fastjson.py); it
                    # gives up where its answer could differ, and orjson reads it all.
                    try:
                        fast = self._read_fast(payload)
                    except FAST_FAILURES:
                        fast = None  # the general path below says what is wrong
                if fast is None:
                    try:
                        doc = lenient_json(payload)
                    except orjson.JSONDecodeError as exc:
                        failure = (Reason.PARSE, f"payload is not JSON: {exc}")
            if failure is None:
                if fast is not None:
                    raws = fast
                elif self._read_many is not None:
                    raws = self._read_many(doc)
                if self._time_slot >= 0:
                    raw = raws[self._time_slot]
                    if raw is MISSING:
                        self.time_missing = True
                    else:
                        try:
                            ts = self._mask.read(raw, self._zone)
                            traw = raw
                        except TimeMaskError as exc:
                            # SPEC §7: an unreadable timestamp makes the content invalid.
                            failure = (Reason.TIME, str(exc))
                        else:
                            check = self._time_check
                            if check is not None:
                                problem = check(ts, received)
                                if problem is not None:
                                    # SPEC §16: a time far from now is as bad as none.
                                    failure = (Reason.TIME, problem)
                                    ts, traw = received, _NO_TIME
        elif self._payload_slot >= 0:
            # BIN=$ tags (text stations only) read the payload's own bytes (SPEC §15).
            if too_big is not None:
                failure = too_big
            else:
                raws = (payload,)
        updates: list[Update] = []
        append = updates.append
        topic = msg.topic
        for r in self._first:
            if r.kind is Kind.IN_TOPIC:
                self._emit(append, r, topic, None, None, ts, received, topic)
            elif too_big is not None:
                self._emit(append, r, None, *too_big, ts, received, topic)
            else:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"payload is not UTF-8: {exc.reason}"
                    self._emit(append, r, None, Reason.ENCODING, why, ts, received, topic)
                else:
                    self._emit(append, r, text, None, None, ts, received, topic)
        self._decode_middle(raws, doc, groups, failure, ts, received, topic, append, traw)
        if self._props:
            self._decode_properties(msg.properties, ts, received, topic, append)
        for r in self._last:
            self._emit(append, r, msg.mid if msg.qos else 0, None, None, ts, received, topic)
        if msg.retain:
            return _retained(updates, ts is received)
        return updates

    def _decode_properties(
        self,
        props: dict[str, Any] | None,
        ts: datetime,
        received: datetime,
        topic: str,
        append: Callable[[Update], None],
    ) -> None:
        """PROP= tags (SPEC §11): absent, or on a 3.1.1 line, invalid with reason missing."""
        for r in self._props:
            raw = r.read(props) if props and r.read is not None else MISSING
            value, reason, detail = _converted(r, raw, "the PUBLISH has no such property")
            self._emit(append, r, value, reason, detail, ts, received, topic)

    def _slow(  # noqa: PLR0917 - called from generated code, positionally
        self,
        r: _Reader,
        raws: list[Any],
        doc: Any,
        groups: Mapping[str, str | None],
        failure: tuple[Reason, str] | None,
        ts: datetime,
        received: datetime,
        topic: str,
        append: Callable[[Update], None],
    ) -> None:
        """One JSON or topic tag, every case (the generated fast path handles the common)."""
        reason: Reason | None = None
        detail: str | None = None
        value: Value = None
        if r.kind is Kind.TOPIC:
            raw = groups.get(r.group or "")
            if raw is None:
                raw = MISSING
        elif failure is not None:
            raw = None
            reason, detail = failure
        elif r.slot >= 0:
            raw = raws[r.slot]
        else:
            raw = r.read(doc) if r.read is not None else MISSING
        if reason is None:
            value, reason, detail = _converted(r, raw, "nothing at this address")
        self._emit(append, r, value, reason, detail, ts, received, topic)

    def _emit(  # noqa: PLR0917 - per-tag hot path: positional arguments are cheaper
        self,
        append: Callable[[Update], None],
        r: _Reader,
        value: Value,
        reason: Reason | None,
        detail: str | None,
        ts: datetime,
        received: datetime,
        topic: str,
    ) -> None:
        """Apply the tag's processing and filter, then append its update (the general path)."""
        processing = r.processing
        if reason is None and processing is not None:
            raw_value = value
            value, reason = processing.apply(value)
            if reason is Reason.LIMITS:
                detail = f"{r.full}: {raw_value!r} is outside its limits"
            elif reason is not None:
                detail = f"{r.full}: {raw_value!r} cannot be scaled"
        if reason is not None:
            value = None
        if r.filtered:
            assert processing is not None
            valid = reason is None
            if not processing.should_report(value, valid, self.last.get(r.full)):
                return
            self.last[r.full] = (value, valid)
        if reason is None:
            quality = VALID
        else:
            quality = INVALID
            self.invalid += 1
        append(
            new_record(Update, (r.full, value, quality, reason, ts, received, topic, detail, False))
        )

    def invalidate(self, reason: Reason, now: datetime, detail: str | None = None) -> list[Update]:
        """Every input tag `invalid` with `reason` (will, comm)."""
        self.last.clear()
        return [
            Update(name, None, INVALID, reason, now, now, None, detail) for name in self.input_tags
        ]


#: The detail of a retained value whose payload had no time of its own.
RETAINED_UNTIMED = "retained value without a source time: ts is when kom received it"


def _retained(updates: list[Update], untimed: bool) -> list[Update]:
    """The updates of a retained message, marked `retained` (SPEC §9).

    A retained message is the broker's last stored value, sent because kom subscribed, not
    a reading that just happened. With a time in the payload, `ts` is that time; without
    one, `ts` stays the receive time (kom knows no better) and the detail says so, so that
    no reader takes it for a fresh measurement.
    """
    return [
        u._replace(retained=True, detail=RETAINED_UNTIMED)
        if untimed and u.detail is None
        else u._replace(retained=True)
        for u in updates
    ]


#: Inline checks for raw values that need no conversion, by kind (SPEC §4 table): a finite
#: float for analog (x - x is 0.0 only for finite x), a 64-bit int for integer, a JSON
#: boolean for digital, a string for text. Anything else takes the converter.
_FAST: dict[str, tuple[tuple[str, str], ...]] = {
    "analog": (
        ("type(raw) is float and raw - raw == 0.0", "raw"),
        ("type(raw) is int", "float(raw)"),  # JSON integers fit a float (orjson: 64 bits)
    ),
    "integer": (
        ("type(raw) is int and -9223372036854775808 <= raw <= 9223372036854775807", "raw"),
    ),
    "digital": (
        ("raw is True or raw is False", "raw"),
        ("type(raw) is int and (raw == 0 or raw == 1)", "raw == 1"),
    ),
    "text": (("type(raw) is str", "raw"),),
    # A whole number of seconds within timedelta's range (±999,999,999 days).
    "reltime": (
        ("type(raw) is int and -86_399_999_913_600 <= raw <= 86_399_999_999_999", "td(0, raw)"),
    ),
    # The very object the line's time field was read from (the tag reads the same field
    # with the same mask and zone): its value is the message time, already parsed.
    "abstime": (("raw is traw", "ts"),),
}


def _layout(readers: Sequence[_Reader]) -> tuple[tuple[str | None, int], ...]:
    """The tags' layout the generated code depends on: (fast kind or None, slot) each."""
    return tuple(
        (r.kind_name if r.slot >= 0 and r.processing is None else None, r.slot) for r in readers
    )


def _compile_middle(readers: Sequence[_Reader], slow: Callable[..., None]) -> Callable[..., None]:
    """Generate the per-message loop over a station's JSON and topic tags, unrolled.

    Each JA= tag without processing gets an inline test for a raw value that needs no
    conversion, and builds its update directly; every other case calls `slow`, which
    holds the complete rules. The generated text contains only indexes and names, never
    configuration text; it depends only on the tags' layout (kinds, slots), so stations
    of one device type share one compiled code object.

    A station's own readers and tag names are the function's defaults (read as fast as
    locals, one tuple a station), not globals: the interpreter caches global names by
    their dictionary, and with a dictionary per station those caches missed on every
    call (measured with 1,000 stations of one layout: 12.0 µs a message, against 7.8).
    """
    layout = _layout(readers)
    defaults = (slow, *readers, *(r.full for r in readers))
    return types.FunctionType(_middle_code(layout), _MIDDLE_GLOBALS, "decode_middle", defaults)


def _compile_all_fast(readers: Sequence[_Reader]) -> Callable[..., list[Update] | None] | None:
    """Generate the builder of a station's updates when every value needs no conversion.

    For stations whose JSON tags all have an inline test (no processing, no topic groups):
    it returns the list of updates, or None as soon as one raw value needs more (the
    caller then takes `decode_middle`, which holds every rule). None when some tag never
    can be fast.
    """
    layout = _layout(readers)
    if not layout or any(kind not in _FAST for kind, _ in layout):
        return None
    defaults = tuple(r.full for r in readers)
    return types.FunctionType(_all_fast_code(layout), _MIDDLE_GLOBALS, "all_fast", defaults)


@functools.lru_cache(maxsize=4096)
def _all_fast_code(layout: tuple[tuple[str | None, int], ...]) -> types.CodeType:
    """The compiled code of `all_fast` for one layout of (fast kind, slot)."""
    own = ", ".join(f"N{i}=None" for i in range(len(layout)))
    body = [f"def all_fast(raws, ts, received, topic, traw, {own}):"]
    for i, (kind, slot) in enumerate(layout):
        assert kind is not None
        body.append(f"    raw = raws[{slot}]")
        for n, (test, value) in enumerate(_FAST[kind]):
            body += [f"    {'if' if n == 0 else 'elif'} {test}:", f"        v{i} = {value}"]
        body += ["    else:", "        return None"]
    items = ", ".join(
        f"new(Update, (N{i}, v{i}, VALID, None, ts, received, topic, None, False))"
        for i in range(len(layout))
    )
    body.append(f"    return [{items}]")
    module = compile("\n".join(body), "<kom all_fast>", "exec")
    return next(c for c in module.co_consts if isinstance(c, types.CodeType))


#: The globals of every generated `decode_middle`: one dictionary for all of them.
_MIDDLE_GLOBALS: dict[str, Any] = {
    "MISSING": MISSING,
    "new": new_record,
    "Update": Update,
    "VALID": VALID,
    "td": timedelta,
}


@functools.lru_cache(maxsize=4096)
def _middle_code(layout: tuple[tuple[str | None, int], ...]) -> types.CodeType:
    """The compiled code of `decode_middle` for one layout of (fast kind or None, slot)."""
    count = len(layout)
    own = ", ".join(
        f"{name}=None"
        for name in ("slow", *(f"R{i}" for i in range(count)), *(f"N{i}" for i in range(count)))
    )
    body = [
        f"def decode_middle(raws, doc, groups, failure, ts, received, topic, append, traw, {own}):",
        "    if failure is not None:",
    ]
    for i in range(count):
        body.append(f"        slow(R{i}, raws, doc, groups, failure, ts, received, topic, append)")
    body.append("        return")
    for i, (kind, slot) in enumerate(layout):
        fast = _FAST.get(kind) if kind is not None else None
        if fast is None:
            body.append(f"    slow(R{i}, raws, doc, groups, None, ts, received, topic, append)")
            continue
        body.append(f"    raw = raws[{slot}]")
        for n, (test, value) in enumerate(fast):
            update = f"(N{i}, {value}, VALID, None, ts, received, topic, None, False)"
            body += [
                f"    {'if' if n == 0 else 'elif'} {test}:",
                f"        append(new(Update, {update}))",
            ]
        body += [
            "    else:",
            f"        slow(R{i}, raws, doc, groups, None, ts, received, topic, append)",
        ]
    body.append("    return None")
    module = compile("\n".join(body), "<kom decode_middle>", "exec")
    # The module's only constant that is code is the function's body.
    return next(c for c in module.co_consts if isinstance(c, types.CodeType))


def _converted(r: _Reader, raw: Any, missing: str) -> tuple[Value, Reason | None, str | None]:
    """A tag's raw value converted to its type: (value, None, None), or why it is invalid."""
    if raw is MISSING:
        return None, Reason.MISSING, f"{r.full}: {missing}"
    try:
        return r.convert(raw), None, None
    except BinaryDataError as exc:  # SPEC §15: undecodable or too short
        return None, Reason.PARSE, f"{r.full}: {exc}"
    except ConversionError as exc:
        return None, Reason.TYPE, f"{r.full}: {exc}"


class _Plan(NamedTuple):
    """What a station's decoder is made of, but for the station's name (see _plan)."""

    first: tuple[_Reader, ...]  # IN_TOPIC, IN_DATA
    middle: tuple[_Reader, ...]  # JA=, JP=, TOPIC=
    last: tuple[_Reader, ...]  # IN_ID
    props: tuple[_Reader, ...]  # PROP=
    json: bool
    time_slot: int  # the line's time field in what read_many returns; -1 without
    read_many: Callable[[Any], list[Any]] | None
    payload_slot: int = -1  # BIN=$ tags: the payload's bytes follow the JSON values
    #: read_many's values straight from the payload (msgspec), where no tag needs the document.
    read_fast: Callable[[bytes], list[Any]] | None = None


def _plan(station: StationConfig, line: LineConfig) -> _Plan:
    """The readers of a station's input tags, named by tag alone, in SPEC §4 order.

    It depends on the tags, the station's payload type and time zone and the line only: the
    stations of one device type share one (building 10,000 stations, this was most of the time).
    """
    first: list[_Reader] = []
    middle: list[_Reader] = []
    last: list[_Reader] = []
    props: list[_Reader] = []
    paths: list[tuple[Step, ...]] = []
    zone = station.time_zone or line.time_zone
    whole = False  # BIN=$ tags: given their slot once the paths are known
    for tag in station.tags:
        if tag.address is None or tag.address.kind not in INPUT_KINDS:
            continue
        kind = tag.address.kind
        slot = -1
        if kind is Kind.JSON or (kind is Kind.BINARY and tag.address.is_json):
            slot = len(paths)
            paths.append(tag.address.steps)
        elif kind is Kind.BINARY:
            whole = True
        reader = _reader(tag, line, slot, zone)
        if kind is Kind.IN_ID:
            last.append(reader)
        elif kind is Kind.PROP:
            props.append(reader)
        elif kind in (Kind.IN_TOPIC, Kind.IN_DATA):
            first.append(reader)
        else:
            middle.append(reader)
    # IN_TOPIC before IN_DATA, whatever the file's order.
    first.sort(key=lambda r: r.kind is Kind.IN_DATA)
    json = (station.payload_type or line.payload_type) == "json"
    # The line's time field is one more path of the station's reader (read in the same walk).
    time_slot = -1
    if json and line.time_field is not None:
        time_slot = len(paths)
        paths.append(line.time_field)
    read_many = compile_many(paths) if paths else None
    payload_slot = -1
    if whole and not json:  # the configuration allows BIN=$ on text stations alone
        payload_slot = 0  # no JSON values: the payload is the only one
        middle = [
            r._replace(slot=payload_slot) if r.kind is Kind.BINARY and r.slot < 0 else r
            for r in middle
        ]
    # JP= tags read the whole document: their stations parse it all.
    whole_doc = any(r.slot < 0 and r.kind is not Kind.TOPIC for r in middle)
    read_fast = compile_fast(paths) if json and paths and not whole_doc else None
    return _Plan(
        tuple(first),
        tuple(middle),
        tuple(last),
        tuple(props),
        json,
        time_slot,
        read_many,
        payload_slot,
        read_fast,
    )


def _reader(tag: TagConfig, line: LineConfig, slot: int, zone: Zone) -> _Reader:
    """A tag's reader, named by the tag alone (the decoder puts the station's name before)."""
    assert tag.address is not None
    processing, filtered = _processing_for(tag.processing, tag.type)
    convert = converter(tag.type, line.time_mask, zone)
    kind_name = tag.type.kind
    binary = tag.address.binary
    if binary is not None:
        # SPEC §15: the text is decoded and unpacked before the type's own conversion;
        # no inline fast path (kind_name "" has none), the converter does it all.
        convert = field_reader(binary, tag.encoding or "base64", convert)
        kind_name = ""
    return _Reader(
        full=tag.name,
        kind=tag.address.kind,
        read=tag.address.read,
        group=tag.address.group,
        convert=convert,
        processing=processing,
        filtered=filtered,
        slot=slot,
        kind_name=kind_name,
    )


@functools.lru_cache(maxsize=1024)
def _processing_for(processing: Processing, value_type: ValueType) -> tuple[Any, bool]:
    """What the decoder runs for a tag's processing: None when there is nothing to do.

    Returns (None or the processing, whether reports are filtered); tags share these.
    """
    needs_apply = bool(processing.invert or processing.scale or processing.limits)
    filtered = processing.deadband is not None or processing.on_change
    if needs_apply:
        return processing, filtered
    if not filtered and processing == attrs.evolve(
        Processing.default_for(value_type), on_change=False
    ):
        return None, False
    return _FilterOnly(processing), filtered


class _FilterOnly:
    """A tag that only filters reports (dead band, change-only): apply() is skipped."""

    __slots__ = ("_p",)

    def __init__(self, processing: Processing) -> None:
        self._p = processing

    def apply(self, value: Value) -> tuple[Value, Reason | None]:
        return value, None

    def should_report(self, value: Value, valid: bool, last: tuple[Value, bool] | None) -> bool:
        return self._p.should_report(value, valid, last)


class Delivery(NamedTuple):
    """What a station did with a message: the updates, and whether it awaits ACK_ID."""

    updates: list[Update]
    awaiting_ack: bool = False
    held: bool = False
    ignored: bool = False


IGNORED = Delivery([], ignored=True)


@attrs.define
class Station:
    """The running state of one station: mode and errors, decoding, the ACK_ID hold queue."""

    config: StationConfig
    decoder: Decoder
    max_held: int = 10_000
    state: StationState = StationState.COMM
    current: Message | None = None
    held: deque[Message] = attrs.field(factory=deque)
    #: The regex groups of each held message (a held message keeps its own topic's groups).
    held_groups: deque[Mapping[str, str | None]] = attrs.field(factory=deque)
    uses_ack: bool = False
    groups: Mapping[str, str | None] = attrs.field(factory=dict)
    overflow: int = 0
    output_values: dict[str, Value] = attrs.field(factory=dict)
    #: Whether the `comm` updates of the current communication error went out. A station
    #: starts in that error before the line ever connected, and those updates are still due
    #: when the first attempt fails (the broker unreachable from the start).
    comm_reported: bool = False

    @classmethod
    def build(
        cls,
        config: StationConfig,
        line: LineConfig,
        plans: dict[tuple[Any, ...], tuple[StationConfig, _Plan]] | None = None,
    ) -> Station:
        """The running station of `config`; `plans` shares decoder plans between stations
        with the same tags (keyed by the tag records' identity, which `config` keeps alive)."""
        plan = None
        if plans is not None:
            key = (*map(id, config.tags), config.payload_type, config.time_zone)
            known = plans.get(key)
            if known is None:
                plan = _plan(config, line)
                plans[key] = (config, plan)
            else:
                plan = known[1]
        station = cls(config, Decoder(config, line, plan), max_held=line.max_held)
        station.uses_ack = config.tag_by_kind(Kind.ACK_ID) is not None
        if config.mode != "on":
            station.state = StationState(config.mode)
        for tag in config.tags:
            if tag.default is not None:
                station.output_values[tag.name] = tag.default
        return station

    def __repr__(self) -> str:
        return f"<Station {self.config.name!r} {self.state.value} held={len(self.held)}>"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def active(self) -> bool:
        """Whether the station wants its line connected (neither off nor simulated)."""
        return self.state not in (StationState.OFF, StationState.SIMULATION)

    def move(self, to: StationState) -> None:
        """Change state along an edge of TRANSITIONS; anything else raises."""
        if to is self.state:
            return
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"station {self.name!r}: {self.state.value} -> {to.value}")
        self.state = to
        self.comm_reported = False

    def receive(self, msg: Message, groups: Mapping[str, str | None]) -> Delivery:
        """Process a routed message; with ACK_ID, hold it behind the one being processed."""
        state = self.state
        if state is not _ON:
            if state is StationState.OFF or state is StationState.SIMULATION:
                return IGNORED
            # SPEC §3: any message routed to a station in will error clears it; a message
            # after a communication error means the line is back.
            self.move(StationState.ON)
        if not self.uses_ack:
            self.groups = groups
            return new_record(Delivery, (self.decoder.decode(msg, groups), False, False, False))
        if self.current is not None:
            if msg.qos == 0 and len(self.held) >= self.max_held:
                self.overflow += 1
                return Delivery([], held=False, ignored=True)
            self.held.append(msg)
            self.held_groups.append(groups)
            return Delivery([], held=True)
        self.current = msg
        self.groups = groups
        return Delivery(self.decoder.decode(msg, groups), awaiting_ack=True)

    def acknowledge(self, value: object) -> tuple[Message, Delivery | None]:
        """SPEC §5: ACK_ID written with the current IN_ID releases the next held message.

        Returns the finished message and the next one's delivery (None when none waits).
        """
        current = self.current
        if current is None:
            raise AckError(f"station {self.name!r} holds no message to acknowledge")
        expected = current.mid if current.qos else 0
        if type(value) is not int or value != expected:
            raise AckError(
                f"station {self.name!r}: ACK_ID must be {expected} (IN_ID), got {value!r}"
            )
        self.current = None
        return current, self.release_next()

    def release_next(self) -> Delivery | None:
        """Hand out the next held message when none is being processed (ACK_ID stations)."""
        if self.current is not None or not self.held:
            return None
        nxt = self.held.popleft()
        self.groups = self.held_groups.popleft()
        self.current = nxt
        return Delivery(self.decoder.decode(nxt, self.groups), awaiting_ack=True)

    def drop_unacknowledgeable(self, generation: int) -> int:
        """After a lost connection, forget held QoS 1/2 messages of older connections.

        The broker redelivers them on the new connection (persistent session), so
        keeping them would process them twice; QoS 0 messages are kept (never resent).
        """
        before = len(self.held)
        kept = [
            (m, g)
            for m, g in zip(self.held, self.held_groups, strict=True)
            if m.qos == 0 or m.generation >= generation
        ]
        self.held = deque(m for m, _ in kept)
        self.held_groups = deque(g for _, g in kept)
        return before - len(self.held)

    def will(self, now: datetime) -> list[Update]:
        """The station's device left (its will arrived): error and invalid inputs."""
        if not self.active:
            return []
        if self.state is StationState.COMM:
            self.move(StationState.ON)  # a message arrived, so the line is up (as in receive)
        self.move(StationState.WILL)
        return self.decoder.invalidate(
            Reason.WILL, now, f"station {self.name!r}: device will received"
        )

    def stale(self, now: datetime) -> list[Update]:
        """No message for `stale_after` seconds (SPEC §16): the inputs invalid, `stale`."""
        seconds = self.config.stale_after or 0
        return self.decoder.invalidate(
            Reason.STALE, now, f"station {self.name!r}: no message for {seconds:g} s"
        )

    def lost(self, now: datetime) -> list[Update]:
        """The line went down: communication error and invalid inputs (once per outage)."""
        if not self.active or (self.state is StationState.COMM and self.comm_reported):
            return []
        self.move(StationState.COMM)
        self.comm_reported = True
        return self.decoder.invalidate(Reason.COMM, now, f"station {self.name!r}: line down")
