"""Advice in configuration messages: the model's own names, case hints, regex problems, warnings.

Integrators of the SCADA system that kom models (seeds/004) know its parameters by their
dialog names and keywords (`SWT`, `Wait Timeout`, `Max. Wait Retry`); kom answers those
with the key it uses instead, or with why it has none, rather than a bare "unknown key".
Pure functions over texts and configuration records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from ._model import ValueType

if TYPE_CHECKING:
    from ._config import Config

DOCS = "docs/configuration.md#the-models-names"


class ModelName(NamedTuple):
    """A parameter of the model: the kom key it is, and the table that key belongs in."""

    title: str
    key: str | None  # None: kom has no such key (`why` says so)
    table: str  # "line", "station" or "tag"
    why: str = ""


_POLLING = (
    "kom reads each message as the broker sends it and has no polling read loop, so there "
    "is nothing to tune; writes never wait behind reading"
)

#: By normalised name (lower case, letters and digits only): the dialog name or keyword.
MODEL_NAMES: dict[str, ModelName | tuple[ModelName, ...]] = {
    "swt": ModelName("Station Will Topic (SWT)", "will_topic", "station"),
    "stationwilltopic": ModelName("Station Will Topic (SWT)", "will_topic", "station"),
    "swp": ModelName("Station Will Payload (SWP)", "will_payload", "station"),
    "stationwillpayload": ModelName("Station Will Payload (SWP)", "will_payload", "station"),
    "waittimeout": ModelName("Wait Timeout", None, "line", _POLLING),
    "maxwaitretry": ModelName("Max. Wait Retry", None, "line", _POLLING),
    "waitretry": ModelName("Max. Wait Retry", None, "line", _POLLING),
    "fulldebug": ModelName("Full Debug", "debug", "line"),
    "topicfilter": ModelName("Topic Filter", "topic_filter", "line"),
    "clientid": ModelName("Client ID", "client_id", "line"),
    "cleansessionflag": ModelName("Clean Session Flag", "clean_session", "line"),
    "timefieldname": ModelName("Time Field Name", "time_field", "line"),
    "willflag": ModelName("Will Flag", "will", "line", "a [line.will] table turns it on"),
    # In a station, "Will Topic" is the device's will (SWT); in the line, kom's own will.
    "willtopic": (
        ModelName("Station Will Topic (SWT)", "will_topic", "station"),
        ModelName("Will Topic", "will", "line", "the line's will is `will.topic`"),
    ),
    "willpayload": ModelName("Station Will Payload (SWP)", "will_payload", "station"),
    # `[station.will]`, by analogy with `[line.will]`: a station's will is two keys.
    "will": ModelName(
        "Station Will Topic (SWT)",
        "will_topic",
        "station",
        "with `will_payload`; a `will` table is the line's own will",
    ),
    "willmessage": ModelName("Will Message", "will", "line", "the line's will is `will.message`"),
    "willqos": ModelName("Will QoS", "will", "line", "the line's will is `will.qos`"),
    "willretain": ModelName("Will Retain", "will", "line", "the line's will is `will.retain`"),
}


def _normal(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def model_hint(key: str, keys: Iterable[str]) -> str:
    """What to say about an unknown `key` that is one of the model's names ("" if none).

    `keys` are the keys of the table where it was found: a model name whose kom key is
    among them gets a did-you-mean, one that belongs elsewhere says where, and one without
    a kom equivalent says why.
    """
    keys = frozenset(keys)
    found = MODEL_NAMES.get(_normal(key))
    if found is None or key in keys:
        return ""
    names = (found,) if isinstance(found, ModelName) else found
    name = next((n for n in names if n.key in keys), names[0])
    if name.key is None:
        return f" (the model's {name.title}: {name.why}; see {DOCS})"
    if name.key in keys:
        extra = f"; {name.why}" if name.why else ""
        return f" (did you mean {name.key!r}? it is the model's {name.title}{extra})"
    where = "[[station]]" if name.table == "station" else f"[{name.table}]"
    return f" (the model's {name.title} is {name.key!r} in {where}; see {DOCS})"


def type_hint(text: str) -> str:
    """A hint for an unknown tag type: type names are case-sensitive (`ai` is `Ai`)."""
    for value_type in ValueType:
        if value_type.value.lower() == text.strip().lower():
            return f" (did you mean {value_type.value!r}? type names are case-sensitive)"
    return ""


def regex_problem(address: str, exc: re.error) -> str:
    """The error for a station address that looks like a regular expression but does not compile."""
    escaped = re.sub(r"([.^$*+?{}\[\]|()\\])", r"\\\1", address)
    # As TOML writes it: a literal string keeps the backslashes as they are (a repr doubles them).
    toml = f"'{escaped}'" if "'" not in escaped else json.dumps(escaped)
    return (
        f"{address!r} looks like a regular expression but does not compile ({exc}); "
        f"for an exact topic with these characters escape them: address = {toml}"
    )


def config_warnings(config: Config) -> list[str]:
    """What a valid configuration does that an operator should know (`kom check` prints them)."""
    warnings: list[str] = []
    for i, line in enumerate(config.lines, 1):
        path = "line" if len(config.lines) == 1 else f"line[{i}]"
        if line.tls is not None and not line.tls.verify:
            warnings.append(
                f"{path}.tls.verify = false: the broker's certificate and host name are not "
                "checked; anyone on the path can pose as the broker"
            )
        if line.time_field is None:
            # SPEC §16 bounds a source time; without a time field there is none to bound.
            places = [(path, line.max_future, line.max_past)] + [
                (f"station[{j}]", s.max_future, s.max_past)
                for j, s in enumerate(config.stations, 1)
                if s.line == line.name
            ]
            for where, future, past in places:
                for key, value in (("max_future", future), ("max_past", past)):
                    if value is not None:
                        warnings.append(
                            f"{where}.{key} has no effect: the line has no time_field, so "
                            "values take the receive time and there is no source time to check"
                        )
    return warnings
