"""The SQLite sink stores each value as its record carries it, whichever way it inserts."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom import Update
from kom._model import Quality, Reason
from kom._sinks import SinkWriter, SqliteSink, record

T = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.datetimes(timezones=st.just(UTC)),
    st.timedeltas(min_value=timedelta(days=-99_999), max_value=timedelta(days=99_999)),
)
updates = st.lists(
    st.builds(
        lambda tag, value, reason, topic, detail, retained: Update(
            tag,
            value if reason is None else None,
            Quality.VALID if reason is None else Quality.INVALID,
            reason,
            T,
            T + timedelta(milliseconds=2),
            topic,
            detail,
            retained,
        ),
        st.text(min_size=1),
        values,
        st.none() | st.sampled_from(Reason),
        st.none() | st.text(),
        st.none() | st.text(),
        st.booleans(),
    ),
    min_size=1,
    max_size=30,
)


def stored(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT tag, value, quality, reason, ts, received, topic, retained, detail"
            " FROM updates"
            " ORDER BY id"
        ).fetchall()


def expected(batch: list[Update]) -> list[tuple[object, ...]]:
    """What binding each record's fields one by one stores (booleans become 0 and 1)."""
    with sqlite3.connect(":memory:") as conn:
        return [
            conn.execute(
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?", (*record(u).values(), u.detail)
            ).fetchone()
            for u in batch
        ]


@settings(max_examples=150, deadline=None)
@given(batch=updates)
def test_sqlite_stores_what_the_record_carries(
    tmp_path_factory: object, batch: list[Update]
) -> None:
    """Any mix of values, texts with NULs and unusual characters, reasons and details."""
    path = tmp_path_factory.mktemp("sink") / "h.db"  # type: ignore[attr-defined]
    sink = SqliteSink(path)
    sink.write(batch)
    sink.write(batch)
    sink.close()
    assert stored(path) == expected(batch) * 2
    for row, update in zip(stored(path), batch, strict=False):
        if isinstance(update.value, float):
            assert type(row[1]) is float
            assert row[1] == update.value


def test_sqlite_text_with_nul_is_stored_whole(tmp_path: Path) -> None:
    """A text with NUL characters is stored whole, not cut at the first."""
    batch = [
        Update("a", "x\x00y", Quality.VALID, None, T, T, "t"),
        Update("b", 1.5, Quality.VALID, None, T, T, "t"),
    ]
    sink = SqliteSink(tmp_path / "h.db")
    sink.write(batch)
    sink.close()
    assert [row[:2] for row in stored(tmp_path / "h.db")] == [("a", "x\x00y"), ("b", 1.5)]


@pytest.mark.parametrize("rows", [1, 15, 16, 17, 8192, 8193, 20_000])
def test_sqlite_stores_batches_of_any_size_in_order(tmp_path: Path, rows: int) -> None:
    """Batches around and beyond the statement sizes (padded, or split in one transaction)
    store every row once, in order."""
    batch = [Update(f"s.t{i}", i, Quality.VALID, None, T, T, "t") for i in range(rows)]
    sink = SqliteSink(tmp_path / "h.db")
    sink.write(batch)
    sink.write(batch[:3])
    sink.close()
    got = [row[:2] for row in stored(tmp_path / "h.db")]
    assert got == [(u.tag, u.value) for u in (*batch, *batch[:3])]


def test_sqlite_tags_like_the_padding_are_stored(tmp_path: Path) -> None:
    """The statement skips its padding rows by their tag 0; a tag "0" or "" is a real row."""
    batch = [Update(tag, 0, Quality.VALID, None, T, T, "t") for tag in ("0", "", "0.0")]
    sink = SqliteSink(tmp_path / "h.db")
    sink.write(batch)
    sink.write([*batch, batch[0]._replace(retained=True)])
    sink.close()
    assert [row[0] for row in stored(tmp_path / "h.db")] == ["0", "", "0.0"] * 2 + ["0"]


@pytest.mark.parametrize("rows", [16, 8193])
@pytest.mark.parametrize(
    "last",
    [
        {"retained": True},
        {"value": None, "quality": Quality.INVALID, "reason": Reason.COMM},
        {"detail": "why"},
        {"quality": Quality.INVALID},
    ],
)
def test_sqlite_batch_turning_out_not_plain_stores_every_column(
    tmp_path: Path, rows: int, last: dict[str, object]
) -> None:
    """A batch of plain rows (valid, no reason or detail, not retained; bound 5 columns a row)
    whose last row is not plain is stored whole with every column, as is a plain one."""
    plain = [Update(f"s.t{i}", i * 0.5, Quality.VALID, None, T, T, "t") for i in range(rows)]
    mixed = [*plain[:-1], plain[-1]._replace(**last)]
    sink = SqliteSink(tmp_path / "h.db")
    sink.write(mixed)
    sink.write(plain)
    sink.close()
    assert stored(tmp_path / "h.db") == expected(mixed) + expected(plain)


def test_sqlite_batch_with_a_value_it_cannot_store_adds_nothing(tmp_path: Path) -> None:
    """A batch whose value SQLite refuses (an integer over 64 bits) raises and leaves the
    table as it was, whether it fits one statement or spans several."""
    sink = SqliteSink(tmp_path / "h.db")
    for rows in (10, 9000):
        batch = [Update(f"s.t{i}", i, Quality.VALID, None, T, T, "t") for i in range(rows)]
        batch[-1] = batch[-1]._replace(value=2**70)
        with pytest.raises(OverflowError):
            sink.write(batch)
    sink.close()
    assert stored(tmp_path / "h.db") == []


class _FailingOnceSink:
    """A sink whose first write fails and whose second write is under way when kom stops."""

    def __init__(self) -> None:
        self.writes = 0
        self.closed = False
        self.written_after_close = False
        self.closed_during_write = False

    def write(self, updates: object) -> None:
        self.written_after_close |= self.closed
        self.writes += 1
        if self.writes == 1:
            raise OSError("database is locked")
        time.sleep(0.3)  # a slow commit: close() is called meanwhile (below)
        self.closed_during_write = self.closed

    def close(self) -> None:
        self.closed = True


def test_writer_closes_no_sink_beneath_a_write_under_way(tmp_path: Path) -> None:
    """close() while a retried write is under way waits for it, and no write follows close()."""
    sink = _FailingOnceSink()
    writer = SinkWriter([sink])
    update = Update("s.t", 1, Quality.VALID, None, T, T, None)
    retrying = threading.Thread(target=writer, args=([update],))
    retrying.start()
    deadline = time.monotonic() + 5
    while sink.writes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()  # the second write is sleeping inside the sink now
    retrying.join(5)
    assert sink.writes == 2
    assert sink.closed
    assert not sink.closed_during_write
    assert not sink.written_after_close
