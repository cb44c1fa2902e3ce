"""Writes made while the line is down: one that reports a timeout is never sent later."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kom import Kom, LineState, WriteError
from kom._outbox import Outbox

from ._broker import Mosquitto
from ._kom import Publisher, config, start, text_station, wait_until
from ._proxy import FaultProxy
from ._stream import record, tally

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("no_backoff")]


def _write_times_out(kom: Kom, outbox_dir: Path | None) -> None:
    """Write "doomed"; it fails with `timeout`, and its outbox row (if any) goes with it, so that
    a restart would not send it either."""
    doomed = kom.write("s.cmd", "doomed")
    with pytest.raises(WriteError) as info:
        doomed.result(timeout=5)
    assert info.value.reason == "timeout"
    if outbox_dir is not None:
        box = Outbox(outbox_dir / "outbox.db", "line")
        assert box.pending() == []
        box.close()


@pytest.mark.parametrize("outbox", [False, True])
def test_a_write_that_timed_out_during_an_outage_never_arrives(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path, outbox: bool
) -> None:
    """Broker unreachable, a QoS 1 write times out, the line comes back: the broker never gets it,
    while a write made during the same outage that has not timed out arrives."""
    extra = {"outbox": str(tmp_path / "outbox.db")} if outbox else {}
    with FaultProxy(broker.host, broker.port) as proxy, Publisher(broker.port) as sub:
        sub.subscribe(f"{topic_prefix}/out", 1)
        cfg = config(
            text_station(topic_prefix),
            host=proxy.address,
            client_id=f"kom-wt-{topic_prefix.rsplit('/', 1)[-1]}",
            topic_filter=f"{topic_prefix}/#",
            publish_qos=1,
            reply_timeout=1,
            **extra,
        )
        with start(cfg) as kom:
            assert kom.wait_connected(5)
            proxy.refuse()
            proxy.reset()
            wait_until(lambda: kom.lines["line"].state is not LineState.CONNECTED, what="down")
            _write_times_out(kom, tmp_path if outbox else None)
            time.sleep(0.5)
            kept = kom.write("s.cmd", "kept")  # made during the outage, back within its time
            proxy.pass_through()
            assert kept.result(timeout=5).qos == 1
            assert kom.write("s.cmd", "after").result(timeout=5).qos == 1
            wait_until(lambda: len(sub.messages()) >= 2, what="two writes at the subscriber")
            time.sleep(0.5)  # a late copy would come with or just after the others
        payloads = [m.payload for m in sub.messages(f"{topic_prefix}/out")]
    record(
        tally(
            f"14 write timed out during an outage{' (outbox)' if outbox else ''}",
            [1, 2],
            [{b"doomed": 0, b"kept": 1, b"after": 2}[p] for p in payloads],
            failed_then_sent=payloads.count(b"doomed"),
        )
    )
    assert payloads == [b"kept", b"after"]


@pytest.mark.parametrize(("qos", "outbox"), [(1, False), (2, False), (1, True)])
def test_a_sent_write_that_timed_out_is_not_resent_after_reconnecting(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path, qos: int, outbox: bool
) -> None:
    """A write sent into a dead path times out; after the line reconnects on its kept session,
    kom does not send it again (no DUP resend, no PUBREL), and a later write goes through."""
    extra = {"outbox": str(tmp_path / "outbox.db")} if outbox else {}
    client_id = f"kom-wr-{topic_prefix.rsplit('/', 1)[-1]}"
    with FaultProxy(broker.host, broker.port) as proxy, Publisher(broker.port) as sub:
        sub.subscribe(f"{topic_prefix}/out", 2)
        cfg = config(
            text_station(topic_prefix),
            host=proxy.address,
            client_id=client_id,
            clean_session=False,
            topic_filter=f"{topic_prefix}/#",
            publish_qos=qos,
            reply_timeout=1,
            **extra,
        )
        with start(cfg) as kom:
            line = kom.lines["line"]
            assert kom.wait_connected(5)
            generation = line.generation
            proxy.blackhole()  # kom's PUBLISH leaves kom and is held in the proxy
            _write_times_out(kom, tmp_path if outbox else None)
            proxy.reset()  # the held bytes go with the connection
            proxy.pass_through()
            wait_until(lambda: line.generation > generation, what="reconnected")
            assert kom.write("s.cmd", "after").result(timeout=5).qos == qos
            wait_until(lambda: len(sub.messages()) >= 1, what="the later write")
            time.sleep(1.0)  # a resent copy would come with the reconnection, before "after"
        payloads = [m.payload for m in sub.messages(f"{topic_prefix}/out")]
    assert broker.connections(client_id) >= 2
    record(
        tally(
            f"19 write sent, timed out, then reconnected (QoS {qos}{', outbox' if outbox else ''})",
            [1],
            [{b"doomed": 0, b"after": 1}[p] for p in payloads],
            failed_then_sent=payloads.count(b"doomed"),
        )
    )
    assert payloads == [b"after"]
