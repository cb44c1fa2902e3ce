"""`kom discover`: what the BIRTHs on a broker declared, and a stations.toml for it (SPEC §14)."""

from __future__ import annotations

import re

import orjson

from .._model import ValueType
from ._host import BDSEQ_METRIC, REBIRTH_METRIC, Declared, Host
from ._payload import DataType

#: The tag type kom suggests for a metric's datatype (input; a writable metric may be made
#: the output twin by hand: Ai -> Ao, ...).
_TYPES: dict[int, ValueType] = {
    DataType.Int8: ValueType.Ci,
    DataType.Int16: ValueType.Ci,
    DataType.Int32: ValueType.Ci,
    DataType.Int64: ValueType.Ci,
    DataType.UInt8: ValueType.Ci,
    DataType.UInt16: ValueType.Ci,
    DataType.UInt32: ValueType.Ci,
    DataType.UInt64: ValueType.Ci,
    DataType.Float: ValueType.Ai,
    DataType.Double: ValueType.Ai,
    DataType.Boolean: ValueType.Di,
    DataType.DateTime: ValueType.TiA,
}
#: Metrics of the protocol itself, not of the process: left out of the suggested tags.
_PROTOCOL = frozenset({BDSEQ_METRIC, REBIRTH_METRIC})


def tag_type(datatype: int) -> ValueType:
    """The tag type for a metric's datatype: numbers, booleans and times typed, the rest text."""
    return _TYPES.get(datatype, ValueType.TxtI)


def datatype_name(datatype: int) -> str:
    try:
        return DataType(datatype).name
    except ValueError:
        return str(datatype)


def _name(text: str) -> str:
    """A kom name (`[A-Za-z_][A-Za-z0-9_-]*`) made from a Sparkplug name."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


def sources(host: Host) -> list[tuple[str, dict[str, Declared]]]:
    """Every node and device with the metrics its last BIRTH declared, sorted by key."""
    found: list[tuple[str, dict[str, Declared]]] = []
    for (group, node), state in sorted(host.nodes.items()):
        if state.births:
            found.append((f"{group}/{node}", state.metrics))
        for device, dstate in sorted(state.devices.items()):
            found.append((f"{group}/{node}/{device}", dstate.metrics))
    return found


def listing(host: Host) -> str:
    """Groups, nodes, devices and metrics (name, datatype, alias), one line each."""
    lines: list[str] = []
    group = None
    for key, metrics in sources(host):
        parts = key.split("/")
        if parts[0] != group:
            group = parts[0]
            lines.append(f"group {group}")
        what = "device" if len(parts) == 3 else "node"
        lines.append(f"{what} {key}: {len(metrics)} metric{'s' if len(metrics) != 1 else ''}")
        for declared in sorted(metrics.values()):
            alias = "" if declared.alias is None else f" alias {declared.alias}"
            lines.append(f"  {declared.name}  {datatype_name(declared.datatype)}{alias}")
    return "\n".join(lines)


def fragment(host: Host) -> str:
    """A stations.toml fragment: a station per node and device, a tag per metric."""
    out: list[str] = []
    used: set[str] = set()
    for key, metrics in sources(host):
        base = _name(key.replace("/", "_"))
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out += ["[[station]]", f"name = {_quote(name)}", f"sparkplug = {_quote(key)}", ""]
        tags: set[str] = set()
        for declared in sorted(metrics.values()):
            if declared.name in _PROTOCOL:
                continue
            tag = base_tag = _name(declared.name)
            k = 2
            while tag in tags:
                tag, k = f"{base_tag}_{k}", k + 1
            tags.add(tag)
            out += [
                "[[station.tag]]",
                f"name = {_quote(tag)}",
                f"type = {_quote(tag_type(declared.datatype).value)}",
                f"address = {_quote('SPB=' + declared.name)}",
                "",
            ]
    return "\n".join(out)


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return orjson.dumps(text).decode()
