"""A line's pure core: route each message, let its station decode it, count everything.

No sockets, threads or clocks: the line's I/O loop feeds messages in with their receive
time and does what comes back (hand updates over, acknowledge to the broker).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from ._config import LineConfig, StationConfig, collector_paused
from ._freshness import StaleClock
from ._model import Update, new_record
from ._router import Route, Router, Rule
from ._station import Delivery, Message, Station, StationState
from .sparkplug._station import SparkplugLine


@attrs.define
class Counters:
    """Counters of a line or a station (SPEC issue: received, routed, unrouted, ...)."""

    received: int = 0
    routed: int = 0
    unrouted: int = 0
    ignored: int = 0
    decode_errors: int = 0
    duplicates: int = 0
    wills: int = 0
    overflow: int = 0
    bad_topics: int = 0
    callback_errors: int = 0
    stale: int = 0
    reconnects: int = 0
    pauses: int = 0
    connect_failures: int = 0
    #: SPEC §14, Sparkplug B: rebirth requests sent, and what made kom distrust a node's
    #: messages (sequence gaps, aliases no BIRTH declared, NDEATHs of another bdSeq).
    rebirths: int = 0
    seq_gaps: int = 0
    unknown_aliases: int = 0
    stale_deaths: int = 0
    last_message: datetime | None = None
    #: Topic filters the broker refused in SUBACK (0x80 or above); kom retries them.
    refused_subscriptions: int = 0
    #: PUBLISH packets over the line's size limit, skipped as they streamed in.
    oversize: int = 0
    #: Connections closed because the broker broke the protocol (garbage, wrong packets).
    protocol_errors: int = 0
    #: QoS 2 writes the broker took at QoS 1 (answered with PUBACK).
    downgraded_writes: int = 0
    #: Writes the broker refused (PUBACK/PUBREC with a reason code of 0x80 or above).
    refused_writes: int = 0
    #: Connections the broker ended with a DISCONNECT (MQTT 5; its reason is in the log).
    broker_disconnects: int = 0
    #: SPEC §11 confirmed writes the device did not confirm in time (reason `unconfirmed`),
    #: and responses that came for no waiting write (late, or not kom's).
    unconfirmed_writes: int = 0
    stray_responses: int = 0

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


class StationCounters(dict[str, Counters]):
    """Counters by station name, each made when first asked for (10,000 stations need not
    wait for 10,000 counter records before the first message)."""

    def __missing__(self, name: str) -> Counters:
        counters = self[name] = Counters()
        return counters


class Processed(NamedTuple):
    """The result of one message: its updates, and whether it is settled.

    A settled message may be acknowledged to the broker once its updates are handed over;
    an unsettled one waits for the consumer's ACK_ID (SPEC §5).
    """

    updates: list[Update]
    settled: bool
    station: Station | None
    route: Route


class LineCore:
    """Routing, stations and counters of one line."""

    def __init__(self, line: LineConfig, stations: Sequence[StationConfig]) -> None:
        self.config = line
        with collector_paused():
            plans: dict[tuple[Any, ...], Any] = {}
            self.stations = [Station.build(s, line, plans) for s in stations]
            self.router = Router(
                [s.address for s in stations],
                [(i, s.will_topic, s.will_payload) for i, s in enumerate(stations) if s.will_topic],
                patterns=[s.regex for s in stations],
            )
        self._index()
        self.counters = Counters()
        self.station_counters = StationCounters()
        #: SPEC §14: the Sparkplug host part of the line (None on lines without Sparkplug).
        self.sparkplug: SparkplugLine | None = None
        if SparkplugLine.wanted(line, stations):
            self.sparkplug = SparkplugLine(line, self.stations)
        watched = {i: s.stale_after for i, s in enumerate(stations) if s.stale_after}
        #: SPEC §16: the stations with `stale_after`, or None when no station has it.
        self.staleness = StaleClock(watched) if watched else None

    def _index(self) -> None:
        """The lookups derived from `stations` (made again when a reload swaps stations in)."""
        self.by_name = {s.name: s for s in self.stations}
        self._ack_stations = [s for s in self.stations if s.uses_ack]
        #: Whether any station may hold messages (ACK_ID): else reading never pauses.
        self.holds = bool(self._ack_stations)

    def __repr__(self) -> str:
        return f"<LineCore {self.config.name!r} stations={len(self.stations)}>"

    def carry_over(self, old: LineCore, connected: bool) -> None:
        """Take over what a reload keeps from the running core (SPEC §2, reload).

        A station whose configuration is unchanged keeps its state, held messages, last
        values and counters; a new or changed one starts in communication error while the
        line is down, else on. The line's counters go on.
        """
        for i, station in enumerate(self.stations):
            previous = old.by_name.get(station.name)
            if previous is not None and previous.config == station.config:
                self.stations[i] = previous
                self.station_counters[station.name] = old.station_counters[station.name]
            elif not connected and station.active:
                station.state = StationState.COMM
            elif station.state is StationState.COMM:
                station.move(StationState.ON)
        self._index()
        self.counters = old.counters
        if self.sparkplug is not None and old.sparkplug is not None:
            self.sparkplug.carry_over(old.sparkplug)

    def holding_too_much(self) -> bool:
        """Whether an ACK_ID station holds max_held messages (the line stops reading)."""
        return any(len(station.held) >= station.max_held for station in self._ack_stations)

    @property
    def wants_connection(self) -> bool:
        """SPEC §2 forced disconnection: only while some station is neither off nor simulated.

        A Sparkplug line without stations (a host application alone, `kom discover`) stays
        connected (SPEC §14).
        """
        if not self.stations and self.sparkplug is not None:
            return True
        return any(s.active for s in self.stations)

    def process(self, msg: Message) -> Processed:
        """Route and decode one message; never raises for any topic or payload."""
        counters = self.counters
        counters.received += 1
        counters.last_message = msg.received
        if msg.dup:
            counters.duplicates += 1
        if self.sparkplug is not None and msg.topic.startswith("spBv1.0/"):
            return self.sparkplug.process(self, msg)
        router = self.router
        if router.has_wills:
            hit = router.will(msg.topic, msg.payload)
            if hit is not None:
                updates: list[Update] = []
                for index in hit.cleared:
                    station = self.stations[index]
                    if station.state is StationState.WILL:
                        station.move(StationState.ON)
                if hit.hit:
                    for index in hit.hit:
                        station = self.stations[index]
                        updates.extend(station.will(msg.received))
                        self.station_counters[station.name].wills += 1
                    counters.wills += 1
                    return Processed(updates, True, self.stations[hit.hit[0]], _WILL_ROUTE)
        route = router.route(msg.topic)
        if route.station is None:
            counters.unrouted += 1
            return Processed([], True, None, route)
        station = self.stations[route.station]
        sc = self.station_counters[station.config.name]
        sc.received += 1
        sc.last_message = msg.received
        if self.staleness is not None:
            self.staleness.seen(route.station, msg.received)
        if msg.dup:
            sc.duplicates += 1
        decoder = station.decoder
        invalid = decoder.invalid
        if station.state is _ON and not station.uses_ack:
            # Station.receive's common case, written out: a station on, without ACK_ID.
            station.groups = route.groups
            updates = decoder.decode(msg, route.groups)
            counters.routed += 1
            sc.routed += 1
            invalid = decoder.invalid - invalid
            if invalid:
                counters.decode_errors += invalid
                sc.decode_errors += invalid
            return new_record(Processed, (updates, True, station, route))
        delivery: Delivery = station.receive(msg, route.groups)
        if delivery.ignored:
            counters.ignored += 1
            sc.ignored += 1
            if station.overflow != sc.overflow:
                counters.overflow += station.overflow - sc.overflow
                sc.overflow = station.overflow
            return Processed([], True, station, route)
        counters.routed += 1
        sc.routed += 1
        invalid = decoder.invalid - invalid
        if invalid:
            counters.decode_errors += invalid
            sc.decode_errors += invalid
        settled = not (delivery.awaiting_ack or delivery.held)
        return new_record(Processed, (delivery.updates, settled, station, route))

    def stale(self, now: datetime) -> list[Update]:
        """SPEC §16: the input tags of stations quiet for their `stale_after`, invalid.

        Called by the line's loop while connected; a station that is not on (off, simulated,
        in will or communication error) reports nothing: its tags say more already.
        """
        clock = self.staleness
        if clock is None:
            return []
        updates: list[Update] = []
        for index in clock.due(now):
            station = self.stations[index]
            if station.state is StationState.ON:
                updates.extend(station.stale(now))
                self.counters.stale += 1
                self.station_counters[station.name].stale += 1
        return updates

    def switched_on(self, name: str, now: datetime) -> None:
        """A station was switched on: its `stale_after` count starts now (SPEC §16)."""
        if self.staleness is not None:
            self.staleness.seen(self.stations.index(self.by_name[name]), now)

    def lost(self, now: datetime) -> list[Update]:
        """The connection is gone: active stations in communication error, inputs invalid."""
        updates: list[Update] = []
        for station in self.stations:
            # Once per outage: a station already in comm error is skipped, unless it has been
            # in it since start-up without its updates (the broker unreachable from the start).
            if station.active and not (
                station.state is StationState.COMM and station.comm_reported
            ):
                updates.extend(station.lost(now))
        return updates

    def connected(self, generation: int, now: datetime | None = None) -> list[Update]:
        """A new connection: stations leave communication error (values stay invalid).

        `now` (the line's clock) stamps the rebirth requests a Sparkplug host sends to the
        edge nodes it knew before the connection was lost.

        Returns the updates of held QoS 0 messages that may now go out: the message an
        ACK_ID station was processing is redelivered by the broker when it was QoS 1/2,
        so the next held one must not wait behind it (nor be overtaken by new ones).
        """
        updates: list[Update] = []
        if self.sparkplug is not None:
            self.sparkplug.connected()
            if now is not None:
                self.sparkplug.reconnected(self, now)
        if self.staleness is not None:
            self.staleness.restart()
        for station in self.stations:
            if station.state is StationState.COMM:
                station.move(StationState.ON)
            station.drop_unacknowledgeable(generation)
            current = station.current
            if current is not None and current.qos and current.generation < generation:
                # Redelivered by the broker on this connection: the old copy cannot be
                # acknowledged any more, so stop waiting for it.
                station.current = None
                released = station.release_next()
                if released is not None:
                    updates.extend(released.updates)
        return updates


_WILL_ROUTE = Route(None, Rule.WILL, {})
_ON = StationState.ON
