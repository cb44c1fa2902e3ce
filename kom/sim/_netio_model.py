"""A pure model of a NETIO 4All power strip, as it behaves over MQTT (SPEC section 10).

No sockets, threads or clock reads: every method that depends on time takes ``now``, an
aware datetime, and all randomness comes from the ``random.Random`` given to the device, so
a seed and a sequence of calls reproduce a run exactly. The simulator process
(``kom sim netio``) owns the network and the clock and asks this model what to publish.

Two NETIO MQTT modes are modelled:

* **Generic**: the whole state as one JSON document on ``devices/<id>/messages/events/``;
  JSON commands (``SetOutputs``, ``GetDescription``) on ``devices/<id>/messages/devicebound/``.
* **MQTT-flex**: one small text message per output and quantity on
  ``netio/<id>/output/<n>/state`` and ``.../load``; commands on ``.../action``.

What the real device does and the model copies: actions 0-5 with ``Delay`` for the short
pulses, QoS 1 without retain, integral Wh counters, currents in mA, loads in W. What the
model adds: a ``devices/<id>/status`` topic carrying ``online``, and ``offline`` as the
last will, so that kom's station will (SPEC section 3) can be exercised.
"""

from __future__ import annotations

import enum
import math
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeGuard

import attrs
import orjson

__all__ = [
    "IDLE_ACTION",
    "MAX_DELAY_MS",
    "MAX_INPUTS",
    "MAX_OUTPUTS",
    "OFFLINE",
    "ONLINE",
    "Action",
    "CommandResult",
    "Event",
    "NetioDevice",
    "OutputChanged",
    "report_key",
]

#: What the ``Action`` field of an output reads when no timed action is running. The NETIO
#: JSON documents show 6 there at rest; it is not a command (commands are 0..5).
IDLE_ACTION = 6
#: Longest accepted ``Delay`` of a short pulse: one day, in milliseconds.
MAX_DELAY_MS = 86_400_000
#: NETIO devices have 1 to 8 outputs ("there can be 1 or 8 outputs").
MAX_OUTPUTS = 8
#: Digital inputs with S0 pulse counters: none on a 4All, two on a PowerDIN 4PZ (seeds/001).
MAX_INPUTS = 8
#: Payloads of the status topic: published on connect, and set as the last will.
ONLINE = b"online"
OFFLINE = b"offline"

_NOMINAL_VOLTAGE = 230.0
_VOLTAGE_SPAN = 2.0  # the voltage wanders within 230 V ± 2 V
_VOLTAGE_STEP = 0.4  # largest change of the voltage per tick
_NOMINAL_FREQUENCY = 50.0
_FREQUENCY_SPAN = 0.05
_FREQUENCY_STEP = 0.01
_LOAD_RANGE = (20.0, 400.0)  # nominal load of an appliance, W
_POWER_FACTOR_RANGE = (0.95, 1.0)
_LOAD_JITTER = 0.02  # a running appliance draws its nominal load ± 2 %
_S0_RATE_RANGE = (100.0, 2000.0)  # pulses an hour from the S0 meter on an input
_CONTACT_PERIOD_RANGE = (60.0, 900.0)  # seconds an input's contact stays closed, then open
_MAC_PREFIX = (0x24, 0xA4, 0x2C)  # the OUI printed on NETIO devices
_HEX_SUFFIX = re.compile(r"([0-9A-Fa-f]{4})$")


class Action(enum.IntEnum):
    """The output actions, numbered as in every NETIO M2M protocol."""

    OFF = 0
    ON = 1
    SHORT_OFF = 2
    SHORT_ON = 3
    TOGGLE = 4
    NO_CHANGE = 5


@attrs.frozen
class OutputChanged:
    """An output switched; ``cause`` is ``"command"`` or ``"delay"`` (a short pulse ended)."""

    output_id: int
    state: int
    cause: str


#: What :meth:`NetioDevice.tick` reports. Only output changes exist so far.
Event: TypeAlias = OutputChanged


@attrs.frozen
class CommandResult:
    """The outcome of one command message.

    ``publish`` says whether the device now sends its state (a ``SetOutputs`` that changed
    something, or any ``GetDescription``). ``changed`` lists the outputs whose published
    fields changed. ``error`` is set when the command was refused; then nothing changed.
    """

    operation: str | None
    publish: bool
    changed: tuple[int, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.define
class _Output:
    """One output: its switch state, a pending short pulse, and the appliance plugged in."""

    id: int
    nominal_load: float
    nominal_power_factor: float
    state: int = 1
    action: int = IDLE_ACTION
    delay_ms: int = 0
    pulse_ends: datetime | None = None
    jitter: float = 1.0
    energy_wh: float = 0.0

    @property
    def name(self) -> str:
        return f"Power output {self.id}"

    def load(self) -> float:
        return self.nominal_load * self.jitter if self.state else 0.0

    def power_factor(self) -> float:
        return self.nominal_power_factor if self.state else 0.0


@attrs.frozen
class _Input:
    """One digital input: a contact that opens and closes, and the S0 meter that pulses it.

    Both follow from the time since the device started (no random steps per tick), so adding
    inputs leaves the random walk of the measurements as it was.
    """

    id: int
    pulses_per_hour: float
    contact_seconds: float

    @property
    def name(self) -> str:
        return f"Input {self.id}"

    def state(self, elapsed: float) -> int:
        return 1 if int(elapsed // self.contact_seconds) % 2 == 0 else 0

    def counter(self, elapsed: float) -> int:
        return math.floor(self.pulses_per_hour * elapsed / 3600.0)


def report_key(document: dict[str, Any]) -> bytes:
    """What a state document says beyond the clock: equal keys, nothing new to report.

    With an update period of 0, NETIO sends a message only when something changed (seeds/000:
    "only change messages ... whenever an output state changes", and on measured values for
    a 4All); `Agent.Time` and `Agent.Uptime` move every second and are not news by themselves.
    """
    agent = {k: v for k, v in document.get("Agent", {}).items() if k not in ("Time", "Uptime")}
    return orjson.dumps({**document, "Agent": agent}, option=orjson.OPT_SORT_KEYS)


def _aware_utc(now: datetime, what: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, found naive {now.isoformat()}")
    return now.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """ISO 8601 to the second with the offset written out, as NETIO writes ``Time``."""
    return moment.replace(microsecond=0).isoformat()


def _show(value: object) -> str:
    """A value for an error message, cut short: a command may carry anything, of any size."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    # JSON true/false decode to bool, a subclass of int; NETIO wants numbers.
    return isinstance(value, int) and not isinstance(value, bool)


@attrs.define(repr=False)
class NetioDevice:
    """A simulated NETIO 4All: outputs, measurements and the two MQTT command forms.

    ``started`` is when the device was powered on: it fixes ``EnergyStart`` and the origin of
    ``Uptime``. Left out, the first ``now`` the device is given takes its place, so a caller
    without a clock of its own still gets a consistent device. ``rng`` defaults to one seeded
    with the client id, so a device is reproducible by its name alone.
    """

    client_id: str = "netio-4All-25E0"
    outputs: int = attrs.field(default=4, kw_only=True)
    default_delay_ms: int = attrs.field(default=5000, kw_only=True)
    rng: random.Random = attrs.field(
        default=attrs.Factory(lambda self: random.Random(self.client_id), takes_self=True),
        kw_only=True,
    )
    started: datetime | None = attrs.field(default=None, kw_only=True)
    version: str = attrs.field(default="3.4.2", kw_only=True)
    oem_id: int = attrs.field(default=300, kw_only=True)
    inputs: int = attrs.field(default=0, kw_only=True)
    _outs: list[_Output] = attrs.field(init=False, factory=list)
    _ins: list[_Input] = attrs.field(init=False, factory=list)
    _voltage: float = attrs.field(init=False, default=_NOMINAL_VOLTAGE)
    _frequency: float = attrs.field(init=False, default=_NOMINAL_FREQUENCY)
    _mac: str = attrs.field(init=False, default="")
    _measured_until: datetime | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not self.client_id or any(c in self.client_id for c in "/+#\0"):
            raise ValueError(
                f"client_id must be a non-empty topic level without '/', '+', '#', "
                f"found {self.client_id!r}"
            )
        if not _is_int(self.outputs) or not 1 <= self.outputs <= MAX_OUTPUTS:
            raise ValueError(f"outputs must be 1..{MAX_OUTPUTS}, found {self.outputs!r}")
        if not _is_int(self.default_delay_ms) or not 0 <= self.default_delay_ms <= MAX_DELAY_MS:
            raise ValueError(
                f"default_delay_ms must be 0..{MAX_DELAY_MS}, found {self.default_delay_ms!r}"
            )
        if self.started is not None:
            self.started = _aware_utc(self.started, "started")
        self._mac = self._make_mac()
        for n in range(1, self.outputs + 1):
            self._outs.append(
                _Output(
                    id=n,
                    nominal_load=round(self.rng.uniform(*_LOAD_RANGE), 1),
                    nominal_power_factor=round(self.rng.uniform(*_POWER_FACTOR_RANGE), 2),
                    delay_ms=self.default_delay_ms,
                )
            )
        if not _is_int(self.inputs) or not 0 <= self.inputs <= MAX_INPUTS:
            raise ValueError(f"inputs must be 0..{MAX_INPUTS}, found {self.inputs!r}")
        # Drawn from a copy of the generator: the device's own stream (the random walk of the
        # measurements) stays as it was, so a device with inputs measures as one without.
        draws = random.Random()
        draws.setstate(self.rng.getstate())
        for n in range(1, self.inputs + 1):
            self._ins.append(
                _Input(
                    id=n,
                    pulses_per_hour=round(draws.uniform(*_S0_RATE_RANGE), 1),
                    contact_seconds=round(draws.uniform(*_CONTACT_PERIOD_RANGE)),
                )
            )

    def __repr__(self) -> str:
        states = "".join(str(o.state) for o in self._outs)
        return f"NetioDevice(client_id={self.client_id!r}, outputs={self.outputs}, states={states})"

    def _make_mac(self) -> str:
        # NETIO recommends ending the client id with the last two MAC bytes ("...-25E0");
        # honour that, so the simulated MAC agrees with the name.
        middle = self.rng.randrange(256)
        match = _HEX_SUFFIX.search(self.client_id)
        if match:
            tail = bytes.fromhex(match.group(1))
        else:
            tail = bytes([self.rng.randrange(256), self.rng.randrange(256)])
        return ":".join(f"{b:02X}" for b in (*_MAC_PREFIX, middle, *tail))

    # ----------------------------------------------------------------- topics

    @property
    def events_topic(self) -> str:
        """Where the device publishes its state in Generic mode."""
        return f"devices/{self.client_id}/messages/events/"

    @property
    def devicebound_topic(self) -> str:
        """Where the device takes Generic-mode JSON commands."""
        return f"devices/{self.client_id}/messages/devicebound/"

    @property
    def status_topic(self) -> str:
        """``online`` on connect and ``offline`` as the last will (a simulator extension)."""
        return f"devices/{self.client_id}/status"

    def flex_topic(self, output_id: int, kind: str) -> str:
        """An MQTT-flex topic: ``kind`` is ``state``, ``load`` or ``action``."""
        return f"netio/{self.client_id}/output/{output_id}/{kind}"

    @property
    def flex_action_filter(self) -> str:
        """The subscription that receives MQTT-flex commands for every output."""
        return f"netio/{self.client_id}/output/+/action"

    # ------------------------------------------------------------ the clock

    def _begin(self, now: datetime) -> datetime:
        now = _aware_utc(now)
        if self.started is None:
            self.started = now
        if self._measured_until is None:
            self._measured_until = self.started
        return now

    def _integrate(self, until: datetime) -> None:
        """Add the energy drawn since the last integration; a clock going back adds nothing."""
        assert self._measured_until is not None
        hours = (until - self._measured_until).total_seconds() / 3600.0
        if hours <= 0:
            return
        for output in self._outs:
            output.energy_wh += output.load() * hours
        self._measured_until = until

    def tick(self, now: datetime) -> list[Event]:
        """Advance to ``now``: accumulate energy, end due short pulses, move the measurements.

        Returns the outputs that switched because their pulse ended, in the order they ended.
        """
        now = self._begin(now)
        events: list[Event] = []
        due = sorted(
            (o for o in self._outs if o.pulse_ends is not None and o.pulse_ends <= now),
            key=lambda o: (o.pulse_ends, o.id),
        )
        for output in due:
            assert output.pulse_ends is not None
            self._integrate(output.pulse_ends)  # the pulse's own energy, up to its end
            # A short OFF ends ON and a short ON ends OFF, whatever the state was before:
            # "short off" is a restart of whatever is plugged in.
            output.state = 1 if output.action == Action.SHORT_OFF else 0
            self._end_pulse(output)
            events.append(OutputChanged(output.id, output.state, "delay"))
        self._integrate(now)
        self._wander()
        return events

    def _wander(self) -> None:
        """One step of the bounded random walks of voltage, frequency and the loads."""
        step = self.rng.uniform(-_VOLTAGE_STEP, _VOLTAGE_STEP)
        low, high = _NOMINAL_VOLTAGE - _VOLTAGE_SPAN, _NOMINAL_VOLTAGE + _VOLTAGE_SPAN
        self._voltage = min(high, max(low, self._voltage + step))
        step = self.rng.uniform(-_FREQUENCY_STEP, _FREQUENCY_STEP)
        low, high = _NOMINAL_FREQUENCY - _FREQUENCY_SPAN, _NOMINAL_FREQUENCY + _FREQUENCY_SPAN
        self._frequency = min(high, max(low, self._frequency + step))
        for output in self._outs:
            output.jitter = self.rng.uniform(1 - _LOAD_JITTER, 1 + _LOAD_JITTER)

    def _end_pulse(self, output: _Output) -> None:
        output.pulse_ends = None
        output.action = IDLE_ACTION
        output.delay_ms = self.default_delay_ms

    # --------------------------------------------------------------- actions

    def _output(self, output_id: object) -> _Output:
        if _is_int(output_id) and 1 <= output_id <= self.outputs:
            return self._outs[output_id - 1]
        raise ValueError(f"unknown output ID {_show(output_id)} (expected 1..{self.outputs})")

    @staticmethod
    def _check_action(action: object) -> Action:
        if _is_int(action) and 0 <= action <= 5:
            return Action(action)
        raise ValueError(f"bad action {_show(action)} (expected 0..5)")

    @staticmethod
    def _check_delay(delay_ms: object) -> int | None:
        if delay_ms is None:
            return None
        if _is_int(delay_ms) and 0 <= delay_ms <= MAX_DELAY_MS:
            return delay_ms
        raise ValueError(f"bad Delay {_show(delay_ms)} (expected 0..{MAX_DELAY_MS} ms)")

    def set_action(
        self, output_id: int, action: int, now: datetime, delay_ms: int | None = None
    ) -> bool:
        """Apply one action to one output; return whether its published fields changed.

        ``delay_ms`` is the length of a short pulse (actions 2 and 3); without it the default
        delay applies, and other actions ignore it. A new action cancels a running pulse,
        except 5, which changes nothing. Raises ``ValueError`` for an unknown output, an
        action outside 0..5 or a bad delay, before changing anything.
        """
        output = self._output(output_id)
        kind = self._check_action(action)
        delay = self._check_delay(delay_ms)
        now = self._begin(now)
        if kind is Action.NO_CHANGE:
            return False
        self._integrate(now)  # energy up to the switch belongs to the old state
        before = (output.state, output.action, output.delay_ms)
        if kind is Action.OFF:
            output.state = 0
        elif kind is Action.ON:
            output.state = 1
        elif kind is Action.TOGGLE:
            output.state = 1 - output.state
        if kind in (Action.SHORT_OFF, Action.SHORT_ON):
            output.state = 0 if kind is Action.SHORT_OFF else 1
            output.action = int(kind)
            output.delay_ms = self.default_delay_ms if delay is None else delay
            output.pulse_ends = now + timedelta(milliseconds=output.delay_ms)
        else:
            self._end_pulse(output)
        # Restarting an identical pulse changes no field but is still news to a listener.
        restarted = kind in (Action.SHORT_OFF, Action.SHORT_ON)
        return restarted or before != (output.state, output.action, output.delay_ms)

    def handle_command(self, payload: bytes, now: datetime) -> CommandResult:
        """Carry out one Generic-mode message from the ``devicebound`` topic. Never raises.

        A ``SetOutputs`` is checked whole before any of it is applied: one bad entry refuses
        the message and changes nothing. An entry needs ``ID`` and ``Action`` (or, as in
        NETIO's JSON protocol, ``State`` 0/1 when ``Action`` is absent) and may carry
        ``Delay``; other keys are ignored.
        """
        now = _aware_utc(now)
        try:
            document = orjson.loads(payload)
        except (orjson.JSONDecodeError, TypeError) as exc:
            return CommandResult(None, publish=False, error=f"payload is not JSON: {exc}")
        if not isinstance(document, dict):
            return CommandResult(None, False, error="payload is not a JSON object")
        operation = document.get("Operation")
        if operation == "GetDescription":
            return CommandResult("GetDescription", publish=True)
        if operation != "SetOutputs":
            expected = "expected SetOutputs or GetDescription"
            error = (
                f"no Operation ({expected})"
                if "Operation" not in document
                else f"unknown Operation {_show(operation)} ({expected})"
            )
            return CommandResult(None, False, error=error)
        try:
            plan = self._plan(document.get("Outputs"))
        except ValueError as exc:
            return CommandResult("SetOutputs", False, error=str(exc))
        changed: list[int] = []
        for output_id, action, delay in plan:
            if self.set_action(output_id, action, now, delay) and output_id not in changed:
                changed.append(output_id)
        return CommandResult("SetOutputs", publish=bool(changed), changed=tuple(changed))

    def _plan(self, entries: object) -> list[tuple[int, int, int | None]]:
        if not isinstance(entries, list):
            raise ValueError(f"Outputs must be a list, found {type(entries).__name__}")
        plan: list[tuple[int, int, int | None]] = []
        for i, entry in enumerate(entries, 1):
            try:
                plan.append(self._plan_entry(entry))
            except ValueError as exc:
                raise ValueError(f"Outputs[{i}]: {exc}") from None
        return plan

    def _plan_entry(self, entry: object) -> tuple[int, int, int | None]:
        if not isinstance(entry, dict):
            raise ValueError(f"expected an object, found {type(entry).__name__}")
        output_id = self._output(entry.get("ID")).id
        if "Action" in entry:
            action = self._check_action(entry["Action"])
        elif entry.get("State") in (0, 1) and _is_int(entry["State"]):
            action = Action(entry["State"])
        else:
            raise ValueError("no Action (0..5) and no State (0/1)")
        return output_id, int(action), self._check_delay(entry.get("Delay"))

    def handle_flex_action(self, topic: str, payload: bytes, now: datetime) -> CommandResult:
        """Carry out one MQTT-flex command from ``netio/<id>/output/<n>/action``. Never raises.

        The payload is the action number as text; short pulses use the default delay.
        """
        now = _aware_utc(now)
        prefix, suffix = f"netio/{self.client_id}/output/", "/action"
        if not (topic.startswith(prefix) and topic.endswith(suffix)):
            return CommandResult(None, False, error=f"not an action topic of this device: {topic}")
        number = topic[len(prefix) : -len(suffix)]
        if not (number.isascii() and number.isdigit()):
            return CommandResult(None, False, error=f"{topic}: unknown output {number!r}")
        text = payload.decode("ascii", errors="replace").strip()
        if not (text.isascii() and text.isdigit() and len(text) == 1):
            return CommandResult(
                None, False, error=f"{topic}: bad action payload {payload[:40]!r} (expected 0..5)"
            )
        try:
            changed = self.set_action(int(number), int(text), now)
        except ValueError as exc:
            return CommandResult(None, False, error=f"{topic}: {exc}")
        return CommandResult("action", publish=changed, changed=(int(number),) if changed else ())

    # ------------------------------------------------------------- reading

    def output_state(self, output_id: int) -> int:
        """The switch state of one output, 0 or 1."""
        return self._output(output_id).state

    def nominal_load(self, output_id: int) -> float:
        """The load, in W, that the appliance on this output draws when it runs."""
        return self._output(output_id).nominal_load

    def _current_ma(self, output: _Output) -> int:
        # True power P = V·I·PF, so the current the strip measures is P / (V·PF).
        pf = output.power_factor()
        return round(output.load() / (self._voltage * pf) * 1000) if pf else 0

    def state(self, now: datetime) -> dict[str, Any]:
        """The full state document, in NETIO's field names, as of ``now``; changes nothing.

        Energy counts include the time since the last ``tick``, so two reads at different
        times differ even without a tick in between, as on the real device.
        """
        now = _aware_utc(now)
        started = self.started if self.started is not None else now
        since = self._measured_until if self._measured_until is not None else started
        hours = max(0.0, (now - since).total_seconds() / 3600.0)
        outputs: list[dict[str, Any]] = []
        for o in self._outs:
            pf = o.power_factor()
            outputs.append(
                {
                    "ID": o.id,
                    "Name": o.name,
                    "State": o.state,
                    "Action": o.action,
                    "Delay": o.delay_ms,
                    "Current": self._current_ma(o),
                    "PowerFactor": round(pf, 2),
                    "Phase": round(math.degrees(math.acos(pf)), 2) if pf else 0.0,
                    "Load": round(o.load()),
                    "Energy": math.floor(o.energy_wh + o.load() * hours),
                    "ReverseEnergy": 0,
                }
            )
        # The totals are the sums of the published per-output figures, so that a consumer
        # adding the outputs up finds the total it was sent.
        total_current = sum(out["Current"] for out in outputs)
        total_load = sum(out["Load"] for out in outputs)
        apparent = self._voltage * total_current / 1000
        overall_pf = min(1.0, total_load / apparent) if apparent else 0.0
        elapsed = max(0.0, (now - started).total_seconds())
        document: dict[str, Any] = {
            "Agent": {
                "Model": "NETIO 4All",
                "DeviceName": self.client_id,
                "MAC": self._mac,
                "SerialNumber": self._mac.replace(":", ""),
                "JSONVer": "2.1",
                "Time": _iso(now),
                "Uptime": max(0, int((now - started).total_seconds())),
                "Version": self.version,
                "OemID": self.oem_id,
                "VendorID": 0,
                "NumOutputs": self.outputs,
                "NumInputs": self.inputs,
            },
            "GlobalMeasure": {
                "Voltage": round(self._voltage, 1),
                "Frequency": round(self._frequency, 2),
                "TotalCurrent": total_current,
                "OverallPowerFactor": round(overall_pf, 2),
                "Phase": round(math.degrees(math.acos(overall_pf)), 2) if overall_pf else 0.0,
                "TotalLoad": total_load,
                "TotalEnergy": sum(out["Energy"] for out in outputs),
                "EnergyStart": _iso(started),
            },
            "Outputs": outputs,
        }
        if self._ins:  # a device without inputs (a 4All) sends no Inputs block
            document["Inputs"] = [
                {
                    "ID": i.id,
                    "Name": i.name,
                    "State": i.state(elapsed),
                    "S0Counter": i.counter(elapsed),
                }
                for i in self._ins
            ]
        return document

    def to_json(self, now: datetime) -> bytes:
        """The state document as the device sends it: compact JSON, UTF-8."""
        return orjson.dumps(self.state(now))

    def flex_messages(self, now: datetime) -> list[tuple[str, bytes]]:
        """The MQTT-flex messages of every output: ``state`` ("0"/"1") and ``load`` (W)."""
        _aware_utc(now)
        messages: list[tuple[str, bytes]] = []
        for o in self._outs:
            messages.append((self.flex_topic(o.id, "state"), str(o.state).encode()))
            messages.append((self.flex_topic(o.id, "load"), str(round(o.load())).encode()))
        return messages
