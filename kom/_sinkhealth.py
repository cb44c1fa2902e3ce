"""What a historian sink says about itself: committing, or failing and why (SPEC §13 /health).

The interface is one optional method on a sink, `health() -> SinkHealth`. A sink that has
it reports its own state (the SQLite and JSON-lines sinks do, through `HealthMark`); for one
that has not, `SinkWriter` reports what it saw of that sink's writes. `kom run --http`
answers `GET /health` with 503 while any sink is failing, naming the sink and its error
(for example `database or disk is full`).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from ._model import Update


@attrs.frozen
class SinkHealth:
    """A sink's state: `ok` while its last write committed.

    `error` is the last write's failure (kept while the sink is failing), `failing_since`
    when the failing began and `last_commit` when a write last committed (seconds since the
    epoch, None before the first), `rows` the rows written.
    """

    name: str
    ok: bool
    error: str | None = None
    failing_since: float | None = None
    last_commit: float | None = None
    rows: int = 0

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.define
class HealthMark:
    """A sink's own record of its writes, for its `health()`: the last failure, the last commit."""

    error: str | None = None
    failing_since: float | None = None
    last_commit: float | None = None

    def committed(self, now: float) -> None:
        self.error = None
        self.failing_since = None
        self.last_commit = now

    def failed(self, exc: BaseException, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.error = describe_error(exc)

    def report(self, name: str, rows: int) -> SinkHealth:
        return SinkHealth(
            name, self.error is None, self.error, self.failing_since, self.last_commit, rows
        )


def describe_error(exc: BaseException) -> str:
    """An error as one line for a person: the library's own text (`database or disk is full`,
    `[Errno 28] No space left on device`), or the exception's type when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Marked(Protocol):
    _health: HealthMark


S = TypeVar("S", bound=_Marked)


def marks_health(
    write: Callable[[S, Sequence[Update]], None],
) -> Callable[[S, Sequence[Update]], None]:
    """Decorate a sink's `write()` so that its `_health` mark follows each call's outcome.

    One clock call a batch (not a row); the exception still goes to the caller, which
    retries (SinkWriter).
    """

    @functools.wraps(write)
    def marked(self: S, updates: Sequence[Update]) -> None:
        try:
            write(self, updates)
        except Exception as exc:
            self._health.failed(exc, time.time())
            raise
        self._health.committed(time.time())

    return marked


def health_of(sink: Any) -> SinkHealth | None:
    """`sink.health()` when the sink has that method, else None."""
    report = getattr(sink, "health", None)
    return report() if callable(report) else None


#: Upper bounds (seconds) of the commit-latency histogram's buckets (`kom_sink_commit_seconds`):
#: a batch commits in well under a millisecond to a few seconds (an fsync on a busy disk).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.define
class SinkStats:
    """What `SinkWriter` saw of one sink's writes: rows, failures and commit latency.

    Updated once a batch on the thread that writes; read by the status server without a
    lock (plain numbers, each a consistent value on its own).
    """

    name: str
    rows: int = 0
    failures: int = 0
    commits: int = 0
    commit_seconds: float = 0.0
    buckets: list[int] = attrs.Factory(lambda: [0] * len(COMMIT_BUCKETS))
    mark: HealthMark = attrs.Factory(HealthMark)

    @classmethod
    def of(cls, sink: Any, index: int) -> SinkStats:
        report = health_of(sink)
        return cls(report.name if report else f"{type(sink).__name__.lower()}{index}")

    def committed(self, rows: int, seconds: float) -> None:
        self.rows += rows
        self.commits += 1
        self.commit_seconds += seconds
        bucket = bisect.bisect_left(COMMIT_BUCKETS, seconds)
        if bucket < len(COMMIT_BUCKETS):  # slower ones count only in the total (+Inf)
            self.buckets[bucket] += 1
        self.mark.committed(time.time())

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.mark.failed(exc, time.time())

    def health(self, sink: Any) -> SinkHealth:
        """The sink's own report when it gives one, else what the writer saw."""
        return health_of(sink) or self.mark.report(self.name, self.rows)
