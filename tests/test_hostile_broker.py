"""`kom run` against brokers that misbehave: a 256 MiB PUBLISH streamed at it, CONNACK codes
outside the table, a refused subscription (the scripted broker, where no real one does it)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kom import LineState

from ._fakebroker import FakeBroker, PacketType, packet, packet_id
from ._http import KomRun
from ._kom import config, start, wait_until
from ._stream import record, tally

#: The largest remaining length MQTT can express (§2.2.3): a PUBLISH of 256 MiB.
LARGEST = 268_435_455
MAX_PAYLOAD = 65_536

RUN_CONFIG = """
[line]
host = "{host}"
client_id = "kom-hostile"
topic_filter = "x/#"
subscribe_qos = 2
max_payload = {max_payload}
reply_timeout = 30
reconnect_min = {reconnect_min}
reconnect_max = {reconnect_max}

[[station]]
name = "s"
address = "x/big"
[[station.tag]]
name = "t"
type = "TxtI"
address = "IN_DATA"
"""


def _kom_run(
    fake: FakeBroker, tmp_path: Path, reconnect_min: float = 20, reconnect_max: float = 60
) -> tuple[KomRun, Path]:
    cfg = tmp_path / "stations.toml"
    cfg.write_text(
        RUN_CONFIG.format(
            host=fake.address,
            max_payload=MAX_PAYLOAD,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )
    )
    out = tmp_path / "out.jsonl"
    run = KomRun(["run", str(cfg), "--sink", f"jsonl:{out}", "--http", "127.0.0.1:0"], tmp_path)
    return run, out


def _streamed(head: bytes) -> Iterator[bytes]:
    """A PUBLISH of the largest size in 1 MiB pieces: `head`, then its payload as it comes."""
    yield head
    chunk = b"x" * (1 << 20)
    left = LARGEST - (len(head) - 5)  # the fixed header is not in the remaining length
    while left:
        piece = chunk[: min(left, len(chunk))]
        yield piece
        left -= len(piece)


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _records(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [orjson.loads(row) for row in out.read_bytes().splitlines() if row.endswith(b"}")]


def _metric(run: KomRun, name: str) -> float:
    _, _, body = run.get("/metrics")
    for row in body.decode().splitlines():
        if row.startswith(f'{name}{{line="line"}}'):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_256_mib_publish_streamed_by_a_hostile_broker_keeps_memory_bounded(
    tmp_path: Path, qos: int
) -> None:
    """A broker streams a PUBLISH of 256 MiB at `kom run`: it is skipped as it comes, its tag is
    invalid with reason parse, it is counted and acknowledged per its QoS, the next message is
    stored, and kom's peak RSS grows by far less than the packet (bounded by max_payload plus
    buffers; the engine before read the whole packet: 798 MiB)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc: peak RSS cannot be read on this system")
    with FakeBroker() as fake:
        run, out = _kom_run(fake, tmp_path)
        with run:
            fake.wait_for(PacketType.SUBSCRIBE)
            wait_until(lambda: run.get("/health")[0] == 200, what="kom connected")
            before = _peak_rss_mib(run.proc.pid)
            topic = b"x/big"
            head = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", 77) if qos else b"")
            fake.send_stream(_streamed(bytes([0x30 | qos << 1]) + b"\xff\xff\xff\x7f" + head))
            fake.send_publish(topic, b"small", qos=qos, packet_id=78 if qos else None)
            wait_until(
                lambda: any(r["value"] == "small" for r in _records(out)),
                timeout=60,
                what=f"the message after the big one stored:\n{run.stderr}\n{_records(out)}",
            )
            peak = _peak_rss_mib(run.proc.pid)
            (skipped, small) = [r for r in _records(out) if r["tag"] == "s.t"]
            assert (skipped["quality"], skipped["reason"]) == ("invalid", "parse")
            assert small["value"] == "small"
            assert _metric(run, "kom_messages_oversize_total") == 1
            if qos:
                answer = PacketType.PUBACK if qos == 1 else PacketType.PUBREC
                acks = fake.wait_for(answer, 2)
                assert [packet_id(raw) for raw in acks] == [77, 78]
            stderr = run.stderr
        assert f"skipped a PUBLISH of {LARGEST} bytes on x/big (over max_payload)" in stderr
    record(
        tally(
            f"17 a 256 MiB PUBLISH from a hostile broker, then a small one, QoS {qos}",
            [1, 2],
            [1 if r["reason"] == "parse" else 2 for r in (skipped, small)],
            peak_rss_before_mib=before,
            peak_rss_after_mib=peak,
        )
    )
    assert peak - before < 32, f"peak RSS grew from {before:.1f} to {peak:.1f} MiB"


@pytest.mark.parametrize(("code", "name"), [(6, "reserved return code (6)"), (0xFF, "(255)")])
def test_connack_codes_outside_the_table_are_named_with_their_code(code: int, name: str) -> None:
    """A CONNACK return code that MQTT 3.1.1 does not define is reported with its number (not
    as "Unspecified error"), counted as a failed attempt, never taken for a takeover."""
    body = '[[station]]\nname = "s"\naddress = "x/+"\n'
    with FakeBroker(return_code=code) as fake:
        cfg = config(
            body, host=fake.address, client_id="kom-connack", reconnect_min=0.05, reconnect_max=0.1
        )
        with start(cfg) as kom:
            line = kom.lines["line"]
            wait_until(lambda: kom.counters()["line"].connect_failures >= 2, what="two refusals")
            error = str(line.last_error)
            assert "broker refused the connection" in error
            assert name in error
            assert "nspecified" not in error
            assert line.state is not LineState.CONNECTED
            assert line.takeovers == 0


def test_a_refused_subscription_shows_in_health_metrics_and_log_and_is_retried(
    tmp_path: Path,
) -> None:
    """A SUBACK 0x80 makes `kom run`'s /health fail with the filter and the code, counts it in
    /metrics, logs it, and the filter is subscribed again after a back-off; once granted,
    /health is well again."""
    with FakeBroker() as fake:
        fake.ignore_subscribe = True
        run, _ = _kom_run(fake, tmp_path, reconnect_min=0.5, reconnect_max=1.0)
        with run:
            (first,) = fake.wait_for(PacketType.SUBSCRIBE, 1)
            refused_at = time.monotonic()
            fake.send_raw(packet(PacketType.SUBACK, 0, first[2:4] + b"\x80"))
            wait_until(lambda: run.get("/health")[0] == 503, what="/health failing")
            health = orjson.loads(run.get("/health")[2])
            (reason,) = health["reasons"]
            assert "line line has refused subscriptions ('x/#')" in reason
            assert "Failure (0x80)" in reason
            assert health["lines"][0]["state"] == "connected"
            assert health["lines"][0]["refused_filters"] == ["x/#"]
            assert _metric(run, "kom_subscriptions_refused_total") == 1
            second = fake.wait_for(PacketType.SUBSCRIBE, 2, timeout=10)[1]
            waited = time.monotonic() - refused_at
            fake.send_raw(packet(PacketType.SUBACK, 0, second[2:4] + b"\x02"))
            wait_until(lambda: run.get("/health")[0] == 200, what="/health well again")
            stderr = run.stderr
    assert "the broker refused the subscription 'x/#': Failure (0x80) (refusal 1)" in stderr
    assert waited >= 0.25, f"subscribed again {waited:.2f} s after the refusal"
