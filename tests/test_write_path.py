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
    ("body", "expected"),
    [
        (b"\x00\x05", (5, True, "Success")),
        (b"\x00\x05\x00", (5, True, "Success")),
        (b"\x00\x05\x10", (5, True, "Success")),  # MQTT 5 "no matching subscribers" is success
        (b"\x00\x05\x87", (5, False, "Not authorized")),
        (b"\x00\x05\x97\x00", (5, False, "Quota exceeded")),
    ],
)
def test_puback_reason_codes(body: bytes, expected: tuple[int, bool, str]) -> None:
    """kom's own PUBACK reader: the packet id, and MQTT 5 reason codes of 0x80 and above fail."""
    from kom import loads

    line = loads('[line]\nhost = "127.0.0.1"\nprotocol = "5"\n').lines[0]
    got: list[tuple[int, bool, str]] = []

    class Events:
        def published(self, mid: int, ok: bool, reason: str) -> None:
            got.append((mid, ok, reason))

    session = Session(line, Events())  # type: ignore[arg-type]
    client = session._client
    client._out_messages[5] = _Message(qos=1)
    client._inflight_messages = 1
    client._in_packet = {"command": 0x40, "packet": bytearray(body)}
    session._handle_pubackcomp("PUBACK")
    assert got == [expected]
    assert 5 not in client._out_messages
    assert client._inflight_messages == 0


def test_a_puback_for_an_unknown_packet_id_is_ignored() -> None:
    """A PUBACK for no message in flight changes nothing and reports nothing."""
    from kom import loads

    line = loads('[line]\nhost = "127.0.0.1"\n').lines[0]
    got: list[object] = []

    class Events:
        def published(self, *args: object) -> None:
            got.append(args)

    session = Session(line, Events())  # type: ignore[arg-type]
    session._client._in_packet = {"command": 0x40, "packet": bytearray(b"\x00\x09")}
    session._handle_pubackcomp("PUBACK")
    assert got == []


class _Message:
    def __init__(self, qos: int) -> None:
        self.qos = qos


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
        line._outgoing.append(_Outgoing(future, "o.cmd", "t", b"x", 1, False, deadline, None))
    line._expire_writes(now)
    with pytest.raises(WriteError) as failed:
        futures[0].result(0)
    assert failed.value.reason == "timeout"
    assert [w.future for w in line._outgoing] == futures[1:]
    assert not futures[1].done()


@pytest.mark.parametrize("own_thread", [True, False])
def test_publish_many_reports_each_message_on_its_own(own_thread: bool) -> None:
    """A message the MQTT client refuses fails alone; the others of the burst keep their ids."""
    from kom import loads
    from kom._errors import LineError

    line = loads('[line]\nhost = "127.0.0.1"\n').lines[0]
    session = Session(line, object())  # type: ignore[arg-type]
    out = session.publish_many(
        [("a/b", b"1", 1, False), ("a/+", b"2", 1, False), ("a/c", b"3", 1, False)], own_thread
    )
    assert isinstance(out[0], int)
    assert isinstance(out[1], LineError)
    assert "wildcard" in str(out[1])
    assert isinstance(out[2], int)
    assert out[2] != out[0]


class _TrickleSocket:
    """Takes at most 3 bytes a send, slowly, and notes how many threads send at once."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.senders = 0
        self.most_senders = 0
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self.senders += 1
            self.most_senders = max(self.most_senders, self.senders)
        time.sleep(0.0002)
        with self._lock:
            self.sent += bytes(data[:3])
            self.senders -= 1
        return min(len(data), 3)


def test_packets_are_written_by_one_thread_at_a_time() -> None:
    """Threads that flush the MQTT client's packet queue at once (a writer, the host settling
    messages, the line's loop) write it in order, never interleaving parts of packets."""
    from kom import loads

    line = loads('[line]\nhost = "127.0.0.1"\n').lines[0]
    session = Session(line, object())  # type: ignore[arg-type]
    client = session._client
    sock = _TrickleSocket()
    client._sock = sock
    packets = [b"\x40\x02" + n.to_bytes(2, "big") for n in range(300)]
    with client._in_callback_mutex:  # queued only: nobody writes yet
        for data in packets:
            client._packet_queue(0x40, data, 0, 0)

    def flush() -> None:
        while client.want_write():
            client.loop_write()

    threads = [threading.Thread(target=flush) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    client._sock = None
    assert sock.most_senders == 1
    assert bytes(sock.sent) == b"".join(packets)


@pytest.mark.usefixtures("fast_switching")
def test_writes_from_other_threads_leave_the_loops_wake_up_socket_in_place(
    broker_factory: BrokerFactory, topic_prefix: str
) -> None:
    """Writes made from other threads while the line's thread loops: the MQTT client's wake-up
    socket pair stays the one the loop selects on (a replaced one would leave later
    wake-ups unheard and its socket unclosed)."""
    broker = broker_factory()
    with start(_config(topic_prefix, broker.address)) as kom:
        assert kom.wait_connected(5)
        line = kom.lines["line"]
        assert line._session is not None
        client = line._session._client
        pair = (client._sockpairR, client._sockpairW)
        assert None not in pair

        def fire(name: str) -> None:
            for n in range(150):  # one at a time: each goes out from this thread
                kom.write("o.cmd", f"{name}{n}").result(10)

        threads = [threading.Thread(target=fire, args=(name,)) for name in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert (client._sockpairR, client._sockpairW) == pair
        assert kom.counters()["line"].callback_errors == 0


def test_a_write_made_while_others_go_to_the_client_waits_behind_them() -> None:
    """With nothing under way a write goes to the MQTT client from the writer's own thread;
    one made while queued writes are being handed over waits in the queue behind them."""
    from kom._line import Line, LineState, _Outgoing

    cfg = _config("t", "127.0.0.1:1")
    line = Line(cfg.lines[0], cfg.stations_of(cfg.lines[0].name), lambda batch: None)
    calls: list[tuple[list[bytes], bool]] = []
    late: list[Future[WriteResult]] = []

    class Client:
        def publish_many(self, messages: Sequence[Any], own_thread: bool) -> list[int]:
            if len(calls) == 1:  # the queued burst: another thread writes meanwhile
                writer = threading.Thread(target=lambda: late.append(line.write("o", "cmd", "c")))
                writer.start()
                writer.join(5)
            calls.append(([m[1] for m in messages], own_thread))
            return list(range(len(calls) * 10, len(calls) * 10 + len(messages)))

        def wake(self) -> None:
            pass

    client = Client()
    line._session = client  # type: ignore[assignment]
    line.state = LineState.CONNECTED
    first = line.write("o", "cmd", "a")  # nothing under way: out at once, from this thread
    line.published(10, True, "Success")
    assert first.result(0).mid == 10
    line._outgoing.append(_Outgoing(Future(), "o.cmd", "t", b"b", 1, False, None, None))
    line._send_outgoing(client)  # type: ignore[arg-type]
    assert calls == [([b"a"], False), ([b"b"], False)]
    assert [w.payload for w in line._outgoing] == [b"c"]
    line._send_outgoing(client)  # type: ignore[arg-type]
    assert calls[-1] == ([b"c"], False)
    assert not late[0].done()  # registered, awaiting its PUBACK
    assert line._in_transit == 0
