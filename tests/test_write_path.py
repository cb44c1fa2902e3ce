"""The write path: the line's thread publishes writes, keeps a window, reads PUBACKs itself."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any

import pytest

from kom import Kom, Update, WriteError, WriteResult
from kom._line import WINDOW
from kom._mqtt import Session

from ._broker import BrokerFactory, Mosquitto
from ._fakebroker import FakeBroker, PacketType, packet, publish_id
from ._kom import Publisher, config, start, text_station, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every 10 µs instead of 5 ms: races between them show up far more often."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _config(prefix: str, host: str, **line: object) -> Any:
    keys: dict[str, object] = {
        "host": host,
        "client_id": f"kom-w-{prefix[-6:]}",
        "topic_filter": f"{prefix}/in",
        "publish_qos": 1,
        "reply_timeout": 30,
    }
    keys.update(line)
    return config(text_station(prefix, name="o", out="cmd"), **keys)


def test_writes_beyond_the_window_wait_for_completions() -> None:
    """At most WINDOW writes are in flight; the rest go out as PUBACKs come back, and all
    complete, each published once."""
    extra = 150
    with FakeBroker() as fake:
        fake.ignore_publish = True
        with start(_config("win", fake.address)) as kom:
            assert kom.wait_connected(5)
            futures = [kom.write("o.cmd", str(n)) for n in range(WINDOW + extra)]
            fake.wait_for(PacketType.PUBLISH, WINDOW)
            time.sleep(0.3)
            assert len(fake.packets(PacketType.PUBLISH)) == WINDOW
            acked: set[int] = set()
            deadline = time.monotonic() + 20
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                for raw in fake.packets(PacketType.PUBLISH):
                    ident = publish_id(raw)
                    if ident not in acked:
                        acked.add(ident)
                        fake.send_raw(packet(PacketType.PUBACK, 0, ident.to_bytes(2, "big")))
                time.sleep(0.01)
            results = [f.result(0) for f in futures]
        published = fake.packets(PacketType.PUBLISH)
    assert len(published) == WINDOW + extra
    assert [
        raw[-len(str(n)) :] for raw, n in zip(published, range(WINDOW + extra), strict=True)
    ] == [str(n).encode() for n in range(WINDOW + extra)]
    assert len({r.mid for r in results}) == WINDOW + extra


@pytest.mark.usefixtures("fast_switching")
def test_writes_reach_the_broker_in_the_order_they_were_made(
    broker_factory: BrokerFactory, topic_prefix: str
) -> None:
    """Thousands of writes fired from two threads arrive at a subscriber in each thread's order."""
    # mosquitto queues at most 1,000 messages for a subscriber that lags, by default.
    broker = broker_factory(extra=["max_queued_messages 100000"])
    with (
        start(_config(topic_prefix, broker.address)) as kom,
        Publisher(broker.port) as sub,
    ):
        assert kom.wait_connected(5)
        sub.subscribe(f"{topic_prefix}/cmd", qos=1)
        futures: list[Future[WriteResult]] = []

        def fire(name: str) -> None:
            futures.extend(kom.write("o.cmd", f"{name}{n}") for n in range(1500))

        other = threading.Thread(target=fire, args=("b",))
        other.start()
        fire("a")
        other.join()
        done, _ = wait(futures, timeout=30)
        assert all(f.exception() is None for f in done)
        assert len(done) == 3000
        wait_until(lambda: len(sub.messages()) >= 3000, timeout=20)
    payloads = [m.payload.decode() for m in sub.messages()]
    for name in "ab":
        assert [p for p in payloads if p[0] == name] == [f"{name}{n}" for n in range(1500)]


def test_a_write_made_inside_a_callback_on_the_line_thread_completes(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """A callback running on the line's thread may write; the write goes out once it returns."""
    outcomes: list[WriteResult | BaseException] = []
    threads: list[str] = []
    holder: list[Kom] = []

    def on_updates(updates: Sequence[Update]) -> None:
        threads.append(threading.current_thread().name)
        future = holder[0].write("o.cmd", "from the callback")
        future.add_done_callback(lambda f: outcomes.append(f.exception() or f.result()))

    kom = Kom(_config(topic_prefix, broker.address), on_updates)
    holder.append(kom)
    kom.start()
    try:
        assert kom.wait_connected(5)
        with Publisher(broker.port) as pub:
            pub.subscribe(f"{topic_prefix}/cmd", qos=1)
            pub.publish(f"{topic_prefix}/in", "go")
            wait_until(lambda: bool(outcomes))
            wait_until(lambda: bool(pub.messages(f"{topic_prefix}/cmd")))
    finally:
        kom.close()
    assert threads[0].startswith("kom-line")
    assert isinstance(outcomes[0], WriteResult)


def test_writes_queued_when_the_connection_drops_are_sent_after_reconnecting() -> None:
    """Writes the line had not yet published when the broker went away are sent once it is
    back, and complete (QoS 1); none is lost."""
    with FakeBroker() as fake:
        fake.ignore_publish = True
        cfg = _config("drop", fake.address, reconnect_min=0.1, reconnect_max=0.2)
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            futures = [kom.write("o.cmd", str(n)) for n in range(WINDOW + 50)]
            fake.wait_for(PacketType.PUBLISH, WINDOW)
            fake.ignore_publish = False
            fake.drop_client()
            done, _ = wait(futures, timeout=20)
            assert len(done) == WINDOW + 50
            assert all(f.exception() is None for f in done)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"", None),
        (b"\x00", None),
        (b"\x10", None),  # MQTT 5 "No matching subscribers" is a success
        (b"\x87", "broker refused: Not authorized (0x87)"),
        (b"\x97\x00", "broker refused: Quota exceeded (0x97)"),
        (b"\x87\x06\x1f\x00\x03acl", "broker refused: Not authorized (0x87): acl"),
    ],
)
def test_puback_reason_codes(body: bytes, outcome: str | None) -> None:
    """MQTT 5: a PUBACK's reason code of 0x80 or above fails the write with the code's name
    and the broker's reason string; lower ones complete it."""
    with FakeBroker() as fake:
        fake.ignore_publish = True
        fake.ignore_subscribe = True  # the fake's SUBACK is 3.1.1's
        with start(_config("rc", fake.address, protocol="5")) as kom:
            assert kom.wait_connected(5)
            future = kom.write("o.cmd", "x")
            (raw,) = fake.wait_for(PacketType.PUBLISH, 1)
            mid = publish_id(raw)
            fake.send_raw(packet(PacketType.PUBACK, 0, mid.to_bytes(2, "big") + body))
            if outcome is None:
                assert future.result(5).mid == mid
            else:
                with pytest.raises(
                    WriteError, match=outcome.replace("(", r"\(").replace(")", r"\)")
                ):
                    future.result(5)


def test_qos2_write_answered_with_puback_is_reported_downgraded() -> None:
    """A QoS 2 write the broker answers with PUBACK (as RabbitMQ does) completes as
    downgraded to QoS 1, counted and logged, not as completed by PUBCOMP."""
    with FakeBroker() as fake:
        fake.ignore_publish = True
        with start(_config("dg", fake.address, publish_qos=2)) as kom:
            assert kom.wait_connected(5)
            future = kom.write("o.cmd", "x")
            (raw,) = fake.wait_for(PacketType.PUBLISH, 1)
            fake.send_raw(packet(PacketType.PUBACK, 0, publish_id(raw).to_bytes(2, "big")))
            result = future.result(5)
            assert (result.qos, result.downgraded) == (1, True)
            assert kom.counters()["line"].downgraded_writes == 1
            assert not fake.packets(PacketType.PUBREL)


def test_a_broker_closing_on_a_qos2_publish_fails_the_write_with_that_reason() -> None:
    """A broker that closes the connection on a QoS 2 PUBLISH (as NATS does) gets a message
    that says so; the write fails with that reason and is not sent again after reconnecting."""
    with FakeBroker() as fake:
        fake.ignore_publish = True
        cfg = _config("q2", fake.address, publish_qos=2, reconnect_min=0.1, reconnect_max=0.2)
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            # The SUBACK first: a broker that answers anything after the PUBLISH did not
            # close on it, and kom rightly names no cause then.
            wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
            future = kom.write("o.cmd", "x")
            fake.wait_for(PacketType.PUBLISH, 1)
            fake.drop_client()
            with pytest.raises(WriteError, match="closed the connection on kom's QoS 2 PUBLISH"):
                future.result(5)
            line = kom.lines["line"]
            wait_until(lambda: line.generation >= 2, what="reconnected")
            assert "QoS 2" in str(line.last_error) or line.last_error is None
            time.sleep(0.3)
            assert len(fake.packets(PacketType.PUBLISH)) == 1
            assert line.takeovers == 0


def test_a_write_with_no_completion_times_out_even_while_queued() -> None:
    """A write still waiting for room in the window fails with timeout after reply_timeout."""
    with FakeBroker() as fake:
        fake.ignore_publish = True
        with start(_config("late", fake.address, reply_timeout=1)) as kom:
            assert kom.wait_connected(5)
            futures = [kom.write("o.cmd", str(n)) for n in range(WINDOW + 5)]
            done, _ = wait(futures, timeout=10)
            assert len(done) == WINDOW + 5
            reasons = {f.exception().reason for f in done}  # type: ignore[union-attr]
            assert reasons == {"timeout"}
        # The queued ones go out when the window frees up, if they still have time left.
        assert WINDOW <= len(fake.packets(PacketType.PUBLISH)) <= WINDOW + 5


def test_a_queued_write_past_its_deadline_fails_with_timeout() -> None:
    """The expiry rule also covers writes still queued for the line's thread, and keeps the
    ones with time left, in order."""
    from kom._line import Line, _Outgoing

    cfg = _config("q", "127.0.0.1:1", reply_timeout=1)
    line = Line(cfg.lines[0], cfg.stations_of(cfg.lines[0].name), lambda batch: None)
    now = time.monotonic()
    futures: list[Future[WriteResult]] = [Future() for _ in range(3)]
    for future, deadline in zip(futures, (now - 1, now + 5, None), strict=True):
        line._outgoing.append(_Outgoing("t", b"x", 1, False, None, future, "o.cmd", deadline, None))
    line._next_expiry = now - 1  # the earliest deadline, as _publish notes it
    line._expire_writes(now)
    with pytest.raises(WriteError) as failed:
        futures[0].result(0)
    assert failed.value.reason == "timeout"
    assert [w.future for w in line._outgoing] == futures[1:]
    assert not futures[1].done()


def test_publish_many_reports_each_message_on_its_own() -> None:
    """A message the session refuses fails alone; the others of the burst keep their ids."""
    from kom import loads
    from kom._errors import LineError

    line = loads('[line]\nhost = "127.0.0.1"\n').lines[0]
    session = Session(line, object())  # type: ignore[arg-type]
    try:
        out = session.publish_many(
            [("a/b", b"1", 1, False), ("a/+", b"2", 1, False), ("a/c", b"3", 1, False)]
        )
    finally:
        session.close()
    assert isinstance(out[0], int)
    assert isinstance(out[1], LineError)
    assert "wildcard" in str(out[1])
    assert isinstance(out[2], int)
    assert out[2] != out[0]


def test_acknowledgements_from_many_threads_are_written_whole_and_in_order() -> None:
    """Acknowledgements handed over by several threads at once reach the broker as whole
    packets, each thread's in its order: only the session's own thread writes the socket."""
    from kom import loads

    line = loads('[line]\nhost = "127.0.0.1"\nping_interval = 0\n').lines[0]
    with FakeBroker() as fake:
        session = Session(line, object())  # type: ignore[arg-type]
        try:
            session.connect(_endpoint(fake.address), 5)
            batches = {t: [(t * 1000 + n, 1) for n in range(1, 200)] for t in range(1, 5)}

            def ack(thread: int) -> None:
                for mid, qos in batches[thread]:
                    session.ack_many([(mid, qos)])

            threads = [threading.Thread(target=ack, args=(t,)) for t in batches]
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads) or session._commands:
                session.loop(0.01)
            fake.wait_for(PacketType.PUBACK, 4 * 199)
        finally:
            session.close()
        acks = [int.from_bytes(raw[2:4], "big") for raw in fake.packets(PacketType.PUBACK)]
    for thread, batch in batches.items():
        assert [m for m in acks if m // 1000 == thread] == [m for m, _ in batch]


def _endpoint(address: str) -> Any:
    from kom._config import Endpoint

    host, port = address.rsplit(":", 1)
    return Endpoint(host, int(port))


@pytest.mark.usefixtures("fast_switching")
def test_writes_from_other_threads_are_sent_by_the_line_thread_alone(
    broker_factory: BrokerFactory, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes made from other threads all complete, and every byte to the broker is written
    by the line's thread (no lock guards the wire, none is needed)."""
    from kom import _mqtt

    writers: set[str] = set()
    flush = _mqtt._Stream.flush

    def recording(self: Any) -> None:
        writers.add(threading.current_thread().name)
        flush(self)

    monkeypatch.setattr(_mqtt._Stream, "flush", recording)
    broker = broker_factory()
    with start(_config(topic_prefix, broker.address)) as kom:
        assert kom.wait_connected(5)

        def fire(name: str) -> None:
            for n in range(150):  # one at a time
                kom.write("o.cmd", f"{name}{n}").result(10)

        threads = [threading.Thread(target=fire, args=(name,)) for name in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert kom.counters()["line"].callback_errors == 0
    assert writers == {"kom-line-line"}


def test_writes_are_decided_on_the_line_thread(
    broker: Mosquitto, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write from any thread is decided on the line's thread, where the station's output
    values and topic groups change: never on the writer's own thread."""
    from kom._line import Line

    deciders: list[str] = []
    decide = Line._write

    def recording(self: Line, *args: Any) -> None:
        deciders.append(threading.current_thread().name)
        decide(self, *args)

    monkeypatch.setattr(Line, "_write", recording)
    with start(_config(topic_prefix, broker.address)) as kom:
        assert kom.wait_connected(5)
        kom.write("o.cmd", "x").result(5)
    assert deciders == ["kom-line-line"]


def test_a_wake_up_made_while_the_loop_drains_its_wake_ups_is_not_lost() -> None:
    """A wake-up from another thread while the session empties its wake-up socket leaves
    later wake-ups working (a lost one made acknowledgements wait for the select timeout)."""
    import select

    from kom import loads

    line = loads('[line]\nhost = "127.0.0.1"\n').lines[0]
    session = Session(line, object())  # type: ignore[arg-type]
    real = session._wake_r

    class Racing:
        """The wake-up socket, with another thread's wake() arriving during the first recv."""

        calls = 0

        def recv(self, size: int) -> bytes:
            Racing.calls += 1
            if Racing.calls == 1:
                session.wake()
            return real.recv(size)

    try:
        session.wake()
        session._wake_r = Racing()  # type: ignore[assignment]
        session._drain_wake()
        session._wake_r = real
        session.wake()  # must reach the socket: the loop waits in select() for it
        assert select.select([real], [], [], 0)[0] == [real]
    finally:
        session._wake_r = real
        session.close()


def test_a_write_future_names_its_outcome() -> None:
    """What the host's write counters read (kom_writes_total by outcome)."""
    from kom._client import write_outcome

    done, refused, broken, cancelled = (Future[WriteResult]() for _ in range(4))
    done.set_result(WriteResult("s.t", "a/b", 1, 7))
    refused.set_exception(WriteError("s.t: broker refused", "s.t", "rejected"))
    broken.set_exception(RuntimeError("a bug"))
    assert cancelled.cancel()
    assert [write_outcome(f) for f in (done, refused, broken, cancelled)] == [
        "completed",
        "rejected",
        "error",
        "cancelled",
    ]


def test_the_line_decides_writes_a_burst_at_a_time() -> None:
    """The line's loop decides at most a burst of the writes asked for, in order, and leaves
    the rest asked for its next pass (the decided ones are published in between)."""
    from kom._line import Line

    cfg = _config("b", "127.0.0.1:1")
    line = Line(cfg.lines[0], cfg.stations_of(cfg.lines[0].name), lambda batch: None)
    futures = [line.write("o", "cmd", i) for i in range(3)]  # not running: decided at once
    assert all(f.done() for f in futures)  # failed: no session (not connected)
    line._running = True  # as if the line's thread ran: writes now wait to be decided
    line._ident = -1
    futures = [line.write("o", "cmd", i) for i in range(3)]
    assert not any(f.done() for f in futures)
    line._decide_writes(2)
    assert [f.done() for f in futures] == [True, True, False]
    assert [entry[0] for entry in line._asked] == [futures[2]]
    line._decide_writes()
    assert futures[2].done()
