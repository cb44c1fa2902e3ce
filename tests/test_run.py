"""`kom run` as a subprocess: sinks, SIGHUP reload, SIGTERM, `kom write`, `kom check/route`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._broker import Mosquitto
from ._kom import Publisher, wait_until

KOM = [sys.executable, "-m", "kom._cli"]

CONFIG = """
[line]
host = "127.0.0.1:{port}"
client_id = "kom-run-{name}"
topic_filter = "{prefix}/#"
payload_type = "json"
publish_qos = 1
reply_timeout = 3

[[station]]
name = "a"
address = "{prefix}/a"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = {{ topic = "{prefix}/cmd", payload = "{{value}}" }}
"""

EXTRA = """
[[station]]
name = "b"
address = "{prefix}/b"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
"""


def _write(path: Path, broker: Mosquitto, prefix: str, extra: bool = False) -> None:
    text = CONFIG.format(port=broker.port, prefix=prefix, name=prefix[-6:])
    if extra:
        text += EXTRA.format(prefix=prefix)
    path.write_text(text)


def _rows(db: Path, tag: str | None = None) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        sql = "SELECT tag, value, quality, reason, ts, received, topic FROM updates"
        if tag:
            return conn.execute(sql + " WHERE tag = ? ORDER BY id", (tag,)).fetchall()
        return conn.execute(sql + " ORDER BY id").fetchall()


def _run(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(KOM + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, bytes, bytes]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    return proc.returncode, out, err


@pytest.mark.broker
def test_run_stores_every_value_in_sqlite_and_stops_cleanly_on_sigterm(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """Every published QoS 1 value is a row in SQLite; SIGTERM exits 0, the database consistent."""
    cfg, db = tmp_path / "stations.toml", tmp_path / "kom.db"
    _write(cfg, broker, topic_prefix)
    proc = _run(["run", str(cfg), "--sink", f"sqlite:{db}"], tmp_path)
    try:
        wait_until(
            lambda: broker.connections(f"kom-run-{topic_prefix[-6:]}") == 1, what="kom connected"
        )
        time.sleep(0.3)
        with Publisher(broker.port) as pub:
            for n in range(200):
                pub.publish(f"{topic_prefix}/a", json.dumps({"n": n}))
        wait_until(lambda: db.exists() and len(_rows(db, "a.n")) >= 200, what="200 rows")
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err.decode()
    rows = _rows(db, "a.n")
    valid = [r for r in rows if r[2] == "valid"]
    assert [r[1] for r in valid] == list(range(200))
    assert all(r[3] is None and r[6] == f"{topic_prefix}/a" for r in valid)
    # On stop, the station's tags are closed off as invalid (comm): no stale value stays "live".
    assert rows[-1][1:4] == (None, "invalid", "comm")
    assert all(str(r[4]).endswith("Z") for r in rows)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.broker
def test_run_jsonl_to_stdout_has_the_spec_record_format(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """`--sink jsonl:-` prints one SPEC §9 record per line, invalid values as null with a reason."""
    cfg = tmp_path / "stations.toml"
    _write(cfg, broker, topic_prefix)
    proc = _run(["run", str(cfg), "--sink", "jsonl:-"], tmp_path)
    try:
        wait_until(lambda: broker.connections(f"kom-run-{topic_prefix[-6:]}") == 1)
        time.sleep(0.3)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/a", '{"n": 5}')
            pub.publish(f"{topic_prefix}/a", '{"n": "five"}')
        time.sleep(1.0)
    finally:
        code, out, err = _stop(proc, signal.SIGINT)
    assert code == 0, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["value"] for r in records] == [5, None, None]
    assert records[2]["reason"] == "comm"  # closed off on stop
    assert set(records[0]) == {
        "tag",
        "value",
        "quality",
        "reason",
        "ts",
        "received",
        "topic",
        "retained",
    }
    assert records[1]["quality"] == "invalid"
    assert records[1]["reason"] == "type"


@pytest.mark.broker
def test_sighup_adds_a_station_without_reconnecting(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGHUP with a new station starts filling it; the broker sees no new connection."""
    cfg, db = tmp_path / "stations.toml", tmp_path / "kom.db"
    _write(cfg, broker, topic_prefix)
    client_id = f"kom-run-{topic_prefix[-6:]}"
    proc = _run(["run", str(cfg), "--sink", f"sqlite:{db}"], tmp_path)
    try:
        wait_until(lambda: broker.connections(client_id) == 1)
        time.sleep(0.3)
        _write(cfg, broker, topic_prefix, extra=True)
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/b", '{"n": 42}')
        wait_until(
            lambda: db.exists() and len(_rows(db, "b.n")) == 1, what="row of the new station"
        )
        cfg.write_text("this is [not toml")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/b", '{"n": 43}')
        wait_until(lambda: len(_rows(db, "b.n")) == 2, what="old configuration still running")
    finally:
        code, _, err = _stop(proc)
    assert code == 0
    assert broker.connections(client_id) == 1
    assert b"reload refused" in err


@pytest.mark.broker
def test_kom_write_publishes_and_waits_for_completion(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """`kom write` publishes the output tag with QoS 1, prints the outcome and exits 0."""
    cfg = tmp_path / "stations.toml"
    _write(cfg, broker, topic_prefix)
    with Publisher(broker.port) as sub:
        sub.subscribe(f"{topic_prefix}/cmd")
        done = subprocess.run(
            [*KOM, "write", str(cfg), "a.cmd", "start"], capture_output=True, timeout=30
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"QoS 1" in done.stdout
        wait_until(lambda: [m.payload for m in sub.messages()] == [b"start"])
    failed = subprocess.run([*KOM, "write", str(cfg), "a.n", "1"], capture_output=True, timeout=30)
    assert failed.returncode == 2  # a user error, said before connecting
    assert failed.stderr == b"kom write: a.n: Ci is not an output type [not-output]\n"


def test_check_prints_the_routing_table_and_exit_codes(tmp_path: Path) -> None:
    """`kom check` exits 0 with the routing table, or 2 listing every error with its key path."""
    good = subprocess.run(
        [*KOM, "check", "examples/netio-4all.toml"], capture_output=True, cwd=_root()
    )
    assert good.returncode == 0
    assert b"exact  'devices/netio-4All-25E0/messages/events/' -> netio" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[line]\nhost = "h"\nkeep_alive = -1\n[[station]]\nname = "s"\naddress = "t"\n'
        '[[station.tag]]\nname = "x"\ntype = "Ai"\naddress = "JX=a"\n'
    )
    result = subprocess.run([*KOM, "check", str(bad)], capture_output=True)
    assert result.returncode == 2
    assert b"line.keep_alive" in result.stderr
    assert b"station[1].tag[1].address" in result.stderr


def test_route_json_explains_a_topic() -> None:
    """`kom route --json` names the station, the rule and every tag's record."""
    payload = (Path(_root()) / "tests/data/netio-4all-state.json").read_text()
    topic = "devices/netio-4All-25E0/messages/events/"
    result = subprocess.run(
        [*KOM, "route", "examples/netio-4all.toml", topic, "--payload", payload, "--json"],
        capture_output=True,
        cwd=_root(),
        check=True,
    )
    out = json.loads(result.stdout)
    assert out["station"] == "netio"
    assert out["rule"] == "exact"
    assert all(r["quality"] == "valid" for r in out["updates"])
    unrouted = subprocess.run(
        [*KOM, "route", "examples/netio-4all.toml", "x/y", "--json"],
        capture_output=True,
        cwd=_root(),
    )
    assert json.loads(unrouted.stdout) == {"station": None, "rule": "unrouted", "updates": []}


def _root() -> str:
    return str(Path(__file__).resolve().parent.parent)


_ = os


def test_sqlite_sink_indexes(tmp_path: Path) -> None:
    """The SQLite sink indexes ts by default and (tag, ts) on request; a bad option is refused."""
    from kom import ConfigError
    from kom._sinks import open_sink

    for url, expected in (
        (f"sqlite:{tmp_path}/a.db", {"updates_ts"}),
        (f"sqlite:{tmp_path}/b.db?index=tag_ts", {"updates_ts", "updates_tag_ts"}),
    ):
        sink = open_sink(url)
        db = url.removeprefix("sqlite:").partition("?")[0]
        sink.close()
        with sqlite3.connect(db) as conn:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
            }
        assert names == expected
    with pytest.raises(ConfigError):
        open_sink(f"sqlite:{tmp_path}/c.db?index=nope")


def test_sqlite_rows_match_the_jsonl_records(tmp_path: Path) -> None:
    """Every kind of value, quality and reason is stored as the SPEC §9 record has it."""
    from datetime import UTC, datetime, timedelta

    from kom import Update
    from kom._model import Quality, Reason
    from kom._sinks import SqliteSink, record

    t = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    updates = [
        Update("a", 1.5, Quality.VALID, None, t, t, "x"),
        Update("b", True, Quality.VALID, None, t, t, None),
        Update("c", t, Quality.VALID, None, t, t, "x"),
        Update("d", timedelta(seconds=90), Quality.VALID, None, t, t, "x"),
    ] + [Update(f"e{r.value}", None, Quality.INVALID, r, t, t, "x", "why") for r in Reason]
    sink = SqliteSink(tmp_path / "h.db")
    sink.write(updates)
    sink.close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        rows = conn.execute(
            "SELECT tag, value, quality, reason, ts, received, topic, retained FROM updates"
            " ORDER BY id"
        ).fetchall()
    expected = [tuple(record(u).values()) for u in updates]
    assert rows == [
        (e[0], int(e[1]) if isinstance(e[1], bool) else e[1], *e[2:-1], int(e[-1]))
        for e in expected
    ]


@pytest.mark.broker
def test_run_stops_when_standard_output_closes_and_acknowledges_nothing_unwritten(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """`kom run --sink jsonl:- | head -1`: one line, exit 141, the unwritten messages come back."""
    cfg, out = tmp_path / "stations.toml", tmp_path / "after.jsonl"
    _write(cfg, broker, topic_prefix)
    proc = _run(["run", str(cfg), "--sink", "jsonl:-"], tmp_path)
    assert proc.stdout is not None
    try:
        wait_until(lambda: broker.connections(f"kom-run-{topic_prefix[-6:]}") == 1)
        time.sleep(0.3)
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/a", '{"n": 0}')
            assert json.loads(proc.stdout.readline())["value"] == 0
            proc.stdout.close()  # the reader goes away, as `head -1` does
            for n in range(1, 6):
                pub.publish(f"{topic_prefix}/a", json.dumps({"n": n}))
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert code == 141, err
    assert "standard output was closed" in err
    assert "Traceback" not in err
    # Same client id, kept session: every message not written to the pipe is delivered again.
    again = _run(["run", str(cfg), "--sink", f"jsonl:{out}"], tmp_path)
    try:
        wait_until(
            lambda: out.exists() and {1, 2, 3, 4, 5} <= _values(out), what="redelivered values"
        )
    finally:
        code, _, err_again = _stop(again)
    assert code == 0, err_again.decode()


def _values(path: Path) -> set[object]:
    lines = path.read_text().splitlines()
    return {json.loads(line)["value"] for line in lines if line.endswith("}")}
