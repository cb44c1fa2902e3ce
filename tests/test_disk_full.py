"""The SQLite sink on a real, small file system (a 2 MiB tmpfs): full, freed, never losing rows."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kom import Quality, SinkError, Update
from kom._sinks import WAL_BYTES, JsonlSink, SinkWriter, SqliteSink

from . import _stream
from ._stream import StreamPublisher, record, station, tally, wait_until

#: The file system's size: the figure of the disk-full report this reproduces.
SIZE = "2m"
KOM = [sys.executable, "-m", "kom._cli"]
T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (root only), unmounted after it."""
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        print(f"\nskipped: cannot mount a small tmpfs here ({why})")
        pytest.skip(f"mounting a tmpfs is not permitted here: {why}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> Path:
    """A file that takes every free block of the file system at `where`."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as file:
        chunk = b"\0" * 65536
        while True:
            try:
                file.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):
            while True:
                file.write(b"\0" * 4096)
    return filler


def free_bytes(where: Path, count: int) -> None:
    """Give `count` bytes back by cutting the filler file."""
    filler = where / "filler"
    os.truncate(filler, max(0, filler.stat().st_size - count))


def updates(first: int, count: int) -> list[Update]:
    """`count` valid updates of tag `t.n` numbered from `first`."""
    return [
        Update("t.n", n, Quality.VALID, None, T0, T0, "dev/n", None)
        for n in range(first, first + count)
    ]


def rows(db: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        return [r[0] for r in conn.execute("SELECT value FROM updates ORDER BY id")]


def test_a_full_disk_holds_the_batch_reports_one_line_and_resumes_when_space_returns(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch on a full disk waits (health says disk full) and commits once space is freed."""
    db = small_fs / "kom.db"
    sink = SqliteSink(db)
    writer = SinkWriter([sink])
    writer(updates(0, 10))
    fill(small_fs)
    done = threading.Event()
    # 2,000 rows of about 60 bytes: more than the last free blocks hold.
    thread = threading.Thread(target=lambda: (writer(updates(10, 2000)), done.set()))
    thread.start()
    try:
        wait_until(lambda: not writer.health()[0], 10, "the sink reports a problem")
        _ok, reason = writer.health()
        assert reason is not None
        assert "disk full" in reason
        time.sleep(1.0)  # a few quiet retries
        assert not done.is_set()
        free_bytes(small_fs, 1024 * 1024)
        thread.join(15)
        assert done.is_set()
    finally:
        if thread.is_alive():
            writer.close()  # ends the retries
        thread.join(5)
    assert writer.health() == (True, None)
    lines = [r.getMessage() for r in caplog.records if "disk full" in r.getMessage()]
    assert len(lines) == 1, lines  # one line however many retries
    assert "\n" not in lines[0]
    assert any("writing again" in r.getMessage() for r in caplog.records)
    # After the 1 MiB freed, 2,000 more one-message batches, as a slow stream commits them.
    for n in range(2010, 4010):
        sink.write(updates(n, 1))  # raises if the sink stalls again
    writer.close()
    stored = rows(db)
    figures = record(tally("16 disk full, 1 MiB freed (SQLite sink)", range(4010), stored))
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert not (small_fs / "kom.db-wal").exists() or (
        (small_fs / "kom.db-wal").stat().st_size <= WAL_BYTES
    )


def test_opening_a_new_database_on_a_full_disk_is_one_clear_error(small_fs: Path) -> None:
    """SqliteSink on a full file system raises SinkError naming disk full, not sqlite3's error."""
    fill(small_fs)
    with pytest.raises(SinkError, match="disk full") as info:
        SqliteSink(small_fs / "new.db")
    assert info.value.reason == "disk-full"


def test_kom_run_on_a_full_disk_exits_2_with_one_line(small_fs: Path, tmp_path: Path) -> None:
    """`kom run` whose database cannot be created on a full disk prints one line and exits 2."""
    fill(small_fs)
    cfg = tmp_path / "stations.toml"
    cfg.write_text('[line]\nhost = "127.0.0.1"\nport = 9\npayload_type = "json"\n' + station("x/y"))
    done = subprocess.run(
        [*KOM, "run", str(cfg), "--sink", f"sqlite:{small_fs / 'kom.db'}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "disk full" in err


@pytest.mark.broker
def test_kom_run_killed_while_the_disk_is_full_loses_nothing(
    broker_factory: object, topic_prefix: str, small_fs: Path, tmp_path: Path
) -> None:
    """Messages held while the disk is full are not acknowledged: after a kill and space freed,
    a second `kom run` stores every one."""
    from .test_reliability import QUEUE, _client_id, _finish, _kom_run, _line, _run_config

    broker = broker_factory(extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    cfg, db = tmp_path / "stations.toml", small_fs / "kom.db"
    _run_config(cfg, broker.address, topic_prefix, station(topic))
    client_id = str(_line(broker.address, topic_prefix)["client_id"])
    first = _kom_run(cfg, db, tmp_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        broker.wait_for_log(f"{client_id} 1 {topic_prefix}/#")
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
            pub.stream(range(500), rate=200)
            pub.wait_streamed()
            _stream.wait_stored(db, "s.n", range(500))
            fill(small_fs)
            # SQLite may first reuse its log's frames (after a checkpoint) without growing a
            # file: stream on, 2,000 messages at a time, until the stored rows stop short.
            streamed = 500
            for _ in range(4):
                pub.stream(range(streamed, streamed + 2000), rate=400)
                streamed += 2000
                pub.wait_streamed()
                wait_until(lambda n=streamed: len(pub.acked()) == n, what="publisher acknowledged")
                time.sleep(1.0)
                at_full = len(_stream.stored_values(db, "s.n"))
                if at_full < streamed:
                    break
            first.kill()
            _, err = first.communicate(timeout=15)
            free_bytes(small_fs, 1024 * 1024)
            second = _kom_run(cfg, db, tmp_path)
            sent = pub.wait_acked()
            stored = _stream.wait_stored(db, "s.n", sent, timeout=30)
    finally:
        code, _ = _finish(second)
        _finish(first)
    full_lines = [line for line in err.decode().splitlines() if "disk full" in line]
    figures = record(
        tally(
            "16 disk full, kom run SIGKILL, 1 MiB freed, restart (SQLite)",
            sent,
            stored,
            rows_at_full=at_full,
        )
    )
    assert figures.lost == 0, figures.lost_numbers
    assert at_full < streamed  # the disk did fill before the stream ended
    assert len(full_lines) == 1, full_lines
    assert code == 0


def test_jsonl_sink_on_a_full_disk_takes_back_the_cut_line_and_resumes(small_fs: Path) -> None:
    """A JSON-lines batch cut by a full disk is taken back, retried, and written whole once."""
    target = small_fs / "kom.jsonl"
    sink = JsonlSink(str(target))
    writer = SinkWriter([sink])
    writer(updates(0, 10))
    fill(small_fs)
    free_bytes(small_fs, 8192)  # room for part of the next batch, not all of it
    done = threading.Event()
    thread = threading.Thread(target=lambda: (writer(updates(10, 2000)), done.set()))
    thread.start()
    try:
        wait_until(lambda: not writer.health()[0], 10, "the sink reports a problem")
        assert "disk full" in str(writer.health()[1])
        free_bytes(small_fs, 1024 * 1024)
        thread.join(15)
        assert done.is_set()
    finally:
        if thread.is_alive():
            writer.close()
        thread.join(5)
    writer.close()
    values = [json.loads(line)["value"] for line in target.read_text().splitlines()]
    figures = record(tally("16 disk full, JSON lines, 1 MiB freed", range(2010), values))
    assert figures.lost == 0
    assert figures.duplicates == 0
