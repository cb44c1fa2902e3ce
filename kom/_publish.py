"""Rendering an output tag's `publish = { topic, payload }` template (SPEC §6)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

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
    topic_template = _template(publish.topic)
    payload_template = _template(publish.payload)
    if (
        not topic_template.fields
        and payload_template.value_only
        and (not groups or groups.get("value") is None)
    ):
        # The usual output: a fixed topic, and the value the payload's only placeholder.
        payload = _fill(payload_template, {"value": value}, payload_template.json, "", "rejected")
        return topic_template.literals[0], payload.encode("utf-8")
    full = f"{station}.{tag}"
    names: dict[str, Value] = {"value": value, "tag": tag, "station": station}
    if groups:
        names.update({k: v for k, v in groups.items() if v is not None})
    topic = _fill(topic_template, names, False, full, "topic")
    # SPEC §6: a placeholder may not leave an empty level; the template's own are kept.
    if topic.split("/").count("") > topic_template.empty_levels:
        raise WriteError(f"{full}: a placeholder leaves an empty level in {topic!r}", full, "topic")
    payload = _fill(payload_template, names, payload_template.json, full, "rejected")
    return topic, payload.encode("utf-8")


class _Template(NamedTuple):
    """A template split once: literal texts around (name, format) placeholders."""

    literals: tuple[str, ...]
    fields: tuple[tuple[str, str | None], ...]
    #: Placeholders aside, it starts with `{` or `[`: a JSON template, whose strings are
    #: escaped (the default template "{value}" starts with a brace but is no JSON).
    json: bool
    #: Empty topic levels of the template itself (only new ones are refused).
    empty_levels: int
    #: Every placeholder is `{value}` (with or without a format).
    value_only: bool


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> _Template:
    parts = PLACEHOLDER.split(text)  # literal, name, format, literal, name, format, ..., literal
    literals = tuple(parts[0::3])
    fields = tuple(zip(parts[1::3], parts[2::3], strict=True))
    return _Template(
        literals,
        fields,
        "".join(literals).lstrip()[:1] in ("{", "["),
        text.split("/").count(""),
        all(name == "value" for name, _ in fields),
    )


def _fill(
    template: _Template, names: Mapping[str, Value], in_json: bool, full: str, reason: str
) -> str:
    literals = template.literals
    if not template.fields:
        return literals[0]
    out = [literals[0]]
    for (name, fmt), literal in zip(template.fields, literals[1:], strict=True):
        if name not in names:  # a group before any message matched it: not "null"
            raise WriteError(f"{full}: no value for {{{name}}} yet", full, reason)
        out.append(_text(names[name], fmt, in_json))
        out.append(literal)
    return "".join(out)


def _text(value: Value, fmt: str | None, in_json: bool) -> str:
    if fmt is None or fmt == "raw":  # the usual: a number as its text, as below, sooner
        kind = type(value)
        if kind is int:
            return str(value)
        if kind is float:
            return repr(value)
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
