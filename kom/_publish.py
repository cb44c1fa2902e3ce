"""Rendering an output tag's `publish = { topic, payload }` template (SPEC §6)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

import orjson

from ._config import PLACEHOLDER, Publish
from ._convert import format_value
from ._errors import WriteError
from ._model import Value


def render(
    publish: Publish, value: Value, station: str, tag: str, groups: Mapping[str, str | None]
) -> tuple[str, bytes]:
    """The topic and payload for writing `value`.

    Placeholders: `{value}`, `{tag}`, `{station}` and the station regex's named groups.
    Formats: `{value:json}` (JSON text, strings quoted), `{value:int}` (a whole number;
    true/false as 1/0), `{value:raw}` (as is). A plain `{value}` is the value's text;
    inside a JSON template (one starting with `{` or `[`) strings are escaped for JSON.
    Raises WriteError for a group with no value yet, or a placeholder that leaves an empty
    topic level (reason `topic`).
    """
    full = f"{station}.{tag}"
    names: dict[str, Value] = {"value": value, "tag": tag, "station": station}
    names.update({k: v for k, v in groups.items() if v is not None})

    def fill(m: re.Match[str], in_json: bool, reason: str) -> str:
        name = m.group(1)
        if name not in names:  # a group before any message matched it: not "null"
            raise WriteError(f"{full}: no value for {{{name}}} yet", full, reason)
        return _text(names[name], m.group(2), in_json)

    topic = PLACEHOLDER.sub(lambda m: fill(m, False, "topic"), publish.topic)
    # SPEC §6: a placeholder may not leave an empty level; the template's own are kept.
    if topic.split("/").count("") > publish.topic.split("/").count(""):
        raise WriteError(f"{full}: a placeholder leaves an empty level in {topic!r}", full, "topic")
    # Placeholders aside: the default template "{value}" starts with a brace but is no JSON.
    json_template = PLACEHOLDER.sub("", publish.payload).lstrip()[:1] in ("{", "[")
    payload = PLACEHOLDER.sub(lambda m: fill(m, json_template, "rejected"), publish.payload)
    return topic, payload.encode("utf-8")


def _text(value: Value, fmt: str | None, in_json: bool) -> str:
    if fmt == "int":
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int | float):
            return str(int(value))
        if isinstance(value, timedelta):
            return str(int(value.total_seconds()))
        raise ValueError(f"{value!r} has no whole-number form")
    plain = format_value(value)
    if fmt == "json":
        return orjson.dumps(plain).decode()
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if plain is None:
        return "null"
    if isinstance(plain, str | datetime):
        text = str(plain)
        if in_json and fmt != "raw":
            return orjson.dumps(text).decode()[1:-1]
        return text
    return str(plain) if not isinstance(plain, float) else repr(plain)
