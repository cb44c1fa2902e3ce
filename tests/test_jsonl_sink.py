"""The JSON-lines sink on targets that are not regular files: /dev/null and named pipes."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from kom import Update
from kom._model import Quality
from kom._sinks import JsonlSink, SinkWriter

T = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BATCH = [Update("s.v", 1.5, Quality.VALID, None, T, T, "t/v", None)]


def test_a_sink_into_dev_null_commits_at_once() -> None:
    """`jsonl:/dev/null` takes every batch without a failure (fsync there fails with EINVAL)."""
    sink = JsonlSink("/dev/null")
    writer = SinkWriter([sink])
    done = threading.Thread(target=writer, args=(BATCH,), daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive(), "the batch is still being retried"
    writer.close()
    assert writer.failures == 0
    assert sink.rows == 1


def test_a_sink_into_a_named_pipe_writes_without_fsync(tmp_path: Path) -> None:
    """A FIFO (a reader process's pipe) gets each record; a pipe cannot be fsynced either."""
    fifo = tmp_path / "records"
    os.mkfifo(fifo)
    lines: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as pipe:
            lines.extend(pipe)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sink = JsonlSink(str(fifo))
    sink.write(BATCH)
    sink.close()
    reader.join(5)
    assert [json.loads(line)["value"] for line in lines] == [1.5]


def test_a_sink_into_a_regular_file_appends_records(tmp_path: Path) -> None:
    """A regular file is still written (and fsynced) per batch, records appended in order."""
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(str(path))
    sink.write(BATCH)
    sink.write(BATCH)
    assert len(path.read_bytes().splitlines()) == 2  # there before close: flushed per batch
    sink.close()
