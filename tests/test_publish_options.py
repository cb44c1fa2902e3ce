"""ioBroker-style publishing of output tags: only changes, current values on (re)connect, and
comma-separated topic filters, against a real broker with paho as the peer."""

from __future__ import annotations

from pathlib import Path

import pytest

from kom import loads
from kom._cli import main
from kom._config import Publish
from kom._core import LineCore
from kom._outputs import Message, OutputMemory
from kom._topic import TopicFilter

from ._broker import Mosquitto
from ._kom import Collector, Publisher, config, start, wait_until
from ._proxy import FaultProxy

OUTPUTS = """
[[station]]
name = "relay"
address = "{prefix}/state"
[[station.tag]]
name = "on"
type = "Do"
publish = {{ topic = "{prefix}/set", payload = "{{value}}"{options} }}
[[station.tag]]
name = "level"
type = "Ao"
default = 12.5
publish = {{ topic = "{prefix}/level", payload = "{{value}}", on_connect = true }}
[[station.tag]]
name = "note"
type = "TxtO"
publish = {{ topic = "{prefix}/note", payload = "{{value}}", only_changes = false }}
"""

pytestmark = pytest.mark.usefixtures("no_backoff")


def _payloads(peer: Publisher, topic: str) -> list[bytes]:
    return [m.payload for m in peer.messages(topic)]


def test_only_changes_leaves_out_a_write_that_repeats_the_last_message(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """With publish_only_changes, true, true, false, false, true sends true, false, true."""
    cfg = config(
        OUTPUTS.format(prefix=topic_prefix, options=""),
        host=broker.address,
        client_id="kom-only-changes",
        topic_filter=f"{topic_prefix}/state",
        publish_qos=1,
        publish_only_changes=True,
    )
    with Publisher(broker.port) as peer, start(cfg, Collector()) as kom:
        peer.subscribe(f"{topic_prefix}/#")
        assert kom.wait_connected(5)
        results = [kom.write("relay.on", v).result(5) for v in (1, 1, 0, 0, 1)]
        assert [r.unchanged for r in results] == [False, True, False, True, False]
        assert [r.qos for r in results] == [1, None, 1, None, 1]
        # The tag that says only_changes = false overrides the line's default.
        for _ in range(2):
            kom.write("relay.note", "same").result(5)
        wait_until(lambda: len(peer.messages(f"{topic_prefix}/note")) == 2)
        wait_until(lambda: len(peer.messages(f"{topic_prefix}/set")) == 3)
        assert _payloads(peer, f"{topic_prefix}/set") == [b"true", b"false", b"true"]


def test_current_output_values_are_published_again_on_every_connection(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """With on_connect, the last written value (or the default) goes out after each reconnection."""
    cfg_text = OUTPUTS.format(prefix=topic_prefix, options=", on_connect = true")
    with FaultProxy(broker.host, broker.port) as proxy, Publisher(broker.port) as peer:
        peer.subscribe(f"{topic_prefix}/#")
        cfg = config(
            cfg_text,
            host=proxy.address,
            client_id="kom-on-connect",
            topic_filter=f"{topic_prefix}/state",
            publish_qos=1,
        )
        with start(cfg, Collector()) as kom:
            assert kom.wait_connected(5)
            # The first connection: the default of `level`; `on` has no value to announce yet.
            wait_until(lambda: _payloads(peer, f"{topic_prefix}/level") == [b"12.5"])
            assert peer.messages(f"{topic_prefix}/set") == []
            kom.write("relay.on", True).result(5)
            kom.write("relay.level", 40).result(5)
            kom.write("relay.note", "not announced").result(5)
            proxy.reset()  # the connection breaks; kom connects again through the proxy
            wait_until(lambda: kom.lines["line"].generation >= 2)
            assert kom.wait_connected(5)
            wait_until(lambda: len(peer.messages(f"{topic_prefix}/set")) == 2)
            wait_until(lambda: len(peer.messages(f"{topic_prefix}/level")) == 3)
            assert _payloads(peer, f"{topic_prefix}/set") == [b"true", b"true"]
            assert _payloads(peer, f"{topic_prefix}/level") == [b"12.5", b"40.0", b"40.0"]
            assert _payloads(peer, f"{topic_prefix}/note") == [b"not announced"]


def test_a_comma_separated_topic_filter_subscribes_to_each_pattern(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """`topic_filter = "a/+,b/#"` is two subscriptions: messages on both reach their stations."""
    body = f"""
[[station]]
name = "a"
address = "{topic_prefix}/a/x"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
[[station]]
name = "b"
address = "{topic_prefix}/b/deep/y"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
"""
    got = Collector()
    cfg = config(
        body,
        host=broker.address,
        client_id="kom-comma-filters",
        topic_filter=f"{topic_prefix}/a/+, {topic_prefix}/b/#",
    )
    assert [f.text for f in cfg.lines[0].topic_filters] == [
        f"{topic_prefix}/a/+",
        f"{topic_prefix}/b/#",
    ]
    with start(cfg, got) as kom, Publisher(broker.port) as pub:
        assert kom.wait_connected(5)
        wait_until(lambda: not kom.lines["line"]._requests)  # both SUBACKs are in
        pub.publish(f"{topic_prefix}/a/x", "one")
        pub.publish(f"{topic_prefix}/b/deep/y", "two")
        got.wait(lambda us: {u.tag for u in us} >= {"a.data", "b.data"})
        assert got.values("a.data") == ["one"]
        assert got.values("b.data") == ["two"]


def test_a_filter_with_a_comma_stays_whole_in_a_list() -> None:
    """In a list, each string is one filter, commas included."""
    line = loads('[line]\nhost = "h"\ntopic_filter = ["a,b/#"]\n').lines[0]
    assert line.topic_filters == (TopicFilter("a,b/#"),)


def test_check_quotes_a_filter_that_has_a_comma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kom check` lists ["a,b/#", "c"] so that it does not read as three filters."""
    cfg = tmp_path / "f.toml"
    cfg.write_text('[line]\nhost = "h"\ntopic_filter = ["a,b/#", "c"]\n')
    assert main(["check", str(cfg)]) == 0
    assert "  subscribe 'a,b/#', c (QoS 1);" in capsys.readouterr().out


def test_publish_options_are_read_per_line_and_per_tag() -> None:
    """Line keys give the defaults; `publish.only_changes` / `publish.on_connect` override them."""
    cfg = loads(
        '[line]\nhost = "h"\npublish_on_connect = true\n'
        + OUTPUTS.format(prefix="p", options=", only_changes = true")
    )
    line = cfg.lines[0]
    assert (line.publish_only_changes, line.publish_on_connect) == (False, True)
    tags = {t.name: t.publish for t in cfg.stations[0].tags}
    assert tags["on"] == Publish("p/set", "{value}", only_changes=True)
    assert tags["level"] == Publish("p/level", "{value}", on_connect=True)
    assert tags["note"] == Publish("p/note", "{value}", only_changes=False)


def test_output_memory_remembers_written_and_sent_messages_apart() -> None:
    """A failed message may go out again, but stays the tag's current value for on-connect."""
    cfg = loads(
        '[line]\nhost = "h"\npublish_on_connect = true\n' + OUTPUTS.format(prefix="p", options="")
    )
    core = LineCore(cfg.lines[0], cfg.stations)
    memory = OutputMemory()
    assert memory.on_connect(core.stations, cfg.lines[0]) == [
        Message("relay.level", "p/level", b"12.5")
    ]
    first = Message("relay.on", "p/set", b"true")
    assert not memory.unchanged(first)
    memory.write(first)
    assert memory.unchanged(first)
    memory.failed(first)
    assert not memory.unchanged(first)
    assert first in memory.on_connect(core.stations, cfg.lines[0])
    assert repr(memory) == "<OutputMemory written=1 sent=0>"


def test_check_shows_the_lines_publishing_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kom check` names the publishing options a line has on, and says nothing when off."""
    cfg = tmp_path / "p.toml"
    cfg.write_text('[line]\nhost = "h"\npublish_on_connect = true\n')
    assert main(["check", str(cfg)]) == 0
    assert "  outputs publish current values on connect\n" in capsys.readouterr().out
    cfg.write_text('[line]\nhost = "h"\n')
    assert main(["check", str(cfg)]) == 0
    assert "outputs publish" not in capsys.readouterr().out


def test_kom_write_publishes_only_the_value_asked_for(
    broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    """`kom write` of one output sends that value alone, not every output's on-connect default."""
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        f'[line]\nhost = "{broker.host}:{broker.port}"\npublish_on_connect = true\n'
        f"publish_qos = 1\n" + OUTPUTS.format(prefix=topic_prefix, options=", on_connect = true")
    )
    with Publisher(broker.port) as peer:
        peer.subscribe(f"{topic_prefix}/#")
        assert main(["write", str(cfg), "relay.note", "hello"]) == 0
        wait_until(lambda: _payloads(peer, f"{topic_prefix}/note") == [b"hello"])
        assert main(["write", str(cfg), "relay.on", "true"]) == 0
        wait_until(lambda: _payloads(peer, f"{topic_prefix}/set") == [b"true"])
        assert peer.messages(f"{topic_prefix}/level") == []


def test_check_shows_a_tags_address_publish_template_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kom check` shows an output's read-back address beside its publish topic and own options."""
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        '[line]\nhost = "h"\npayload_type = "json"\n'
        + OUTPUTS.format(prefix="p", options=", only_changes = true").replace(
            'type = "Do"\n', 'type = "Do"\naddress = "JA=on"\n'
        )
    )
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Do    JA=on, publish p/set (only_changes = true)\n" in out
    assert "Ao    publish p/level (on_connect = true)\n" in out
