"""Sparkplug B end to end: kom as host application, the edge node simulator, a real mosquitto."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kom import Kom, loads
from kom._model import Reason
from kom.sim._sparkplug_sim import EdgeNodeSimulator
from kom.sparkplug._payload import decode

from ._broker import Mosquitto, mosquitto_binary
from ._kom import Collector, Publisher, wait_until

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
KOM = [sys.executable, "-m", "kom._cli"]
PROFILE = ROOT / "examples" / "sparkplug.toml"


def profile(broker: Mosquitto, client_id: str) -> str:
    text = PROFILE.read_text(encoding="utf-8")
    text = text.replace('host = "127.0.0.1"', f'host = "{broker.address}"')
    return text.replace("[line]\n", f'[line]\nclient_id = "{client_id}"\n', 1)


@pytest.fixture
def running(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[tuple[Kom, Collector]]:
    """kom with the example Sparkplug profile, connected and subscribed."""
    collector = Collector()
    kom = Kom(loads(profile(broker, f"kom-{request.node.name[:40]}")), collector, iterate=False)
    kom.start()
    assert kom.wait_connected(10)
    broker.wait_for_log("spBv1.0/plant/+/edge1/#", timeout=10)
    try:
        yield kom, collector
    finally:
        kom.close()


def valid(collector: Collector, tag: str) -> list[object]:
    return [u.value for u in collector.of(tag) if u.valid]


def test_birth_data_write_death(broker: Mosquitto, running: tuple[Kom, Collector]) -> None:
    """Births and data fill the tags; a write goes out as DCMD; the NDEATH will invalidates."""
    kom, collector = running
    with Publisher(broker.port) as spy:
        spy.subscribe("spBv1.0/STATE/#")  # retained: kom's online STATE arrives at once
        wait_until(lambda: bool(spy.messages("spBv1.0/STATE/kom")), 5, "STATE")
        state = spy.messages("spBv1.0/STATE/kom")[0]
        assert state.retain
        body = orjson.loads(state.payload)
        assert body["online"] is True
        assert isinstance(body["timestamp"], int)
        spy.subscribe("spBv1.0/plant/DCMD/#")
        with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
            assert sim.wait_connected(5)
            collector.wait(lambda us: len(valid(collector, "pump1.pressure")) >= 4)
            assert valid(collector, "pump1.speed")[0] == 1450  # from the DBIRTH
            assert valid(collector, "tank1.mode") == ["auto"]
            assert valid(collector, "edge1.firmware") == ["kom-sim 1"]
            started = valid(collector, "pump1.started")[0]
            assert started == sim.model.started
            # Report by exception: DDATA carry the changed metrics only, as aliases.
            assert len(valid(collector, "pump1.pressure")) > len(valid(collector, "pump1.speed"))

            result = kom.write("pump1.speed_cmd", 1300).result(5)
            assert (result.topic, result.qos) == ("spBv1.0/plant/DCMD/edge1/pump1", 1)
            dcmds = "spBv1.0/plant/DCMD/edge1/pump1"
            wait_until(lambda: bool(spy.messages(dcmds)), 5, "DCMD seen")  # PUBACK may be first
            (dcmd,) = spy.messages(dcmds)
            (metric,) = decode(dcmd.payload).metrics
            assert (metric.name, metric.alias, metric.value()) == (None, 12, 1300)
            collector.wait(lambda us: 1300 in valid(collector, "pump1.speed"))
            assert sim.model.values["pump1"]["Speed"] == 1300

            sim.stop(abrupt=True)  # the broker publishes the NDEATH will
            collector.wait(
                lambda us: any(u.reason is Reason.WILL for u in collector.of("tank1.level"))
            )
            for tag in ("edge1.uptime", "pump1.pressure", "tank1.level"):
                assert collector.of(tag)[-1].reason is Reason.WILL, tag
    kom.close()
    with Publisher(broker.port) as late:
        late.subscribe("spBv1.0/STATE/kom")
        wait_until(lambda: bool(late.messages()), 5, "retained STATE")
        assert orjson.loads(late.messages()[0].payload) == {
            "online": False,
            "timestamp": body["timestamp"],
        }


def test_rebirth_after_a_sequence_gap(broker: Mosquitto, running: tuple[Kom, Collector]) -> None:
    """A lost message (seq gap) makes kom send NCMD Rebirth; the node births again."""
    _kom, collector = running
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        collector.wait(lambda us: len(valid(collector, "pump1.speed")) >= 1)
        assert sim.model.rebirths == 0
        sim.skip_seq(3)
        wait_until(lambda: sim.model.rebirths >= 1, 5, "rebirth")
        # The births come again: the unchanging Speed is reported a second time.
        collector.wait(lambda us: len(valid(collector, "pump1.speed")) >= 2)
        time.sleep(0.6)
        assert sim.model.rebirths == 1  # one gap, one request


def test_rebirth_is_counted_on_the_line_and_station(
    broker: Mosquitto, running: tuple[Kom, Collector]
) -> None:
    """A seq gap and the rebirth it causes show in Kom.counters() for the line and station."""
    kom, collector = running
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        collector.wait(lambda us: len(valid(collector, "pump1.speed")) >= 1)
        sim.skip_seq(3)
        wait_until(lambda: sim.model.rebirths >= 1, 5, "rebirth")
        counters = kom.counters()
        assert counters["line"].seq_gaps >= 1
        assert counters["line"].rebirths == 1
        assert sum(counters[f"line/{s}"].rebirths for s in ("edge1", "pump1", "tank1")) == 1


def test_own_state_offline_is_answered(broker: Mosquitto, running: tuple[Kom, Collector]) -> None:
    """Someone publishing kom's STATE as offline (retained) is answered at once with online, so
    the retained STATE says online again (Sparkplug 3.0.0 §5.3)."""
    kom, _collector = running
    with Publisher(broker.port) as spy:
        spy.subscribe("spBv1.0/STATE/kom")
        wait_until(lambda: bool(spy.messages("spBv1.0/STATE/kom")), 5, "online STATE")
        stamp = orjson.loads(spy.messages("spBv1.0/STATE/kom")[0].payload)["timestamp"]
        spy.publish("spBv1.0/STATE/kom", orjson.dumps({"online": False, "timestamp": 1}), 1, True)
        wait_until(lambda: len(spy.messages("spBv1.0/STATE/kom")) >= 3, 5, "STATE online again")
        last = orjson.loads(spy.messages("spBv1.0/STATE/kom")[-1].payload)
        assert last == {"online": True, "timestamp": stamp}
    with Publisher(broker.port) as late:  # the retained copy a new subscriber gets
        late.subscribe("spBv1.0/STATE/kom")
        wait_until(lambda: bool(late.messages("spBv1.0/STATE/kom")), 5, "retained STATE")
        assert orjson.loads(late.messages("spBv1.0/STATE/kom")[0].payload)["online"] is True
    line = kom.lines["line"]
    assert line.core.sparkplug is not None
    assert line.core.sparkplug.state_republished == 1


def test_reload_keeps_the_host_connected(broker: Mosquitto, running: tuple[Kom, Collector]) -> None:
    """Reloading the same file on a host application keeps its line, session and nodes."""
    kom, collector = running
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        collector.wait(lambda us: len(valid(collector, "pump1.speed")) >= 1)
        line = kom.lines["line"]
        kom.reload(loads(profile(broker, line.config.client_id)))
        assert kom.lines["line"] is line
        seen = len(valid(collector, "pump1.pressure"))
        collector.wait(lambda us: len(valid(collector, "pump1.pressure")) >= seen + 2)
        assert kom.counters()["line"].reconnects == 0
        assert sim.model.rebirths == 0  # the reloaded core kept the nodes' births


def test_reconnected_host_gets_every_value_again(
    broker: Mosquitto, running: tuple[Kom, Collector]
) -> None:
    """When kom's connection drops and comes back, the edge node is asked for a rebirth, so a
    metric that never changes (Speed) is valid again, not left in comm."""
    kom, collector = running
    # A quiet node (no DATA for 60 s): no seq gap can make kom ask, only its reconnection.
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=60) as sim:
        assert sim.wait_connected(5)
        collector.wait(lambda us: len(valid(collector, "pump1.speed")) >= 1)
        # Another client with kom's client id: the broker closes kom's session.
        with Publisher(broker.port, client_id=kom.lines["line"].config.client_id):
            collector.wait(lambda us: collector.of("pump1.speed")[-1].reason is Reason.COMM)
        wait_until(lambda: sim.model.rebirths >= 1, 10, "rebirth after kom's reconnection")
        collector.wait(lambda us: collector.of("pump1.speed")[-1].valid)
        assert kom.counters()["line"].rebirths >= 1


def test_kom_started_after_the_births_asks_for_them(broker: Mosquitto, tmp_path: Path) -> None:
    """A host that missed the BIRTHs requests a rebirth on the first DATA it sees."""
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        time.sleep(0.3)
        collector = Collector()
        with Kom(loads(profile(broker, "kom-late")), collector, iterate=False) as kom:
            kom.start()
            collector.wait(lambda us: len(valid(collector, "tank1.mode")) >= 1)
        assert sim.model.rebirths >= 1


def test_discover_lists_metrics_and_a_ready_fragment(broker: Mosquitto, tmp_path: Path) -> None:
    """kom discover prints nodes, devices, metrics and a stations.toml that loads."""
    config = tmp_path / "line.toml"
    config.write_text(f'[line]\nhost = "{broker.address}"\n', encoding="utf-8")
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        done = subprocess.run(
            [*KOM, "discover", str(config), "--seconds", "2"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "# group plant\n# node plant/edge1: 4 metrics\n" in out
    assert "# device plant/edge1/pump1: 4 metrics" in out
    assert "#   Pressure  Double alias 10" in out
    assert "#   Node Control/Rebirth  Boolean\n" in out  # no alias (§5.17)
    fragment = out[out.index("[[station]]") :]
    loaded = loads(f'[line]\nhost = "h"\n{fragment}')
    assert [s.sparkplug for s in loaded.stations] == [
        "plant/edge1",
        "plant/edge1/pump1",
        "plant/edge1/tank1",
    ]
    pump = loaded.stations[1]
    assert [(t.name, t.type.value) for t in pump.tags] == [
        ("Pressure", "Ai"),
        ("Running", "Di"),
        ("Speed", "Ci"),
        ("Started", "TiA"),
    ]


def test_sim_command_line(broker: Mosquitto) -> None:
    """kom sim sparkplug births on the broker and ends with its NDEATH."""
    with Publisher(broker.port) as spy:
        spy.subscribe("spBv1.0/#")
        done = subprocess.run(
            [*KOM, "sim", "sparkplug", "--broker", broker.address, "--duration", "1"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode()
        wait_until(lambda: bool(spy.messages("spBv1.0/plant/NDEATH/edge1")), 5, "NDEATH")
        topics = [m.topic for m in spy.messages()]
    assert topics[:3] == [
        "spBv1.0/plant/NBIRTH/edge1",
        "spBv1.0/plant/DBIRTH/edge1/pump1",
        "spBv1.0/plant/DBIRTH/edge1/tank1",
    ]
    assert topics[-1] == "spBv1.0/plant/NDEATH/edge1"


def test_sparkplug_demo(tmp_path: Path) -> None:
    """kom demo --sparkplug runs on its own broker and stores updates."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [*KOM, "demo", "--sparkplug", "--duration", "6", "--plain", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "write completed (QoS 1) on spBv1.0/plant/DCMD/edge1/pump1" in out
    assert "NDEATH will arrives" in out


def test_kom_write_sends_a_dcmd_by_name(broker: Mosquitto, tmp_path: Path) -> None:
    """kom write on a Sparkplug tag sends a DCMD by name and leaves the host's STATE alone."""
    config = tmp_path / "spb.toml"
    config.write_text(profile(broker, "kom-writer"), encoding="utf-8")
    with (
        EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim,
        Publisher(broker.port) as spy,
    ):
        assert sim.wait_connected(5)
        spy.subscribe("spBv1.0/#")
        done = subprocess.run(
            [*KOM, "write", str(config), "tank1.mode_cmd", "manual"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert "acknowledged (PUBACK)" in done.stdout.decode()
        wait_until(lambda: sim.model.values["tank1"]["Mode"] == "manual", 5, "mode written")
        topic = "spBv1.0/plant/DCMD/edge1/tank1"
        wait_until(lambda: bool(spy.messages(topic)), 5, "DCMD seen")
        (dcmd,) = spy.messages(topic)
        (metric,) = decode(dcmd.payload).metrics
        assert (metric.name, metric.alias, metric.value()) == ("Mode", None, "manual")
        assert spy.messages("spBv1.0/STATE/kom") == []


def test_check_shows_the_sparkplug_routing(tmp_path: Path) -> None:
    """kom check lists Sparkplug stations by group, node and device, and the host id."""
    done = subprocess.run(
        [*KOM, "check", "examples/sparkplug.toml"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "    spb    'plant/edge1/pump1' -> pump1" in out
    assert "sparkplug host application 'kom'" in out


def test_dropped_node_comes_back_valid(broker: Mosquitto, running: tuple[Kom, Collector]) -> None:
    """A dropped edge node's will invalidates its tags; its new births (bdSeq + 1) restore them."""
    kom, collector = running
    with EdgeNodeSimulator("127.0.0.1", broker.port, period=0.2) as sim:
        assert sim.wait_connected(5)
        collector.wait(lambda us: len(valid(collector, "tank1.mode")) >= 1)
        sim.drop(pause=0.5)
        collector.wait(lambda us: any(u.reason is Reason.WILL for u in collector.of("tank1.mode")))
        collector.wait(lambda us: len(valid(collector, "tank1.mode")) >= 2)
        assert collector.of("tank1.mode")[-1].valid
        sparkplug = kom.lines["line"].core.sparkplug
        assert sparkplug is not None
        node = sparkplug.host.nodes["plant", "edge1"]
        assert (node.born, node.bd_seq, node.births, node.deaths) == (True, 1, 2, 1)
