"""kom's MQTT engine at its edges: SIGTERM in every state, back-off, honest diagnoses, oversize
messages, refused subscriptions (real processes, the fake broker where no real one misbehaves)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kom._backoff import backoff

from ._broker import BrokerFactory, Mosquitto, free_port
from ._fakebroker import FakeBroker, PacketType, packet
from ._kom import Collector, Publisher, config, start, wait_until

KOM = [sys.executable, "-m", "kom._cli"]

RUN_CONFIG = """
[line]
host = "{host}"
client_id = "kom-engine-{name}"
topic_filter = "{prefix}/#"
reply_timeout = 30
reconnect_min = 20
reconnect_max = 60

[[station]]
name = "a"
address = "{prefix}/a"
[[station.tag]]
name = "n"
type = "TxtI"
address = "IN_DATA"
"""


@pytest.mark.parametrize("attempt", [1, 10, 1_025, 1_026, 10**6])
def test_backoff_is_capped_at_any_round(attempt: int) -> None:
    """The wait stays within [max/2, max] however long the outage (no overflow at round 10**6)."""
    wait = backoff(attempt, 0.5, 30, random.Random(attempt))
    assert 0 < wait <= 30
    if attempt >= 10:
        assert wait >= 15


class _SilentListener:
    """A TCP listener that accepts connections and never answers (no CONNACK)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[_SilentListener]:
    """A listener that never sends CONNACK."""
    listener = _SilentListener()
    try:
        yield listener
    finally:
        listener.close()


def _sigterm_exit_time(host: str, tmp_path: Path, ready: object) -> tuple[float, int, bytes]:
    cfg = tmp_path / "stations.toml"
    cfg.write_text(RUN_CONFIG.format(host=host, name=tmp_path.name[-6:], prefix="kom-test/sig"))
    proc = subprocess.Popen(
        [*KOM, "run", str(cfg), "--sink", "jsonl:-"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(ready, timeout=15, what="kom in the state under test")  # type: ignore[arg-type]
        time.sleep(0.3)
        started = time.monotonic()
        proc.terminate()
        proc.wait(10)
        return time.monotonic() - started, proc.returncode, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_sigterm_while_waiting_for_connack_exits_within_a_second(
    silent: _SilentListener, tmp_path: Path
) -> None:
    """SIGTERM while CONNECT waits for its CONNACK: `kom run` exits within 1 s."""
    took, code, err = _sigterm_exit_time(
        f"127.0.0.1:{silent.port}", tmp_path, lambda: bool(silent.accepted)
    )
    assert code == 0, err.decode()
    assert took < 1.0, f"took {took:.2f} s"


def test_sigterm_while_backing_off_exits_within_a_second(tmp_path: Path) -> None:
    """SIGTERM while the line waits (20 s or more) before its next attempt: out within 1 s."""
    port = free_port()
    log = tmp_path / "seen"

    def backing_off() -> bool:
        return log.exists()

    # No broker: the first attempt fails at once, then the line backs off for 10-20 s.
    threading.Timer(1.5, lambda: log.write_text("x")).start()
    took, code, err = _sigterm_exit_time(f"127.0.0.1:{port}", tmp_path, backing_off)
    assert code == 0, err.decode()
    assert b"cannot connect" in err
    assert took < 1.0, f"took {took:.2f} s"


def test_sigterm_while_connected_exits_within_a_second(broker: Mosquitto, tmp_path: Path) -> None:
    """SIGTERM with the line connected and subscribed: out within 1 s."""
    took, code, err = _sigterm_exit_time(
        broker.address,
        tmp_path,
        lambda: broker.connections(f"kom-engine-{tmp_path.name[-6:]}") == 1,
    )
    assert code == 0, err.decode()
    assert took < 1.0, f"took {took:.2f} s"


def test_garbage_from_the_broker_is_named_a_protocol_error() -> None:
    """Bytes that are not MQTT make a protocol error, counted and in last_error; never a
    guess that another client uses the client id."""
    body = '[[station]]\nname = "s"\naddress = "x/+"\n'
    with FakeBroker() as fake:
        cfg = config(
            body,
            host=fake.address,
            client_id="kom-garbage",
            reconnect_min=0.05,
            reconnect_max=0.1,
            ping_interval=0,
        )
        with start(cfg) as kom:
            line = kom.lines["line"]
            for _ in range(4):
                assert kom.wait_connected(5)
                generation = line.generation
                fake.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                wait_until(
                    lambda g=generation: (
                        line.generation > g or "protocol error" in str(line.last_error)
                    ),
                    what="dropped",
                )
                wait_until(lambda g=generation: line.generation > g, what="reconnected")
            assert kom.counters()["line"].protocol_errors >= 4
            assert line.takeovers == 0


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_oversize_publish_is_skipped_counted_and_acknowledged(
    broker_factory: BrokerFactory, topic_prefix: str, tmp_path: Path, qos: int
) -> None:
    """A 64 MiB PUBLISH through mosquitto (its message_size_limit raised to MQTT's largest) is
    skipped as it streams in: its tag is invalid with reason parse, it is counted and
    acknowledged per its QoS, and kom's memory stays bounded (the 64 MiB come from
    mosquitto_pub, another process)."""
    import shutil
    import tracemalloc

    mosquitto_pub = shutil.which("mosquitto_pub")
    if mosquitto_pub is None:
        pytest.skip("mosquitto_pub is not installed (mosquitto-clients)")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 << 20))
    broker = broker_factory(extra=["message_size_limit 268435455"])
    body = (
        f'[[station]]\nname = "s"\naddress = "{topic_prefix}/big"\n'
        '[[station.tag]]\nname = "t"\ntype = "TxtI"\naddress = "IN_DATA"\n'
    )
    got = Collector()
    cfg = config(
        body,
        host=broker.address,
        client_id=f"kom-big-{qos}",
        topic_filter=f"{topic_prefix}/#",
        subscribe_qos=qos,
        max_payload=1024,
    )
    tracemalloc.start()
    try:
        with start(cfg, got) as kom, Publisher(broker.port) as pub:
            assert kom.wait_connected(5)
            tracemalloc.reset_peak()
            subprocess.run(
                [
                    mosquitto_pub,
                    "-p",
                    str(broker.port),
                    "-t",
                    f"{topic_prefix}/big",
                    "-q",
                    str(qos),
                    "-f",
                    str(big),
                ],
                check=True,
                timeout=60,
            )
            pub.publish(f"{topic_prefix}/big", "small", qos=qos)
            got.wait(lambda us: any(u.value == "small" for u in us), timeout=60)
            (skipped,) = [u for u in got.updates if u.tag == "s.t" and u.value != "small"]
            assert (skipped.quality.value, skipped.reason) == ("invalid", "parse")
            assert kom.counters()["line"].oversize == 1
            if qos:
                answer = "PUBACK" if qos == 1 else "PUBREC"
                broker.wait_for_log(f"Received {answer} from kom-big-{qos}")
            peak_mib = tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()
    print(f"\nQoS {qos}: a 64 MiB PUBLISH, kom's allocations peaked at {peak_mib:.1f} MiB")
    assert peak_mib < 16, f"kom held {peak_mib:.0f} MiB at its peak"


def test_refused_subscription_is_reported_and_retried() -> None:
    """A SUBACK failure (0x80) is logged, counted, kept in last_error and refused_filters,
    and the filter is subscribed again after a back-off."""
    body = '[[station]]\nname = "s"\naddress = "x/+"\n'
    with FakeBroker() as fake:
        fake.ignore_subscribe = True
        cfg = config(
            body,
            host=fake.address,
            client_id="kom-suback",
            topic_filter="x/#",
            reconnect_min=0.1,
            reconnect_max=0.2,
            reply_timeout=30,
        )
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            (first,) = fake.wait_for(PacketType.SUBSCRIBE, 1)
            fake.send_raw(packet(PacketType.SUBACK, 0, first[2:4] + b"\x80"))
            line = kom.lines["line"]
            wait_until(lambda: kom.counters()["line"].refused_subscriptions == 1)
            assert "refused the subscription 'x/#': Failure (0x80)" in str(line.last_error)
            assert line.refused_filters == {"x/#": 1}
            second = fake.wait_for(PacketType.SUBSCRIBE, 2)[1]
            fake.send_raw(packet(PacketType.SUBACK, 0, second[2:4] + b"\x01"))
            wait_until(lambda: not line.refused_filters, what="subscription granted")
            assert line.state.value == "connected"


def test_topic_alias_outside_kom_maximum_is_answered_with_disconnect_0x94() -> None:
    """MQTT 5 §3.3.2.3.4: a PUBLISH whose topic alias is 0 or above kom's Topic Alias Maximum is
    a protocol error; kom sends DISCONNECT with reason 0x94 before closing, and counts it."""
    body = '[[station]]\nname = "s"\naddress = "x/+"\n'
    with FakeBroker() as fake:
        fake.ignore_subscribe = True  # the fake reads 3.1.1 SUBSCRIBE packets only
        cfg = config(
            body,
            host=fake.address,
            client_id="kom-alias",
            protocol="5",
            topic_alias_maximum=2,
            reconnect_min=0.05,
            reconnect_max=0.1,
            ping_interval=0,
        )
        with start(cfg) as kom:
            line = kom.lines["line"]
            assert kom.wait_connected(5)
            # Topic "" with properties: Topic Alias (0x23) = 3, one above the maximum.
            fake.send_raw(packet(PacketType.PUBLISH, 0, b"\x00\x00\x03\x23\x00\x03x"))
            wait_until(lambda: fake.packets(PacketType.DISCONNECT), what="DISCONNECT")
            wait_until(lambda: "protocol error" in str(line.last_error), what="error named")
            assert kom.counters()["line"].protocol_errors >= 1
    disconnect = fake.packets(PacketType.DISCONNECT)[0]
    assert disconnect[2] == 0x94, disconnect
    assert "topic alias 3" in str(line.last_error)
