"""Sparkplug on a line: edge-node messages to station updates, commands back (SPEC §14).

A line with Sparkplug stations (or `sparkplug_host_id`, or `payload_type = "sparkplug_b"`)
sends every `spBv1.0/...` message here instead of through the topic router: the `Host`
keeps each node's state, and each event goes to the station whose `sparkplug` key names
the node or device. BIRTH and DATA values fill the station's `SPB=` tags (a BIRTH also
clears a will error), DEATH makes its inputs invalid with reason `will` (an NDEATH also
kills the node's devices). Pure: the line's thread feeds messages and publishes `outgoing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from .._address import Kind as AddressKind
from .._config import LineConfig, StationConfig, TagConfig, Will
from .._convert import converter, parse_write_value
from .._errors import ConversionError, WriteError
from .._model import Quality, Reason, Update, Value, ValueType, new_record
from .._router import Route, Rule
from .._station import Decoder, Station, StationState, _Reader, _reader
from .._timemask import TimeMask, Zone
from ._host import Event, Host, Kind
from ._host import Value as MetricReading
from ._payload import DataType, MetricValue, PayloadError, from_millis, tag_value, to_millis
from ._topic import PREFIX, parse_topic, state_topic

if TYPE_CHECKING:
    from .._core import Counters, LineCore, Processed

VALID = Quality.VALID

#: A message for the line to publish: topic, payload, QoS, retain.
Outgoing = tuple[str, bytes, int, bool]

#: The datatype of a metric a BIRTH did not declare, by the output tag's type.
_DATATYPES = {
    ValueType.Ao: DataType.Double,
    ValueType.Co: DataType.Int64,
    ValueType.Do: DataType.Boolean,
    ValueType.TxtO: DataType.String,
    ValueType.ToA: DataType.DateTime,
    ValueType.ToR: DataType.Double,
}


class SparkplugDecoder(Decoder):
    """A station's decoder for `SPB=` tags: metric values in, updates out.

    It keeps Decoder's processing, filtering and invalidation (will, comm); messages come
    as metric values resolved by the Host, not as payloads.
    """

    def __init__(self, station: StationConfig, line: LineConfig) -> None:
        super().__init__(station, line)
        prefix = station.name + "."
        self._metrics: dict[str, list[_Reader]] = {}
        names = list(self.input_tags)
        for tag in station.tags:
            address = tag.address
            if address is None or address.kind is not AddressKind.SPB or tag.type.is_output:
                continue
            assert address.metric is not None
            zone = station.time_zone or line.time_zone
            base = _reader(tag, line, -1, zone)
            convert = _tag_converter(tag, line.time_mask, zone)
            reader = base._replace(full=prefix + base.full, convert=convert)
            self._metrics.setdefault(address.metric, []).append(reader)
            names.append(reader.full)
        self.input_tags = tuple(names)
        self.time_missing = False  # every metric has a time (its own, the payload's)

    def metrics(
        self, values: Sequence[MetricReading], received: datetime, topic: str
    ) -> list[Update]:
        """The updates of the station's tags named by these metrics, in the message's order."""
        updates: list[Update] = []
        append = updates.append
        check = self._time_check
        for v in values:
            readers = self._metrics.get(v.name)
            if readers is None:
                continue
            # SPEC §16: a metric time far from the receive time is as bad as none.
            too_far = check(v.ts, received) if check is not None else None
            for r in readers:
                value: Value = None
                reason: Reason | None = None
                detail: str | None = None
                if too_far is not None:
                    reason, detail = Reason.TIME, f"{r.full}: {too_far}"
                elif v.error is not None:
                    reason, detail = Reason.PARSE, f"{r.full}: {v.error}"
                elif v.is_null:
                    # Sparkplug 3.0.0 §6.4.6, is_null: the metric has no value now.
                    reason, detail = Reason.MISSING, f"{r.full}: metric {v.name!r} is null"
                else:
                    try:
                        value = r.convert(tag_value(v.value))
                    except ConversionError as exc:
                        reason, detail = Reason.TYPE, f"{r.full}: {exc}"
                    else:
                        if r.processing is None:  # the common case, without _emit's call
                            update = (
                                r.full,
                                value,
                                VALID,
                                None,
                                v.ts,
                                received,
                                topic,
                                None,
                                False,
                            )
                            append(new_record(Update, update))
                            continue
                self._emit(append, r, value, reason, detail, v.ts, received, topic)
        return updates


def _tag_converter(tag: TagConfig, mask: TimeMask, zone: Zone) -> Callable[[object], Value]:
    """A metric value to the tag's type, as from JSON (lists, arrays, become JSON text in text
    tags); absolute times as a written value, which also takes a datetime (DateTime metrics)."""
    value_type = tag.type
    if value_type.kind != "abstime":
        return converter(value_type, mask, zone)

    def convert(raw: object) -> Value:
        return parse_write_value(value_type, raw, mask, zone)

    return convert


class SparkplugLine:
    """The Sparkplug part of one line's core: the Host, stations by key, messages to send."""

    def __init__(self, line: LineConfig, stations: Sequence[Station]) -> None:
        self.host = Host()
        self.host_id = line.sparkplug_host_id
        self.by_key: dict[str, list[int]] = {}
        for index, station in enumerate(stations):
            key = station.config.sparkplug
            if key is None:
                continue
            self.by_key.setdefault(key, []).append(index)
            station.decoder = SparkplugDecoder(station.config, line)
        #: Messages for the line to publish (rebirth requests, STATE), taken by the line.
        self.outgoing: list[Outgoing] = []
        #: Problems seen (seq gaps, unknown aliases, bad payloads, stale deaths) for the line to
        #: log, taken by the line like `outgoing`; bounded when nobody takes them.
        self.problems: list[str] = []
        self.state_stamp = state_stamp(line.will) if self.host_id else None

    @staticmethod
    def wanted(line: LineConfig, stations: Sequence[StationConfig]) -> bool:
        return bool(
            line.sparkplug_host_id
            or line.payload_type == "sparkplug_b"
            or any(s.sparkplug for s in stations)
        )

    def carry_over(self, old: SparkplugLine) -> None:
        """A reload keeps what the nodes said (their BIRTHs do not come again by themselves)."""
        self.host = old.host
        self.state_stamp = old.state_stamp

    def connected(self) -> None:
        """Host application session establishment (Sparkplug 3.0.0 chapter 5): once subscribed,
        the STATE online (retained, QoS 1)."""
        if self.host_id is not None and self.state_stamp is not None:
            payload = orjson.dumps({"online": True, "timestamp": self.state_stamp})
            self.outgoing.append((state_topic(self.host_id), payload, 1, True))

    def offline(self) -> tuple[str, bytes] | None:
        """The STATE offline a clean stop publishes (the will's payload), or None."""
        if self.host_id is None or self.state_stamp is None:
            return None
        payload = orjson.dumps({"online": False, "timestamp": self.state_stamp})
        return state_topic(self.host_id), payload

    def process(self, core: LineCore, msg: Any) -> Processed:
        """One `spBv1.0/...` message: the node's state, its stations' updates, commands."""
        from .._core import Processed

        topic = parse_topic(msg.topic)
        counters = core.counters
        if topic is None:  # STATE of host applications, or not Sparkplug at all
            counters.ignored += 1
            return Processed([], True, None, _UNROUTED)
        errors = self.host.decode_errors
        outcome = self.host.receive(topic, msg.payload, msg.received)
        bad_payload = self.host.decode_errors != errors
        if bad_payload:
            counters.decode_errors += 1
        if outcome.ignored:  # NCMD/DCMD: other hosts' commands
            counters.ignored += 1
            return Processed([], True, None, _UNROUTED)
        if outcome.problems:
            self.problems.extend(
                p if p.startswith(PREFIX) else f"{msg.topic}: {p}" for p in outcome.problems
            )
            del self.problems[:-100]
        if outcome.rebirth is not None:
            self.outgoing.append((*outcome.rebirth, 0, False))
        updates: list[Update] = []
        first: int | None = None
        for event in outcome.events:
            for index in self._stations_of(event):
                if first is None:
                    first = index
                if core.staleness is not None:
                    core.staleness.seen(index, msg.received)  # SPEC §16
                updates.extend(self._apply(core, core.stations[index], event, msg))
        if first is None:
            # Nothing to hand out (a bad payload, an unborn node): still its station's message.
            first = next(iter(self.by_key.get(topic.key, ())), None)
            if first is not None:
                sc = core.station_counters[core.stations[first].name]
                sc.received += 1
                sc.decode_errors += bad_payload
        if first is None:
            counters.unrouted += 1
            return Processed(updates, True, None, _UNROUTED)
        counters.routed += 1
        return Processed(updates, True, core.stations[first], Route(first, _RULE, {}))

    def _stations_of(self, event: Event) -> list[int]:
        found = list(self.by_key.get(event.key, ()))
        if event.kind is Kind.DEATH and event.key.count("/") == 1:
            # An NDEATH's events list the node's born devices too; stations of devices that
            # never were born still lose their node (chapter 5: the devices die with it).
            prefix = event.key + "/"
            found += [i for k, v in self.by_key.items() if k.startswith(prefix) for i in v]
        return sorted(set(found))

    def _apply(self, core: LineCore, station: Station, event: Event, msg: Any) -> list[Update]:
        counters: Counters = core.station_counters[station.name]
        counters.received += 1
        counters.last_message = msg.received
        if not station.active:
            counters.ignored += 1
            return []
        decoder = station.decoder
        if event.kind is Kind.DEATH:
            if station.state is StationState.WILL:
                return []
            counters.wills += 1
            core.counters.wills += 1
            return station.will(msg.received)
        if station.state is not StationState.ON:
            station.move(StationState.ON)  # a BIRTH clears a will error; data means we're up
        counters.routed += 1
        assert isinstance(decoder, SparkplugDecoder)
        invalid = decoder.invalid
        updates = decoder.metrics(event.values, msg.received, msg.topic)
        counters.decode_errors += decoder.invalid - invalid
        core.counters.decode_errors += decoder.invalid - invalid
        return updates

    def command(
        self, station: StationConfig, tag: TagConfig, value: Value, now: datetime
    ) -> tuple[str, bytes]:
        """SPEC §14: an output tag with SPB= written: the NCMD or DCMD to send."""
        full = f"{station.name}.{tag.name}"
        assert station.sparkplug is not None
        assert tag.address is not None
        metric = tag.address.metric or ""
        try:
            return self.host.command(
                station.sparkplug.split("/"),
                metric,
                _DATATYPES[tag.type],
                _metric_value(value),
                now,
            )
        except PayloadError as exc:
            raise WriteError(f"{full}: {exc}", full, "rejected") from exc


def _metric_value(value: Value) -> MetricValue:
    """A written tag value as a metric value (durations as seconds)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def state_will(line: LineConfig, now: datetime) -> LineConfig:
    """SPEC §14: the line's will is the host's STATE offline (Sparkplug 3.0.0 §5.x: JSON
    `{"online": false, "timestamp": T}`, retained, QoS 1); the online STATE repeats T."""
    import attrs

    if not line.sparkplug_host_id or line.will is not None:
        return line
    payload = orjson.dumps({"online": False, "timestamp": to_millis(now)})
    will = Will(topic=state_topic(line.sparkplug_host_id), message=payload, qos=1, retain=True)
    return attrs.evolve(line, will=will)


def state_stamp(will: Will | None) -> int | None:
    """The timestamp of a STATE will (the online STATE must carry the same)."""
    if will is None or not will.topic.startswith(PREFIX + "STATE/"):
        return None
    try:
        stamp = orjson.loads(will.message).get("timestamp")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return stamp if isinstance(stamp, int) and from_millis(stamp) is not None else None


_RULE = Rule.SPARKPLUG
_UNROUTED = Route(None, Rule.UNROUTED, {})
