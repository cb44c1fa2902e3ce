"""Configuration advice: the model's names, case hints, regex-looking addresses, warnings."""

from __future__ import annotations

import re
import textwrap
import tomllib

import pytest

from kom._advice import (
    MODEL_NAMES,
    ModelName,
    config_warnings,
    model_hint,
    regex_problem,
    type_hint,
)
from kom._config import LINE_KEYS, STATION_KEYS, TAG_KEYS, loads
from kom._errors import ConfigError

LINE = '[line]\nhost = "broker"\n'


def errors(text: str) -> tuple[str, ...]:
    """The errors listed by the ConfigError that dedented TOML text raises."""
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text))
    return info.value.errors


def station(address: str, *tags: str, extra: str = "") -> str:
    """A file with one line and one station at `address` with the TOML tag bodies `tags`."""
    text = LINE + f"[[station]]\nname = \"s\"\naddress = '{address}'\n{extra}"
    for tag in tags:
        text += "[[station.tag]]\n" + textwrap.dedent(tag).strip() + "\n"
    return text


@pytest.mark.parametrize(
    ("key", "table", "expected"),
    [
        ("SWT", "station", "station[1].SWT: unknown key (did you mean 'will_topic'?"),
        ("SWP", "station", "station[1].SWP: unknown key (did you mean 'will_payload'?"),
        ('"Station Will Topic"', "station", "did you mean 'will_topic'?"),
        (
            "SWT",
            "line",
            "line.SWT: unknown key (the model's Station Will Topic (SWT) is "
            "'will_topic' in [[station]]",
        ),
        (
            "wait_timeout",
            "line",
            "line.wait_timeout: unknown key (the model's Wait Timeout: kom "
            "reads each message as the broker sends it",
        ),
        ('"Wait Timeout"', "line", "no polling read loop"),
        (
            '"Max. Wait Retry"',
            "line",
            "line.Max. Wait Retry: unknown key (the model's Max. Wait Retry",
        ),
        ("max_wait_retry", "line", "docs/configuration.md#the-models-names"),
        ('"Full Debug"', "line", "did you mean 'debug'?"),
        ('"Will Topic"', "station", "did you mean 'will_topic'?"),
        ('"Will Topic"', "line", "did you mean 'will'? it is the model's Will Topic"),
        ("will", "station", "did you mean 'will_topic'? it is the model's Station Will Topic"),
    ],
)
def test_the_models_names_are_answered(key: str, table: str, expected: str) -> None:
    """A parameter named as the model names it gets the kom key or why there is none."""
    text = LINE + f"{key} = 1\n" if table == "line" else station("a/b", extra=f"{key} = 1\n")
    found = errors(text)
    assert len(found) == 1, found
    assert expected in found[0]


def test_every_model_name_points_at_a_key_that_exists() -> None:
    """Each model name maps to a key of its table, or explains why kom has none."""
    tables = {"line": LINE_KEYS, "station": STATION_KEYS, "tag": TAG_KEYS}
    for normal, found in MODEL_NAMES.items():
        assert re.fullmatch(r"[a-z0-9]+", normal)
        for name in (found,) if isinstance(found, ModelName) else found:
            if name.key is None:
                assert name.why
            else:
                assert name.key in tables[name.table], name


def test_a_kom_key_or_an_unrelated_key_gets_no_model_hint() -> None:
    """Only the model's names are answered: ordinary typos keep the plain did-you-mean."""
    assert model_hint("will_topic", STATION_KEYS) == ""
    assert model_hint("colour", STATION_KEYS) == ""
    assert "did you mean 'topic_filter'?" in errors(LINE + 'topic_filtre = "#"\n')[0]


@pytest.mark.parametrize(("text", "suggested"), [("ai", "Ai"), ("TXTI", "TxtI"), ("tor", "ToR")])
def test_an_unknown_type_in_the_wrong_case_gets_a_case_hint(text: str, suggested: str) -> None:
    """`unknown type 'ai'` says type names are case-sensitive and names the right one."""
    (error,) = errors(station("a/b", f'name = "t"\ntype = "{text}"\naddress = "IN_DATA"'))
    assert error == (
        f"station[1].tag[1].type: unknown type {text!r} "
        f"(did you mean {suggested!r}? type names are case-sensitive)"
    )
    assert type_hint("Xi") == ""


@pytest.mark.parametrize("address", ["plant/(?P<id>[a-z]+/data", "a(b", "dev/[0-9", "*/data"])
def test_a_regex_looking_address_that_does_not_compile_is_an_error_at_its_key(
    address: str,
) -> None:
    """A station address with a regex typo is refused at its key, not taken as a topic."""
    found = errors(station(address))
    assert len(found) == 1, found
    assert found[0].startswith(f"station[1].address: {address!r} looks like a regular expression")


def test_a_topic_tag_does_not_take_the_blame_for_a_broken_station_address() -> None:
    """With a TOPIC= tag, the error is the station address's alone."""
    found = errors(
        station(
            "plant/(?P<id>[a-z]+/data",
            'name = "id"\ntype = "TxtI"\naddress = "TOPIC=id"',
        )
    )
    assert [e.split(":")[0] for e in found] == ["station[1].address"]


def test_the_escaped_form_suggested_for_a_broken_address_matches_the_topic_itself() -> None:
    """The escape that regex_problem proposes is a valid address routing exactly that topic."""
    address = "plant/room(1/data"
    with pytest.raises(re.error) as info:
        re.compile(address)
    suggestion = re.search(r"escape them: (address = .*)$", regex_problem(address, info.value))
    assert suggestion is not None
    escaped = tomllib.loads(suggestion.group(1))["address"]
    assert escaped == "plant/room\\(1/data"
    assert re.fullmatch(escaped, address)
    loads(station(escaped))


def test_a_second_station_with_the_same_address_quotes_the_address() -> None:
    """The duplicate-address error says which address the two stations share."""
    text = station("dev/1") + '[[station]]\nname = "t"\naddress = "dev/1"\n'
    assert errors(text) == (
        "station[2].address: station 's' of line 'line' has the same address 'dev/1'",
    )


def test_a_password_of_the_wrong_type_reads_well_and_is_not_shown() -> None:
    """A numeric password is refused as "found an integer", without its value."""
    assert errors(LINE + "password = 12345\n") == (
        "line.password: expected a string or a table, found an integer",
    )


def test_tls_without_verification_is_warned_about() -> None:
    """`tls.verify = false` is valid but gets a warning naming its key path."""
    insecure = loads(LINE + "tls = { verify = false }\n")
    (warning,) = config_warnings(insecure)
    assert warning.startswith("line.tls.verify = false:")
    assert config_warnings(loads(LINE + "tls = true\n")) == []
    two = loads(
        '[[line]]\nname = "a"\nhost = "h"\n[[line]]\nname = "b"\nhost = "h"\n'
        "tls = { verify = false }\n"
    )
    assert [w.split(":")[0] for w in config_warnings(two)] == ["line[2].tls.verify = false"]


def test_time_bounds_without_a_time_field_are_warned_about() -> None:
    """max_future / max_past on a line without time_field check nothing, and kom check says so."""
    text = station("a/b", extra="max_past = 60\n").replace(
        'host = "broker"\n', 'host = "broker"\nmax_future = 300\n'
    )
    assert config_warnings(loads(text)) == [
        "line.max_future has no effect: the line has no time_field, so values take the receive "
        "time and there is no source time to check",
        "station[1].max_past has no effect: the line has no time_field, so values take the "
        "receive time and there is no source time to check",
    ]
    timed = text.replace('host = "broker"\n', 'host = "broker"\ntime_field = "t"\n')
    assert config_warnings(loads(timed.replace("[line]", '[line]\npayload_type = "json"'))) == []
