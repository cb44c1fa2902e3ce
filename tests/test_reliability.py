"""Fault injection against real mosquitto processes: numbered streams, counted end to end.

Each scenario publishes a numbered stream (`tests/_stream.py`), breaks something on the way
(broker, network, kom itself, the input), and compares what the publisher got acknowledged
with what kom stored: sent / stored / lost / duplicates, printed as one `RELIABILITY` line per
scenario (`scripts/test tests/test_reliability.py -s` shows them, and a table at the end).
Duplicates are allowed where SPEC §5 allows them (at least once); a loss fails the test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kom import Kom, LineState
from kom._backoff import set_testing

from . import _stream
from ._broker import Mosquitto
from ._kom import config, start
from ._proxy import FaultProxy
from ._stream import Historian, StreamPublisher, record, station, tally, wait_until

pytestmark = pytest.mark.broker

#: mosquitto drops QoS 1/2 messages beyond 1000 queued for one session (its default
#: `max_queued_messages`), silently for the subscriber. The streams here queue more than that
#: while kom is away, so the brokers hold more; docs/reliability.md tells integrators to do so.
QUEUE = ["max_queued_messages 100000"]


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    first = len(_stream.RESULTS)
    yield
    if len(_stream.RESULTS) > first:
        print("\n" + _stream.table(_stream.RESULTS[first:]))


def _line(host: str, prefix: str, **extra: object) -> dict[str, object]:
    keys: dict[str, object] = {
        "host": host,
        "client_id": f"kom-rel-{prefix.rsplit('-', 1)[-1]}",
        "clean_session": False,
        "topic_filter": f"{prefix}/#",
        "payload_type": "json",
        "reply_timeout": 2,
        "ping_interval": 5,
    }
    keys.update(extra)
    return keys


def _client_id(prefix: str, role: str) -> str:
    return f"{role}-{prefix.rsplit('-', 1)[-1]}"


# -- 1. broker restart --------------------------------------------------------------------------


def test_broker_restart_with_persistence_loses_no_qos1_message(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGTERM and restart of a persistent broker mid-stream: every acknowledged message is stored."""
    broker: Mosquitto = broker_factory(persistence=True, extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    sink = Historian(tmp_path / "kom.db")
    cfg = config(station(topic), **_line(broker.address, topic_prefix))
    with start(cfg, sink) as kom:
        assert kom.wait_connected(5)
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
            pub.stream(range(2000), rate=1000)
            wait_until(lambda: len(sink.values()) >= 500, what="500 stored before the restart")
            broker.stop()
            down = time.monotonic()
            broker.restart()
            restarted = time.monotonic() - down
            sent = pub.wait_acked()
            stored = sink.wait_for(sent)
        line = kom.lines["line"]
        figures = record(
            tally(
                "1 broker restart (SIGTERM, persistence)",
                sent,
                stored,
                broker_down_s=restarted,
                reconnects=line.core.counters.reconnects,
            )
        )
    sink.close()
    assert figures.lost == 0, figures.lost_numbers
    assert figures.sent == 2000
    assert line.generation >= 2


# -- 2. broker crash ----------------------------------------------------------------------------

AUTOSAVE = 1  # seconds between mosquitto's saves of its in-memory database
SAVED = "Saving in-memory database"


def test_broker_crash_loses_at_most_what_the_broker_had_not_saved(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL mid-stream with autosave_interval 1: only messages acknowledged in the last save interval may be lost."""
    broker: Mosquitto = broker_factory(  # type: ignore[operator]
        persistence=True, autosave_interval=AUTOSAVE, extra=QUEUE
    )
    topic = f"{topic_prefix}/stream"
    sink = Historian(tmp_path / "kom.db")
    cfg = config(station(topic), **_line(broker.address, topic_prefix))
    with start(cfg, sink) as kom:
        assert kom.wait_connected(5)
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
            pub.stream(range(3000), rate=1000)
            broker.wait_for_log(SAVED, timeout=5)
            wait_until(lambda: len(sink.values()) >= 1500, what="1500 stored before the crash")
            killed = time.monotonic()
            broker.kill()
            broker.restart()
            sent = pub.wait_acked()
            acked_at = pub.acked_at()
            # The stream is over and acknowledged; the broker delivers what it still has.
            stored = sink.wait_for(range(sent[-1] - 100, sent[-1] + 1))
            stored = sink.values()
    sink.close()
    figures = record(
        tally("2a broker crash (SIGKILL, autosave 1 s), kom online", sent, stored)
    )
    window = [acked_at[n] - killed for n in figures.lost_numbers]
    # A lost message was acknowledged to the publisher after the broker's last save.
    assert all(w > -(AUTOSAVE + 1.0) for w in window), window
    assert figures.sent == 3000


def test_broker_crash_kom_stores_everything_the_broker_persisted(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """After SIGKILL, kom stores exactly what the restarted broker still had for its session."""
    from ._kom import Publisher

    broker: Mosquitto = broker_factory(  # type: ignore[operator]
        persistence=True, autosave_interval=AUTOSAVE, extra=QUEUE
    )
    topic = f"{topic_prefix}/stream"
    witness_id = _client_id(topic_prefix, "witness")
    # A second persistent session on the same topic: what the broker keeps for it, it keeps
    # for kom's session too (both offline, saved together).
    with Publisher(broker.port, client_id=witness_id, clean_session=False) as witness:
        witness.subscribe(topic, 1)
    sink = Historian(tmp_path / "kom.db")
    cfg = config(station(topic), **_line(broker.address, topic_prefix))
    with start(cfg, sink) as kom:
        assert kom.wait_connected(5)  # kom's session and subscription exist; then kom stops
    with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
        saves = broker.log().count(SAVED)
        pub.stream(range(500), rate=5000)
        pub.wait_acked()
        broker.wait_for_log(SAVED, timeout=5, count=saves + 1)  # the first half is saved
        pub.stream(range(500, 1000), rate=5000)
        sent = pub.wait_acked()
        broker.kill()
    broker.restart()
    end = 10**6  # published after the restart: queued messages come before it
    with start(cfg, sink) as kom, Publisher(
        broker.port, client_id=witness_id, clean_session=False
    ) as witness:
        assert kom.wait_connected(5)
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "end")) as last:
            last.publish(end)
            last.wait_acked()
        sink.wait_for([end])
        wait_until(lambda: bool(witness.messages(topic)) and witness.messages(topic)[-1].payload
                   == _stream.payload(end), what="the witness got the end marker")
        persisted = [int(m.payload[6:-1]) for m in witness.messages(topic)]
    stored = sink.values()
    sink.close()
    figures = record(
        tally(
            "2b broker crash (SIGKILL, autosave 1 s), kom offline",
            sent,
            stored,
            broker_persisted=len(set(persisted) - {end}),
        )
    )
    assert set(range(500)) <= set(stored)  # saved before the crash
    assert set(stored) - {end} == set(persisted) - {end}


# -- 3. connection reset ------------------------------------------------------------------------


def test_connection_reset_mid_stream_redelivers_unacknowledged_messages(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """Two RSTs from a proxy between kom and the broker mid-stream: nothing is lost."""
    broker: Mosquitto = broker_factory(extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    sink = Historian(tmp_path / "kom.db")
    with FaultProxy(broker.host, broker.port) as proxy:
        cfg = config(station(topic), **_line(proxy.address, topic_prefix))
        with start(cfg, sink) as kom:
            assert kom.wait_connected(5)
            line = kom.lines["line"]
            with StreamPublisher(
                broker.port, topic, client_id=_client_id(topic_prefix, "dev")
            ) as pub:
                pub.stream(range(3000), rate=1000)
                for at in (800, 1800):
                    wait_until(lambda at=at: len(sink.values()) >= at, what=f"{at} stored")
                    generation = line.generation
                    proxy.reset()
                    wait_until(
                        lambda generation=generation: line.generation > generation
                        and line.state is LineState.CONNECTED,
                        what="reconnected through the proxy",
                    )
                sent = pub.wait_acked()
                stored = sink.wait_for(sent)
            redelivered = line.core.counters.duplicates
    sink.close()
    figures = record(
        tally("3 connection reset (proxy RST) x2", sent, stored, redelivered_dup_flag=redelivered)
    )
    assert figures.lost == 0, figures.lost_numbers
    assert line.generation == 3


# -- 4. silent blackhole ------------------------------------------------------------------------


def _watch_line(kom: Kom, since: float, until: float) -> tuple[float | None, float | None]:
    """Poll the line every 5 ms: seconds from `since` to leaving CONNECTED and to reconnecting."""
    line = kom.lines["line"]
    generation = line.generation
    left = back = None
    while time.monotonic() < until:
        now = time.monotonic()
        if left is None and (line.state is not LineState.CONNECTED or line.generation > generation):
            left = now - since
        if line.generation > generation and line.state is LineState.CONNECTED:
            back = now - since
            break
        time.sleep(0.005)
    return left, back


def test_silent_blackhole_is_detected_within_ping_interval_plus_reply_timeout(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """A proxy that silently stops moving bytes is detected in time; the second address delivers the rest."""
    ping_interval, reply_timeout = 1, 1
    broker: Mosquitto = broker_factory(extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    sink = Historian(tmp_path / "kom.db")
    with FaultProxy(broker.host, broker.port) as proxy:
        line_keys = _line(
            f"{proxy.address};{broker.address}",
            topic_prefix,
            ping_interval=ping_interval,
            reply_timeout=reply_timeout,
        )
        with start(config(station(topic), **line_keys), sink) as kom:
            assert kom.wait_connected(5)
            assert kom.lines["line"].endpoint == proxy.address
            with StreamPublisher(
                broker.port, topic, client_id=_client_id(topic_prefix, "dev")
            ) as pub:
                pub.stream(range(2500), rate=500)
                wait_until(lambda: len(sink.values()) >= 500, what="500 stored")
                proxy.blackhole()
                holed = time.monotonic()
                detected, reconnected = _watch_line(kom, holed, holed + 10)
                line = kom.lines["line"]
                assert line.endpoint == broker.address
                error = line.last_error
                sent = pub.wait_acked()
                stored = sink.wait_for(sent)
    sink.close()
    assert detected is not None
    assert reconnected is not None
    figures = record(
        tally(
            "4 silent blackhole (proxy), failover to 2nd address",
            sent,
            stored,
            detect_s=detected,
            reconnect_s=reconnected,
            bound_s=float(ping_interval + reply_timeout),
        )
    )
    assert figures.lost == 0, figures.lost_numbers
    # One 50 ms turn of the line's loop on top of ping_interval + reply_timeout.
    assert ping_interval < detected < ping_interval + reply_timeout + 0.3, (detected, error)


# -- 5. failover between redundant brokers ------------------------------------------------------


def test_failover_to_the_secondary_broker_stores_everything_published_there(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """Killing the primary of `host = "A;B"` moves kom to B within reply_timeout; B's stream is stored whole."""
    primary: Mosquitto = broker_factory(extra=QUEUE)  # type: ignore[operator]
    secondary: Mosquitto = broker_factory(extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    sink = Historian(tmp_path / "kom.db")
    keys = _line(f"{primary.address};{secondary.address}", topic_prefix)
    # kom's persistent session must exist on B before B can queue for it: MQTT sessions live
    # on one broker. A kom that was connected to B once (here: a run against B alone) has one.
    with start(config(station(topic), **{**keys, "host": secondary.address}), sink) as kom:
        assert kom.wait_connected(5)
    with start(config(station(topic), **keys), sink) as kom:
        assert kom.wait_connected(5)
        line = kom.lines["line"]
        assert line.endpoint == primary.address
        with StreamPublisher(
            primary.port, topic, client_id=_client_id(topic_prefix, "dev-a")
        ) as on_a:
            on_a.stream(range(500), rate=1000)
            sent_a = on_a.wait_acked()
            sink.wait_for(sent_a)
        with StreamPublisher(
            secondary.port, topic, client_id=_client_id(topic_prefix, "dev-b")
        ) as on_b:
            on_b.stream(range(500, 2500), rate=1000)
            wait_until(lambda: on_b.published >= 500, what="the stream to B under way")
            killed = time.monotonic()
            primary.kill()
            wait_until(
                lambda: line.endpoint == secondary.address and line.state is LineState.CONNECTED,
                what="connected to the secondary",
            )
            failover = time.monotonic() - killed
            sent_b = on_b.wait_acked()
            stored = sink.wait_for(sent_b)
    sink.close()
    figures = record(
        tally("5 failover A;B (SIGKILL A), stream to B", sent_b, stored, failover_s=failover)
    )
    assert figures.lost == 0, figures.lost_numbers
    assert set(sent_a) <= set(stored)
    assert failover < 2.0  # reply_timeout: the bound of one connection attempt


# -- 6. kom killed between receiving and committing ---------------------------------------------

KOM = [sys.executable, "-m", "kom._cli"]
ROOT = Path(__file__).resolve().parent.parent


def _kom_run(cfg: Path, db: Path, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*KOM, "run", str(cfg), "--sink", f"sqlite:{db}"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _redelivered(broker: Mosquitto, client_id: str) -> int:
    """How many PUBLISH packets the broker sent to `client_id` again (DUP set), per its log."""
    return broker.log().count(f"Sending PUBLISH to {client_id} (d1,")


def _finish(proc: subprocess.Popen[bytes] | None) -> tuple[int | None, bytes]:
    """SIGTERM a `kom run` still running; its exit code and stderr."""
    if proc is None:
        return None, b""
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err or b""


def _run_config(path: Path, host: str, prefix: str, body: str, **extra: object) -> None:
    keys = _line(host, prefix, **extra)
    path.write_text(
        "[line]\n" + "".join(f"{k} = {_stream.toml(v)}\n" for k, v in keys.items()) + body
    )


def test_kom_killed_mid_stream_stores_everything_after_restart(
    broker_factory: object, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL of `kom run` mid-stream, then the same command again: every message is in SQLite."""
    broker: Mosquitto = broker_factory(extra=QUEUE)  # type: ignore[operator]
    topic = f"{topic_prefix}/stream"
    cfg, db = tmp_path / "stations.toml", tmp_path / "kom.db"
    _run_config(cfg, broker.address, topic_prefix, station(topic))
    client_id = str(_line(broker.address, topic_prefix)["client_id"])
    first = _kom_run(cfg, db, tmp_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: broker.connections(client_id) == 1, what="kom run connected")
        broker.wait_for_log(f"{client_id} 1 {topic_prefix}/#")  # subscribed
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
            pub.stream(range(4000), rate=1000)
            wait_until(lambda: len(_stream.stored_values(db, "s.n")) >= 1500, what="1500 rows")
            first.kill()  # SIGKILL: between a receive and its commit, somewhere
            first.communicate(timeout=15)
            at_kill = len(_stream.stored_values(db, "s.n"))
            second = _kom_run(cfg, db, tmp_path)
            sent = pub.wait_acked()
            stored = _stream.wait_stored(db, "s.n", sent)
    finally:
        code, err = _finish(second)
        _finish(first)
    assert code == 0, err.decode()
    figures = record(
        tally(
            "6 kom run SIGKILL + restart (SQLite)",
            sent,
            stored,
            rows_at_kill=at_kill,
            # In flight to kom (received, not yet committed and acknowledged) at the kill:
            redelivered=_redelivered(broker, client_id),
        )
    )
    assert figures.lost == 0, figures.lost_numbers
    assert first.returncode == -signal.SIGKILL


# -- 7. slow consumer with ACK_ID ---------------------------------------------------------------

ACK_STATION = """
[[station]]
name = "q"
address = "{topic}"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
[[station.tag]]
name = "id"
type = "Ci"
address = "IN_ID"
[[station.tag]]
name = "ack"
type = "Co"
address = "ACK_ID"
"""

INFLIGHT = 20  # mosquitto's max_inflight_messages: QoS 1 messages unacknowledged at once


def _slow_consumer(kom: Kom, count: int, delay: float, timeout: float = 30) -> tuple[list[int], int]:
    """Take updates from the iterator; ack each message after `delay` s, as a slow host does.

    Returns the numbers processed, in order, and the largest hold queue seen meanwhile.
    """
    station = kom.lines["line"].core.by_name["q"]
    numbers: list[int] = []
    largest = 0
    deadline = time.monotonic() + timeout
    for update in kom.updates(timeout=2):
        if update.tag == "q.n" and update.valid:
            numbers.append(int(update.value))  # type: ignore[arg-type]
        elif update.tag == "q.id":
            largest = max(largest, len(station.held))
            time.sleep(delay)
            kom.write("q.ack", update.value).result(5)
        if len(numbers) >= count or time.monotonic() > deadline:
            break
    return numbers, largest


def test_slow_acknowledging_consumer_qos1_processes_every_message_in_order(
    broker_factory: object, topic_prefix: str
) -> None:
    """ACK_ID with a slow consumer, QoS 1: all in order, at most the broker's in-flight window held."""
    broker: Mosquitto = broker_factory(extra=[*QUEUE, f"max_inflight_messages {INFLIGHT}"])  # type: ignore[operator]
    topic = f"{topic_prefix}/q"
    cfg = config(ACK_STATION.format(topic=topic), **_line(broker.address, topic_prefix))
    with start(cfg) as kom:
        assert kom.wait_connected(5)
        with StreamPublisher(broker.port, topic, client_id=_client_id(topic_prefix, "dev")) as pub:
            pub.stream(range(300), rate=2000)
            sent = pub.wait_acked()  # the broker took them all; kom holds back its PUBACKs
            numbers, largest = _slow_consumer(kom, len(sent), delay=0.003)
        overflow = kom.counters()["line"].overflow
    record(
        tally("7a ACK_ID slow consumer, QoS 1", sent, numbers, largest_held=largest, overflow=overflow)
    )
    assert numbers == sent == list(range(300))
    assert 1 <= largest <= INFLIGHT
    assert overflow == 0


def test_slow_acknowledging_consumer_qos0_is_bounded_by_max_held_and_counts_overflow(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """ACK_ID with a slow consumer, QoS 0, max_held 5: in order, held <= 5, the rest counted as overflow."""
    max_held = 5
    topic = f"{topic_prefix}/q"
    cfg = config(
        ACK_STATION.format(topic=topic), **_line(broker.address, topic_prefix, max_held=max_held)
    )
    with start(cfg) as kom:
        assert kom.wait_connected(5)
        station = kom.lines["line"].core.by_name["q"]
        with StreamPublisher(
            broker.port, topic, client_id=_client_id(topic_prefix, "dev"), qos=0
        ) as pub:
            pub.stream(range(300), rate=3000)
            sent = pub.wait_acked()
            # The stream has gone through the broker; once kom read it all, process what it kept.
            wait_until(
                lambda: kom.counters()["line"].received == len(sent), what="kom read the stream"
            )
            kept = len(sent) - kom.counters()["line"].overflow
            numbers, largest = _slow_consumer(kom, kept, delay=0.002)
        counters = kom.counters()["line"]
    figures = record(
        tally(
            "7b ACK_ID slow consumer, QoS 0, max_held 5",
            sent,
            numbers,
            largest_held=largest,
            overflow=counters.overflow,
        )
    )
    assert numbers == sorted(numbers)  # in order
    assert largest <= max_held
    assert len(station.held) == 0
    assert counters.overflow > 0
    # Nothing dropped silently: every message was processed or counted as overflow.
    assert figures.stored + counters.overflow == len(sent)
