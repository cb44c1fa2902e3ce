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
from ._host import Event, Host, Kind, Outcome, Problem
from ._host import Value as MetricReading
from ._payload import (
    QUALITY_GOOD,
    QUALITY_NAMES,
    QUALITY_STALE,
    DataType,
    MetricValue,
    PayloadError,
    from_millis,
    tag_value,
    to_millis,
)
from ._topic import PREFIX, SpTopic, parse_topic, state_topic, station_key

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
                elif v.quality is not None and v.quality != QUALITY_GOOD:
                    # §6.4.9.1 "Quality Codes": the edge node says the value is not good (0
                    # bad, 500 stale). The source's verdict, not a decode error: not counted.
                    invalid = self.invalid
                    self._emit(append, r, None, *_source_quality(r.full, v), v.ts, received, topic)
                    self.invalid = invalid
                    continue
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


def _source_quality(full: str, v: MetricReading) -> tuple[Reason, str]:
    """The reason and detail of a metric whose Quality property is not good (§6.4.9.1)."""
    code = v.quality
    name = QUALITY_NAMES.get(code, "unknown") if code is not None else "unknown"
    reason = Reason.STALE if code == QUALITY_STALE else Reason.QUALITY
    return reason, f"{full}: metric {v.name!r} has Quality {code} ({name}) at the edge node"


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
        self.host = Host(line.sparkplug_rebirth_interval)
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
        #: (node key, problem) already logged: each kind once per node until its next NBIRTH.
        self._logged: set[tuple[str, Problem]] = set()
        self.state_stamp = state_stamp(line.will) if self.host_id else None
        self.state_republished = 0  # STATE online sent again on an offline of kom's own
        self.stopping = False  # a clean stop published the offline STATE itself

    @staticmethod
    def wanted(line: LineConfig, stations: Sequence[StationConfig]) -> bool:
        return bool(
            line.sparkplug_host_id
            or line.payload_type == "sparkplug_b"
            or any(s.sparkplug for s in stations)
        )

    def carry_over(self, old: SparkplugLine) -> None:
        """A reload keeps what the nodes said (their BIRTHs do not come again by themselves)
        and what was logged; the rebirth interval is the new configuration's."""
        interval = self.host.rebirth_interval
        self.host = old.host
        self.host.rebirth_interval = interval
        self._logged = old._logged
        self.state_republished = old.state_republished
        if old.host_id == self.host_id:
            # The connection's will carries the old timestamp until the next CONNECT.
            self.state_stamp = old.state_stamp

    def connected(self) -> None:
        """Host application session establishment (Sparkplug 3.0.0 §5.3, §4.2.3.1): once subscribed,
        the STATE online (retained, QoS 1)."""
        self.stopping = False
        if self.host_id is not None and self.state_stamp is not None:
            payload = orjson.dumps({"online": True, "timestamp": self.state_stamp})
            self.outgoing.append((state_topic(self.host_id), payload, 1, True))

    def reconnected(self, core: LineCore, now: datetime) -> None:
        """kom's connection is back: its stations' tags went `comm`, and with report by
        exception a metric that did not change since would stay so. Every edge node known
        to be born is asked for a rebirth (counted on the node's stations), so that its
        BIRTHs give every value again."""
        for node, request in self.host.rebirth_all(now):
            key = station_key(node.group, node.name)
            self.outgoing.append((*request, 0, False))
            core.counters.rebirths += 1
            for i in self.by_key.get(key, ()):
                core.station_counters[core.stations[i].name].rebirths += 1
            self._problem(
                f"asking {key} for a rebirth (NCMD Node Control/Rebirth): kom reconnected"
            )

    def offline(self) -> tuple[str, bytes] | None:
        """The STATE offline a clean stop publishes (the will's payload), or None.

        From then on an offline on kom's own STATE topic is its own and is not answered.
        """
        if self.host_id is None or self.state_stamp is None:
            return None
        self.stopping = True
        payload = orjson.dumps({"online": False, "timestamp": self.state_stamp})
        return state_topic(self.host_id), payload

    def process(self, core: LineCore, msg: Any) -> Processed:
        """One `spBv1.0/...` message: the node's state, its stations' updates, commands."""
        from .._core import Processed

        topic = parse_topic(msg.topic)
        counters = core.counters
        if topic is None:  # STATE of host applications, or not Sparkplug at all
            counters.ignored += 1
            self._own_state(msg)
            return Processed([], True, None, _UNROUTED)
        errors = self.host.decode_errors
        outcome = self.host.receive(topic, msg.payload, msg.received)
        bad_payload = self.host.decode_errors != errors
        if bad_payload:
            counters.decode_errors += 1
        if outcome.ignored:  # NCMD/DCMD: other hosts' commands
            counters.ignored += 1
            return Processed([], True, None, _UNROUTED)
        if topic.type == "NBIRTH" and outcome.events:
            self._logged = {k for k in self._logged if k[0] != topic.key}  # a new session
        if outcome.problems or outcome.rebirth is not None:
            self._report(core, topic, msg.topic, outcome)
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

    def _report(self, core: LineCore, topic: SpTopic, name: str, outcome: Outcome) -> None:
        """Count the message's problems and its rebirth request on the line and on the stations
        of its device (or node); log each kind of problem once per node until its next NBIRTH,
        and every rebirth request with its cause."""
        node = station_key(topic.group, topic.node)
        indexes = self.by_key.get(topic.key) or self.by_key.get(node, [])
        counted = [core.counters, *(core.station_counters[core.stations[i].name] for i in indexes)]
        for found in outcome.problems:
            field = found.kind.value
            if found.kind in _COUNTED:
                for c in counted:
                    setattr(c, field, getattr(c, field) + 1)
            if (node, found.kind) in self._logged:
                continue
            self._logged.add((node, found.kind))
            text = found.text if found.text.startswith(PREFIX) else f"{name}: {found.text}"
            more = "" if found.kind is Problem.UNBORN else f"counted in {field}; "
            self._problem(f"{text} ({more}logged once until the node's next NBIRTH)")
        if outcome.rebirth is not None:
            self.outgoing.append((*outcome.rebirth, 0, False))
            for c in counted:
                c.rebirths += 1
            cause = "; ".join(f.text for f in outcome.problems) or "unknown"
            self._problem(f"asking {node} for a rebirth (NCMD Node Control/Rebirth): {cause}")

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        del self.problems[:-100]  # bounded when nobody takes them

    def _own_state(self, msg: Any) -> None:
        """Sparkplug 3.0.0 §5.3 (tck-id-message-flow-hid-sparkplug-state-message-delivered): a
        STATE offline on kom's own topic while it is connected is answered at once with the
        online STATE again, with the timestamp of the connection's will.

        A retained message is the one the broker hands over with the SUBSCRIBE (the will of
        an earlier connection): the online STATE kom publishes after subscribing replaces
        it already, so it is not answered twice.
        """
        if self.stopping or self.host_id is None or msg.retain:
            return
        if msg.topic != state_topic(self.host_id):
            return
        try:
            online = orjson.loads(msg.payload).get("online")
        except (orjson.JSONDecodeError, AttributeError):
            online = None
        if online is not False:
            return
        self.connected()
        self.state_republished += 1
        self._problem(f"{msg.topic}: STATE offline while kom is connected: online published again")

    def _stations_of(self, event: Event) -> list[int]:
        found = list(self.by_key.get(event.key, ()))
        if event.kind is Kind.DEATH and event.key.count("/") == 1:
            # An NDEATH's events list the node's born devices too; stations of devices that
            # never were born still lose their node (§5.5: the devices die with it).
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
            updates = station.will(msg.received)
            if event.ts is not None:
                updates = [u._replace(ts=event.ts) for u in updates]
            return updates
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


def state_will(line: LineConfig, now: datetime, running: Will | None = None) -> LineConfig:
    """SPEC §14: the line's will is the host's STATE offline (Sparkplug 3.0.0 §4.2.3.2: JSON
    `{"online": false, "timestamp": T}`, retained, QoS 1); the online STATE repeats T.

    `running` is the will of the line before a reload: when it is the STATE will of the same
    host id it is kept, so that the next CONNECT's will and the online STATE agree on T.
    """
    import attrs

    if not line.sparkplug_host_id or line.will is not None:
        return line
    if running is not None and running.topic == state_topic(line.sparkplug_host_id):
        return attrs.evolve(line, will=running)
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


#: The problems counted under their own name (bad payloads count as decode_errors already).
_COUNTED = frozenset({Problem.SEQ_GAP, Problem.UNKNOWN_ALIAS, Problem.STALE_DEATH})
_RULE = Rule.SPARKPLUG
_UNROUTED = Route(None, Rule.UNROUTED, {})
