"""What output tags last published: publish only changes, publish the current values on connect.

The two publishing options integrators know from ioBroker's MQTT client (seeds/003, "send only
changes" and "publish all states at start"), per line (`publish_only_changes`,
`publish_on_connect`) and per tag (`publish = { only_changes, on_connect }`). Pure: the line
asks before publishing a write and after each connection, and does the publishing itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import attrs

from ._address import Kind
from ._config import LineConfig, StationConfig, TagConfig
from ._errors import WriteError
from ._publish import render
from ._station import Station


class Message(NamedTuple):
    """A message an output tag publishes: its full tag name, topic and payload."""

    tag: str
    topic: str
    payload: bytes


def only_changes(tag: TagConfig, line: LineConfig) -> bool:
    """Whether a write of `tag` that would repeat its last message is left out."""
    own = tag.publish.only_changes if tag.publish is not None else None
    return line.publish_only_changes if own is None else own


def on_connect(tag: TagConfig, line: LineConfig) -> bool:
    """Whether `tag`'s current value is published again on every (re)connection."""
    own = tag.publish.on_connect if tag.publish is not None else None
    return line.publish_on_connect if own is None else own


@attrs.define
class OutputMemory:
    """The last message of each output tag: the one written, and the one that went out.

    `written` is what the host last asked for (whatever became of it): the tag's current value,
    which publish-on-connect sends again. `sent` is the last message handed to the broker and
    not failed: publish-only-changes leaves out a write that would repeat it.
    """

    _written: dict[str, Message] = attrs.field(factory=dict)
    _sent: dict[str, Message] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<OutputMemory written={len(self._written)} sent={len(self._sent)}>"

    def unchanged(self, message: Message) -> bool:
        """Whether `message` repeats the last one its tag sent."""
        return self._sent.get(message.tag) == message

    def write(self, message: Message) -> None:
        """The host wrote `message` and it is being published."""
        self._written[message.tag] = message
        self._sent[message.tag] = message

    def failed(self, message: Message) -> None:
        """`message` did not reach the broker: an equal write must go out again."""
        if self._sent.get(message.tag) == message:
            del self._sent[message.tag]

    def on_connect(self, stations: Iterable[Station], line: LineConfig) -> list[Message]:
        """The messages to publish after a connection: each `on_connect` output's current value.

        That is its last written message or, before any write, its `default` (for a
        `publish` template, or an `OUT_VALUE` whose station's `OUT_TOPIC` has a value).
        Tags with neither are left out, and so are stations that are off or simulated.
        """
        messages: list[Message] = []
        for station in stations:
            if not station.active:
                continue
            for tag in station.config.tags:
                if not tag.type.is_output or not on_connect(tag, line):
                    continue
                full = f"{station.name}.{tag.name}"
                message = self._written.get(full) or _default_message(station, tag, full)
                if message is not None:
                    messages.append(message)
        return messages


def _default_message(station: Station, tag: TagConfig, full: str) -> Message | None:
    if tag.default is None:
        return None
    config: StationConfig = station.config
    if tag.publish is not None:
        try:
            topic, payload = render(
                tag.publish, tag.default, station.name, tag.name, station.groups
            )
        except (WriteError, ValueError):
            return None  # a group with no value yet: nothing to say before the first message
        return Message(full, topic, payload)
    if tag.address is not None and tag.address.kind is Kind.OUT_VALUE:
        topic_tag = config.tag_by_kind(Kind.OUT_TOPIC)
        out_topic = station.output_values.get(topic_tag.name) if topic_tag else None
        if isinstance(out_topic, str):
            return Message(full, out_topic, str(tag.default).encode())
    return None
