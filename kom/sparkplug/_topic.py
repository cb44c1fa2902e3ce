"""Sparkplug B topics (Sparkplug 3.0.0, chapter 4 "Topics and Messages").

`spBv1.0/<group>/<type>/<edge node>[/<device>]`, and `spBv1.0/STATE/<host id>`.
"""

from __future__ import annotations

from typing import NamedTuple

NAMESPACE = "spBv1.0"
PREFIX = NAMESPACE + "/"
NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})


class SpTopic(NamedTuple):
    """A parsed Sparkplug topic; `device` is None for node messages."""

    group: str
    type: str
    node: str
    device: str | None = None

    @property
    def key(self) -> str:
        """`group/node` or `group/node/device`: what a station's `sparkplug` key names."""
        return station_key(self.group, self.node, self.device)

    def __str__(self) -> str:
        tail = f"/{self.device}" if self.device is not None else ""
        return f"{PREFIX}{self.group}/{self.type}/{self.node}{tail}"


def station_key(group: str, node: str, device: str | None = None) -> str:
    return f"{group}/{node}/{device}" if device is not None else f"{group}/{node}"


def parse_topic(topic: str) -> SpTopic | None:
    """The Sparkplug meaning of a topic, or None (STATE topics and anything else)."""
    parts = topic.split("/")
    if parts[0] != NAMESPACE or not all(parts):
        return None
    if len(parts) == 4 and parts[2] in NODE_TYPES:
        return SpTopic(parts[1], parts[2], parts[3])
    if len(parts) == 5 and parts[2] in DEVICE_TYPES:
        return SpTopic(parts[1], parts[2], parts[3], parts[4])
    return None


def state_topic(host_id: str) -> str:
    """Sparkplug 3.0.0 §4.2.3, host application STATE: `spBv1.0/STATE/<host id>`."""
    return f"{PREFIX}STATE/{host_id}"


def check_id(text: str) -> str | None:
    """Why `text` cannot be a group, node, device or host id (§4.1.2-§4.1.5), or None."""
    if not text:
        return "may not be empty"
    bad = [c for c in "/+#" if c in text]
    if bad:
        return f"may not contain {' or '.join(repr(c) for c in bad)}, found {text!r}"
    return None
