"""The whole NETIO document through the profile: device identity, every output field, the
inputs, GetDescription and a command with a Delay, against the simulator on a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from kom import load, override_broker
from kom.sim import NetioSimulator

from ._broker import Mosquitto
from ._kom import Collector, start, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "netio-4All-25E0"

pytestmark = pytest.mark.usefixtures("no_backoff")


def test_profile_reads_the_device_outputs_and_inputs_and_sends_its_commands(
    broker: Mosquitto,
) -> None:
    """Every input tag of the profile is valid, GetDescription answers, a restart pulses."""
    cfg = override_broker(load(ROOT / "examples" / "netio-4all.toml"), broker.address)
    (station,) = cfg.stations
    inputs = {f"netio.{t.name}" for t in station.tags if t.address is not None}
    got = Collector()
    # Update period 0: the strip speaks only when something changes (measurements are looked
    # at hourly here, so the test decides when that is).
    sim = NetioSimulator(
        broker.host, broker.port, client_id=DEVICE, period=0, measure_interval=3600
    )
    with start(cfg, got) as kom:
        assert kom.wait_connected(5)
        with sim:
            assert sim.wait_connected(5)
            first = got.wait(lambda us: {u.tag for u in us if u.valid} >= inputs)
            latest = {u.tag: u for u in first}
            assert all(latest[tag].valid for tag in inputs), [
                (tag, latest[tag].reason) for tag in inputs if not latest[tag].valid
            ]
            assert latest["netio.model"].value == "NETIO 4All"
            assert latest["netio.device_name"].value == DEVICE
            assert latest["netio.num_outputs"].value == 4
            assert latest["netio.num_inputs"].value == 2
            assert latest["netio.in1_name"].value == "Input 1"
            assert latest["netio.out3_name"].value == "Power output 3"
            assert latest["netio.out2_running_action"].value == 6

            def documents() -> int:
                return len(got.of("netio.device_time"))

            before = documents()
            kom.write("netio.get_description", True).result(5)
            wait_until(lambda: documents() == before + 1, what="the answer to GetDescription")

            kom.write("netio.out2_restart", 400).result(5)
            wait_until(lambda: got.values("netio.out2_running_action")[-1] == 2, what="pulse")
            assert got.values("netio.out2_delay")[-1] == 400
            assert got.values("netio.out2_state")[-1] is False
            wait_until(lambda: got.values("netio.out2_running_action")[-1] == 6, what="pulse end")
            assert got.values("netio.out2_state")[-1] is True
