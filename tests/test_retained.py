"""Retained values: marked in the record, and not stored again after a restart on a kept session."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom import loads
from kom._core import LineCore
from kom._sinks import SqliteSink
from kom._station import RETAINED_UNTIMED, Message
from kom._subscriptions import Subscriptions, load, plan, save

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start, text_station, wait_until
from ._stream import record, tally

pytestmark = pytest.mark.usefixtures("no_backoff")

RECEIVED = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
JSON_LINE = """
[line]
host = "127.0.0.1"
payload_type = "json"
time_field = "JA=t"
time_mask = "ISO"
[[station]]
name = "d"
address = "dev/1"
[[station.tag]]
name = "v"
type = "Ai"
address = "JA=v"
"""


def _decode(payload: bytes, retain: bool) -> list[object]:
    cfg = loads(JSON_LINE)
    core = LineCore(cfg.lines[0], cfg.stations)
    return list(core.process(Message("dev/1", payload, RECEIVED, 1, 1, False, retain)).updates)


def test_retained_message_with_a_source_time_keeps_it_and_is_marked() -> None:
    """A retained message's update carries its payload's time and `retained`, no detail."""
    (update,) = _decode(b'{"v": 1.5, "t": "2026-11-30T07:00:00Z"}', retain=True)
    assert update.retained  # type: ignore[attr-defined]
    assert update.ts == datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # type: ignore[attr-defined]
    assert update.detail is None  # type: ignore[attr-defined]


def test_retained_message_without_a_source_time_says_ts_is_the_receive_time() -> None:
    """Without a time in the payload, a retained update keeps the receive time and says so."""
    (update,) = _decode(b'{"v": 1.5}', retain=True)
    assert update.retained  # type: ignore[attr-defined]
    assert update.ts == RECEIVED  # type: ignore[attr-defined]
    assert update.detail == RETAINED_UNTIMED  # type: ignore[attr-defined]
    (live,) = _decode(b'{"v": 1.5}', retain=False)
    assert not live.retained  # type: ignore[attr-defined]
    assert live.detail is None  # type: ignore[attr-defined]


filters = st.lists(st.sampled_from(["a/#", "a/b/+", "c", "d/+/e", "f"]), unique=True)


@given(wanted=filters, held=filters, qos=st.integers(0, 2), held_qos=st.integers(0, 2))
def test_plan_subscribes_what_the_session_lacks(
    wanted: list[str], held: list[str], qos: int, held_qos: int
) -> None:
    """After the plan the session holds exactly the wanted filters; held ones at the same QoS
    are never subscribed again."""
    new, gone = plan(wanted, qos, Subscriptions(tuple(held), held_qos), session_present=True)
    assert (set(held) | set(new)) - set(gone) == set(wanted)
    if qos == held_qos:
        assert not set(new) & set(held)
    assert plan(wanted, qos, None, session_present=True) == (wanted, [])
    assert plan(wanted, qos, Subscriptions(tuple(held), qos), session_present=False) == (wanted, [])


def test_subscriptions_are_kept_per_client_id(tmp_path: Path) -> None:
    """What is saved for one client id is loaded for it alone; None forgets it."""
    save("kom-a/b", Subscriptions(("x/#", "y"), 1))
    assert load("kom-a/b") == Subscriptions(("x/#", "y"), 1)
    assert load("kom-other") is None
    save("kom-a/b", None)
    assert load("kom-a/b") is None


def test_sqlite_table_without_the_column_gains_it(tmp_path: Path) -> None:
    """An existing updates table from before the `retained` column is migrated, old rows 0."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE updates (id INTEGER PRIMARY KEY, tag TEXT NOT NULL, value, quality TEXT"
            " NOT NULL, reason TEXT, ts TEXT NOT NULL, received TEXT NOT NULL, topic TEXT,"
            " detail TEXT)"
        )
        conn.execute(
            "INSERT INTO updates (tag, quality, ts, received) VALUES ('o', 'valid', 't', 'r')"
        )
    conn.close()
    sink = SqliteSink(db)
    sink.write(_decode(b'{"v": 2}', retain=True))  # type: ignore[arg-type]
    sink.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT tag, retained FROM updates ORDER BY id").fetchall()
    conn.close()
    assert rows == [("o", 0), ("d.v", 1)]


def _subscribes(broker: Mosquitto, client_id: str) -> int:
    return len(re.findall(rf"Received SUBSCRIBE from {re.escape(client_id)}\b", broker.log()))


@pytest.mark.broker
def test_restart_on_a_kept_session_does_not_store_retained_values_again(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """A retained value is stored once, marked; a restart with session present neither
    subscribes again nor stores it again, yet gets what was queued and a filter added meanwhile."""
    client_id = f"kom-ret-{topic_prefix.rsplit('/', 1)[-1]}"
    body = text_station(topic_prefix) + text_station(f"{topic_prefix}x", name="extra")
    line = {"host": broker.address, "client_id": client_id, "subscribe_qos": 1}
    with Publisher(broker.port) as pub:
        pub.publish(f"{topic_prefix}/in", "kept", retain=True)
        first = Collector()
        with start(config(body, topic_filter=f"{topic_prefix}/#", **line), first) as kom:
            assert kom.wait_connected(5)
            got = first.wait_count("s.data", 1)
            pub.publish(f"{topic_prefix}/in", "live")
            first.wait_count("s.data", 2)
        assert got == ["kept"]
        marks = [(u.value, u.retained, u.detail) for u in first.of("s.data") if u.valid]
        assert marks == [("kept", True, RETAINED_UNTIMED), ("live", False, None)]
        pub.publish(f"{topic_prefix}/in", "while away")
        pub.publish(f"{topic_prefix}x/in", "extra kept", retain=True)
        second = Collector()
        filters = [f"{topic_prefix}/#", f"{topic_prefix}x/#"]
        with start(config(body, topic_filter=filters, **line), second) as kom:
            assert kom.wait_connected(5)
            second.wait_count("s.data", 1)
            second.wait_count("extra.data", 1)
            wait_until(lambda: _subscribes(broker, client_id) == 2, what="second SUBSCRIBE")
            broker.wait_for_log(f"{client_id} 1 {topic_prefix}x/#")
            assert f"{client_id} 1 {topic_prefix}/#" in broker.log()
            pub.publish(f"{topic_prefix}/in", "after")
            second.wait_count("s.data", 2)
    assert [(u.value, u.retained) for u in second.of("s.data") if u.valid] == [
        ("while away", False),
        ("after", False),
    ]
    extra = [(u.value, u.retained) for u in second.of("extra.data") if u.valid]
    assert extra == [("extra kept", True)]
    sent = ["kept", "live", "while away", "after", "extra kept"]
    kept = [u for run in (first, second) for u in run.updates if u.valid]
    stored = [u.value for u in kept if u.tag.endswith("data")]
    record(
        tally(
            "15 retained values, restart on a kept session (MQTT 3.1.1)",
            range(len(sent)),
            [sent.index(v) for v in stored],
            retained_stored=sum(u.retained for u in kept),
        )
    )
    # The first run's SUBSCRIBE, then one for the added filter alone.
    assert _subscribes(broker, client_id) == 2
    assert broker.log().count(f"{client_id} 1 {topic_prefix}/#") == 1
