"""Reloads that change topic_filter while QoS 1 messages flow: nothing lost in the switch."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import pytest

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start, text_station, wait_until
from ._stream import record, tally

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("no_backoff")]

#: Reloads in the storm and messages a second meanwhile (the rate that showed the gap).
RELOADS = 40
RATE = 300


def _requests(log: str, client_id: str) -> list[str]:
    """SUBSCRIBE and UNSUBSCRIBE packets from `client_id`, in the broker's order of arrival."""
    pattern = re.compile(rf"Received (SUBSCRIBE|UNSUBSCRIBE) from {re.escape(client_id)}\b")
    return [m.group(1) for m in pattern.finditer(log)]


def test_reload_storm_changing_filters_loses_no_qos1_message(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """Reloads alternating two filters that both match send SUBSCRIBE first and lose nothing."""
    client_id = f"kom-gap-{topic_prefix.rsplit('/', 1)[-1]}"
    body = text_station(topic_prefix)
    filters = (f"{topic_prefix}/#", f"{topic_prefix}/+")
    line = {
        "host": broker.address,
        "client_id": client_id,
        "subscribe_qos": 1,
        "publish_qos": 1,
        "reply_timeout": 5,
    }
    got = Collector()
    stop = threading.Event()
    sent: list[str] = []

    def publish(pub: Publisher) -> None:
        n = 0
        while not stop.is_set():
            payload = f"m{n}"
            pub.client.publish(f"{topic_prefix}/in", payload, 1)
            sent.append(payload)
            n += 1
            time.sleep(1 / RATE)

    with (
        start(config(body, topic_filter=filters[0], **line), got) as kom,
        Publisher(broker.port) as pub,
    ):
        assert kom.wait_connected(5)
        broker.wait_for_log(f"{client_id} 1 {filters[0]}")
        worker = threading.Thread(target=publish, args=(pub,))
        worker.start()
        try:
            for i in range(RELOADS):
                time.sleep(0.05)
                kom.reload(config(body, topic_filter=filters[(i + 1) % 2], **line))
        finally:
            time.sleep(0.2)
            stop.set()
            worker.join()
        with contextlib.suppress(TimeoutError):  # the figures below say what is missing
            wait_until(lambda: set(sent) <= set(got.values("s.data")), what="all stored")
        stored = got.values("s.data")
        log = broker.log()
    figures = record(
        tally(
            f"13 {RELOADS} reloads changing topic_filter, QoS 1 at {RATE}/s",
            [int(p[1:]) for p in sent],
            [int(p[1:]) for p in stored],
        )
    )
    assert figures.lost == 0, figures.lost_numbers
    # The initial SUBSCRIBE, then each reload's SUBSCRIBE before its UNSUBSCRIBE.
    assert _requests(log, client_id) == ["SUBSCRIBE"] + ["SUBSCRIBE", "UNSUBSCRIBE"] * RELOADS
