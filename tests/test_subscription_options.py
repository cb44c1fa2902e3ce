"""MQTT 5 subscription option retain_as_published (SPEC §11) against mosquitto, paho as the
peer that publishes."""

from __future__ import annotations

import pytest

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start, text_station, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("no_backoff")]


@pytest.mark.parametrize("as_published", [True, False])
def test_retain_as_published_keeps_the_retain_flag(
    broker: Mosquitto, topic_prefix: str, as_published: bool
) -> None:
    """A retained message a peer publishes while kom is subscribed reaches kom marked retained
    with retain_as_published = true, and unmarked without it (MQTT 5 §3.3.1.3); a message
    published without retain is unmarked either way."""
    got = Collector()
    cfg = config(
        text_station(topic_prefix),
        host=broker.address,
        client_id=f"komrap-{topic_prefix[-6:]}",
        topic_filter=f"{topic_prefix}/#",
        protocol="5",
        retain_as_published=as_published,
    )
    with start(cfg, got) as kom, Publisher(broker.port) as pub:  # type: ignore[arg-type]
        assert kom.wait_connected(5)
        wait_until(lambda: not kom.lines["line"]._requests, what="SUBACK")
        pub.publish(f"{topic_prefix}/in", "kept", retain=True)
        pub.publish(f"{topic_prefix}/in", "plain")
        got.wait(lambda us: any(u.value == "plain" for u in us))
    flags = {u.value: u.retained for u in got.updates if u.tag == "s.data" and u.value is not None}
    assert flags == {"kept": as_published, "plain": False}
