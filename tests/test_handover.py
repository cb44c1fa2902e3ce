"""Handing updates to the host: on the line's thread while the host is quick, else the dispatcher.

Against a real mosquitto: the thread each callback runs on, the order and completeness of the
updates when hand-overs move between the two, callbacks never overlapping across lines, and
the size of the batches a line hands over.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from kom import Kom, Update, loads
from kom._client import QUICK
from kom._line import BATCH_UPDATES

from ._broker import BrokerFactory, Mosquitto
from ._kom import Publisher, wait_until

pytestmark = pytest.mark.broker

NUMBERED = """
[[station]]
name = "{name}"
address = "{topic}"
{line_key}
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
"""


def _line(broker: Mosquitto, prefix: str, name: str = "") -> str:
    head = f'[[line]]\nname = "{name}"' if name else "[line]"
    return (
        f'{head}\nhost = "{broker.address}"\nclient_id = "kom-{prefix.rsplit("/", 1)[-1]}{name}"\n'
        f'topic_filter = "{prefix}/#"\npayload_type = "json"\n'
    )


class Recorder:
    """A callback that records each call's thread, size and numbers; slow on chosen calls."""

    def __init__(self, slow_calls: frozenset[int] = frozenset(), slow: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.numbers: dict[str, list[int]] = {}
        self.overlaps = 0
        self._inside = threading.Lock()
        self._slow_calls = slow_calls
        self._slow = slow

    def __call__(self, updates: Sequence[Update]) -> None:
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            self._inside.acquire()
        try:
            call = len(self.calls)
            self.calls.append((threading.current_thread().name, len(updates)))
            for u in updates:
                if isinstance(u.value, int):
                    self.numbers.setdefault(u.tag, []).append(u.value)
            if call in self._slow_calls:
                time.sleep(self._slow)
            else:
                sum(range(3000))  # a little work, so that overlapping calls would meet
        finally:
            self._inside.release()

    def count(self) -> int:
        return sum(len(v) for v in self.numbers.values())

    def threads(self) -> set[str]:
        return {name.split("-")[1] for name, _ in self.calls}


def _publish(pub: Publisher, topic: str, numbers: range) -> None:
    infos = [pub.client.publish(topic, b'{"n": %d}' % n, qos=1) for n in numbers]
    for info in infos:
        info.wait_for_publish(10)


def test_a_quick_callback_runs_on_the_line_thread(broker: Mosquitto, topic_prefix: str) -> None:
    """While the callback returns quickly, hand-overs run on the line's own thread."""
    got = Recorder()
    cfg = loads(
        _line(broker, topic_prefix)
        + NUMBERED.format(name="s", topic=f"{topic_prefix}/n", line_key="")
    )
    with Kom(cfg, got) as kom, Publisher(broker.port) as pub:
        kom.start()
        assert kom.wait_connected(5)
        _publish(pub, f"{topic_prefix}/n", range(200))
        wait_until(lambda: got.count() >= 200)
        assert got.numbers["s.n"] == list(range(200))
        # Mostly: another thread of this process (the publisher's) may keep the interpreter
        # lock from the line for a while, and a hand-over that waited that long counts as slow.
        on_line = sum(size for name, size in got.calls if name == "kom-line-line")
        assert on_line > got.count() / 2, got.calls


def test_inline_false_keeps_every_hand_over_on_the_dispatcher(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """With `inline=False` (as `kom run` does) callbacks run on the dispatcher thread only."""
    got = Recorder()
    cfg = loads(
        _line(broker, topic_prefix)
        + NUMBERED.format(name="s", topic=f"{topic_prefix}/n", line_key="")
    )
    with Kom(cfg, got, inline=False) as kom, Publisher(broker.port) as pub:
        kom.start()
        assert kom.wait_connected(5)
        _publish(pub, f"{topic_prefix}/n", range(300))
        wait_until(lambda: got.count() >= 300)
        assert got.numbers["s.n"] == list(range(300))
        assert got.threads() == {"dispatch"}


def test_a_slow_callback_moves_hand_overs_to_the_dispatcher_and_back(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """After a hand-over slower than QUICK the next ones go through the dispatcher, and after
    a quick one back to the line; through every switch updates arrive complete and in order."""
    slow_calls = frozenset(range(3, 400, 7))
    got = Recorder(slow_calls, slow=QUICK * 3)
    cfg = loads(
        _line(broker, topic_prefix)
        + NUMBERED.format(name="s", topic=f"{topic_prefix}/n", line_key="")
    )
    total = 3000
    with Kom(cfg, got) as kom, Publisher(broker.port) as pub:
        kom.start()
        assert kom.wait_connected(5)
        _publish(pub, f"{topic_prefix}/n", range(total))
        wait_until(lambda: got.count() >= total, timeout=30)
        assert got.numbers["s.n"] == list(range(total))
        assert got.threads() == {"line", "dispatch"}
        assert got.overlaps == 0
        # Each slow call sends the next hand-over to the dispatcher (where queued batches may
        # merge): a slow call is followed by a dispatcher call unless it was the last.
        after_slow = [got.calls[i + 1][0] for i in sorted(slow_calls) if i + 1 < len(got.calls)]
        assert after_slow
        assert all(name == "kom-dispatch" for name in after_slow)


def test_callbacks_of_two_lines_never_overlap(broker: Mosquitto, topic_prefix: str) -> None:
    """Two lines hand over on their own threads, yet the host's callback runs one at a time."""
    got = Recorder(frozenset(range(5, 200, 11)), slow=QUICK * 2)
    text = (
        _line(broker, f"{topic_prefix}/a", "a")
        + _line(broker, f"{topic_prefix}/b", "b")
        + NUMBERED.format(name="sa", topic=f"{topic_prefix}/a/n", line_key='line = "a"')
        + NUMBERED.format(name="sb", topic=f"{topic_prefix}/b/n", line_key='line = "b"')
    )
    total = 1500
    with (
        Kom(loads(text), got) as kom,
        Publisher(broker.port) as pub_a,
        Publisher(broker.port) as pub_b,
    ):
        kom.start()
        assert kom.wait_connected(5)
        other = threading.Thread(target=_publish, args=(pub_b, f"{topic_prefix}/b/n", range(total)))
        other.start()
        _publish(pub_a, f"{topic_prefix}/a/n", range(total))
        other.join()
        wait_until(lambda: got.count() >= 2 * total, timeout=30)
    assert got.overlaps == 0
    assert got.numbers["sa.n"] == list(range(total))
    assert got.numbers["sb.n"] == list(range(total))
    assert {name for name, _ in got.calls} >= {"kom-line-a", "kom-line-b"}


def test_a_line_hands_over_small_batches(broker_factory: BrokerFactory, topic_prefix: str) -> None:
    """A backlog reaches a quick host in batches of at most BATCH_UPDATES updates (plus the
    rest of one message), so that its updates are gone before the collector's first pass."""
    broker = broker_factory(extra=["max_queued_messages 100000"])
    tags = "".join(
        f'[[station.tag]]\nname = "t{i}"\ntype = "Ci"\naddress = "JA=n"\n' for i in range(12)
    )
    text = (
        _line(broker, topic_prefix).replace("[line]", "[line]\nclean_session = false")
        + f'[[station]]\nname = "s"\naddress = "{topic_prefix}/n"\n{tags}'
    )
    cfg = loads(text)
    with Kom(cfg, Recorder()) as kom:  # subscribe, then leave the session offline
        kom.start()
        assert kom.wait_connected(5)
    with Publisher(broker.port) as pub:
        _publish(pub, f"{topic_prefix}/n", range(2000))
    got = Recorder()
    with Kom(cfg, got) as kom:
        kom.start()
        wait_until(lambda: got.count() >= 2000 * 12, timeout=30)
    assert got.numbers["s.t0"] == list(range(2000))
    sizes = [size for name, size in got.calls if name.startswith("kom-line")]
    assert sizes  # the host is quick: (most) hand-overs run on the line
    assert max(sizes) <= BATCH_UPDATES + 11


def test_close_inside_a_callback_on_a_line_thread_does_not_wait_for_the_dispatcher(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """`close()` from a callback running on a line thread returns at once, even while the
    dispatcher holds another line's batch and waits for that very callback to end."""
    took: list[float] = []
    holder: list[Kom] = []
    other_sent = threading.Event()
    calls: list[str] = []

    def on_updates(updates: Sequence[Update]) -> None:
        calls.append(threading.current_thread().name)
        if not took and updates[0].tag == "sa.n":
            other_sent.wait(5)
            time.sleep(0.3)  # line b's batch is queued for the dispatcher meanwhile
            started = time.monotonic()
            holder[0].close(timeout=5)
            took.append(time.monotonic() - started)

    text = (
        _line(broker, f"{topic_prefix}/a", "a")
        + _line(broker, f"{topic_prefix}/b", "b")
        + NUMBERED.format(name="sa", topic=f"{topic_prefix}/a/n", line_key='line = "a"')
        + NUMBERED.format(name="sb", topic=f"{topic_prefix}/b/n", line_key='line = "b"')
    )
    kom = Kom(loads(text), on_updates)
    holder.append(kom)
    kom.start()
    try:
        assert kom.wait_connected(5)
        with Publisher(broker.port) as pub:
            _publish(pub, f"{topic_prefix}/a/n", range(1))
            wait_until(lambda: bool(calls))
            _publish(pub, f"{topic_prefix}/b/n", range(1))
            other_sent.set()
            wait_until(lambda: bool(took))
    finally:
        kom.close()
    assert calls[0] == "kom-line-a"
    assert took[0] < 1.0


class Beginner:
    """A callback with `begin`, as a SinkWriter: records begins and ends by message number."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.lock = threading.Lock()

    def __call__(self, updates: Sequence[Update]) -> None:
        self.begin(updates)()

    def begin(self, updates: Sequence[Update]) -> Callable[[], None]:
        numbers = tuple(u.value for u in updates if isinstance(u.value, int))
        with self.lock:
            self.events.append(("begin", numbers))
        time.sleep(0.02)  # a slow store: the next batches queue up behind it

        def end() -> None:
            with self.lock:
                self.events.append(("end", numbers))

        return end

    def record_settles(self, kom: Kom) -> None:
        for line in kom.lines.values():
            settle = line.settle

            def recorded(batches: Sequence[Any], settle: Any = settle) -> None:
                numbers = tuple(
                    u.value for b in batches for u in b.updates if isinstance(u.value, int)
                )
                with self.lock:
                    self.events.append(("settle", numbers))
                settle(batches)

            line.settle = recorded  # type: ignore[method-assign]

    def first(self, kind: str) -> dict[int, int]:
        """Each message number's first event of `kind`: its index in `events`."""
        seen: dict[int, int] = {}
        for i, (what, numbers) in enumerate(self.events):
            if what == kind:
                for n in numbers:
                    seen.setdefault(n, i)
        return seen


def test_a_begun_batch_is_acknowledged_only_after_its_end(
    broker_factory: BrokerFactory, topic_prefix: str
) -> None:
    """A callback with `begin` (the sink writer) gets the next batch begun while the last is
    outstanding, and each message is acknowledged only after its batch's end returned."""
    # mosquitto drops (silently) what it holds beyond 1,000 messages for a client by default.
    broker = broker_factory(extra=["max_queued_messages 0"])
    got = Beginner()
    cfg = loads(
        _line(broker, topic_prefix)
        + NUMBERED.format(name="s", topic=f"{topic_prefix}/n", line_key="")
    )
    total = 2000
    with Kom(cfg, got, inline=False) as kom, Publisher(broker.port) as pub:
        got.record_settles(kom)
        kom.start()
        assert kom.wait_connected(5)
        _publish(pub, f"{topic_prefix}/n", range(total))
        wait_until(lambda: len(got.first("settle")) >= total, timeout=30)
    begins, ends, settles = got.first("begin"), got.first("end"), got.first("settle")
    assert sorted(begins) == list(range(total))
    assert all(begins[n] < ends[n] < settles[n] for n in range(total))
    # Acknowledged in order; and pipelined: some batch was begun before the last one ended.
    assert [n for what, ns in got.events if what == "settle" for n in ns] == list(range(total))
    kinds = [what for what, _ in got.events]
    assert any(a == b == "begin" for a, b in itertools.pairwise(kinds))
