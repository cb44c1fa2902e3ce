"""Topic filters and topics as validated values (MQTT 3.1.1 §4.7, MQTT 5 §4.8.2 shared)."""

from __future__ import annotations

import re

import pytest

from kom._topic import TopicFilter, check_topic


@pytest.mark.parametrize(
    ("text", "share_group", "filter_"),
    [
        ("#", None, "#"),
        ("+", None, "+"),
        ("a/b/c", None, "a/b/c"),
        ("a/+/c", None, "a/+/c"),
        ("+/+/#", None, "+/+/#"),
        ("a/#", None, "a/#"),
        ("/a", None, "/a"),
        ("a//b", None, "a//b"),
        ("$SYS/#", None, "$SYS/#"),
        ("$share/g/a/+", "g", "a/+"),
        ("$share/group-1/#", "group-1", "#"),
        ("devices/+/messages/events/", None, "devices/+/messages/events/"),
    ],
)
def test_filter_accepted(text: str, share_group: str | None, filter_: str) -> None:
    """Valid filters keep their text; a shared subscription splits off its group."""
    topic_filter = TopicFilter(text)
    assert (topic_filter.text, topic_filter.share_group, topic_filter.filter) == (
        text,
        share_group,
        filter_,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a topic filter may not be empty"),
        ("a/#/b", "'#' must be a whole last level"),
        ("a#", "'#' must be a whole last level"),
        ("#/a", "'#' must be a whole last level"),
        ("a/b+", "'+' must be a whole level"),
        ("+a", "'+' must be a whole level"),
        ("a\x00b", "may not contain NUL"),
        ("$share/g", "a shared subscription is $share/GROUP/FILTER"),
        ("$share//a", "a shared subscription is $share/GROUP/FILTER"),
        ("$share/g/", "a shared subscription is $share/GROUP/FILTER"),
        ("$share/g+/a", "a share group may not contain wildcards"),
        ("$share/#/a", "a share group may not contain wildcards"),
        ("$share/g/a/#/b", "'#' must be a whole last level"),
    ],
)
def test_filter_refused(text: str, message: str) -> None:
    """Malformed filters raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=re.escape(message)):
        TopicFilter(text)


@pytest.mark.parametrize(
    ("text", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("a/b", "a", False),
        ("+", "a", True),
        ("+", "a/b", False),
        ("+", "", True),
        ("+/b", "a/b", True),
        ("+/b", "/b", True),
        ("a/+", "a/", True),
        ("a/+", "a", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+/+", "a/b", False),
        ("#", "a", True),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("a/#", "a", True),  # the parent level matches a/# (MQTT 3.1.1 §4.7.1.2)
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("a/#", "b/a", False),
        ("+/#", "a", True),
        ("devices/+/messages/events/", "devices/n1/messages/events/", True),
        ("devices/+/messages/events/", "devices/n1/messages/events", False),
        # topics starting with $ are not matched by a leading wildcard (MQTT 3.1.1 §4.7.2)
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/+/uptime", "$SYS/broker/uptime", True),
        ("a/+", "a/$x", True),
        # a shared subscription matches by its filter
        ("$share/g/a/+", "a/b", True),
        ("$share/g/a/+", "$share/g/a/b", False),
        ("$share/g/#", "x/y", True),
        ("$share/g/#", "$SYS/x", False),
        ("$share/g/a/#", "a", True),
    ],
)
def test_filter_matches(text: str, topic: str, matches: bool) -> None:
    """`+` takes one level, `#` the rest (and the parent), `$` topics need a literal first level."""
    assert TopicFilter(text).matches(topic) is matches


def test_filter_is_frozen_value() -> None:
    """Filters compare and hash by text, and cannot be changed."""
    assert TopicFilter("a/+") == TopicFilter("a/+")
    assert len({TopicFilter("a/+"), TopicFilter("a/+"), TopicFilter("#")}) == 2
    with pytest.raises(AttributeError):
        TopicFilter("a").text = "b"  # type: ignore[misc]
    assert repr(TopicFilter("$share/g/a")) == "TopicFilter(text='$share/g/a', share_group='g')"


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("a", None),
        ("a/b/c", None),
        ("devices/netio-4All-25E0/messages/devicebound/", None),
        ("$SYS/x", None),
        ("a b/ü", None),
        ("", "a topic may not be empty"),
        ("a/+", "a topic may not contain wildcards: 'a/+'"),
        ("a/#", "a topic may not contain wildcards: 'a/#'"),
        ("a+b", "a topic may not contain wildcards: 'a+b'"),
        ("a\x00b", "a topic may not contain NUL"),
        ("a//b", None),  # empty levels are allowed (MQTT 3.1.1 §4.7.1.1)
        ("/a", None),
        ("a/", None),
        ("x" * 65535, None),
        ("x" * 65536, "a topic may not be longer than 65535 bytes"),
        ("é" * 32768, "a topic may not be longer than 65535 bytes"),
    ],
)
def test_check_topic(topic: str, problem: str | None) -> None:
    """A publish topic has no wildcard, no NUL, no empty level and at most 65535 bytes."""
    assert check_topic(topic) == problem
