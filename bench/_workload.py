"""The workload: NETIO 4All state documents, the 12-tag station, configurations, the naive design.

Payloads are the NETIO 4All state document of tests/data/netio-4all-state.json with the two
fields of each output that no profile reads (Phase, ReverseEnergy) left out, about 900 bytes,
with values that change from message to message. The 12 tags have the types a NETIO profile
uses: an absolute time, a duration, analogs, an integer counter and digitals.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ._wire import device_topic

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "netio-4all-state.json"
DEVICES = 1000
TOPIC_FILTER = "devices/+/messages/events/"
REGEX_ADDRESS = "devices/(?P<dev>[^/]+)/messages/events/"
BASE_TIME = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

#: name, type, JA= address (kom, arrays from 1), JSONPath (naive design, arrays from 0).
TAGS: tuple[tuple[str, str, str, str], ...] = (
    ("device_time", "TiA", "Agent.Time", "$.Agent.Time"),
    ("uptime", "TiR", "Agent.Uptime", "$.Agent.Uptime"),
    ("voltage", "Ai", "GlobalMeasure.Voltage", "$.GlobalMeasure.Voltage"),
    ("frequency", "Ai", "GlobalMeasure.Frequency", "$.GlobalMeasure.Frequency"),
    ("total_current", "Ai", "GlobalMeasure.TotalCurrent", "$.GlobalMeasure.TotalCurrent"),
    (
        "power_factor",
        "Ai",
        "GlobalMeasure.OverallPowerFactor",
        "$.GlobalMeasure.OverallPowerFactor",
    ),
    ("total_load", "Ai", "GlobalMeasure.TotalLoad", "$.GlobalMeasure.TotalLoad"),
    ("total_energy", "Ci", "GlobalMeasure.TotalEnergy", "$.GlobalMeasure.TotalEnergy"),
    ("out1_state", "Di", "Outputs[1].State", "$.Outputs[0].State"),
    ("out1_load", "Ai", "Outputs[1].Load", "$.Outputs[0].Load"),
    ("out2_state", "Di", "Outputs[2].State", "$.Outputs[1].State"),
    ("out2_load", "Ai", "Outputs[2].Load", "$.Outputs[1].Load"),
)
TAG_COUNT = len(TAGS)
#: The latency benchmark's extra tag: the publisher's send time inside the payload.
SENT_TAG = ("sent_ns", "Ci", "Bench.SentNs", "$.Bench.SentNs")


def sample_payload() -> bytes:
    """The NETIO 4All document of the test data, as it is (about 1 kB)."""
    return SAMPLE.read_bytes()


def _template() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SAMPLE.read_bytes())
    for output in doc["Outputs"]:
        output.pop("Phase", None)
        output.pop("ReverseEnergy", None)
    # Nor the inputs block and the overall phase, which the sample gained later: the workload
    # stays the document the published figures were measured with.
    doc.pop("Inputs", None)
    doc["GlobalMeasure"].pop("Phase", None)
    doc["Agent"]["NumInputs"] = 0
    return doc


def netio_document(i: int, device: int, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The i-th state document of a device; every measured value moves with i."""
    doc = copy.deepcopy(template or _template())
    agent = doc["Agent"]
    agent["DeviceName"] = f"dev{device + 1:04d}"
    agent["Time"] = (BASE_TIME + timedelta(seconds=i)).isoformat()
    agent["Uptime"] = 3600 + i
    gm = doc["GlobalMeasure"]
    gm["Voltage"] = round(225.0 + (i % 100) / 10, 1)
    gm["Frequency"] = round(49.9 + (i % 20) / 100, 2)
    gm["TotalCurrent"] = 2900 + i % 97
    gm["OverallPowerFactor"] = round(0.9 + (i % 10) / 100, 2)
    gm["TotalLoad"] = 660 + i % 53
    gm["TotalEnergy"] = 787 + i
    for k, output in enumerate(doc["Outputs"]):
        output["State"] = (i >> k) & 1
        output["Load"] = (140 + 17 * k + i % 31) * output["State"]
        output["Current"] = (610 + 13 * k + i % 29) * output["State"]
        output["Energy"] = 141 + k + i // 7
    return doc


def payload_pool(count: int, devices: int = DEVICES) -> list[bytes]:
    """`count` distinct compact payloads; message i uses pool[i % count] (device i % devices)."""
    template = _template()
    return [orjson.dumps(netio_document(i, i % devices, template)) for i in range(count)]


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def tag_block(tags: Sequence[tuple[str, str, str, str]]) -> str:
    out = []
    for name, kind, address, _ in tags:
        out.append(f'[[station.tag]]\nname = "{name}"\ntype = "{kind}"\naddress = "JA={address}"')
        if kind.startswith("D"):
            # Digital tags report changes only by default (SPEC §4); report every value so
            # that each message gives exactly 12 updates.
            out.append("on_change = false")
    return "\n".join(out) + "\n"


def line_block(
    port: int,
    client_id: str,
    qos: int,
    *,
    clean_session: bool = False,
    topic_filter: str = TOPIC_FILTER,
    extra: str = "",
) -> str:
    return (
        "[line]\n"
        'name = "bench"\n'
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"client_id = {_toml(client_id)}\n"
        f"clean_session = {'true' if clean_session else 'false'}\n"
        f"topic_filter = {_toml(topic_filter)}\n"
        f"subscribe_qos = {qos}\n"
        'payload_type = "json"\n'
        'time_field = "Agent.Time"\n'
        'time_mask = "ISO"\n'
        'time_zone = "UTC"\n' + extra
    )


def kom_config_text(
    port: int,
    client_id: str,
    qos: int,
    variant: str,
    *,
    devices: int = DEVICES,
    tags: Sequence[tuple[str, str, str, str]] = TAGS,
    clean_session: bool = False,
) -> str:
    """A configuration of one line: `exact` (one station per device) or `regex` (one station)."""
    text = line_block(port, client_id, qos, clean_session=clean_session)
    block = tag_block(tags)
    if variant == "exact":
        parts = [text]
        for d in range(devices):
            parts.append(
                f'\n[[station]]\nname = "dev{d + 1:04d}"\naddress = "{device_topic(d)}"\n' + block
            )
        return "".join(parts)
    if variant == "regex":
        return text + f'\n[[station]]\nname = "devices"\naddress = {_toml(REGEX_ADDRESS)}\n' + block
    raise ValueError(f"unknown variant {variant!r}")


class NaiveDecoder:
    """The naive design: json.loads, then a jsonpath-ng find per tag, a tuple per tag.

    The expressions are parsed once (parsing one costs ~0.3 ms; `parse_each_time` shows that).
    """

    def __init__(self, tags: Sequence[tuple[str, str, str, str]] = TAGS) -> None:
        from jsonpath_ng.ext.parser import parse

        self._parse = parse
        self.paths = [(name, path) for name, _, _, path in tags]
        self.compiled = [(name, parse(path)) for name, path in self.paths]

    def decode(self, payload: bytes, topic: str) -> list[tuple[Any, ...]]:
        doc = json.loads(payload)
        out = []
        for name, expr in self.compiled:
            found = expr.find(doc)
            if found:
                out.append((name, found[0].value, "valid", topic))
            else:
                out.append((name, None, "invalid", topic))
        return out

    def decode_parsing(self, payload: bytes, topic: str) -> list[tuple[Any, ...]]:
        """The same, parsing every expression again for every message."""
        doc = json.loads(payload)
        out = []
        for name, path in self.paths:
            found = self._parse(path).find(doc)
            out.append((name, found[0].value if found else None, "valid", topic))
        return out
