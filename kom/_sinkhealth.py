"""What a historian sink says about itself: committing, or failing and why (SPEC §13 /health).

A sink may have `health() -> (ok, reason)` (kom._sinks.Sink): False with a one-line reason
while it cannot store anything. `SinkWriter` keeps, per sink, what it saw of the writes
(`SinkStats`: rows, failures, commit times, the last failure) and gives `/health` a
`SinkHealth` per sink: the sink's own verdict where it has `health()`, else the writer's.
`kom run --http` answers `GET /health` with 503 while any sink is failing, naming it and
its reason (for example `disk full`).
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import attrs


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


def health_of(sink: Any) -> tuple[bool, str | None] | None:
    """`sink.health()`, `(ok, reason)`, when the sink has that method, else None."""
    report = getattr(sink, "health", None)
    return report() if callable(report) else None


def sink_name(sink: Any, index: int) -> str:
    """A sink's name in /health and /metrics: its `url`, else its type and place."""
    url = getattr(sink, "url", None)
    return url if isinstance(url, str) else f"{type(sink).__name__.lower()}{index}"


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
        return cls(sink_name(sink, index))

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
        """The sink's own `(ok, reason)` when it gives one, else what the writer saw; with
        the rows and the times the writer saw either way."""
        mark = self.mark
        reported = health_of(sink)
        if reported is None:
            return mark.report(self.name, self.rows)
        ok, reason = reported
        if ok:
            return SinkHealth(self.name, True, None, None, mark.last_commit, self.rows)
        error = reason or mark.error or "failing"
        return SinkHealth(self.name, False, error, mark.failing_since, mark.last_commit, self.rows)
