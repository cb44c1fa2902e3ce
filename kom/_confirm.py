"""Confirmed writes (SPEC §11): a write completes when the device says it took the value.

Two ways. `confirm = "read-back"`: the write completes when its `confirm_tag` (an input tag of
a station on the same line) next reads the written value, converted to that tag's type.
`confirm = "response"` (MQTT 5): the PUBLISH carries a Response Topic and Correlation Data
unique to the write, and the write completes when a PUBLISH on that topic carries the same
correlation data. Neither within `confirm_timeout` seconds: the write fails with reason
`unconfirmed`.

Pure: the line registers a write before publishing it, tells this module of the broker's
completion, of each value read and each response, and completes or fails the futures this
module hands back. Either the device's answer or the broker's completion may come first.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    from ._line import WriteResult

CONFIRM_KINDS = ("read-back", "response")

#: Numbers read back match the written one within this relative tolerance (or, near zero, the
#: absolute one): a device that keeps a setpoint as a 32-bit float reads 21.3 back as
#: 21.299999237 (a relative error of 4e-8); a device that rounds to its own resolution does
#: not confirm, and says so in the failed write's message.
REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9


@attrs.frozen
class Confirm:
    """An output tag's confirmation: how, by which tag, within how long."""

    how: Literal["read-back", "response"]
    #: read-back: the input tag, "station.tag".
    tag: str | None = None
    #: Seconds; None: the line's reply_timeout (0: no limit).
    timeout: float | None = None
    #: response: the Response Topic; None: `default_response_topic`.
    response_topic: str | None = None


def default_response_topic(client_id: str, line_name: str) -> str:
    """Where responses come by default: one topic per client, so that two kom processes
    (or two lines) never see each other's responses."""
    return f"kom/{client_id or line_name}/response"


def new_correlation() -> bytes:
    """Correlation data unique to one write (16 random bytes)."""
    return uuid.uuid4().bytes


def same_value(expected: object, got: object) -> bool:
    """Whether a value read back is the one written (both of the input tag's type).

    Numbers (not booleans) within REL_TOLERANCE/ABS_TOLERANCE; times exactly (to the
    microsecond); everything else by equality.
    """
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got or (type(expected) is type(got) and expected == got)
    if isinstance(expected, int | float) and isinstance(got, int | float):
        return math.isclose(expected, got, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)
    if isinstance(expected, datetime | timedelta) or isinstance(got, datetime | timedelta):
        return type(expected) is type(got) and expected == got
    return bool(expected == got)


@attrs.define(eq=False)
class Pending:
    """A confirmed write on its way: published or not, confirmed or not."""

    future: Future[WriteResult]
    tag: str  # the output tag
    how: str
    key: str | bytes  # the confirm tag's full name, or the correlation data
    expected: object  # read-back: the written value as the confirm tag's type
    deadline: float | None
    timeout: float
    published: WriteResult | None = None
    confirmed: bool = False
    last: object = None  # read-back: the last value read that did not match
    reads: int = 0
    response: bytes | None = None

    def result(self) -> WriteResult:
        """The completed write: the broker's result, saying how it was confirmed."""
        assert self.published is not None
        return attrs.evolve(self.published, confirmed=self.how, response=self.response)

    def why_not(self) -> str:
        """Why the write was not confirmed, in words (for the failed write)."""
        limit = f"within {self.timeout:g} s"
        if self.how == "response":
            return f"{self.tag}: no response with its correlation data {limit}"
        seen = (
            f"it read {self.last!r} ({self.reads} reading(s) since the write)"
            if self.reads
            else "no reading since the write"
        )
        source = self.key if isinstance(self.key, str) else self.key.hex()
        return f"{self.tag}: {source} did not read back {self.expected!r} {limit}: {seen}"


@attrs.define
class Confirmations:
    """The confirmed writes a line waits for, by confirm tag or correlation data."""

    _by_key: dict[str | bytes, list[Pending]] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_key.values())

    def add(self, pending: Pending) -> None:
        """A write about to be published waits for its confirmation."""
        self._by_key.setdefault(pending.key, []).append(pending)

    def drop(self, pending: Pending) -> None:
        """The write failed on its way (refused, timed out): it waits no more."""
        waiting = self._by_key.get(pending.key)
        if waiting and pending in waiting:
            waiting.remove(pending)
            if not waiting:
                del self._by_key[pending.key]

    def published(self, pending: Pending, result: WriteResult) -> bool:
        """The broker completed the write; True when it was confirmed already (done)."""
        pending.published = result
        if pending.confirmed:
            self.drop(pending)
            return True
        return False

    def read(self, tag: str, value: object) -> list[Pending]:
        """`tag` read a valid `value`: the writes it confirms that are now done."""
        waiting = self._by_key.get(tag)
        if not waiting:
            return []
        for pending in waiting:
            if not pending.confirmed:
                if same_value(pending.expected, value):
                    pending.confirmed = True
                else:
                    pending.reads += 1
                    pending.last = value
        return self._done(tag, waiting)

    def responded(self, correlation: bytes, payload: bytes) -> list[Pending]:
        """A PUBLISH on a response topic carried `correlation`: the write it confirms."""
        waiting = self._by_key.get(correlation)
        if not waiting:
            return []
        for pending in waiting:
            pending.confirmed = True
            pending.response = bytes(payload)
        return self._done(correlation, waiting)

    def _done(self, key: str | bytes, waiting: list[Pending]) -> list[Pending]:
        done = [p for p in waiting if p.confirmed and p.published is not None]
        if done:
            waiting[:] = [p for p in waiting if p not in done]
            if not waiting:
                del self._by_key[key]
        return done

    def expire(self, now: float) -> list[Pending]:
        """The writes not confirmed by their deadline (they wait no more)."""
        late = [
            p
            for waiting in self._by_key.values()
            for p in waiting
            if p.deadline is not None and now >= p.deadline and not (p.confirmed and p.published)
        ]
        for pending in late:
            self.drop(pending)
        return late

    def take_all(self) -> list[Pending]:
        """Every write still waiting (the line closes)."""
        everything = [p for waiting in self._by_key.values() for p in waiting]
        self._by_key.clear()
        return everything


def response_topics(stations: Iterable[Any], client_id: str, line_name: str) -> tuple[str, ...]:
    """The topics the line subscribes to for its `confirm = "response"` outputs."""
    topics: dict[str, None] = {}
    for station in stations:
        for tag in station.tags:
            if tag.confirm is not None and tag.confirm.how == "response":
                topic = tag.confirm.response_topic or default_response_topic(client_id, line_name)
                topics[topic] = None
    return tuple(topics)


def read_confirm(t: Any, value_type: Any, line: Any) -> Confirm | None:
    """An output tag's `confirm`, `confirm_tag`, `confirm_timeout` and `response_topic`
    (`t` is the configuration reader's table; errors name their key path)."""
    how = t.choice("confirm", None, CONFIRM_KINDS)
    others = [k for k in ("confirm_tag", "confirm_timeout", "response_topic") if k in t.data]
    if how is None:
        for key in others:
            t.error(key, f"{key} goes with confirm = {CONFIRM_KINDS}")
        return None
    if value_type is not None and not value_type.is_output:
        t.error("confirm", f"only output tags are confirmed; {value_type.value} is an input type")
    timeout = t.number("confirm_timeout", None, 0, 3600)
    tag = t.get("confirm_tag", str, None)
    topic = t.get("response_topic", str, None)
    if how == "read-back":
        if tag is None:
            t.error("confirm_tag", 'confirm = "read-back" needs confirm_tag = "station.tag"')
        elif tag.count(".") < 1 or not all(tag.partition(".")[::2]):
            t.error("confirm_tag", f'expected "station.tag", found {tag!r}')
        if topic is not None:
            t.error("response_topic", 'response_topic goes with confirm = "response"')
    else:
        if tag is not None:
            t.error("confirm_tag", 'confirm_tag goes with confirm = "read-back"')
        if line is not None and line.protocol == "3.1.1":
            t.error(
                "confirm",
                'confirm = "response" needs MQTT 5 (Response Topic, Correlation Data): '
                'give the line protocol = "5", or use confirm = "read-back"',
            )
        if topic is not None and (not topic or "+" in topic or "#" in topic):
            t.error("response_topic", f"a topic without wildcards, found {topic!r}")
        elif topic is None and line is not None:
            derived = default_response_topic(line.client_id, line.name)
            if "+" in derived or "#" in derived:
                t.error(
                    "response_topic",
                    f"the default {derived!r} (from the client id) has a wildcard: give one",
                )
    return Confirm(how, tag, timeout, topic)


def check_confirm_tags(stations: Iterable[Any], paths: dict[str, str], add_error: Any) -> None:
    """Each read-back's `confirm_tag` names an input tag of a station on the same line."""
    by_name = {s.name: s for s in stations}
    for station in by_name.values():
        for j, tag in enumerate(station.tags, 1):
            confirm = tag.confirm
            if confirm is None or confirm.tag is None:
                continue
            where = f"{paths.get(station.name, station.name)}.tag[{j}].confirm_tag"
            name, _, tag_name = confirm.tag.partition(".")
            other = by_name.get(name)
            target = other.tag(tag_name) if other is not None else None
            if other is None:
                add_error(where, f"no station named {name!r}")
            elif other.line != station.line:
                add_error(
                    where,
                    f"station {name!r} is on line {other.line!r}, not {station.line!r}: "
                    "the value read back must come through the same line",
                )
            elif target is None:
                add_error(where, f"station {name!r} has no tag {tag_name!r}")
            elif target.type.is_output:
                add_error(
                    where, f"{confirm.tag} is an output ({target.type.value}): name an input tag"
                )
