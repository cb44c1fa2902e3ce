"""What a Sparkplug host application knows of each edge node, without I/O.

Per edge node (Sparkplug 3.0.0, chapter 5 "Operational Behavior"): whether it is born, the
bdSeq of its NBIRTH (an NDEATH counts only with the same bdSeq), the last sequence number
(0..255 across the node's NBIRTH, NDATA, DBIRTH, DDATA, DDEATH; §6.4.5 "Payload"), the
metrics each BIRTH declared (names, aliases, datatypes; DATA messages carry only the alias,
§6.4.6 "Metric"), and which devices are born. `receive()` takes a topic, the payload and the
time, and returns what happened: metric values to hand out, deaths, and a rebirth request (an
NCMD with `Node Control/Rebirth` = true) when the node's messages cannot be trusted — a
sequence number out of order, an alias never declared, DATA from a node or device that was
never born — at most one per node every `rebirth_interval` seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import attrs

from .._model import new_record
from ._payload import (
    DataType,
    Metric,
    MetricValue,
    Out,
    Payload,
    PayloadError,
    decode,
    encode,
    typed_value,
)
from ._topic import PREFIX, SpTopic, station_key

REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
#: Rebirth requests to one node at most this often (seconds): a node that keeps sending out of
#: order must not be flooded with requests while it is rebirthing.
REBIRTH_INTERVAL = 5.0


class Kind(enum.Enum):
    BIRTH = "birth"
    DATA = "data"
    DEATH = "death"


class Value(NamedTuple):
    """A metric's value resolved against the BIRTH: name, value, source time, null flag."""

    name: str
    value: MetricValue
    ts: datetime
    is_null: bool
    datatype: int
    error: str | None = None  # why the value could not be read (the tag: invalid, parse)
    quality: int | None = None  # §6.4.9.1: the metric's Quality property, when it has one


class Event(NamedTuple):
    """Something that happened to a node or one of its devices."""

    kind: Kind
    key: str  # group/node or group/node/device (a station's `sparkplug` key)
    values: list[Value]
    #: A DDEATH's payload time: §5.7 has the device's metrics marked stale at that time
    #: (an NDEATH, a will sent by the broker, is marked at the host's receive time, §5.5).
    ts: datetime | None = None


class Declared(NamedTuple):
    """A metric as a BIRTH declared it (for discovery, writes and DATA without names)."""

    name: str
    datatype: int
    alias: int | None


class Problem(enum.Enum):
    """Why a message of an edge node cannot be trusted as it is (each is counted)."""

    SEQ_GAP = "seq_gaps"  # §6.4.5: a seq other than the previous + 1 (mod 256), or none
    UNKNOWN_ALIAS = "unknown_aliases"  # §6.4.6: an alias no BIRTH declared
    UNBORN = "unborn"  # DATA or DBIRTH from a node or device without its BIRTH
    STALE_DEATH = "stale_deaths"  # an NDEATH whose bdSeq is not the NBIRTH's (§5.4)
    PAYLOAD = "decode_errors"  # not a Sparkplug B payload


class Found(NamedTuple):
    """One problem of a message: its kind and what exactly was seen."""

    kind: Problem
    text: str

    def __str__(self) -> str:
        return self.text


class Outcome(NamedTuple):
    """The result of one message: events, a rebirth request (topic, payload), problems."""

    events: list[Event]
    rebirth: tuple[str, bytes] | None = None
    problems: list[Found] = []  # noqa: RUF012 - never mutated: a NamedTuple default
    ignored: bool = False


@attrs.define
class Device:
    """A device's BIRTH: its metrics by name."""

    metrics: dict[str, Declared] = attrs.field(factory=dict)
    born: bool = False


@attrs.define
class Node:
    """One edge node's state (`group/node`)."""

    group: str
    name: str
    born: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    metrics: dict[str, Declared] = attrs.field(factory=dict)
    #: alias -> (device or None, metric name), from the node's and its devices' BIRTHs.
    aliases: dict[int, tuple[str | None, str]] = attrs.field(factory=dict)
    devices: dict[str, Device] = attrs.field(factory=dict)
    rebirth_at: datetime | None = None  # when kom last asked this node for a rebirth
    rebirths: int = 0
    births: int = 0
    deaths: int = 0

    def __repr__(self) -> str:
        state = "born" if self.born else "unborn"
        return f"<Node {self.group}/{self.name} {state} seq={self.seq} devices={len(self.devices)}>"

    def declared(self, device: str | None) -> dict[str, Declared]:
        if device is None:
            return self.metrics
        found = self.devices.get(device)
        return found.metrics if found is not None else {}


@attrs.define
class Host:
    """Every edge node a host application has heard of, and the rules of chapter 5 over them."""

    rebirth_interval: float = REBIRTH_INTERVAL
    nodes: dict[tuple[str, str], Node] = attrs.field(factory=dict)
    decode_errors: int = 0
    stale_deaths: int = 0

    def __repr__(self) -> str:
        return f"<Host nodes={len(self.nodes)}>"

    def node(self, group: str, name: str) -> Node:
        node = self.nodes.get((group, name))
        if node is None:
            node = self.nodes[group, name] = Node(group, name)
        return node

    def receive(self, topic: SpTopic, data: bytes, now: datetime) -> Outcome:
        """One message of an edge node (never raises for any payload)."""
        kind = topic.type
        if kind.endswith("CMD"):
            return Outcome([], ignored=True)  # commands are what hosts send
        try:
            payload = decode(data)
        except PayloadError as exc:
            self.decode_errors += 1
            return Outcome([], problems=[Found(Problem.PAYLOAD, f"{topic}: {exc}")])
        node = self.node(topic.group, topic.node)
        if kind == "NBIRTH":
            return self._node_birth(node, payload, now)
        if kind == "NDEATH":
            return self._node_death(node, payload)
        problems: list[Found] = []
        if not node.born:
            problems.append(
                Found(Problem.UNBORN, f"{topic}: the edge node was never born (no NBIRTH seen)")
            )
            return Outcome([], self._rebirth(node, now), problems)
        want_rebirth = self._check_seq(node, topic, payload, problems)
        device = topic.device
        if device is None:  # NDATA
            values, unknown = self._resolve(node, None, payload, now, problems)
            events = [Event(Kind.DATA, topic.key, values)]
            return Outcome(
                events, self._rebirth(node, now) if want_rebirth or unknown else None, problems
            )
        state = node.devices.get(device)
        if kind == "DBIRTH":
            state = node.devices[device] = Device(born=True)
            values = self._declare(node, device, state.metrics, payload, now, problems)
            events = [Event(Kind.BIRTH, topic.key, values)]
        elif state is None or not state.born:
            problems.append(
                Found(Problem.UNBORN, f"{topic}: the device was never born (no DBIRTH seen)")
            )
            return Outcome([], self._rebirth(node, now), problems)
        elif kind == "DDEATH":
            state.born = False
            events = [Event(Kind.DEATH, topic.key, [], payload.timestamp)]
        else:
            values, unknown = self._resolve(node, device, payload, now, problems)
            want_rebirth = want_rebirth or unknown
            events = [Event(Kind.DATA, topic.key, values)]
        return Outcome(events, self._rebirth(node, now) if want_rebirth else None, problems)

    def _node_birth(self, node: Node, payload: Payload, now: datetime) -> Outcome:
        """A new session of the node: everything it said before is forgotten."""
        problems: list[Found] = []
        node.born = True
        node.births += 1
        node.seq = payload.seq
        node.metrics = {}
        node.aliases = {}
        node.devices = {}
        node.rebirth_at = None
        values = self._declare(node, None, node.metrics, payload, now, problems)
        node.bd_seq = next(
            (v.value for v in values if v.name == BDSEQ_METRIC and isinstance(v.value, int)), None
        )
        return Outcome(
            [Event(Kind.BIRTH, station_key(node.group, node.name), values)], None, problems
        )

    def _node_death(self, node: Node, payload: Payload) -> Outcome:
        """The node's will (NDEATH); it counts only with its NBIRTH's bdSeq (an older session's
        will, delivered late, must not kill the new one)."""
        bd_seq = next(
            (m.value(DataType.UInt64) for m in payload.metrics if m.name == BDSEQ_METRIC), None
        )
        if not node.born or bd_seq != node.bd_seq:
            self.stale_deaths += 1
            why = (
                "not born"
                if not node.born
                else f"bdSeq {bd_seq!r} is not the NBIRTH's {node.bd_seq}"
            )
            text = f"NDEATH of {node.group}/{node.name} ignored: {why}"
            return Outcome([], problems=[Found(Problem.STALE_DEATH, text)])
        node.born = False
        node.deaths += 1
        events = [Event(Kind.DEATH, station_key(node.group, node.name), [])]
        for name, device in node.devices.items():
            if device.born:
                device.born = False
                events.append(Event(Kind.DEATH, station_key(node.group, node.name, name), []))
        return Outcome(events)

    def _check_seq(
        self, node: Node, topic: SpTopic, payload: Payload, problems: list[Found]
    ) -> bool:
        """§6.4.5 "Payload": each message after the NBIRTH carries the last seq + 1 (mod 256)."""
        previous = node.seq
        node.seq = payload.seq
        if payload.seq is None:
            problems.append(Found(Problem.SEQ_GAP, f"{topic}: no sequence number"))
            return True
        if previous is not None and payload.seq != (previous + 1) % 256:
            problems.append(Found(Problem.SEQ_GAP, f"{topic}: seq {payload.seq} after {previous}"))
            return True
        return False

    def _declare(  # noqa: PLR0917 - private, called with the message's parts in order
        self,
        node: Node,
        device: str | None,
        declared: dict[str, Declared],
        payload: Payload,
        now: datetime,
        problems: list[Found],
    ) -> list[Value]:
        """A BIRTH's metrics: each declares its name, datatype and alias, and has a value."""
        values: list[Value] = []
        default_ts = payload.timestamp or now
        for m in payload.metrics:
            if m.name is None:
                text = f"a BIRTH metric without a name (alias {m.alias}) ignored"
                problems.append(Found(Problem.PAYLOAD, text))
                continue
            declared[m.name] = Declared(m.name, m.datatype, m.alias)
            if m.alias is not None:
                node.aliases[m.alias] = (device, m.name)
            values.append(_value(m, m.name, m.datatype, default_ts, problems))
        return values

    def _resolve(
        self,
        node: Node,
        device: str | None,
        payload: Payload,
        now: datetime,
        problems: list[Found],
    ) -> tuple[list[Value], bool]:
        """A DATA message's metrics by their BIRTH names; True when an alias is unknown."""
        values: list[Value] = []
        unknown = False
        declared = node.declared(device)
        default_ts = payload.timestamp or now
        for m in payload.metrics:
            name = m.name
            if name is None:
                found = node.aliases.get(m.alias) if m.alias is not None else None
                if found is None or found[0] != device:
                    text = f"alias {m.alias} was not declared in a BIRTH"
                    problems.append(Found(Problem.UNKNOWN_ALIAS, text))
                    unknown = True
                    continue
                name = found[1]
            known = declared.get(name)
            datatype = m.datatype or (known.datatype if known is not None else 0)
            values.append(_value(m, name, datatype, default_ts, problems))
        return values, unknown

    def _rebirth(self, node: Node, now: datetime) -> tuple[str, bytes] | None:
        """An NCMD asking for a rebirth (§5.17 "Commands"; §5.9: what a host does when the
        order of a node's messages breaks), unless one went to this node lately."""
        last = node.rebirth_at
        if last is not None and (now - last).total_seconds() < self.rebirth_interval:
            return None
        node.rebirth_at = now
        node.rebirths += 1
        return rebirth_command(node.group, node.name, now)

    def rebirth_all(self, now: datetime) -> list[tuple[Node, tuple[str, bytes]]]:
        """Rebirth requests to every born node (the rate limit applies): after kom's own
        connection was lost, what the nodes reported meanwhile is unknown."""
        requests = []
        for node in self.nodes.values():
            request = self._rebirth(node, now) if node.born else None
            if request is not None:
                requests.append((node, request))
        return requests

    def command(
        self,
        key: Sequence[str],
        metric: str,
        datatype: int,
        value: MetricValue,
        now: datetime,
    ) -> tuple[str, bytes]:
        """An NCMD or DCMD writing one metric (§6.4.6: by alias alone when the BIRTH gave one).

        `key` is (group, node) or (group, node, device); `datatype` is used when no BIRTH
        declared the metric. Raises PayloadError when the value does not fit the datatype.
        """
        group, name = key[0], key[1]
        device = key[2] if len(key) > 2 else None
        node = self.nodes.get((group, name))
        known = node.declared(device).get(metric) if node is not None else None
        alias = known.alias if known is not None else None
        if known is not None and known.datatype:
            datatype = known.datatype
        out = Out(None if alias is not None else metric, datatype, value, alias)
        payload = encode([out], now)
        if device is None:
            return f"{PREFIX}{group}/NCMD/{name}", payload
        return f"{PREFIX}{group}/DCMD/{name}/{device}", payload


def rebirth_command(group: str, node: str, now: datetime) -> tuple[str, bytes]:
    """A rebirth request: NCMD `Node Control/Rebirth` = true to the edge node."""
    payload = encode([Out(REBIRTH_METRIC, DataType.Boolean, True)], now)
    return f"{PREFIX}{group}/NCMD/{node}", payload


def _value(
    m: Metric, name: str, datatype: int, default_ts: datetime, problems: list[Found]
) -> Value:
    """The metric's value under `datatype`, stamped with its own time or the payload's.

    Runs for every metric: the record is built from its tuple (NamedTuple's own __new__ is
    Python code), and a null is told apart before typed_value is called.
    """
    ts = m.timestamp or default_ts
    raw = m.raw
    if m.is_null or raw is None:
        return new_record(Value, (name, None, ts, True, datatype, None, m.quality))
    try:
        value = typed_value(raw, datatype)
    except PayloadError as exc:
        problems.append(Found(Problem.PAYLOAD, f"{name}: {exc}"))
        return new_record(Value, (name, None, ts, True, datatype, str(exc), m.quality))
    return new_record(Value, (name, value, ts, value is None, datatype, None, m.quality))
