"""End to end: the NETIO simulator, `kom run` with the NETIO profile, SQLite, and `kom demo`."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from kom import load
from kom.sim import NetioSimulator

from ._broker import Mosquitto
from ._kom import Publisher, wait_until

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
KOM = [sys.executable, "-m", "kom._cli"]
DEVICE = "netio-4All-25E0"


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_simulator_into_sqlite_then_write_then_will(broker: Mosquitto, tmp_path: Path) -> None:
    """Each state is stored typed and valid; a write switches the device; its will invalidates."""
    db = tmp_path / "kom.db"
    run = [*KOM, "run", "examples/netio-4all.toml", "--broker", broker.address]
    seen: list[bytes] = []
    with Publisher(broker.port) as spy:
        spy.subscribe(f"devices/{DEVICE}/messages/events/")
        proc = subprocess.Popen(
            [*run, "--sink", f"sqlite:{db}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # kom subscribes before the device starts, so every state message is for it too.
        broker.wait_for_log("kom-netio-demo 1 devices/+/messages/events/", timeout=10)
        sim = NetioSimulator("127.0.0.1", broker.port, client_id=DEVICE, period=0.3)
        sim.start()
        try:
            assert sim.wait_connected(5)
            wait_until(
                lambda: len(_rows(db, "SELECT 1 FROM updates WHERE tag='netio.voltage'")) >= 3,
                15,
                "voltage rows",
            )
            # Switch output 1 and see the new state come back from the device.
            before = sim.device.output_state(1)
            # The profile's read-back confirmation, commented out there, switched on.
            confirmed = tmp_path / "netio-confirmed.toml"
            profile = (ROOT / "examples/netio-4all.toml").read_text()
            confirmed.write_text(
                profile.replace('# confirm = "read-back"', 'confirm = "read-back"').replace(
                    "# confirm_tag = ", "confirm_tag = "
                )
            )
            wrote = subprocess.run(
                [
                    *KOM,
                    "write",
                    str(confirmed),
                    "netio.out1",
                    "false" if before else "true",
                    "--broker",
                    broker.address,
                ],
                cwd=ROOT,
                capture_output=True,
                timeout=30,
            )
            assert wrote.returncode == 0, wrote.stderr.decode()
            assert b"confirmed by read-back" in wrote.stdout  # the confirm switched on
            wait_until(lambda: sim.device.output_state(1) != before, 5, "device switched")
            expected = 0 if before else 1
            wait_until(
                lambda: (
                    _rows(
                        db,
                        "SELECT value FROM updates WHERE tag='netio.out1_state' "
                        "ORDER BY id DESC LIMIT 1",
                    )
                    == [(expected,)]
                ),
                5,
                "state back in the database",
            )
            seen = [m.payload for m in spy.messages()]
            # The device vanishes: the broker publishes its will, the station goes into error.
            sim.stop(abrupt=True)
            wait_until(
                lambda: bool(_rows(db, "SELECT 1 FROM updates WHERE reason='will'")), 5, "will rows"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
            sim.stop()
        assert proc.returncode == 0, err.decode()
    # Every state message the device published was stored with its own source time.
    stored_ts = {
        r[0]
        for r in _rows(db, "SELECT ts FROM updates WHERE tag='netio.voltage' AND quality='valid'")
    }
    for payload in seen:
        doc = orjson.loads(payload)
        assert _iso_z(doc["Agent"]["Time"]) in stored_ts
    types = dict(
        _rows(db, "SELECT tag, typeof(value) FROM updates WHERE quality='valid' GROUP BY tag")
    )
    assert types["netio.voltage"] == "real"
    assert types["netio.total_energy"] == "integer"
    assert types["netio.out1_state"] == "integer"  # booleans are 0/1 in SQLite
    assert types["netio.device_time"] == "text"
    invalid = _rows(db, "SELECT DISTINCT tag FROM updates WHERE reason='will'")
    (station,) = load(ROOT / "examples" / "netio-4all.toml").stations
    inputs = [t for t in station.tags if t.address is not None]
    assert len(invalid) == len(inputs)  # every input tag of the station


def _iso_z(text: str) -> str:
    from datetime import datetime

    from kom._convert import format_time

    return format_time(datetime.fromisoformat(text))


def test_demo_runs_and_writes_rows(tmp_path: Path) -> None:
    """`kom demo --duration 5` exits 0 and leaves NETIO rows in its SQLite database."""
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [*KOM, "demo", "--duration", "5", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"kom demo:" in done.stdout
    assert b"write(s)" in done.stdout
    rows = _rows(db, "SELECT count(*), count(DISTINCT tag) FROM updates WHERE quality='valid'")
    count, tags = rows[0]
    assert isinstance(count, int)
    (station,) = load(ROOT / "examples" / "netio-4all.toml").stations
    inputs = [t for t in station.tags if t.address is not None]
    assert count >= len(inputs)
    assert tags == len(inputs)  # every input tag of the profile, the inputs block's too
    switched = _rows(
        db,
        "SELECT count(DISTINCT value) FROM updates "
        "WHERE tag='netio.out1_state' AND quality='valid'",
    )
    assert switched == [(2,)]  # the output was switched and its new state came back
