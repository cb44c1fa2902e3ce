"""stations.toml: loading, validation and the frozen configuration records (SPEC §1, §2, §4).

Validation collects every problem with its key path before anything connects, so an
integrator fixes a file in one pass: `station[2].tag[3].address: unknown address ...`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import tomli

from ._address import (
    Address,
    AddressSyntaxError,
    Kind,
    Step,
    check_type,
    parse_address,
    parse_json_address,
)
from ._advice import model_hint, regex_problem, type_hint
from ._binary import ENCODINGS
from ._confirm import Confirm, check_confirm_tags, read_confirm
from ._convert import converter
from ._errors import ConfigError, ConversionError, TimeMaskError
from ._model import Value, ValueType
from ._processing import Processing
from ._timemask import TimeMask, Zone
from ._topic import TopicFilter, check_topic
from .sparkplug._topic import check_id as _check_sparkplug_id
from .sparkplug._topic import state_topic

T = TypeVar("T")

Mode = Literal["on", "off", "simulation"]
MODES = ("on", "off", "simulation")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: An address without any of these matches only itself: no regular expression to compile.
_REGEX_META = frozenset(".^$*+?{}[]|()\\")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")
PLACEHOLDER_FORMATS = ("json", "int", "raw")


@attrs.frozen(repr=False)
class Secret:
    """A password; its value never appears in repr, str, logs or errors."""

    value: str = attrs.field(eq=False)
    source: str = "inline"

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    __str__ = __repr__


@attrs.frozen
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class Tls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


@attrs.frozen
class Will:
    topic: str
    message: bytes = b""
    qos: int = 0
    retain: bool = False


@attrs.frozen
class LineConfig:
    """One MQTT session to a broker; every parameter of SPEC §2 with its default."""

    name: str
    endpoints: tuple[Endpoint, ...]
    client_id: str
    client_id_derived: bool = False
    tls: Tls | None = None
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str = "/mqtt"
    protocol: Literal["3.1.1", "5", "auto"] = "3.1.1"
    username: str | None = None
    password: Secret | None = None
    clean_session: bool = False
    keep_alive: int = 0
    ping_interval: float = 60
    reply_timeout: float = 20
    topic_filters: tuple[TopicFilter, ...] = (TopicFilter("#"),)
    subscribe_qos: int = 1
    publish_qos: int = 0
    publish_retain: bool = False
    will: Will | None = None
    payload_type: Literal["text", "json", "sparkplug_b"] = "text"
    time_field: tuple[Step, ...] | None = None
    time_mask: TimeMask = attrs.field(factory=lambda: TimeMask.parse(DEFAULT_MASK))
    time_zone: Zone = attrs.field(factory=lambda: Zone.parse("local"))
    ignore_missing_time: bool = False
    debug: bool = False
    max_payload: int = 1 << 20
    max_held: int = 10_000
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    outbox: str | None = None
    sparkplug_host_id: str | None = None  # SPEC §14: kom publishes its STATE as this host
    #: SPEC §14: rebirth requests to one edge node at most this often (seconds; 0: no limit).
    sparkplug_rebirth_interval: float = 5.0
    #: SPEC §16: a source time further ahead of / behind the receive time (seconds) is refused.
    max_future: float | None = None
    max_past: float | None = None
    #: ioBroker-style publishing (seeds/003), the defaults of every output tag of the line.
    publish_only_changes: bool = False
    publish_on_connect: bool = False
    # MQTT 5 (SPEC §11); sent only on a version-5 connection.
    #: Session Expiry Interval in seconds; None: 0 with a clean session, else "never".
    session_expiry: int | None = None
    receive_maximum: int = 65535
    #: Largest packet kom accepts, announced in CONNECT; None: not announced (kom still
    #: skips a PUBLISH over `max_payload` plus headers as it streams in).
    maximum_packet_size: int | None = None
    topic_alias_maximum: int = 64
    user_properties: tuple[tuple[str, str], ...] = ()
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    @property
    def effective_clean_session(self) -> bool:
        """An empty client id forces a clean session (SPEC §2)."""
        return self.clean_session or self.client_id == ""


@attrs.frozen
class Publish:
    """An output tag's `publish = { topic, payload }` template (SPEC §6)."""

    topic: str
    payload: str
    #: None: the line's `publish_only_changes` / `publish_on_connect`.
    only_changes: bool | None = None
    on_connect: bool | None = None


@attrs.frozen
class TagConfig:
    name: str
    type: ValueType
    address: Address | None
    unit: str | None = None
    description: str | None = None
    processing: Processing = attrs.field(factory=Processing)
    publish: Publish | None = None
    default: Value = None
    #: BIN= only: how the bytes are written (SPEC §15): base64, hex, or raw (BIN=$ only).
    encoding: str | None = None
    #: SPEC §11: MQTT 5 user properties of the PUBLISH an output tag makes.
    user_properties: tuple[tuple[str, str], ...] = ()
    #: SPEC §11: how a write of this output tag is confirmed (read-back or response).
    confirm: Confirm | None = None


@attrs.frozen
class StationConfig:
    name: str
    line: str
    address: str
    tags: tuple[TagConfig, ...] = ()
    will_topic: str | None = None
    will_payload: bytes | None = None
    mode: Mode = "on"
    payload_type: Literal["text", "json", "sparkplug_b"] | None = None
    sparkplug: str | None = None  # SPEC §14: "group/node" or "group/node/device"
    regex: re.Pattern[str] | None = attrs.field(default=None, eq=False, repr=False)
    #: SPEC §16: seconds without a message before the input tags turn `stale`.
    stale_after: float | None = None
    #: The line's, unless the station gives its own (SPEC §16, §2 time_zone).
    max_future: float | None = None
    max_past: float | None = None
    time_zone: Zone | None = None

    def tag(self, name: str) -> TagConfig | None:
        for tag in self.tags:
            if tag.name == name:
                return tag
        return None

    def tag_by_kind(self, kind: Kind) -> TagConfig | None:
        for tag in self.tags:
            if tag.address is not None and tag.address.kind is kind:
                return tag
        return None


@attrs.frozen
class Config:
    lines: tuple[LineConfig, ...]
    stations: tuple[StationConfig, ...]
    source: str | None = None

    def line(self, name: str) -> LineConfig:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(name)

    def stations_of(self, line: str) -> tuple[StationConfig, ...]:
        return tuple(s for s in self.stations if s.line == line)

    def find_tag(self, full_name: str) -> tuple[StationConfig, TagConfig]:
        """The station and tag of `station.tag`; KeyError when there is none."""
        station_name, _, tag_name = full_name.partition(".")
        for station in self.stations:
            if station.name == station_name:
                tag = station.tag(tag_name)
                if tag is not None:
                    return station, tag
        raise KeyError(full_name)


DEFAULT_MASK = "yyyy-mm-dd hh:mi:ss.mss"

LINE_KEYS = frozenset(
    {
        "name",
        "host",
        "port",
        "tls",
        "transport",
        "ws_path",
        "protocol",
        "username",
        "password",
        "client_id",
        "clean_session",
        "keep_alive",
        "ping_interval",
        "reply_timeout",
        "topic_filter",
        "subscribe_qos",
        "publish_qos",
        "publish_retain",
        "will",
        "payload_type",
        "time_field",
        "time_mask",
        "time_zone",
        "ignore_missing_time",
        "debug",
        "max_payload",
        "max_held",
        "reconnect_min",
        "reconnect_max",
        "outbox",
        "sparkplug_host_id",
        "sparkplug_rebirth_interval",
        "max_future",
        "max_past",
        "publish_only_changes",
        "publish_on_connect",
        "session_expiry",
        "receive_maximum",
        "maximum_packet_size",
        "topic_alias_maximum",
        "user_properties",
        "no_local",
        "retain_as_published",
        "retain_handling",
    }
)
STATION_KEYS = frozenset(
    {"name", "line", "address", "will_topic", "will_payload", "mode", "payload_type", "tag"}
    | {"stale_after", "max_future", "max_past", "time_zone", "sparkplug"}
)
TAG_KEYS = frozenset(
    {
        "name",
        "type",
        "address",
        "unit",
        "description",
        "publish",
        "default",
        "invert",
        "scale",
        "min",
        "max",
        "limits",
        "deadband",
        "on_change",
        "encoding",
        "user_properties",
        "confirm",
        "confirm_tag",
        "confirm_timeout",
        "response_topic",
    }
)


class _Errors:
    """Collects errors with their key paths while a configuration is read."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


_MISSING: Any = object()


class _Table:
    """One TOML table being read, with its key path for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str, errors: _Errors, keys: frozenset[str]):
        self.data = data
        self.path = path
        self.errors = errors
        for key in data:
            if key not in keys:
                near = _nearest(key, keys)
                hint = f" (did you mean {near!r}?)" if near else ""
                hint = model_hint(key, keys) or hint
                errors.add(f"{self.at(key)}", f"unknown key{hint}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.errors.add(self.at(key), message)

    def get(
        self,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.error(key, "required")
            return None if default is _MISSING else default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints to isinstance; a bool where a number is expected is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_type_name(k) for k in kinds)
            self.error(key, f"expected {names}, found {_show(value)}")
            return None if default is _MISSING else default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(key, problem)
                return None if default is _MISSING else default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        return self.get(key, (int, float), default, _in_range(low, high))  # type: ignore[no-any-return]

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        return self.get(key, int, default, _in_range(low, high))  # type: ignore[no-any-return]

    def choice(self, key: str, default: str, choices: Sequence[str]) -> Any:
        def check(value: str) -> str | None:
            if value in choices:
                return None
            return f"expected one of {', '.join(map(repr, choices))}, found {value!r}"

        return self.get(key, str, default, check)


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return f"expected {low}..{high}, found {value!r}"

    return check


def _finite(value: float) -> str | None:
    return None if math.isfinite(value) else f"expected a finite number, found {value!r}"


def _non_negative(value: float) -> str | None:
    if math.isfinite(value) and value >= 0:
        return None
    return f"expected a finite number >= 0, found {value!r}"


#: The longest `stale_after`, `max_future` or `max_past` (about 31 years): a longer one could
#: not be added to a date (Python's datetime ends in 9999), and means "off" anyway.
MAX_SECONDS = 1e9


def _positive(value: float) -> str | None:
    if math.isfinite(value) and 0 < value <= MAX_SECONDS:
        return None
    if math.isfinite(value) and value > 0:
        return f"expected at most {MAX_SECONDS:.0f} seconds (about 31 years), found {value!r}"
    return f"expected a number of seconds > 0, found {value!r}"


def _seconds(t: _Table, key: str) -> float | None:
    """An optional duration in seconds, above zero (SPEC §16 keys: absent means off)."""
    value = t.get(key, (int, float), None, _positive)
    return None if value is None else float(value)


def _nearest(key: str, keys: frozenset[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
    return found[0] if found else None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raises ConfigError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {file}: {exc}"], source=str(file)) from exc
    return loads(text, source=str(file), base_dir=file.resolve().parent)


def loads(text: str, source: str | None = None, base_dir: Path | None = None) -> Config:
    """Validate configuration text; relative file names are read from `base_dir`."""
    with collector_paused():
        try:
            data = tomli.loads(text)
        except tomli.TOMLDecodeError as exc:
            raise ConfigError([f"TOML syntax: {exc}"], source=source) from exc
        return from_dict(data, source=source, base_dir=base_dir)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a configuration is read or compiled.

    Loading creates millions of long-lived objects and no garbage cycles; with the collector on,
    its full collections walk all of them again and again (a quarter of the time for 100,000 tags).
    A host that turned the collector off keeps it off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def from_dict(
    data: Mapping[str, Any], source: str | None = None, base_dir: Path | None = None
) -> Config:
    """Validate an already parsed configuration document."""
    errors = _Errors()
    top = _Table(data, "", errors, frozenset({"line", "station"}))
    base = base_dir or Path.cwd()
    # The file's absolute path, however the caller spelt it: one installation, one client id.
    identity = str(Path(source).resolve()) if source else str(base)

    raw_lines = data.get("line", _MISSING)
    line_tables: list[tuple[str, Mapping[str, Any]]] = []
    if raw_lines is _MISSING:
        top.error("line", "required: a [line] table or [[line]] tables")
    elif isinstance(raw_lines, dict):
        line_tables.append(("line", raw_lines))
    elif isinstance(raw_lines, list):
        if not raw_lines:
            top.error("line", "at least one line is needed")
        for i, item in enumerate(raw_lines, 1):
            if isinstance(item, dict):
                line_tables.append((f"line[{i}]", item))
            else:
                errors.add(f"line[{i}]", f"expected a table, found {_show(item)}")
    else:
        top.error("line", f"expected a table or tables, found {_show(raw_lines)}")

    lines: list[LineConfig] = []
    for path, table in line_tables:
        line = _read_line(
            _Table(table, path, errors, LINE_KEYS), len(line_tables) > 1, base, identity
        )
        if line is not None:
            if any(other.name == line.name for other in lines):
                errors.add(f"{path}.name", f"a second line named {line.name!r}")
            lines.append(line)

    stations: list[StationConfig] = []
    paths: dict[str, str] = {}  # station name -> key path, for checks across stations
    raw_stations = data.get("station", [])
    if not isinstance(raw_stations, list):
        top.error("station", "expected [[station]] tables")
        raw_stations = []
    line_by_name = {line.name: line for line in lines}
    names: set[str] = set()
    by_address: dict[tuple[str, str], str] = {}
    memo = _Memo()
    for i, item in enumerate(raw_stations, 1):
        path = f"station[{i}]"
        if not isinstance(item, dict):
            errors.add(path, f"expected a table, found {_show(item)}")
            continue
        station = _read_station(_Table(item, path, errors, STATION_KEYS), line_by_name, lines, memo)
        if station is None:
            continue
        # Dictionaries, not a scan of the earlier stations: files have 10,000 stations.
        other = by_address.get((station.line, station.address))
        if station.name in names:
            errors.add(f"{path}.name", f"a second station named {station.name!r}")
        elif other is not None:
            errors.add(
                f"{path}.address",
                f"station {other!r} of line {station.line!r} has the same address "
                f"{station.address!r}",
            )
        names.add(station.name)
        by_address.setdefault((station.line, station.address), station.name)
        stations.append(station)
        paths[station.name] = path
    check_confirm_tags(stations, paths, errors.add)

    explicit = {table.get("name", "line") for _, table in line_tables if "topic_filter" in table}
    lines = [_sparkplug_filters(line, stations, line.name in explicit) for line in lines]
    if errors.items:
        raise ConfigError(errors.items, source=source)
    return Config(lines=tuple(lines), stations=tuple(stations), source=source)


def _sparkplug_filters(
    line: LineConfig, stations: Sequence[StationConfig], explicit: bool
) -> LineConfig:
    """SPEC §14 "kom subscribes to what it needs": a line without `topic_filter` whose stations
    are all Sparkplug stations subscribes to their edge nodes' topics only."""
    own = [s for s in stations if s.line == line.name]
    filters = line.topic_filters
    if not explicit and own and all(s.sparkplug for s in own):
        nodes = sorted({"/".join((s.sparkplug or "").split("/")[:2]) for s in own})
        filters = tuple(
            TopicFilter(f"spBv1.0/{group_node.replace('/', '/+/', 1)}/#") for group_node in nodes
        )
    if line.sparkplug_host_id:
        # Sparkplug 3.0.0 §4.2.3.1 (tck-id-host-topic-phid-birth-sub-required): a host
        # application subscribes to its own STATE topic, to answer an offline on it.
        own_state = state_topic(line.sparkplug_host_id)
        if not any(f.matches(own_state) for f in filters):
            filters = (*filters, TopicFilter(own_state))
    if filters == line.topic_filters:
        return line
    return attrs.evolve(line, topic_filters=filters)


def _derive_client_id(line_name: str, identity: str) -> str:
    """A client id stable for one installation and distinct between installations.

    Built from the host name and the configuration file's absolute path: restarting the
    same installation reconnects to its persistent session, while two machines (or two
    files) never knock each other off the broker with one id.
    """
    host = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:16] or "host"
    digest = hashlib.sha256(f"{identity}\0{line_name}".encode()).hexdigest()[:8]
    return f"kom-{host}-{line_name[:16]}-{digest}"


def _read_line(t: _Table, many: bool, base: Path, identity: str) -> LineConfig | None:
    name = t.get("name", str, _MISSING if many else "line", _check_name)
    if name is None:
        return None
    tls = _read_tls(t, base)
    port = t.integer("port", 8883 if tls else 1883, 1, 65535)
    endpoints = _read_hosts(t, port)
    transport = t.choice("transport", "tcp", ("tcp", "websockets"))
    ws_path = t.get("ws_path", str, "/mqtt")
    protocol = t.get("protocol", (str, int, float), "3.1.1")
    protocol = str(protocol)
    if protocol in ("3.1.1", "4", "311"):
        protocol = "3.1.1"
    elif protocol in ("5", "5.0"):
        protocol = "5"
    elif protocol != "auto":
        t.error("protocol", f"expected '3.1.1', '5' or 'auto', found {protocol!r}")
        protocol = "3.1.1"
    username = t.get("username", str, None)
    password = _read_secret(t, "password", base)
    client_id = t.get("client_id", str, None, _check_client_id)
    derived = client_id is None
    if client_id is None:
        client_id = _derive_client_id(name, identity)
    filters = _read_filters(t)
    will = _read_will(t)
    time_field = None
    raw_field = t.get("time_field", str, None)
    if raw_field:
        body = raw_field[3:] if raw_field.upper().startswith("JA=") else raw_field
        try:
            time_field = parse_json_address(body)
        except AddressSyntaxError as exc:
            t.error("time_field", str(exc))
    mask = _parse_with(t, "time_mask", DEFAULT_MASK, TimeMask.parse)
    zone = _parse_with(t, "time_zone", "local", Zone.parse)
    # Both above zero: a back-off of zero would reconnect in a tight loop.
    reconnect_min = t.number("reconnect_min", 0.5, 0.01, 3600)
    reconnect_max = t.number("reconnect_max", 30.0, 0.01, 86400)
    if reconnect_min is not None and reconnect_max is not None and reconnect_max < reconnect_min:
        t.error("reconnect_max", f"must not be below reconnect_min ({reconnect_min:g})")
    outbox = t.get("outbox", str, None)
    if outbox:
        outbox = str((base / outbox).resolve())
    host_id = t.get("sparkplug_host_id", str, None, _check_sparkplug_id)
    if host_id and will is not None:
        t.error(
            "will",
            f"sparkplug_host_id makes the will ({state_topic(host_id)} offline): leave will out",
        )
    return LineConfig(
        name=name,
        endpoints=endpoints,
        client_id=client_id,
        client_id_derived=derived,
        tls=tls,
        transport=transport,
        ws_path=ws_path,
        protocol=protocol,  # type: ignore[arg-type]
        username=username,
        password=password,
        clean_session=_clean_session(t, host_id),
        keep_alive=t.integer("keep_alive", 0, 0, 65535),
        ping_interval=t.number("ping_interval", 60, 0, 3600),
        reply_timeout=t.number("reply_timeout", 20, 0, 3600),
        topic_filters=filters,
        subscribe_qos=t.integer("subscribe_qos", 1, 0, 2),
        publish_qos=t.integer("publish_qos", 0, 0, 2),
        publish_retain=t.get("publish_retain", bool, False),
        will=will,
        payload_type=t.choice("payload_type", "text", ("text", "json", "sparkplug_b")),
        time_field=time_field,
        time_mask=mask or TimeMask.parse(DEFAULT_MASK),
        time_zone=zone or Zone.parse("local"),
        ignore_missing_time=t.get("ignore_missing_time", bool, False),
        debug=t.get("debug", bool, False),
        max_payload=t.integer("max_payload", 1 << 20, 1, 256 << 20),
        max_held=t.integer("max_held", 10_000, 1, 10_000_000),
        reconnect_min=reconnect_min if reconnect_min is not None else 0.5,
        reconnect_max=reconnect_max if reconnect_max is not None else 30.0,
        outbox=outbox,
        sparkplug_host_id=host_id or None,
        sparkplug_rebirth_interval=t.number("sparkplug_rebirth_interval", 5.0, 0, 3600),
        max_future=_seconds(t, "max_future"),
        max_past=_seconds(t, "max_past"),
        publish_only_changes=t.get("publish_only_changes", bool, False),
        publish_on_connect=t.get("publish_on_connect", bool, False),
        session_expiry=_read_session_expiry(t),
        receive_maximum=t.integer("receive_maximum", 65535, 1, 65535),
        maximum_packet_size=t.get("maximum_packet_size", int, None, _in_range(64, 268_435_460)),
        topic_alias_maximum=t.integer("topic_alias_maximum", 64, 0, 65535),
        user_properties=_read_user_properties(t),
        no_local=t.get("no_local", bool, False),
        retain_as_published=t.get("retain_as_published", bool, False),
        retain_handling=t.integer("retain_handling", 0, 0, 2),
    )


def _read_session_expiry(t: _Table) -> int | None:
    """SPEC §11: seconds, or "never" (MQTT 5 §3.1.2.11.2: 0xFFFFFFFF never expires)."""
    raw = t.get("session_expiry", (int, str), None)
    if raw is None:
        return None
    if raw == "never":
        return 0xFFFF_FFFF
    if isinstance(raw, str) or not 0 <= raw <= 0xFFFF_FFFE:
        t.error("session_expiry", f"expected seconds (0..4294967294) or 'never', found {raw!r}")
        return None
    return int(raw)


def _read_user_properties(t: _Table) -> tuple[tuple[str, str], ...]:
    """A table of strings: MQTT 5 user properties (a line's in CONNECT, a tag's in its PUBLISH)."""
    raw = t.get("user_properties", dict, None)
    if raw is None:
        return ()
    pairs = []
    for key, value in raw.items():
        if not isinstance(value, str):
            t.error(f"user_properties.{key}", f"expected a string, found {_show(value)}")
            continue
        pairs.append((key, value))
    return tuple(pairs)


def _clean_session(t: _Table, host_id: str | None) -> bool:
    """`clean_session`, true by default on a Sparkplug host application: Sparkplug 3.0.0 §5.3
    (tck-id-message-flow-phid-sparkplug-clean-session-311/-50) requires a clean session."""
    clean: bool = t.get("clean_session", bool, bool(host_id))
    if host_id and clean is False:
        t.error(
            "clean_session",
            "a Sparkplug host application (sparkplug_host_id) uses a clean session "
            "(Sparkplug 3.0.0 §5.3): leave clean_session out or set it to true",
        )
    return clean


def _check_name(value: str) -> str | None:
    if NAME.fullmatch(value):
        return None
    return f"a name matches [A-Za-z_][A-Za-z0-9_-]*, found {value!r}"


def _check_sparkplug_key(value: str) -> str | None:
    parts = value.split("/")
    if len(parts) not in (2, 3):
        return f'expected "group/node" or "group/node/device", found {value!r}'
    for part in parts:
        problem = _check_sparkplug_id(part)
        if problem:
            return problem
    return None


def _check_will_topic(value: str) -> str | None:
    return check_topic(value) if value else None


def _check_client_id(value: str) -> str | None:
    if len(value.encode()) > 65535:
        return "a client id may not be longer than 65535 bytes"
    return None


def _parse_with(t: _Table, key: str, default: str, parse: Callable[[str], T]) -> T | None:
    text = t.get(key, str, default)
    if text is None:
        return None
    try:
        return parse(text)
    except TimeMaskError as exc:
        t.error(key, str(exc))
        return None


def _read_hosts(t: _Table, port: int) -> tuple[Endpoint, ...]:
    raw = t.get("host", (str, list))
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else re.split(r"[;,]", raw)
    endpoints: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            t.error("host", f"an address is a non-empty string, found {_show(item)}")
            continue
        text = item.strip()
        m = re.fullmatch(
            r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s]+)(?::(\d+))?|([0-9A-Fa-f:]+)", text
        )
        if not m:
            t.error("host", f"expected HOST or HOST:PORT, found {text!r}")
            continue
        host = m.group(1) or m.group(3) or m.group(5)
        port_text = m.group(2) or m.group(4)
        this_port = int(port_text) if port_text else port
        if not 1 <= this_port <= 65535:
            t.error("host", f"port out of range in {text!r}")
            continue
        endpoints.append(Endpoint(host, this_port))
    if not endpoints and raw is not None:
        t.error("host", "at least one broker address is needed")
    return tuple(endpoints)


def _read_tls(t: _Table, base: Path) -> Tls | None:
    raw = t.get("tls", (dict, bool), None)
    if raw is None or raw is False:
        return None
    if raw is True:
        return Tls()
    tt = _Table(
        raw, t.at("tls"), t.errors, frozenset({"ca_file", "cert_file", "key_file", "verify"})
    )
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value = tt.get(key, str, None)
        if value is not None:
            path = (base / value).resolve()
            if not path.is_file():
                tt.error(key, f"no such file: {path}")
            files[key] = str(path)
    if ("cert_file" in files) != ("key_file" in files) and "cert_file" not in files:
        tt.error("cert_file", "a key_file needs its cert_file")
    return Tls(verify=tt.get("verify", bool, True), **files)


def _read_secret(t: _Table, key: str, base: Path) -> Secret | None:
    raw = t.data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str | dict):  # not shown: it may be the password itself
        t.error(key, f"expected a string or a table, found {_type_name(type(raw))}")
        return None
    if isinstance(raw, str):
        return Secret(raw)
    st = _Table(raw, t.at(key), t.errors, frozenset({"env", "file"}))
    if len(raw) != 1:
        t.error(key, 'give exactly one of { env = "VAR" } or { file = "path" }')
        return None
    env = st.get("env", str, None)
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            t.error(key, f"environment variable {env!r} is not set")
            return None
        return Secret(value, f"env:{env}")
    file = st.get("file", str, None)
    if file is not None:
        path = (base / file).resolve()
        try:
            return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"), f"file:{path}")
        except (OSError, UnicodeDecodeError) as exc:
            t.error(key, f"cannot read {path}: {type(exc).__name__}")
    return None


def _read_filters(t: _Table) -> tuple[TopicFilter, ...]:
    raw = t.get("topic_filter", (str, list), "#")
    # One string may hold several filters separated by commas, as integrators write them for
    # ioBroker (seeds/003 "Patterns"); a filter that contains a comma must come in a list.
    items = [part.strip() for part in raw.split(",")] if isinstance(raw, str) else raw
    filters: list[TopicFilter] = []
    split = isinstance(raw, str) and len(items) > 1
    for i, item in enumerate(items, 1):
        where = "topic_filter" if isinstance(raw, str) else f"topic_filter[{i}]"
        if not isinstance(item, str):
            t.error(where, f"expected a string, found {_show(item)}")
            continue
        try:
            filters.append(TopicFilter(item))
        except ValueError as exc:
            t.error(
                where, f"filter {i} of the comma-separated {raw!r}: {exc}" if split else str(exc)
            )
    if not filters and not t.errors.items:
        t.error("topic_filter", "at least one topic filter is needed")
    return tuple(filters)


def _read_will(t: _Table) -> Will | None:
    raw = t.get("will", dict, None)
    if raw is None:
        return None
    wt = _Table(raw, t.at("will"), t.errors, frozenset({"topic", "message", "qos", "retain"}))
    topic = wt.get("topic", str)
    if topic is not None:
        problem = check_topic(topic)
        if problem:
            wt.error("topic", problem)
    return Will(
        topic=topic or "",
        message=wt.get("message", str, "").encode(),
        qos=wt.integer("qos", 0, 0, 2),
        retain=wt.get("retain", bool, False),
    )


class _Memo:
    """Tag records already read, shared by the stations that repeat them.

    `tags` holds single tags (see _memo_key); `tables` whole tag lists of stations, keyed by
    their text: files for many identical devices repeat a table thousands of times, and a
    repeated table that was read without error gives the same records again.
    """

    def __init__(self) -> None:
        self.tags: dict[tuple[Any, ...], TagConfig] = {}
        self.tables: dict[tuple[str, int, str, str], tuple[TagConfig, ...]] = {}


def _read_station(
    t: _Table,
    lines: Mapping[str, LineConfig],
    line_list: Sequence[LineConfig],
    memo: _Memo,
) -> StationConfig | None:
    name = t.get("name", str, check=_check_name)
    sparkplug = t.get("sparkplug", str, None, _check_sparkplug_key)
    if "sparkplug" in t.data:
        # SPEC §14: the node or device is the station's address.
        if "address" in t.data:
            t.error(
                "address", "a Sparkplug station is chosen by its sparkplug key: leave address out"
            )
        address = f"sparkplug:{sparkplug}" if sparkplug else None
    else:
        address = t.get("address", str, check=lambda v: None if v else "may not be empty")
    line_name = t.get("line", str, None)
    line: LineConfig | None = None
    if line_name is None:
        if len(line_list) == 1:
            line = line_list[0]
        elif len(line_list) > 1:
            t.error("line", "required when the file has several lines")
    else:
        line = lines.get(line_name)
        if line is None and line_list:
            t.error("line", f"no line named {line_name!r}")
    will_topic = t.get("will_topic", str, None, _check_will_topic)
    will_payload = t.get("will_payload", str, None)
    mode = t.choice("mode", "on", MODES)
    payload_type = t.get("payload_type", str, None)
    if payload_type not in (None, "text", "json", "sparkplug_b"):
        t.error("payload_type", f"expected 'text', 'json' or 'sparkplug_b', found {payload_type!r}")
        payload_type = None
    if sparkplug and payload_type not in (None, "sparkplug_b"):
        t.error("payload_type", f"a Sparkplug station reads 'sparkplug_b', found {payload_type!r}")
    regex: re.Pattern[str] | None = None
    address_ok = True
    if address and address not in ("#", ".*") and not _REGEX_META.isdisjoint(address):
        try:
            regex = re.compile(address)
        except re.error as exc:
            # Taken silently as an exact topic, a typo such as a missing ")" would route
            # nothing and leave its TOPIC= tags to take the blame.
            t.error("address", regex_problem(address, exc))
            address_ok = False
    time_zone = _read_zone(t)
    raw_tags = t.get("tag", list, [])
    effective_payload = payload_type or (line.payload_type if line else "text")
    if "sparkplug" in t.data:
        effective_payload = "sparkplug_b"
    elif effective_payload == "sparkplug_b":
        t.error("sparkplug", 'required on a sparkplug_b line: "group/node" or "group/node/device"')
    zone = time_zone or (line.time_zone if line else Zone.parse("local"))
    table = (repr(raw_tags), id(line), effective_payload, zone.text) if raw_tags else None
    shared = memo.tables.get(table) if table is not None else None
    if shared is not None:
        tags = list(shared)
    else:
        tags = _read_tags(
            t,
            raw_tags,
            line,
            regex,
            memo,
            payload_type=effective_payload,
            table=table,
            zone=zone,
            address_ok=address_ok,
        )
    if name is None or address is None or (line is None and line_list):
        return None
    return StationConfig(
        name=name,
        line=line.name if line else "",
        address=address,
        tags=tuple(tags),
        will_topic=will_topic or None,
        will_payload=will_payload.encode() if will_payload else None,
        mode=mode,
        payload_type=payload_type,
        sparkplug=sparkplug,
        regex=regex,
        stale_after=_seconds(t, "stale_after"),
        max_future=_seconds(t, "max_future"),
        max_past=_seconds(t, "max_past"),
        time_zone=time_zone,
    )


def _read_zone(t: _Table) -> Zone | None:
    """A station's own `time_zone` (overrides the line's), or None."""
    text = t.get("time_zone", str, None)
    if text is None:
        return None
    try:
        return Zone.parse(text)
    except TimeMaskError as exc:
        t.error("time_zone", str(exc))
        return None


def _read_tags(
    t: _Table,
    raw_tags: Sequence[Any] | None,
    line: LineConfig | None,
    regex: re.Pattern[str] | None,
    memo: _Memo,
    *,
    payload_type: str,
    table: tuple[str, int, str, str] | None,
    zone: Zone,
    address_ok: bool = True,
) -> list[TagConfig]:
    """A station's tags, each read (or taken from `memo`), and checked together.

    Kept in `memo.tables` under `table` (None: not to be kept) when read without error.
    """
    tags: list[TagConfig] = []
    errors_before = len(t.errors.items)
    shareable = table is not None
    for i, item in enumerate(raw_tags or [], 1):
        path = t.at(f"tag[{i}]")
        if not isinstance(item, dict):
            t.errors.add(path, f"expected a table, found {_show(item)}")
            continue
        key = _memo_key(item, line, payload_type, zone)
        shareable = shareable and key is not None
        tag = memo.tags.get(key) if key is not None else None
        if tag is None:
            before = len(t.errors.items)
            tag = _read_tag(
                _Table(item, path, t.errors, TAG_KEYS),
                line,
                regex,
                payload_type,
                zone,
                address_ok=address_ok,
            )
            if tag is None:
                continue
            if key is not None and len(t.errors.items) == before:
                memo.tags[key] = tag
        if any(other.name == tag.name for other in tags):
            t.errors.add(f"{path}.name", f"a second tag named {tag.name!r} in this station")
        tags.append(tag)
    _check_station_tags(t, tags)
    if table is not None and shareable and len(t.errors.items) == errors_before:
        memo.tables[table] = tuple(tags)
    return tags


def _memo_key(
    item: Mapping[str, Any], line: LineConfig | None, payload_type: str, zone: Zone
) -> tuple[Any, ...] | None:
    """The key under which an error-free tag record is shared, or None when it cannot be.

    Files for many identical devices repeat the same tag tables thousands of times; a tag of plain
    values read without error under the same line and payload type always gives the same frozen
    record. Tags whose meaning depends on the station's regular expression (`TOPIC=` addresses,
    `publish` templates with group placeholders) or that hold tables or arrays are read each time.
    """
    values = tuple(item.items())
    for _key, value in values:
        if not isinstance(value, str | int | float):
            return None
    address = item.get("address")
    if isinstance(address, str) and address.lstrip().upper().startswith("TOPIC"):
        return None
    return (values, id(line), payload_type, zone.text)


def _check_station_tags(t: _Table, tags: Sequence[TagConfig]) -> None:
    kinds = [tag.address.kind for tag in tags if tag.address is not None]
    if Kind.SPB in kinds and Kind.ACK_ID in kinds:
        t.error("tag", "a Sparkplug station has no ACK_ID (its messages are settled when decoded)")
    for kind in (Kind.ACK_ID, Kind.OUT_TOPIC, Kind.OUT_VALUE, Kind.IN_ID):
        if kinds.count(kind) > 1:
            t.error("tag", f"at most one tag with address {kind.value}")
    if (Kind.OUT_TOPIC in kinds) != (Kind.OUT_VALUE in kinds):
        t.error("tag", "OUT_TOPIC and OUT_VALUE go together: a station needs both to publish")


def _read_tag(
    t: _Table,
    line: LineConfig | None,
    regex: re.Pattern[str] | None,
    payload_type: str,
    zone: Zone,
    *,
    address_ok: bool = True,
) -> TagConfig | None:
    name = t.get("name", str, check=_check_name)
    type_text = t.get("type", str)
    value_type: ValueType | None = None
    if type_text is not None:
        try:
            value_type = ValueType(type_text)
        except ValueError:
            names = ", ".join(v.value for v in ValueType)
            hint = type_hint(type_text) or f" (expected {names})"
            t.error("type", f"unknown type {type_text!r}{hint}")
    publish = _read_publish(t, value_type, regex)
    address: Address | None = None
    raw_address = t.get("address", str, None if publish else _MISSING)
    if raw_address is not None:
        try:
            address = parse_address(raw_address)
        except AddressSyntaxError as exc:
            t.error("address", str(exc))
    if address is not None and value_type is not None:
        problem = check_type(address, value_type)
        if problem:
            t.error("address", problem)
        if address.is_json and payload_type != "json":
            t.error("address", f'{address.kind.value} needs payload_type = "json" on the line')
        if (address.kind is Kind.SPB) != (payload_type == "sparkplug_b"):
            t.error(
                "address",
                "SPB= is for Sparkplug stations, which use only SPB= (SPEC §14)"
                if address.kind is Kind.SPB
                else f"a Sparkplug station's tags use SPB= addresses, found {address.text!r}",
            )
        # A station address that does not compile is reported at its own key path.
        if (
            address.kind is Kind.TOPIC
            and address_ok
            and (regex is None or address.group not in regex.groupindex)
        ):
            t.error("address", f"the station address has no group named {address.group!r}")
    encoding = _read_encoding(t, address, payload_type)
    processing = _read_processing(t, value_type)
    mask = line.time_mask if line else TimeMask.parse(DEFAULT_MASK)
    default: Value = None
    raw_default = t.get("default", (str, int, float, bool), None)
    if raw_default is not None and value_type is not None:
        try:
            default = converter(value_type, mask, zone)(raw_default)
        except ConversionError as exc:
            t.error("default", str(exc))
    if name is None or value_type is None:
        return None
    return TagConfig(
        name=name,
        type=value_type,
        address=address,
        unit=t.get("unit", str, None),
        description=t.get("description", str, None),
        processing=processing,
        publish=publish,
        default=default,
        encoding=encoding,
        user_properties=_read_user_properties(t),
        confirm=read_confirm(t, value_type, line),
    )


def _read_encoding(t: _Table, address: Address | None, payload_type: str) -> str | None:
    """A BIN= tag's `encoding` (SPEC §15), its default filled in; None for other tags."""
    binary = address.binary if address is not None else None
    if binary is None:
        if "encoding" in t.data:
            found = address.kind.value if address is not None else "a tag without an address"
            t.error("encoding", f"encoding is for BIN= addresses, not {found}")
        return None
    whole = binary.source is None
    if whole and payload_type != "text":
        t.error(
            "address", 'BIN=$ reads the payload as bytes: give the station payload_type = "text"'
        )
    encoding: str = t.choice("encoding", "raw" if whole else "base64", ENCODINGS) or "base64"
    if encoding == "raw" and not whole:
        t.error(
            "encoding", "'raw' is for BIN=$ (the payload itself); a JSON field is base64 or hex"
        )
    return encoding


_PROCESSING_KEYS = frozenset({"invert", "scale", "min", "max", "limits", "deadband", "on_change"})


def _read_processing(t: _Table, value_type: ValueType | None) -> Processing:
    if _PROCESSING_KEYS.isdisjoint(t.data):
        # Most tags have no processing keys: one shared default record per value type.
        return _intern(Processing.default_for(value_type) if value_type else Processing())
    kind = value_type.kind if value_type else None
    numeric = kind in ("analog", "integer")
    invert = t.get("invert", bool, False)
    if invert and kind != "digital":
        t.error("invert", "polarity inversion is for digital tags")
    scale = t.get("scale", list, None)
    if scale is not None:
        if len(scale) != 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in scale
        ):
            t.error("scale", f"expected [a, b] (numbers) for a·x+b, found {_show(scale)}")
            scale = None
        elif not numeric:
            t.error("scale", "scaling is for analog and integer tags")
    minimum = t.get("min", (int, float), None, _finite)
    maximum = t.get("max", (int, float), None, _finite)
    if (minimum is not None or maximum is not None) and not numeric:
        t.error("min" if minimum is not None else "max", "limits are for analog and integer tags")
    if minimum is not None and maximum is not None and minimum > maximum:
        t.error("max", f"max ({maximum}) is below min ({minimum})")
        minimum = maximum = None  # reported; Processing would refuse them with a ValueError
    limits = t.choice("limits", "discard", ("clamp", "discard")) if "limits" in t.data else None
    deadband = t.get("deadband", (int, float), None, _non_negative)
    if deadband is not None and not numeric:
        t.error("deadband", "a dead band is for analog and integer tags")
    on_change = t.get("on_change", bool, None)
    base = Processing.default_for(value_type) if value_type else Processing()
    return _intern(
        attrs.evolve(
            base,
            invert=invert,
            scale=tuple(float(x) for x in scale) if scale else None,
            minimum=None if minimum is None else float(minimum),
            maximum=None if maximum is None else float(maximum),
            limits=limits
            if limits
            else ("discard" if minimum is not None or maximum is not None else None),
            deadband=None if deadband is None else float(deadband),
            on_change=base.on_change if on_change is None else on_change,
        )
    )


_PROCESSING: dict[Processing, Processing] = {}


def _intern(processing: Processing) -> Processing:
    """One shared record per distinct processing (most tags of a file have the same)."""
    return _PROCESSING.setdefault(processing, processing)


def _read_publish(
    t: _Table, value_type: ValueType | None, regex: re.Pattern[str] | None
) -> Publish | None:
    raw = t.get("publish", dict, None)
    if raw is None:
        return None
    pt = _Table(
        raw,
        t.at("publish"),
        t.errors,
        frozenset({"topic", "payload", "only_changes", "on_connect"}),
    )
    topic = pt.get("topic", str)
    payload = pt.get("payload", str, "{value}")
    if value_type is not None and not value_type.is_output:
        t.error("publish", f"only output tags publish; {value_type.value} is an input type")
    groups = set(regex.groupindex) if regex is not None else set()
    known = {"value", "tag", "station"} | groups
    for key, text in (("topic", topic), ("payload", payload)):
        if text is None:
            continue
        for m in PLACEHOLDER.finditer(text):
            if m.group(1) not in known:
                pt.error(
                    key, f"unknown placeholder {{{m.group(1)}}} (known: {', '.join(sorted(known))})"
                )
            if m.group(2) and m.group(2) not in PLACEHOLDER_FORMATS:
                pt.error(
                    key, f"unknown format :{m.group(2)} (known: {', '.join(PLACEHOLDER_FORMATS)})"
                )
    if topic is None:
        return None
    return Publish(
        topic=topic,
        payload=payload,
        only_changes=pt.get("only_changes", bool, None),
        on_connect=pt.get("on_connect", bool, None),
    )
