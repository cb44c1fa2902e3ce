"""Rendering an output tag's `publish = { topic, payload }` template (SPEC §6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom._config import Publish, load
from kom._errors import WriteError
from kom._model import Value
from kom._publish import render
from kom._topic import check_topic

EXAMPLES = Path(__file__).parent.parent / "examples"
T = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def payload_of(template: str, value: Value) -> str:
    """The payload text of `template` for `value`, station `st` and tag `tg`."""
    return render(Publish("a/b", template), value, "st", "tg", {})[1].decode()


@pytest.mark.parametrize(
    ("template", "value", "payload"),
    [
        # a plain {value} is the value's text
        ("{value}", True, "true"),
        ("{value}", False, "false"),
        ("{value}", 42, "42"),
        ("{value}", -7, "-7"),
        ("{value}", 1.5, "1.5"),
        ("{value}", 230.0, "230.0"),
        ("{value}", "on", "on"),
        ("{value}", 'say "hi"', 'say "hi"'),  # not a JSON template: as is
        ("{value}", T, "2026-11-22T10:00:00.123Z"),
        ("{value}", timedelta(minutes=1, seconds=30), "90.0"),
        ("{value}", None, "null"),
        ("set {value} now", 3, "set 3 now"),
        # {value:int}: a whole number, booleans as 1/0
        ("{value:int}", True, "1"),
        ("{value:int}", False, "0"),
        ("{value:int}", 4, "4"),
        ("{value:int}", 5.0, "5"),
        ("{value:int}", timedelta(seconds=90), "90"),
        # {value:json}: JSON text, strings quoted and escaped
        ("{value:json}", True, "true"),
        ("{value:json}", 4, "4"),
        ("{value:json}", 1.5, "1.5"),
        ("{value:json}", None, "null"),
        ("{value:json}", 'a"b\\c\n', '"a\\"b\\\\c\\n"'),
        ("{value:json}", T, '"2026-11-22T10:00:00.123Z"'),
        # inside a JSON template, strings are escaped for JSON (the template quotes them)
        ('{"v":"{value}"}', 'a"b', '{"v":"a\\"b"}'),
        ('{"v":"{value}"}', "line\nbreak\t\\", '{"v":"line\\nbreak\\t\\\\"}'),
        ('{"v":"{value}"}', "ünï ☃", '{"v":"ünï ☃"}'),
        ('{"v":"{value}"}', T, '{"v":"2026-11-22T10:00:00.123Z"}'),
        ('{"v":{value}}', True, '{"v":true}'),
        ('{"v":{value}}', 2.5, '{"v":2.5}'),
        ('{"v":{value:int}}', True, '{"v":1}'),
        ('{"v":{value:json}}', 'a"b', '{"v":"a\\"b"}'),
        (' [{value}, "{value}"]', 'x"', ' [x\\", "x\\""]'),
        # {value:raw}: as is, even inside a JSON template
        ('{"v":{value:raw}}', '"quoted"', '{"v":"quoted"}'),
        # {tag} and {station}
        ('{"tag":"{tag}","station":"{station}"}', 1, '{"tag":"tg","station":"st"}'),
        ("{station}.{tag}={value}", 1, "st.tg=1"),
    ],
)
def test_render_payload(template: str, value: Value, payload: str) -> None:
    """Placeholders and formats of the payload template, and JSON escaping in JSON templates."""
    assert payload_of(template, value) == payload


def test_render_payload_is_utf8() -> None:
    """The payload is UTF-8 bytes."""
    assert render(Publish("t", "{value}"), "é", "s", "t", {})[1] == "é".encode()


def test_render_int_refuses_text() -> None:
    """`{value:int}` of a value with no whole-number form is refused."""
    with pytest.raises(ValueError, match="no whole-number form"):
        payload_of("{value:int}", "abc")


@pytest.mark.parametrize(
    ("topic", "groups", "value", "expected"),
    [
        ("a/b", {}, 1, "a/b"),
        ("n/{dev}/output/{n}/action", {"dev": "netio-1", "n": "3"}, 1, "n/netio-1/output/3/action"),
        ("out/{station}/{tag}", {}, 1, "out/st/tg"),
        ("set/{value}", {}, 'a"b', 'set/a"b'),  # topics are never JSON-escaped
        ("cmd/{value:int}", {}, True, "cmd/1"),
        ("devices/x/messages/devicebound/", {}, 1, "devices/x/messages/devicebound/"),
        ("/lead/{dev}", {"dev": "x"}, 1, "/lead/x"),
    ],
)
def test_render_topic(topic: str, groups: dict[str, str], value: Value, expected: str) -> None:
    """Topic placeholders: named groups of the station's regex, `{station}`, `{tag}`, `{value}`."""
    rendered, _ = render(Publish(topic, "{value}"), value, "st", "tg", groups)
    assert rendered == expected
    assert check_topic(rendered) is None


@pytest.mark.parametrize(
    ("topic", "groups", "value"),
    [
        ("a/{dev}/b", {"dev": ""}, 1),
        ("{dev}/b", {"dev": ""}, 1),
        ("a/{dev}", {"dev": ""}, 1),
        ("a/{dev}/b", {"dev": "x/"}, 1),
        ("a/{value}/b", {}, ""),
    ],
)
def test_render_topic_empty_level_refused(topic: str, groups: dict[str, str], value: Value) -> None:
    """A placeholder that leaves an empty topic level is refused (SPEC §6), reason `topic`."""
    with pytest.raises(WriteError) as info:
        render(Publish(topic, "{value}"), value, "st", "tg", groups)
    assert info.value.reason == "topic"
    assert info.value.tag == "st.tg"
    assert "empty level" in str(info.value)


@pytest.mark.parametrize(
    ("publish", "groups", "reason"),
    [
        (Publish("n/{dev}/cmd", "{value}"), {}, "topic"),
        (Publish("n/{dev}/cmd", "{value}"), {"dev": None}, "topic"),
        (Publish("n/cmd", '{"dev":"{dev}"}'), {}, "rejected"),
    ],
)
def test_render_group_without_value(
    publish: Publish, groups: dict[str, str | None], reason: str
) -> None:
    """A named group with no value yet (no message matched) is refused, not sent as `null`."""
    with pytest.raises(WriteError, match=r"st\.tg: no value for \{dev\} yet") as info:
        render(publish, 1, "st", "tg", groups)
    assert info.value.reason == reason


@pytest.mark.parametrize(("value", "problem"), [("a+b", "wildcards"), ("#", "wildcards")])
def test_render_topic_wildcard_refused(value: str, problem: str) -> None:
    """A value that puts a wildcard into the topic makes a topic that check_topic refuses."""
    topic, _ = render(Publish("set/{value}", "{value}"), value, "st", "tg", {})
    found = check_topic(topic)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    ("tag", "value", "payload"),
    [
        ("out1", True, '{"Operation":"SetOutputs","Outputs":[{"ID":1,"Action":1}]}'),
        ("out1", False, '{"Operation":"SetOutputs","Outputs":[{"ID":1,"Action":0}]}'),
        ("out3", True, '{"Operation":"SetOutputs","Outputs":[{"ID":3,"Action":1}]}'),
        ("out2_action", 4, '{"Operation":"SetOutputs","Outputs":[{"ID":2,"Action":4}]}'),
        (
            "out4_restart",
            2500,
            '{"Operation":"SetOutputs","Outputs":[{"ID":4,"Action":2,"Delay":2500}]}',
        ),
    ],
)
def test_netio_command(tag: str, value: Value, payload: str) -> None:
    """SPEC §6: writing `netio.out1 = true` with the NETIO profile sends SetOutputs action 1."""
    station, config = load(EXAMPLES / "netio-4all.toml").find_tag(f"netio.{tag}")
    assert config.publish is not None
    topic, body = render(config.publish, value, station.name, tag, {})
    assert topic == "devices/netio-4All-25E0/messages/devicebound/"
    assert check_topic(topic) is None  # the write goes out: MQTT allows the trailing level
    assert body.decode() == payload
    assert orjson.loads(body)["Operation"] == "SetOutputs"


def test_netio_get_description() -> None:
    """The NETIO profile's get_description tag sends the GetDescription operation."""
    station, config = load(EXAMPLES / "netio-4all.toml").find_tag("netio.get_description")
    assert config.publish is not None
    topic, body = render(config.publish, True, station.name, "get_description", {})
    assert topic == "devices/netio-4All-25E0/messages/devicebound/"
    assert orjson.loads(body) == {"Operation": "GetDescription"}


@pytest.mark.parametrize(("value", "payload"), [(True, "1"), (False, "0")])
def test_netio_flex_command(value: bool, payload: str) -> None:
    """The MQTT-flex profile sends the action number as a bare payload."""
    station, config = load(EXAMPLES / "netio-flex.toml").find_tag("out1_state.switch")
    assert config.publish is not None
    topic, body = render(config.publish, value, station.name, "switch", {})
    assert (topic, body) == ("netio/netio-4All-25E0/output/1/action", payload.encode())


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_json_template_escapes_any_text(text: str) -> None:
    """Any text written into `"{value}"` of a JSON template gives valid JSON holding that text."""
    body = render(Publish("t", '{"v":"{value}","w":{value:json}}'), text, "s", "t", {})[1]
    assert orjson.loads(body) == {"v": text, "w": text}


_PIECES = st.sampled_from(
    ["{value}", "{value:json}", "{value:raw}", "{tag}", "{station}", "{dev}", "{", "}", "[", " "]
) | st.text(alphabet='ab/{}:"\\ é', max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_PIECES, max_size=8).map("".join),
    st.one_of(
        st.text(max_size=6),
        st.floats(allow_nan=False),
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
    ),
)
def test_templates_split_once_render_as_substitution(template: str, value: Value) -> None:
    """A template is split once and reused; the payload is what substituting each
    placeholder in the text gives, JSON escaping where the template (placeholders aside)
    starts with a brace or bracket."""
    from kom._config import PLACEHOLDER
    from kom._publish import _text

    names: dict[str, Value] = {"value": value, "tag": "tg", "station": "st", "dev": "d1"}
    if any(m.group(1) not in names for m in PLACEHOLDER.finditer(template)):
        with pytest.raises(WriteError):
            render(Publish("a/b", template), value, "st", "tg", {"dev": "d1"})
        return
    in_json = PLACEHOLDER.sub("", template).lstrip()[:1] in ("{", "[")
    expected = PLACEHOLDER.sub(lambda m: _text(names[m.group(1)], m.group(2), in_json), template)
    for _ in range(2):  # the second time from the cache
        got = render(Publish("a/b", template), value, "st", "tg", {"dev": "d1"})[1]
        assert got == expected.encode("utf-8")
