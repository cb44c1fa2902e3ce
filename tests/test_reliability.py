"""Fault injection against real mosquitto processes: numbered streams, counted end to end.

Each scenario publishes a numbered stream (`tests/_stream.py`), breaks something on the way
(broker, network, kom itself, the input), and compares what the publisher got acknowledged
with what kom stored: sent / stored / lost / duplicates, printed as one `RELIABILITY` line per
scenario (`scripts/test tests/test_reliability.py -s` shows them, and a table at the end).
Duplicates are allowed where SPEC §5 allows them (at least once); a loss fails the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kom import Kom, LineState
from kom._backoff import set_testing

from . import _stream
from ._broker import Mosquitto
from ._kom import config, start
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
