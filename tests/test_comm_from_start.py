"""A broker unreachable from the start: every active station reports `comm` at once, once."""

from __future__ import annotations

import time

import pytest

from kom import Quality, Reason

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start

BODY = """
[[station]]
name = "a"
address = "{prefix}/a"
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=v"
[[station.tag]]
name = "raw"
type = "TxtI"
address = "IN_DATA"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = {{ topic = "{prefix}/cmd", payload = "{{value}}" }}

[[station]]
name = "b"
address = "{prefix}/b"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"

[[station]]
name = "idle"
address = "{prefix}/idle"
mode = "off"
[[station.tag]]
name = "n"
type = "Ci"
address = "JA=n"
"""
INPUTS = {"a.v", "a.raw", "b.n"}

pytestmark = pytest.mark.usefixtures("no_backoff")


def test_every_active_station_reports_comm_when_the_broker_is_down_from_the_start(
    broker_factory: object, topic_prefix: str
) -> None:
    """A closed port at start: one `comm` update per input tag of each station that is on."""
    broker: Mosquitto = broker_factory()  # type: ignore[operator]
    broker.stop()  # its port is now a real closed port, to be opened again below
    got = Collector()
    cfg = config(
        BODY.format(prefix=topic_prefix),
        host=broker.address,
        client_id="kom-comm-start",
        topic_filter=f"{topic_prefix}/#",
        payload_type="json",
        reply_timeout=1,
    )
    with start(cfg, got) as kom:
        got.wait(lambda us: {u.tag for u in us} >= INPUTS)
        # Attempts go on without pause (back-off off in tests): the error is reported once.
        failures = kom.counters()["line"].connect_failures
        deadline = time.monotonic() + 10
        while kom.counters()["line"].connect_failures < failures + 3:
            assert time.monotonic() < deadline, "the line stopped trying"
            time.sleep(0.05)
        assert sorted(u.tag for u in got.updates) == sorted(INPUTS)
        assert {(u.quality, u.reason, u.topic) for u in got.updates} == {
            (Quality.INVALID, Reason.COMM, None)
        }
        assert kom.station_state("a") == "comm"
        assert kom.station_state("idle") == "off"

        broker.restart()
        assert kom.wait_connected(10)
        assert kom.station_state("a") == "on"
        with Publisher(broker.port) as pub:
            pub.publish(f"{topic_prefix}/b", '{"n": 7}')
            got.wait(lambda us: any(u.tag == "b.n" and u.valid for u in us))
        assert [u.reason for u in got.of("b.n")] == [Reason.COMM, None]


def test_the_core_reports_comm_once_for_a_line_that_never_connected() -> None:
    """Before any connection, `lost` gives each input its `comm` update once; a new outage again."""
    from datetime import UTC, datetime

    from kom._config import loads
    from kom._core import LineCore

    cfg = loads('[line]\nhost = "h"\npayload_type = "json"\n' + BODY.format(prefix="p"))
    core = LineCore(cfg.lines[0], cfg.stations)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    assert {u.tag for u in core.lost(now)} == INPUTS
    assert core.lost(now) == []
    core.connected(1)
    assert {u.tag for u in core.lost(now)} == INPUTS
    assert core.lost(now) == []
