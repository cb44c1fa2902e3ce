"""Scale-out (SPEC §12): several `kom run --instance` on one `$share` subscription into one
PostgreSQL, with an instance killed and PostgreSQL restarted; and what mosquitto does with a
dead member's unacknowledged messages, measured on MQTT 3.1.1 and 5."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from kom._errors import ConfigError
from kom._scaleout import share_warnings, with_instance

from ._broker import BrokerFactory, Mosquitto
from ._kom import config, wait_until
from ._postgres import Cluster, database, query

KOM = [sys.executable, "-m", "kom._cli"]
MEMBER = str(Path(__file__).with_name("_share_member.py"))
QUEUE = ["max_queued_messages 0"]  # mosquitto's default (1,000) drops what queues beyond it
MESSAGES = 30_000
STATIONS = 10
RATE = 5_000  # msg/s offered, so that the faults land mid-stream


def test_with_instance_gives_every_line_its_own_client_id() -> None:
    """`--instance NAME` appends `-NAME` to each line's client id and refuses odd names."""
    cfg = config("", host="127.0.0.1", client_id="plant")
    assert with_instance(cfg, "i2").lines[0].client_id == "plant-i2"
    with pytest.raises(ConfigError, match="--instance"):
        with_instance(cfg, "a b")


STATION = """
[[station]]
name = "s"
address = "a/s"
[[station.tag]]
name = "on"
type = "Di"
address = "JA=on"
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=v"
"""


@pytest.mark.parametrize(
    ("filters", "on_key", "v_key", "expected"),
    [
        ("a/#", "", "", []),  # no shared subscription: nothing to say
        ("$share/g/a/#", "", "", ["s.on"]),  # Di reports only changes by default
        ("$share/g/a/#", "on_change = false", "", []),
        ("$share/g/a/#", "on_change = false", "deadband = 0.5", ["s.v"]),
    ],
)
def test_share_warnings_name_tags_that_filter_by_change(
    filters: str, on_key: str, v_key: str, expected: list[str]
) -> None:
    """On a `$share` line, tags reporting only changes are named (each instance sees a part)."""
    body = STATION.replace('"JA=on"', f'"JA=on"\n{on_key}').replace('"JA=v"', f'"JA=v"\n{v_key}')
    cfg = config(body, host="127.0.0.1", topic_filter=filters, payload_type="json")
    warnings = share_warnings(cfg)
    assert [w.split("e.g. ")[1].split(":")[0] for w in warnings] == expected


def test_share_warnings_name_an_ack_id_station() -> None:
    """On a `$share` line, an ACK_ID station is named: its one-at-a-time order is per instance."""
    body = """
[[station]]
name = "jobs"
address = "a/jobs"
[[station.tag]]
name = "ack"
type = "Co"
address = "ACK_ID"
"""
    cfg = config(body, host="127.0.0.1", topic_filter="$share/g/a/#")
    (warning,) = share_warnings(cfg)
    assert "station jobs uses ACK_ID" in warning


def _config(port: int, prefix: str) -> str:
    head = f"""
[line]
host = "127.0.0.1:{port}"
client_id = "kom-share"
topic_filter = "$share/historian/{prefix}/#"
payload_type = "json"
"""
    stations = "".join(
        f"""
[[station]]
name = "d{k}"
address = "{prefix}/d{k}"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
"""
        for k in range(STATIONS)
    )
    return head + stations


class Instance:
    """One `kom run --instance NAME` process, its log in a file."""

    def __init__(self, name: str, cfg: Path, url: str, tmp: Path) -> None:
        self.name = name
        self.args = [*KOM, "run", str(cfg), "--instance", name, "--sink", url]
        self.tmp = tmp
        self.lives = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.lives += 1
        log = self.tmp / f"{self.name}-{self.lives}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=self.tmp, stdout=out, stderr=out)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; the updates this life wrote (from its last log line)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0
        text = (self.tmp / f"{self.name}-{self.lives}.log").read_text()
        found = re.search(r"stopped; (\d+) updates written", text)
        return int(found[1]) if found else -1


class Stream:
    """A paho publisher of MESSAGES QoS 1 messages `{"n": i}` over the stations' topics."""

    def __init__(self, port: int, prefix: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{prefix[-6:]}")
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.prefix = prefix
        self.sent = 0
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        infos = []
        t0 = time.monotonic()
        for i in range(MESSAGES):
            topic = f"{self.prefix}/d{i % STATIONS}"
            infos.append(self.client.publish(topic, f'{{"n": {i}}}', 1))
            self.sent = i + 1
            if i % 100 == 99:
                ahead = t0 + (i + 1) / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        for info in infos:
            info.wait_for_publish(60)

    def join(self) -> None:
        self._thread.join(120)
        self.client.loop_stop()
        self.client.disconnect()


def _stored(url: str) -> tuple[int, int, int, int]:
    """Rows of valid `n` values, distinct values, their lowest and highest."""
    ((rows, distinct, low, high),) = query(
        url,
        "SELECT count(*), count(DISTINCT value_num), coalesce(min(value_num), -1), "
        "coalesce(max(value_num), -1) FROM updates WHERE quality = 'valid'",
    )
    return int(rows), int(distinct), int(low), int(high)  # type: ignore[call-overload]


def _share(
    broker: Mosquitto,
    url: str,
    tmp: Path,
    prefix: str,
    faults: Callable[[Stream, list[Instance]], None] | None = None,
) -> tuple[int, int, list[int]]:
    """Three instances, one stream, optional faults; returns (rows, distinct, written each)."""
    cfg = tmp / "stations.toml"
    cfg.write_text(_config(broker.port, prefix))
    instances = [Instance(f"i{k}", cfg, url, tmp) for k in (1, 2, 3)]
    try:
        wait_until(
            lambda: all(broker.connections(f"kom-share-{i.name}") == 1 for i in instances),
            timeout=30,
            what="three instances connected",
        )
        time.sleep(0.5)  # their SUBSCRIBEs
        stream = Stream(broker.port, prefix)
        if faults is not None:
            faults(stream, instances)
        stream.join()
        wait_until(
            lambda: _stored(url)[1] == MESSAGES,
            timeout=120,
            what=f"{MESSAGES:,} distinct values stored",
        )
        time.sleep(1.0)  # anything redelivered late lands before the count
    finally:
        written = [i.stop() if i.proc and i.proc.poll() is None else -1 for i in instances]
    rows, distinct, low, high = _stored(url)
    assert (low, high) == (0, MESSAGES - 1)
    return rows, distinct, written


@pytest.fixture
def pg() -> Iterator[str]:
    with database() as url:
        yield url


def test_three_instances_share_the_stream_without_duplicates(
    broker_factory: BrokerFactory, pg: str, tmp_path: Path, topic_prefix: str
) -> None:
    """30,000 QoS 1 messages over three instances of one `$share` group into PostgreSQL with
    no faults: each stored exactly once, and every instance took a share."""
    broker = broker_factory(extra=QUEUE)
    rows, distinct, written = _share(broker, pg, tmp_path, topic_prefix)
    print(f"steady state: {rows:,} rows, {distinct:,} distinct, written per instance {written}")
    assert (rows, distinct) == (MESSAGES, MESSAGES)
    assert all(w > MESSAGES / 10 for w in written), written


def test_a_killed_instance_and_a_restarted_postgresql_lose_nothing(
    broker_factory: BrokerFactory, tmp_path: Path, topic_prefix: str
) -> None:
    """30,000 QoS 1 messages over three instances: one SIGKILLed and restarted at 10,000,
    PostgreSQL stopped as if it crashed and started again at 20,000; every message is stored,
    and the duplicates (stored, not yet acknowledged when the fault hit) are counted."""
    broker = broker_factory(extra=QUEUE)
    with Cluster() as cluster:
        query(cluster.url(), "CREATE DATABASE kom")
        url = cluster.url("kom")
        events: list[str] = []

        def faults(stream: Stream, instances: list[Instance]) -> None:
            wait_until(lambda: stream.sent >= MESSAGES // 3, timeout=60, what="a third sent")
            instances[1].kill()
            events.append(f"i2 killed at {stream.sent:,} sent, {_stored(url)[0]:,} stored")
            time.sleep(1.0)
            instances[1].start()
            wait_until(lambda: stream.sent >= 2 * MESSAGES // 3, timeout=60, what="2/3 sent")
            cluster.stop("immediate")
            events.append(f"PostgreSQL stopped (immediate) at {stream.sent:,} sent")
            time.sleep(1.0)
            cluster.start()

        rows, distinct, written = _share(broker, url, tmp_path, topic_prefix, faults)
    print("; ".join(events))
    print(
        f"faults: {rows:,} rows, {distinct:,} distinct, duplicates {rows - distinct:,}, "
        f"written per instance (last life) {written}"
    )
    assert distinct == MESSAGES
    assert rows >= distinct


# -- mosquitto and a dead member's unacknowledged messages ---------------------------------


class Member:
    """A `tests/_share_member.py` process and the lines it printed."""

    def __init__(self, port: int, client_id: str, protocol: str, expiry: int, ack: bool) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, MEMBER, str(port), client_id, protocol, str(expiry)),
                *("1" if ack else "0", "$share/g/probe/#"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: bool(self.lines), what=f"{client_id} connected")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def got(self) -> list[int]:
        return [int(x.split()[0]) for x in self.lines if not x.startswith("connected")]

    def dups(self) -> list[int]:
        return [int(x.split()[0]) for x in self.lines if x.endswith(" 1")]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.parametrize(
    ("protocol", "expiry", "kept"),
    [
        ("3.1.1", 3600, True),  # clean session off: kom's default
        ("3.1.1", 0, False),  # clean session on
        ("5", 3600, True),
        ("5", 0, False),
    ],
)
def test_mosquitto_keeps_a_dead_members_messages_in_its_session(
    broker_factory: BrokerFactory, protocol: str, expiry: int, kept: bool
) -> None:
    """Member A holds its PUBACKs and is SIGKILLed; B acknowledges. Measured on mosquitto:
    A's unacknowledged messages are never given to B; with a persistent session they, and the
    share of later messages the broker keeps queueing for A while it is away, come back to A
    when it reconnects under its id; with a session that ends at disconnect they are lost."""
    broker = broker_factory(extra=QUEUE)
    a = Member(broker.port, "A", protocol, expiry, ack=False)
    b = Member(broker.port, "B", protocol, 3600, ack=True)
    time.sleep(0.5)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="P")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        for i in range(20):
            pub.publish("probe/x", str(i), 1).wait_for_publish(5)
        wait_until(lambda: len(a.got()) + len(b.got()) == 20, what="20 delivered")
        held = a.got()
        a.kill()
        time.sleep(0.5)
        for i in range(20, 40):
            pub.publish("probe/x", str(i), 1).wait_for_publish(5)
        time.sleep(1.0)
        to_b_while_dead = [m for m in b.got() if m >= 20]
        a2 = Member(broker.port, "A", protocol, expiry, ack=True)
        time.sleep(1.5)
        back = a2.got()
        a2.kill()
    finally:
        pub.loop_stop()
        b.kill()
    lost = sorted(set(range(40)) - set(b.got()) - set(back))
    print(
        f"MQTT {protocol} expiry {expiry}: A held {len(held)} unacknowledged; while A was dead "
        f"B got {len(to_b_while_dead)} of 20; A back (session present "
        f"{a2.lines[0][-1]}) got {len(back)} ({len(a2.dups())} with DUP); lost {len(lost)}"
    )
    assert held  # the broker gave A a share
    assert not set(held) & set(b.got())  # never handed to B
    if kept:
        assert lost == []
        assert set(held) <= set(back)
        assert set(a2.dups()) == set(held)
        assert len(to_b_while_dead) < 20  # A's share kept queueing for it while it was away
    else:
        assert lost == sorted(held)
        assert len(to_b_while_dead) == 20
