"""Time sanity and staleness of stations (SPEC §16), without a clock of their own.

`time_bounds` checks a message's source time against its receive time (`max_future`,
`max_past`); `StaleClock` tells which stations have had no message for their `stale_after`.
Both take the time from their caller: the decoder passes the message's receive time, the
line's loop its clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from ._convert import format_time

__all__ = ["StaleClock", "TimeCheck", "time_bounds"]

#: Why a source time is refused, or None when it is within the bounds.
TimeCheck = Callable[[datetime, datetime], "str | None"]

_NEVER = datetime.max.replace(tzinfo=UTC)


def time_bounds(max_future: float | None, max_past: float | None) -> TimeCheck | None:
    """The check of a source time `ts` against its receive time, or None when both are off.

    A device clock that is wrong by years (a UNIX time of 99999999999 is year 5138, -5e9 is
    1811) reads without error; these bounds make such a message's values invalid (`time`)
    instead of writing them into a historian far from now.
    """
    if max_future is None and max_past is None:
        return None
    future = timedelta(seconds=max_future) if max_future is not None else None
    past = timedelta(seconds=max_past) if max_past is not None else None

    def check(ts: datetime, received: datetime) -> str | None:
        ahead = ts - received
        if future is not None and ahead > future:
            return (
                f"source time {format_time(ts)} is {ahead.total_seconds():.0f} s ahead of the "
                f"receive time (max_future = {max_future:g} s)"
            )
        if past is not None and -ahead > past:
            return (
                f"source time {format_time(ts)} is {-ahead.total_seconds():.0f} s behind the "
                f"receive time (max_past = {max_past:g} s)"
            )
        return None

    return check


class StaleClock:
    """When each watched station last had a message, and which ones went stale.

    Stations are known by their index on the line. A station's count starts at its last
    message, or, before any, at the first `due` after `restart` (the line's connection: while
    the line is down its stations are in communication error, which says more). Each
    quiet spell is reported once; the next message ends it.
    """

    __slots__ = ("_after", "_last", "_next", "_stale")

    def __init__(self, after: Mapping[int, float]) -> None:
        self._after = {index: timedelta(seconds=s) for index, s in after.items()}
        self._last: dict[int, datetime] = {}
        self._stale: set[int] = set()
        self._next: datetime | None = None  # no station can be due before; None: look now

    def __repr__(self) -> str:
        return f"<StaleClock watched={len(self._after)} stale={sorted(self._stale)}>"

    @property
    def stale(self) -> frozenset[int]:
        """The stations reported stale and silent since."""
        return frozenset(self._stale)

    def seen(self, index: int, at: datetime) -> None:
        """A message reached station `index`, received `at`."""
        if index in self._after:
            self._last[index] = at
            if index in self._stale:
                self._stale.discard(index)
                self._next = None

    def restart(self) -> None:
        """Forget every count (a new connection): each starts again at the next `due`."""
        self._last.clear()
        self._stale.clear()
        self._next = None

    def due(self, now: datetime) -> list[int]:
        """The stations that have just been quiet for their `stale_after`, each once."""
        if self._next is not None and now < self._next:
            return []
        out: list[int] = []
        soonest = _NEVER
        for index, after in self._after.items():
            if index in self._stale:
                continue
            last = self._last.setdefault(index, now)
            deadline = last + after
            if now >= deadline:
                self._stale.add(index)
                out.append(index)
            elif deadline < soonest:
                soonest = deadline
        self._next = soonest
        return out
