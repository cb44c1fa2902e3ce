"""The pure NETIO 4All model: actions, pulses, measurements, the JSON document, MQTT-flex."""

from __future__ import annotations

import itertools
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom.sim._netio_model import (
    IDLE_ACTION,
    OFFLINE,
    ONLINE,
    CommandResult,
    NetioDevice,
    OutputChanged,
    report_key,
)

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
FIXTURE = Path(__file__).parent / "data" / "netio-4all-state.json"


def make(**kwargs: Any) -> NetioDevice:
    """A device with a fixed seed that was powered on at T0."""
    kwargs.setdefault("rng", random.Random(1))
    kwargs.setdefault("started", T0)
    return NetioDevice(**kwargs)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def set_outputs(*entries: object) -> bytes:
    return orjson.dumps({"Operation": "SetOutputs", "Outputs": list(entries)})


def states(device: NetioDevice) -> list[int]:
    return [device.output_state(n) for n in range(1, device.outputs + 1)]


def fixture_document() -> dict[str, Any]:
    """The scenario frozen into tests/data/netio-4all-state.json.

    One hour of a 4-output strip with two inputs ticking every minute; output 3 is switched
    off after twenty minutes. Regenerate the file from this function if the model changes on
    purpose.
    """
    device = NetioDevice("netio-4All-25E0", rng=random.Random(2026), started=T0, inputs=2)
    now = T0
    for minute in range(1, 61):
        now = T0 + timedelta(minutes=minute)
        if minute == 21:
            device.handle_command(set_outputs({"ID": 3, "Action": 0}), now)
        device.tick(now)
    return device.state(now)


# ------------------------------------------------------------------ actions

ACTIONS = [
    # before, action, after, changed
    (0, 0, 0, False),
    (1, 0, 0, True),
    (0, 1, 1, True),
    (1, 1, 1, False),
    (0, 2, 0, True),
    (1, 2, 0, True),
    (0, 3, 1, True),
    (1, 3, 1, True),
    (0, 4, 1, True),
    (1, 4, 0, True),
    (0, 5, 0, False),
    (1, 5, 1, False),
]


@pytest.mark.parametrize(("before", "action", "after", "changed"), ACTIONS)
def test_action_table(before: int, action: int, after: int, changed: bool) -> None:
    """Each action 0-5 moves an output from each state to the documented state."""
    device = make()
    device.set_action(1, before, at(0))
    result = device.handle_command(set_outputs({"ID": 1, "Action": action}), at(1))
    assert result == CommandResult("SetOutputs", publish=changed, changed=(1,) if changed else ())
    assert device.output_state(1) == after
    assert states(device)[1:] == [1, 1, 1]


@pytest.mark.parametrize(
    ("action", "during", "end"),
    [(2, 0, 1), (3, 1, 0)],
)
@pytest.mark.parametrize("before", [0, 1])
def test_short_pulse_ends_after_its_delay(action: int, during: int, end: int, before: int) -> None:
    """A short off/on holds for Delay ms, then ends in the opposite state, reported by tick."""
    device = make()
    device.set_action(2, before, at(0))
    device.handle_command(set_outputs({"ID": 2, "Action": action, "Delay": 2000}), at(10))
    output = device.state(at(10))["Outputs"][1]
    assert (output["State"], output["Action"], output["Delay"]) == (during, action, 2000)
    assert device.tick(at(11.999)) == []
    assert device.output_state(2) == during
    assert device.tick(at(12)) == [OutputChanged(2, end, "delay")]
    output = device.state(at(12))["Outputs"][1]
    assert (output["State"], output["Action"], output["Delay"]) == (end, IDLE_ACTION, 5000)
    assert device.tick(at(60)) == []


@pytest.mark.parametrize(("default", "ends"), [(5000, 5), (250, 0.25), (0, 0)])
def test_short_pulse_without_delay_uses_default(default: int, ends: float) -> None:
    """A short pulse without Delay lasts the device's default delay."""
    device = make(default_delay_ms=default)
    device.set_action(1, 3, at(0))
    assert device.state(at(0))["Outputs"][0]["Delay"] == default
    if ends:
        assert device.tick(at(ends - 0.001)) == []
    assert device.tick(at(ends)) == [OutputChanged(1, 0, "delay")]


def test_delay_is_ignored_for_other_actions() -> None:
    """Delay on an on/off/toggle command starts no pulse."""
    device = make()
    device.handle_command(set_outputs({"ID": 1, "Action": 4, "Delay": 100}), at(0))
    assert device.output_state(1) == 0
    assert device.tick(at(3600)) == []
    assert device.state(at(3600))["Outputs"][0]["Action"] == IDLE_ACTION


@pytest.mark.parametrize(("action", "state"), [(0, 0), (1, 1), (4, 1)])
def test_new_action_cancels_a_running_pulse(action: int, state: int) -> None:
    """Off, on or toggle during a short pulse cancels its revert."""
    device = make()
    device.set_action(1, 2, at(0), delay_ms=1000)
    device.set_action(1, action, at(0.5))
    assert device.output_state(1) == state
    assert device.tick(at(5)) == []
    assert device.output_state(1) == state


def test_no_change_keeps_a_running_pulse() -> None:
    """Action 5 during a short pulse leaves the pulse to end as planned."""
    device = make()
    device.set_action(1, 2, at(0), delay_ms=1000)
    assert device.set_action(1, 5, at(0.5)) is False
    assert device.tick(at(1)) == [OutputChanged(1, 1, "delay")]


def test_repeated_pulse_restarts_its_delay() -> None:
    """A second short pulse replaces the first, with its own end time."""
    device = make()
    device.set_action(1, 3, at(0), delay_ms=1000)
    assert device.set_action(1, 3, at(0.5), delay_ms=1000) is True
    assert device.tick(at(1.2)) == []
    assert device.tick(at(1.5)) == [OutputChanged(1, 0, "delay")]


def test_pulses_end_in_time_order() -> None:
    """Several pulses ending in one tick are reported in the order they ended."""
    device = make()
    device.set_action(4, 2, at(0), delay_ms=300)
    device.set_action(1, 3, at(0), delay_ms=200)
    device.set_action(3, 2, at(0), delay_ms=300)
    assert device.tick(at(10)) == [
        OutputChanged(1, 0, "delay"),
        OutputChanged(3, 1, "delay"),
        OutputChanged(4, 1, "delay"),
    ]


def test_several_outputs_in_one_message() -> None:
    """A SetOutputs applies its entries in order, twice to the same output if asked."""
    device = make()
    result = device.handle_command(
        set_outputs(
            {"ID": 1, "Action": 0},
            {"ID": 3, "Action": 4},
            {"ID": 2, "Action": 4},
            {"ID": 2, "Action": 4},
        ),
        at(0),
    )
    assert result == CommandResult("SetOutputs", publish=True, changed=(1, 3, 2))
    assert states(device) == [0, 1, 0, 1]


def test_state_field_is_accepted_without_action() -> None:
    """An entry with State 0/1 and no Action switches, as in NETIO's JSON protocol."""
    device = make()
    assert device.handle_command(set_outputs({"ID": 2, "State": 0}), at(0)).changed == (2,)
    assert device.output_state(2) == 0
    device.handle_command(set_outputs({"ID": 2, "State": 0, "Action": 1}), at(0))
    assert device.output_state(2) == 1


def test_get_description_asks_for_a_state_message() -> None:
    """GetDescription changes nothing and asks for the state to be published."""
    device = make()
    before = device.to_json(at(1))
    result = device.handle_command(b'{"Operation":"GetDescription"}', at(1))
    assert result == CommandResult("GetDescription", publish=True)
    assert result.ok
    assert device.to_json(at(1)) == before


def test_empty_outputs_list_changes_nothing() -> None:
    """A SetOutputs with no entries is accepted and publishes nothing."""
    result = make().handle_command(set_outputs(), at(0))
    assert result == CommandResult("SetOutputs", publish=False)


BAD_COMMANDS = [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 5000, "not JSON"),
    (b"NaN", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'"SetOutputs"', "not a JSON object"),
    (b"{}", "no Operation"),
    (b'{"Outputs":[{"ID":1,"Action":1}]}', "no Operation"),
    (b'{"Operation":null}', "unknown Operation None"),
    (b'{"Operation":"setoutputs"}', "unknown Operation 'setoutputs'"),
    (b'{"Operation":"SetOutputs"}', "Outputs must be a list"),
    (b'{"Operation":"SetOutputs","Outputs":{"ID":1}}', "Outputs must be a list"),
    (set_outputs(5), "Outputs[1]: expected an object"),
    (set_outputs({"Action": 1}), "Outputs[1]: unknown output ID None"),
    (set_outputs({"ID": 0, "Action": 1}), "unknown output ID 0"),
    (set_outputs({"ID": 5, "Action": 1}), "unknown output ID 5"),
    (set_outputs({"ID": "1", "Action": 1}), "unknown output ID '1'"),
    (set_outputs({"ID": True, "Action": 1}), "unknown output ID True"),
    (set_outputs({"ID": 1.0, "Action": 1}), "unknown output ID 1.0"),
    (set_outputs({"ID": 1}), "no Action"),
    (set_outputs({"ID": 1, "State": 2}), "no Action"),
    (set_outputs({"ID": 1, "Action": 6}), "bad action 6"),
    (set_outputs({"ID": 1, "Action": -1}), "bad action -1"),
    (set_outputs({"ID": 1, "Action": "4"}), "bad action '4'"),
    (set_outputs({"ID": 1, "Action": False}), "bad action False"),
    (set_outputs({"ID": 1, "Action": None}), "bad action None"),
    (set_outputs({"ID": 1, "Action": 2, "Delay": -1}), "bad Delay -1"),
    (set_outputs({"ID": 1, "Action": 2, "Delay": "2000"}), "bad Delay '2000'"),
    (set_outputs({"ID": 1, "Action": 2, "Delay": 1.5}), "bad Delay 1.5"),
    (set_outputs({"ID": 1, "Action": 2, "Delay": 10**12}), "bad Delay"),
    (
        set_outputs({"ID": 1, "Action": 0}, {"ID": 9, "Action": 0}),
        "Outputs[2]: unknown output ID 9",
    ),
]


@pytest.mark.parametrize(("payload", "error"), BAD_COMMANDS)
def test_bad_command_is_refused_without_change(payload: bytes, error: str) -> None:
    """A bad command returns an error naming the problem and leaves every output alone."""
    device = make()
    before = device.to_json(at(1))
    result = device.handle_command(payload, at(1))
    assert not result.ok
    assert result.publish is False
    assert result.changed == ()
    assert result.error is not None
    assert error in result.error
    assert device.to_json(at(1)) == before
    assert device.tick(at(100)) == []


def test_set_action_raises_on_bad_arguments() -> None:
    """The primitive raises ValueError for a bad output, action or delay, changing nothing."""
    device = make()
    for output_id, action, delay in [(9, 0, None), (1, 7, None), (1, 2, -5)]:
        with pytest.raises(ValueError, match=r"unknown output|bad action|bad Delay"):
            device.set_action(output_id, action, at(0), delay)
    assert states(device) == [1, 1, 1, 1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "ID": st.integers(-1, 6) | json_values,
        "Action": st.integers(-1, 7) | json_values,
        "Delay": st.integers(-10, 10_000) | json_values,
        "State": st.integers(-1, 2) | json_values,
    },
)
commands = st.fixed_dictionaries(
    {"Operation": st.sampled_from(["SetOutputs", "GetDescription", "Other"]) | json_values},
    optional={"Outputs": st.lists(entries | json_values, max_size=5) | json_values},
)


@settings(max_examples=300)
@given(payload=st.binary(max_size=200) | commands.map(orjson.dumps), later=st.floats(0, 10))
def test_any_payload_never_raises(payload: bytes, later: float) -> None:
    """Whatever arrives on devicebound, handle_command returns and outputs stay 0 or 1."""
    device = make()
    result = device.handle_command(payload, at(0))
    assert isinstance(result, CommandResult)
    assert result.error is None or (not result.publish and result.changed == ())
    device.tick(at(later))
    document = device.state(at(later))
    assert all(output["State"] in (0, 1) for output in document["Outputs"])
    assert all(output["Action"] in (2, 3, IDLE_ACTION) for output in document["Outputs"])


# ------------------------------------------------------------- measurements


def only_output_one_on(device: NetioDevice) -> None:
    for n in (2, 3, 4):
        device.set_action(n, 0, T0)


def test_energy_is_load_times_time() -> None:
    """Between ticks an output's energy grows by its load times the elapsed hours."""
    device = make()
    only_output_one_on(device)
    nominal = device.nominal_load(1)
    document = device.state(at(3600))
    assert document["Outputs"][0]["Energy"] == int(nominal)
    assert document["GlobalMeasure"]["TotalEnergy"] == int(nominal)
    assert [o["Energy"] for o in document["Outputs"][1:]] == [0, 0, 0]


def test_energy_accumulates_over_many_ticks() -> None:
    """Ticking every minute for two hours adds up to the nominal load within its jitter."""
    device = make()
    only_output_one_on(device)
    for minute in range(1, 121):
        device.tick(at(60 * minute))
    energy = device.state(at(7200))["Outputs"][0]["Energy"]
    assert 2 * device.nominal_load(1) * 0.98 - 1 <= energy <= 2 * device.nominal_load(1) * 1.02


def test_energy_stops_while_off_and_keeps_its_count() -> None:
    """An output switched off keeps the energy drawn up to the switch and adds no more."""
    device = make()
    only_output_one_on(device)
    device.set_action(1, 0, at(1800))
    device.tick(at(3600))
    device.tick(at(7200))
    assert device.state(at(7200))["Outputs"][0]["Energy"] == int(device.nominal_load(1) / 2)


def test_short_pulse_energy_counts_until_its_end() -> None:
    """A short ON draws energy only for its delay, even when the tick comes much later."""
    device = make()
    only_output_one_on(device)
    device.set_action(1, 0, T0)
    device.set_action(1, 3, T0, delay_ms=3_600_000)
    device.tick(at(3 * 3600))
    assert device.state(at(3 * 3600))["Outputs"][0]["Energy"] == int(device.nominal_load(1))


def test_reading_state_does_not_change_energy() -> None:
    """state() is a read: calling it often gives the same counts as calling it once."""
    device = make()
    for s in range(0, 3600, 7):
        device.state(at(s))
    other = make()
    assert device.to_json(at(3600)) == other.to_json(at(3600))


def test_clock_going_back_adds_no_energy() -> None:
    """A tick with an earlier time neither removes nor adds energy."""
    device = make()
    device.tick(at(3600))
    energy = device.state(at(3600))["GlobalMeasure"]["TotalEnergy"]
    device.tick(at(10))
    assert device.state(at(10))["GlobalMeasure"]["TotalEnergy"] == energy
    device.tick(at(3600))
    assert device.state(at(3600))["GlobalMeasure"]["TotalEnergy"] == energy


@pytest.mark.parametrize("on", [(1, 1, 1, 1), (0, 0, 0, 0), (1, 0, 1, 0), (0, 0, 0, 1)])
def test_current_and_load_follow_outputs(on: tuple[int, ...]) -> None:
    """Load, current and power factor are those of the appliance when on, zero when off."""
    device = make()
    for n, state in enumerate(on, 1):
        device.set_action(n, state, T0)
    device.tick(at(1))
    document = device.state(at(1))
    voltage = document["GlobalMeasure"]["Voltage"]
    for n, output in enumerate(document["Outputs"], 1):
        assert output["State"] == on[n - 1]
        if on[n - 1]:
            assert abs(output["Load"] - device.nominal_load(n)) <= device.nominal_load(n) * 0.021
            assert 0.95 <= output["PowerFactor"] <= 1.0
            amps = output["Load"] / (voltage * output["PowerFactor"])
            assert abs(output["Current"] / 1000 - amps) < 0.01
        else:
            assert (output["Load"], output["Current"], output["PowerFactor"]) == (0, 0, 0.0)
    measure = document["GlobalMeasure"]
    assert measure["TotalLoad"] == sum(o["Load"] for o in document["Outputs"])
    assert measure["TotalCurrent"] == sum(o["Current"] for o in document["Outputs"])
    if any(on):
        assert 0.95 <= measure["OverallPowerFactor"] <= 1.0
    else:
        assert measure["OverallPowerFactor"] == 0.0


def test_voltage_and_frequency_stay_in_band() -> None:
    """Over many ticks voltage stays within 230 ± 2 V and frequency within 50 ± 0.05 Hz."""
    device = make()
    voltages, frequencies = set(), set()
    for s in range(1, 5001):
        device.tick(at(s))
        measure = device.state(at(s))["GlobalMeasure"]
        voltages.add(measure["Voltage"])
        frequencies.add(measure["Frequency"])
    assert 228.0 <= min(voltages) <= max(voltages) <= 232.0
    assert 49.95 <= min(frequencies) <= max(frequencies) <= 50.05
    assert len(voltages) > 10
    assert len(frequencies) > 5


def test_same_seed_same_device() -> None:
    """Two devices with one seed and one call sequence publish identical documents."""
    devices = [make(rng=random.Random(7)), make(rng=random.Random(7))]
    for device in devices:
        device.set_action(2, 4, at(5))
        for s in range(10, 100, 10):
            device.tick(at(s))
    assert devices[0].to_json(at(100)) == devices[1].to_json(at(100))
    assert NetioDevice().to_json(T0) == NetioDevice().to_json(T0)


# --------------------------------------------------------------- the document

AGENT = {
    "Model",
    "DeviceName",
    "MAC",
    "SerialNumber",
    "JSONVer",
    "Time",
    "Uptime",
    "Version",
    "OemID",
    "VendorID",
    "NumOutputs",
    "NumInputs",
}
GLOBAL_MEASURE = {
    "Voltage",
    "Frequency",
    "TotalCurrent",
    "OverallPowerFactor",
    "Phase",
    "TotalLoad",
    "TotalEnergy",
    "EnergyStart",
}
OUTPUT = {
    "ID",
    "Name",
    "State",
    "Action",
    "Delay",
    "Current",
    "PowerFactor",
    "Phase",
    "Load",
    "Energy",
    "ReverseEnergy",
}


def test_document_has_netio_field_names() -> None:
    """The state document has exactly NETIO's sections and field names, with their types."""
    document = make().state(at(90))
    assert list(document) == ["Agent", "GlobalMeasure", "Outputs"]
    assert set(document["Agent"]) == AGENT
    assert set(document["GlobalMeasure"]) == GLOBAL_MEASURE
    assert [set(o) for o in document["Outputs"]] == [OUTPUT] * 4
    agent = document["Agent"]
    assert (agent["Model"], agent["JSONVer"], agent["NumOutputs"], agent["NumInputs"]) == (
        "NETIO 4All",
        "2.1",
        4,
        0,
    )
    assert agent["Time"] == "2026-11-22T09:01:30+00:00"
    assert agent["Uptime"] == 90
    assert document["GlobalMeasure"]["EnergyStart"] == "2026-11-22T09:00:00+00:00"
    assert [o["ID"] for o in document["Outputs"]] == [1, 2, 3, 4]
    assert [o["Name"] for o in document["Outputs"]] == [f"Power output {n}" for n in range(1, 5)]
    for output in document["Outputs"]:
        for key in ("ID", "State", "Action", "Delay", "Current", "Load", "Energy"):
            assert type(output[key]) is int
        assert type(output["PowerFactor"]) is float


def test_time_is_written_in_utc_to_the_second() -> None:
    """Time is ISO 8601 with an explicit +00:00 offset whatever the offset of now."""
    device = make()
    cet = timezone(timedelta(hours=1))
    now = datetime(2026, 11, 22, 11, 30, 15, 987654, tzinfo=cet)
    assert device.state(now)["Agent"]["Time"] == "2026-11-22T10:30:15+00:00"


def test_naive_time_is_refused() -> None:
    """A naive now is a programming error and raises ValueError."""
    with pytest.raises(ValueError, match="timezone-aware"):
        make().tick(datetime(2026, 11, 22, 9, 0))  # naive on purpose


def test_started_defaults_to_first_time_seen() -> None:
    """Without started, the first now fixes EnergyStart and the origin of Uptime."""
    device = NetioDevice(rng=random.Random(1))
    device.tick(at(100))
    document = device.state(at(160))
    assert document["GlobalMeasure"]["EnergyStart"] == "2026-11-22T09:01:40+00:00"
    assert document["Agent"]["Uptime"] == 60


def test_json_is_compact_and_realistic_in_size() -> None:
    """to_json is the compact orjson form of state and about a kilobyte for four outputs."""
    device = make()
    payload = device.to_json(at(60))
    assert orjson.loads(payload) == device.state(at(60))
    assert payload == orjson.dumps(device.state(at(60)))
    assert b'", "' not in payload
    assert b'": ' not in payload
    assert 600 <= len(payload) <= 1200


def test_mac_ends_with_client_id_suffix() -> None:
    """The MAC carries NETIO's prefix and the two bytes the client id ends with."""
    agent = make(client_id="netio-4All-25e0").state(T0)["Agent"]
    assert re.fullmatch(r"24:A4:2C:[0-9A-F]{2}:25:E0", agent["MAC"])
    assert agent["SerialNumber"] == agent["MAC"].replace(":", "")
    other = make(client_id="strip").state(T0)["Agent"]["MAC"]
    assert re.fullmatch(r"24:A4:2C(:[0-9A-F]{2}){3}", other)


@pytest.mark.parametrize("outputs", [1, 2, 8])
def test_number_of_outputs(outputs: int) -> None:
    """The document lists as many outputs as the device has."""
    document = make(outputs=outputs).state(T0)
    assert document["Agent"]["NumOutputs"] == outputs
    assert len(document["Outputs"]) == outputs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outputs": 0},
        {"outputs": 9},
        {"default_delay_ms": -1},
        {"client_id": ""},
        {"client_id": "a/b"},
        {"client_id": "a+"},
        {"inputs": 9},
        {"inputs": -1},
        {"started": datetime(2026, 1, 1)},  # naive on purpose
    ],
)
def test_bad_construction_is_refused(kwargs: dict[str, Any]) -> None:
    """Impossible devices raise ValueError when built."""
    with pytest.raises(ValueError, match=r"must be"):
        make(**kwargs)


def test_repr_is_short() -> None:
    """The repr names the device and shows its output states."""
    device = make()
    device.set_action(2, 0, T0)
    assert repr(device) == "NetioDevice(client_id='netio-4All-25E0', outputs=4, states=1011)"


def test_fixture_file_is_what_the_model_produces() -> None:
    """tests/data/netio-4all-state.json is the model's document for the fixture scenario."""
    document = orjson.loads(FIXTURE.read_bytes())
    assert document == fixture_document(), "regenerate the file from fixture_document()"
    assert [o["State"] for o in document["Outputs"]] == [1, 1, 0, 1]


# ----------------------------------------------------------- topics and flex


def test_topics() -> None:
    """Generic-mode, status and MQTT-flex topics are built from the client id."""
    device = make(client_id="netio-4All-25E0")
    assert device.events_topic == "devices/netio-4All-25E0/messages/events/"
    assert device.devicebound_topic == "devices/netio-4All-25E0/messages/devicebound/"
    assert device.status_topic == "devices/netio-4All-25E0/status"
    assert device.flex_topic(3, "load") == "netio/netio-4All-25E0/output/3/load"
    assert device.flex_action_filter == "netio/netio-4All-25E0/output/+/action"
    assert (ONLINE, OFFLINE) == (b"online", b"offline")


def test_flex_messages_give_state_and_load_per_output() -> None:
    """flex_messages has a state and a load message for every output, as integral text."""
    device = make()
    device.set_action(2, 0, T0)
    device.tick(at(1))
    messages = device.flex_messages(at(1))
    document = device.state(at(1))
    expected = []
    for output in document["Outputs"]:
        n = output["ID"]
        expected.append((f"netio/netio-4All-25E0/output/{n}/state", str(output["State"]).encode()))
        expected.append((f"netio/netio-4All-25E0/output/{n}/load", str(output["Load"]).encode()))
    assert messages == expected
    assert messages[3] == ("netio/netio-4All-25E0/output/2/load", b"0")


FLEX = "netio/netio-4All-25E0/output/"


@pytest.mark.parametrize(
    ("topic", "payload", "publish", "after"),
    [
        (FLEX + "1/action", b"0", True, [0, 1, 1, 1]),
        (FLEX + "2/action", b"4", True, [1, 0, 1, 1]),
        (FLEX + "2/action", b" 4\n", True, [1, 0, 1, 1]),
        (FLEX + "3/action", b"1", False, [1, 1, 1, 1]),
        (FLEX + "4/action", b"5", False, [1, 1, 1, 1]),
        (FLEX + "4/action", b"2", True, [1, 1, 1, 0]),
    ],
)
def test_flex_action(topic: str, payload: bytes, publish: bool, after: list[int]) -> None:
    """An MQTT-flex action message applies the action number to the output in the topic."""
    device = make()
    result = device.handle_flex_action(topic, payload, T0)
    assert result.ok
    assert result.publish is publish
    assert states(device) == after


def test_flex_short_pulse_uses_default_delay() -> None:
    """A short pulse from MQTT-flex ends after the default delay."""
    device = make(default_delay_ms=1000)
    device.handle_flex_action(FLEX + "1/action", b"2", T0)
    assert device.tick(at(1)) == [OutputChanged(1, 1, "delay")]


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        ("netio/other/output/1/action", b"1", "not an action topic"),
        (FLEX + "1/state", b"1", "not an action topic"),
        (FLEX + "action", b"1", "unknown output ''"),
        (FLEX + "x/action", b"1", "unknown output 'x'"),
        (FLEX + "1/2/action", b"1", "unknown output '1/2'"),
        (FLEX + "٣/action", b"1", "unknown output"),
        (FLEX + "9/action", b"1", "unknown output ID 9"),
        (FLEX + "1/action", b"6", "bad action 6"),
        (FLEX + "1/action", b"on", "bad action payload"),
        (FLEX + "1/action", b"", "bad action payload"),
        (FLEX + "1/action", b"\xff", "bad action payload"),
        (FLEX + "1/action", b"11", "bad action payload"),
    ],
)
def test_flex_bad_action_is_refused(topic: str, payload: bytes, error: str) -> None:
    """A bad MQTT-flex command returns an error and changes nothing."""
    device = make()
    result = device.handle_flex_action(topic, payload, T0)
    assert result.error is not None
    assert error in result.error
    assert not result.publish
    assert states(device) == [1, 1, 1, 1]


@given(topic=st.text(max_size=60), payload=st.binary(max_size=20))
def test_flex_never_raises(topic: str, payload: bytes) -> None:
    """Any topic and payload given to handle_flex_action returns a result."""
    device = make()
    assert isinstance(device.handle_flex_action(topic, payload, T0), CommandResult)
    assert set(states(device)) <= {0, 1}


def test_error_messages_are_short() -> None:
    """An error quotes at most the start of a huge offending value."""
    device = make()
    result = device.handle_command(orjson.dumps({"Operation": "x" * 10_000}), T0)
    assert result.error is not None
    assert len(result.error) < 120
    result = device.handle_command(set_outputs({"ID": list(range(1000)), "Action": 1}), T0)
    assert result.error is not None
    assert len(result.error) < 120


def test_naive_time_is_refused_by_commands() -> None:
    """handle_command and handle_flex_action refuse a naive now like every other method."""
    naive = datetime(2026, 11, 22, 9, 0)  # naive on purpose
    device = make()
    with pytest.raises(ValueError, match="timezone-aware"):
        device.handle_command(b'{"Operation":"GetDescription"}', naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        device.handle_flex_action(FLEX + "1/action", b"1", naive)


# ------------------------------------------------------------------ inputs


def test_inputs_block_follows_the_time_since_start() -> None:
    """Each input's contact opens and closes in turn and its S0 counter only grows."""
    device = make(inputs=2)
    first = device.state(T0)
    assert first["Agent"]["NumInputs"] == 2
    assert [set(i) for i in first["Inputs"]] == [{"ID", "Name", "State", "S0Counter"}] * 2
    assert [i["S0Counter"] for i in first["Inputs"]] == [0, 0]
    counters = [
        [i["S0Counter"] for i in device.state(at(seconds))["Inputs"]]
        for seconds in range(0, 7200, 300)
    ]
    for before, after in itertools.pairwise(counters):
        assert all(a <= b for a, b in zip(before, after, strict=True))
    assert counters[-1][0] > 0
    states = {device.state(at(seconds))["Inputs"][0]["State"] for seconds in range(0, 3600, 30)}
    assert states == {0, 1}


def test_inputs_leave_the_measurements_as_they_were() -> None:
    """A device with inputs measures exactly as the same device without them."""
    plain, with_inputs = make(rng=random.Random(5)), make(rng=random.Random(5), inputs=3)
    for device in (plain, with_inputs):
        for s in range(10, 200, 10):
            device.tick(at(s))
    document = with_inputs.state(at(200))
    assert len(document.pop("Inputs")) == 3
    document["Agent"]["NumInputs"] = 0
    assert document == plain.state(at(200))
    assert "Inputs" not in plain.state(at(200))


def test_report_key_ignores_the_clock_only() -> None:
    """Two documents that differ only in Time and Uptime have one key; any other field counts."""
    device = make()
    device.tick(at(10))
    a, b = device.state(at(10)), device.state(at(11))
    assert a["Agent"]["Time"] != b["Agent"]["Time"]
    assert report_key(a) == report_key(b)
    device.set_action(1, 0, at(11))
    assert report_key(device.state(at(11))) != report_key(a)
