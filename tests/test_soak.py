"""Soak: `kom run` under realistic mixed load for ten minutes, through faults.

Hundreds of NETIO-like devices (`python -m tests._stream devices`: 300 devices on four paho
clients, three in four publishing whole state documents with QoS 1, the rest MQTT-flex values
with QoS 0) feed `kom run` with its SQLite sink, through a fault proxy. Meanwhile `kom write`
switches outputs now and then, the proxy resets kom's connection, and the broker is restarted
(SIGTERM, persistence). At the end every QoS 1 document acknowledged to a device must be in
the database, and the resident memory of `kom run` must not have grown.

    KOM_SOAK_SECONDS=60 scripts/test -m slow tests/test_soak.py -s    # a short run
    scripts/test -m slow tests/test_soak.py -s                        # ten minutes
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._broker import Mosquitto
from ._proxy import FaultProxy
from ._stream import record, rss_kib, tally, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

SECONDS = float(os.environ.get("KOM_SOAK_SECONDS", "600"))
DEVICES = 300
PERIOD = 5.0  # each device's update period, seconds
KOM = [sys.executable, "-m", "kom._cli"]
ROOT = Path(__file__).resolve().parent.parent
MiB = 1024

LINE = """
[line]
host = "{host}"
client_id = "kom-soak"
clean_session = false
topic_filter = ["devices/+/messages/events/", "netio/+/output/+/state", "netio/+/output/+/load"]
payload_type = "json"
time_field = "Agent.Time"
time_mask = "ISO"
publish_qos = 1
ping_interval = 5
reply_timeout = 3
"""

GENERIC = """
[[station]]
name = "{station}"
address = "devices/{device}/messages/events/"
[[station.tag]]
name = "seq"
type = "Ci"
address = "JA=Agent.Seq"
[[station.tag]]
name = "device_time"
type = "TiA"
address = "JA=Agent.Time"
[[station.tag]]
name = "voltage"
type = "Ai"
address = "JA=GlobalMeasure.Voltage"
[[station.tag]]
name = "frequency"
type = "Ai"
address = "JA=GlobalMeasure.Frequency"
[[station.tag]]
name = "total_load"
type = "Ai"
address = "JA=GlobalMeasure.TotalLoad"
[[station.tag]]
name = "total_energy"
type = "Ci"
address = "JA=GlobalMeasure.TotalEnergy"
[[station.tag]]
name = "out1_state"
type = "Di"
address = "JA=Outputs[1].State"
[[station.tag]]
name = "out1_load"
type = "Ai"
address = "JA=Outputs[1].Load"
[[station.tag]]
name = "out2_state"
type = "Di"
address = "JA=Outputs[2].State"
[[station.tag]]
name = "out1"
type = "Do"
publish.topic = "devices/{device}/messages/devicebound/"
publish.payload = '{{"Operation":"SetOutputs","Outputs":[{{"ID":1,"Action":{{value:int}}}}]}}'
"""

FLEX = """
[[station]]
name = "{station}"
address = "netio/{device}/output/(?P<out>[1-4])/(?P<kind>state|load)"
payload_type = "text"
[[station.tag]]
name = "out"
type = "Ci"
address = "TOPIC=out"
[[station.tag]]
name = "kind"
type = "TxtI"
address = "TOPIC=kind"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
"""


def _device(i: int) -> str:
    return f"netio-{i:04d}"


def _flex(i: int) -> bool:
    return i % 4 == 3  # as in tests/_stream.py devices_main


def _config(host: str) -> str:
    parts = [LINE.format(host=host)]
    for i in range(DEVICES):
        template = FLEX if _flex(i) else GENERIC
        parts.append(template.format(station=f"d{i:04d}", device=_device(i)))
    return "".join(parts)


def _stored_seqs(db: Path) -> dict[int, list[int]]:
    """The valid `seq` values in the database, by device number."""
    out: dict[int, list[int]] = {}
    if not db.exists():
        return out
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        try:
            rows = conn.execute(
                "SELECT tag, value FROM updates WHERE quality = 'valid' AND tag LIKE 'd%.seq'"
            ).fetchall()
        except sqlite3.OperationalError:
            return out
    for tag, value in rows:
        out.setdefault(int(tag[1:5]), []).append(int(value))
    return out


def _count_rows(db: Path, like: str) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM updates WHERE quality = 'valid' AND tag LIKE ?", (like,)
        ).fetchone()
    return int(row[0])


@contextlib.contextmanager
def _process(args: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[str]]:
    """A helper process with stdout piped and stderr in `log`; killed if still running."""
    with log.open("w") as err:
        proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_soak_mixed_load_with_faults_keeps_memory_flat_and_loses_no_qos1(
    broker_factory: object, tmp_path: Path
) -> None:
    """Minutes of 300 devices, writes, resets and a broker restart: no QoS 1 loss, flat memory."""
    broker: Mosquitto = broker_factory(  # type: ignore[operator]
        persistence=True, extra=["max_queued_messages 100000"]
    )
    proxy = FaultProxy(broker.host, broker.port)
    cfg, db = tmp_path / "stations.toml", tmp_path / "kom.db"
    cfg.write_text(_config(proxy.address))
    faults: list[str] = []
    rss: list[tuple[float, int]] = []
    writes: Counter[int] = Counter()
    devices_args = [
        *(sys.executable, "-m", "tests._stream", "devices", "--port", str(broker.port)),
        *("--devices", str(DEVICES), "--period", str(PERIOD)),
    ]
    try:
        with contextlib.ExitStack() as stack:
            kom = stack.enter_context(
                _process(
                    [*KOM, "run", str(cfg), "--sink", f"sqlite:{db}"],
                    tmp_path,
                    tmp_path / "kom.log",
                )
            )
            # Subscribed before the devices start: a document published before kom's first
            # SUBSCRIBE has no session to be queued in (MQTT 3.1.1 §3.8.4).
            broker.wait_for_log("kom-soak 1 netio/+/output/+/load", timeout=20)
            devices = stack.enter_context(_process(devices_args, ROOT, tmp_path / "devices.log"))
            assert devices.stdout is not None
            assert devices.stdout.readline().strip() == "ready"
            started = time.monotonic()
            schedule = [
                (0.3, "proxy reset"),
                (0.55, "broker restart (SIGTERM, persistence)"),
                (0.8, "proxy reset"),
            ]
            next_write = started + 5.0
            next_sample = started
            value = True
            while (now := time.monotonic()) < started + SECONDS:
                elapsed = (now - started) / SECONDS
                if schedule and elapsed >= schedule[0][0]:
                    _, fault = schedule.pop(0)
                    if fault == "proxy reset":
                        proxy.reset()
                    else:
                        broker.stop()
                        broker.restart()
                    faults.append(fault)
                if now >= next_sample:
                    rss.append((now - started, rss_kib(kom.pid)))
                    next_sample += max(1.0, SECONDS / 60)
                if now >= next_write:
                    # An operator switches output 1 of the first device: `kom write` with its
                    # own client id, through the broker (not the proxy kom run uses).
                    done = subprocess.run(
                        [*KOM, "write", str(cfg), "d0000.out1", str(value).lower(),
                         "--broker", broker.address, "--timeout", "5"],
                        cwd=tmp_path, capture_output=True, timeout=30,
                    )  # fmt: skip
                    writes[done.returncode] += 1
                    value = not value
                    next_write += max(5.0, SECONDS / 40)
                time.sleep(0.2)
            rss.append((time.monotonic() - started, rss_kib(kom.pid)))
            devices.terminate()  # stop publishing, wait for every PUBACK, print the summary
            out, _ = devices.communicate(timeout=90)
            summary = json.loads(out.strip().splitlines()[-1])
            acked = {int(name[6:]): seqs for name, seqs in summary["acked"].items()}
            wanted = sum(len(s) for s in acked.values())
            missing: dict[int, list[int]] = {}

            def all_stored() -> bool:
                stored = _stored_seqs(db)
                missing.clear()
                for i, seqs in acked.items():
                    gone = sorted(set(seqs) - set(stored.get(i, [])))
                    if gone:
                        missing[i] = gone
                return not missing

            try:
                wait_until(all_stored, 60, f"all {wanted} acknowledged QoS 1 documents stored")
            except TimeoutError as exc:
                shown = dict(list(missing.items())[:10])
                raise AssertionError(
                    f"{exc}: {sum(map(len, missing.values()))} missing, e.g. {shown}"
                ) from None
            kom.terminate()
            kom.communicate(timeout=30)
            assert kom.returncode == 0, (tmp_path / "kom.log").read_text()[-2000:]
    finally:
        proxy.close()
    stored = _stored_seqs(db)
    # One number per document: device * 10**6 + its sequence number.
    sent = [i * 10**6 + s for i, seqs in acked.items() for s in seqs]
    kept = [i * 10**6 + s for i, seqs in stored.items() for s in seqs]
    flex_rows = _count_rows(db, "d%.data")
    start_rss = rss[min(len(rss) - 1, max(1, len(rss) // 10))][1]  # after warm-up
    end_rss = rss[-1][1]
    figures = record(
        tally(
            f"12 soak {SECONDS:.0f} s, {DEVICES} devices, QoS 1 documents",
            sent,
            kept,
            qos0_sent=summary["qos0"],
            qos0_stored=flex_rows,
            writes_ok=writes[0],
            writes_failed=sum(n for code, n in writes.items() if code != 0),
            commands_seen=summary["commands"],
            faults=len(faults),
            rss_start_mib=start_rss / MiB,
            rss_end_mib=end_rss / MiB,
            rss_max_mib=max(r for _, r in rss) / MiB,
        )
    )
    print("RSS (s, MiB):", ", ".join(f"{t:.0f}:{r / MiB:.1f}" for t, r in rss))
    assert figures.lost == 0, figures.lost_numbers
    assert summary["unacked"] == 0
    assert len(faults) == 3
    assert writes[0] >= 1
    assert set(writes) <= {0, 1}  # every write reported an outcome (1: failed, with a reason)
    assert summary["commands"] >= writes[0]  # each acknowledged write reached the device
    # Flat memory: at most a quarter more than after warm-up, plus 8 MiB of caches.
    assert end_rss <= start_rss * 1.25 + 8 * MiB, rss
