"""Routing a message to a station: wills, catch-all, exact, regexes, fallback (SPEC §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom._router import UNROUTED, Route, Router, Rule, WillHit, literal_prefix
from tests.strategies import addresses_and_topics, station_addresses


def route(addresses: list[str], topic: str) -> tuple[str | None, Rule, Mapping[str, str | None]]:
    """The address of the station `topic` goes to (None when unrouted), the rule and the groups."""
    found = Router(addresses).route(topic)
    station = None if found.station is None else addresses[found.station]
    return station, found.rule, dict(found.groups)


# --- SPEC §3 rules 2-6 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "topic", "station", "rule"),
    [
        # rule 2: a station with address # takes everything, before any other rule
        (["#", "a/b", "a/.*", ".*"], "a/b", "#", Rule.CATCH_ALL),
        (["a/b", "#"], "x", "#", Rule.CATCH_ALL),
        # rule 3: an exact address takes its topic, before any regex
        (["a/b", "a/.*"], "a/b", "a/b", Rule.EXACT),
        (["a/.*", "a/b", "zzz.*"], "a/b", "a/b", Rule.EXACT),
        (["a.c", "abc"], "abc", "abc", Rule.EXACT),
        (["a.c", "abc"], "a.c", "a.c", Rule.EXACT),
        (["a.c"], "abc", "a.c", Rule.REGEX),
        # an address that is no regular expression still matches exactly
        (["a/[b", ".*"], "a/[b", "a/[b", Rule.EXACT),
        (["a/[b", ".*"], "a/b", ".*", Rule.FALLBACK),
        # rule 4: regexes in descending order of their text, whole topic only
        (["status/batt.*", "status/battery"], "status/battery", "status/battery", Rule.EXACT),
        (["status/batt.*", "status/batter[y]"], "status/battery", "status/batter[y]", Rule.REGEX),
        (["status/b.*", "status/ba.*", "status/bat.*"], "status/batt", "status/bat.*", Rule.REGEX),
        (["a/.*", "a/b.*"], "a/bc", "a/b.*", Rule.REGEX),
        (["a/.*", "a/b.*"], "a/c", "a/.*", Rule.REGEX),
        (["[ab]/x", "a/x|b/y"], "a/x", "a/x|b/y", Rule.REGEX),
        (["a/x|b/y", "b/.*"], "b/y", "b/.*", Rule.REGEX),
        (["a/x|b/y"], "b/y", "a/x|b/y", Rule.REGEX),
        (["a/b"], "a/bc", None, Rule.UNROUTED),
        (["a/b"], "xa/b", None, Rule.UNROUTED),
        (["a/b.?"], "a/bcd", None, Rule.UNROUTED),
        (["a|b"], "ab", None, Rule.UNROUTED),
        (["b"], "abc", None, Rule.UNROUTED),
        (["dev/\\d+"], "dev/12", "dev/\\d+", Rule.REGEX),
        (["dev/\\d+"], "dev/1a", None, Rule.UNROUTED),
        (["a/b$"], "a/b", "a/b$", Rule.REGEX),
        (["^a/b"], "a/b", "^a/b", Rule.REGEX),
        (["(?i)A/B"], "a/b", "(?i)A/B", Rule.REGEX),
        # rule 5: .* is the fallback, after every regex
        ([".*", "a/.*"], "a/b", "a/.*", Rule.REGEX),
        ([".*", "a/.*"], "b/c", ".*", Rule.FALLBACK),
        ([".*"], "", ".*", Rule.FALLBACK),
        # rule 6: nothing takes it
        ([], "a", None, Rule.UNROUTED),
        (["a", "b"], "c", None, Rule.UNROUTED),
    ],
)
def test_route(addresses: list[str], topic: str, station: str | None, rule: Rule) -> None:
    """Each rule of SPEC §3, in its order of precedence."""
    assert route(addresses, topic)[:2] == (station, rule)


@pytest.mark.parametrize(
    ("address", "topic", "groups"),
    [
        ("devices/(?P<device>[^/]+)/status", "devices/n1/status", {"device": "n1"}),
        (
            "n/(?P<dev>[^/]+)/output/(?P<n>\\d+)/state",
            "n/x/output/3/state",
            {"dev": "x", "n": "3"},
        ),
        ("a(?P<opt>/b)?", "a", {"opt": None}),
        ("(a)/(?P<g>.*)", "a/", {"g": ""}),
        ("a/(.*)", "a/b", {}),
    ],
)
def test_route_named_groups(address: str, topic: str, groups: dict[str, str | None]) -> None:
    """The named groups of the matching regex come with the route (SPEC §3 rule 4, beyond)."""
    assert route([address, ".*"], topic) == (address, Rule.REGEX, groups)


def test_route_exact_has_no_groups() -> None:
    """An exact match gives no groups, even when the address has named groups."""
    assert route(["a/(?P<g>b)"], "a/(?P<g>b)") == ("a/(?P<g>b)", Rule.EXACT, {})


def test_unrouted_constant() -> None:
    """The unrouted route names no station."""
    assert Router(["a"]).route("b") == UNROUTED == Route(None, Rule.UNROUTED, {})


def test_rule_names() -> None:
    """The rules print as `kom route --json` names them (SPEC §9, and §14 for Sparkplug)."""
    names = ["will", "catch-all", "exact", "regex", "fallback", "unrouted", "sparkplug"]
    assert [str(rule) for rule in Rule] == names


# --- SPEC §3 rule 1: station wills -------------------------------------------------------


@pytest.mark.parametrize(
    ("wills", "topic", "payload", "expected"),
    [
        # with will_payload: only that payload is the will; another clears it
        ([(0, "d/status", b"offline")], "d/status", b"offline", WillHit((0,), ())),
        ([(0, "d/status", b"offline")], "d/status", b"online", WillHit((), (0,))),
        ([(0, "d/status", b"offline")], "d/status", b"", WillHit((), (0,))),
        # without will_payload (None or empty): any payload is the will
        ([(0, "d/status", None)], "d/status", b"anything", WillHit((0,), ())),
        ([(0, "d/status", b"")], "d/status", b"", WillHit((0,), ())),
        # not the will topic: not a will message at all
        ([(0, "d/status", b"offline")], "d/other", b"offline", None),
        ([(0, "d/status", b"offline")], "d/status/x", b"offline", None),
        ([], "d/status", b"offline", None),
        # two stations on one will topic
        (
            [(0, "gw/status", b"offline"), (3, "gw/status", None)],
            "gw/status",
            b"offline",
            WillHit((0, 3), ()),
        ),
        (
            [(0, "gw/status", b"offline"), (3, "gw/status", None)],
            "gw/status",
            b"online",
            WillHit((3,), (0,)),
        ),
    ],
)
def test_will(
    wills: list[tuple[int, str, bytes | None]], topic: str, payload: bytes, expected: WillHit | None
) -> None:
    """A station's will topic (and payload, when set) is its will; another payload clears it."""
    router = Router(["x"] * 4, wills)
    assert router.has_wills is bool(wills)
    assert router.will(topic, payload) == expected


# --- literal prefixes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("status/battery", "status/battery"),
        ("status/batt.*", "status/batt"),
        ("devices/(?P<d>[^/]+)/x", "devices/"),
        ("a/b?", "a/"),
        ("a/b*", "a/"),
        ("a/b+", "a/b"),
        ("a/b{0,2}", "a/"),
        ("a/b{2}", "a/"),
        ("a\\.b", "a.b"),
        ("a\\/b", "a/b"),
        ("a\\.?b", "a"),
        ("a\\d", "a"),
        ("a\\\\b", "a\\b"),
        ("a|b", ""),
        ("x/(a|b)", ""),
        ("a\\|b", ""),
        ("^a", ""),
        ("a$", "a"),
        ("(?i)abc", ""),
        ("[ab]c", ""),
        (".*", ""),
        ("", ""),
        ("a b#c", "a b#c"),
        ("é/ü", "é/ü"),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    """The literal prefix is what every match must start with; conservative when unsure."""
    assert literal_prefix(pattern) == prefix


def _valid_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_literal_prefix_is_a_prefix_of_every_match(data: st.DataObject) -> None:
    """Every topic a regex address matches whole starts with its literal prefix."""
    pattern = data.draw(station_addresses.filter(_valid_regex), label="pattern")
    topic = data.draw(st.from_regex(pattern, fullmatch=True), label="topic")
    assert topic.startswith(literal_prefix(pattern))


# --- the decision cache ------------------------------------------------------------------


def test_cache_bounded() -> None:
    """With a tiny cache, many distinct topics are still routed right and the cache stays small."""
    router = Router(["a/(?P<n>\\d+)", "a/1", "b/.*", ".*"], cache_size=4)
    for round_ in range(3):
        for n in range(200):
            topic = f"a/{n}" if n % 3 else f"b/{n}"
            found = router.route(topic)
            if n == 1:
                assert found == Route(1, Rule.EXACT, {})
            elif n % 3:
                assert found == Route(0, Rule.REGEX, {"n": str(n)}), (round_, n)
            else:
                assert found == Route(2, Rule.REGEX, {})
            assert len(router._cache) <= 4
        assert router.route("zzz") == Route(3, Rule.FALLBACK, {})


def test_cache_repeats_decision() -> None:
    """A repeated topic gets the same decision."""
    router = Router(["a/.*"])
    assert router.route("a/b") == router.route("a/b") == Route(0, Rule.REGEX, {})


def test_many_regexes() -> None:
    """Thousands of regex addresses route each topic to the right one."""
    addresses = [f"plant/{n}/(?P<q>[^/]+)" for n in range(3000)] + ["plant/.*"]
    router = Router(addresses)
    assert router.route("plant/2999/temp") == Route(2999, Rule.REGEX, {"q": "temp"})
    assert router.route("plant/17/x/y") == Route(3000, Rule.REGEX, {})
    assert router.route("plant/0/p") == Route(0, Rule.REGEX, {"q": "p"})
    assert router.route("other") == UNROUTED


# --- property (c): the router agrees with SPEC §3 read plainly --------------------------


def reference(addresses: list[str], topic: str) -> Route:
    """SPEC §3 rules 2-6 as written, trying every address one by one."""
    if "#" in addresses:
        return Route(addresses.index("#"), Rule.CATCH_ALL, {})
    if topic in addresses:
        return Route(addresses.index(topic), Rule.EXACT, {})
    for address in sorted(addresses, reverse=True):
        if address in ("#", ".*"):
            continue
        try:
            pattern = re.compile(address)
        except re.error:
            continue
        match = pattern.fullmatch(topic)
        if match:
            return Route(addresses.index(address), Rule.REGEX, match.groupdict())
    if ".*" in addresses:
        return Route(addresses.index(".*"), Rule.FALLBACK, {})
    return Route(None, Rule.UNROUTED, {})


@settings(max_examples=200, deadline=None)
@given(addresses_and_topics(), st.integers(1, 4))
def test_router_agrees_with_reference(case: tuple[list[str], list[str]], cache_size: int) -> None:
    """Property (c): for any addresses and topics, the router decides as the plain reference."""
    addresses, topics = case
    router = Router(addresses, cache_size=cache_size)
    for topic in topics + topics:  # twice: cached decisions too
        found = router.route(topic)
        expected = reference(addresses, topic)
        assert (found.station, found.rule, dict(found.groups)) == (
            expected.station,
            expected.rule,
            dict(expected.groups),
        ), topic


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        (r"plant/area(\d+)/dev00042/.*", (2, "dev00042")),
        ("devices/(?P<id>[^/]+)/messages/events/", (2, "messages")),
        ("a/[a-z]+/dev1", (2, "dev1")),
        ("a/b?/c", (2, "c")),
        ("a/.*/b", None),  # "." may match "/"
        ("a/[^x]/c", None),  # a negated class without "/" matches it
        ("a/[/]/c", None),
        ("a/[!-9]/c", None),  # the range covers "/"
        ("a/(b/c)+/d", None),  # a group across levels
        ("x/+/y", None),  # a quantifier on the slash
        ("(?i)a/b", None),  # flags
        ("a|b/c", None),  # alternation
    ],
)
def test_level_key_table(pattern: str, key: tuple[int, str] | None) -> None:
    """A regex is filed under a literal level only when every topic it matches has it."""
    from kom._router import level_key

    assert level_key(pattern) == key


def test_many_regexes_with_one_prefix_route_by_their_literal_level() -> None:
    """10,000 regexes sharing a prefix: the right one wins, and only few are tried."""
    addresses = [rf"plant/area(\d+)/dev{i:05d}/.*" for i in range(10_000)]
    router = Router(addresses)
    route = router.route("plant/area7/dev04242/temp")
    assert (route.station, route.rule) == (4242, Rule.REGEX)
    assert router.route("plant/area7/nobody/temp").rule is Rule.UNROUTED


LEVEL_PIECES = ["a", "b", "dev1", "[a-z]+", r"(\d+)", ".*", "[^/]+", "[^x]", "b?", "[!-9]", "x+"]
TOPIC_PIECES = ["a", "b", "dev1", "x", "7", "", "a/b", "xx"]


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(
        st.lists(st.sampled_from(LEVEL_PIECES), min_size=1, max_size=4).map("/".join),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    topics=st.lists(
        st.lists(st.sampled_from(TOPIC_PIECES), min_size=1, max_size=5).map("/".join),
        min_size=1,
        max_size=10,
    ),
)
def test_level_filing_agrees_with_trying_every_regex(
    patterns: list[str], topics: list[str]
) -> None:
    """With regexes filed by literal level, routing equals trying all in descending order."""
    router = Router(patterns)
    regexes = [i for i in range(len(patterns)) if patterns[i] != ".*"]  # ".*" is the fallback
    ordered = sorted(regexes, key=lambda i: patterns[i], reverse=True)
    fallback = patterns.index(".*") if ".*" in patterns else None
    for topic in topics:
        if topic in patterns and topic != ".*":
            expected: int | None = patterns.index(topic)
        else:
            found = (i for i in ordered if re.fullmatch(patterns[i], topic))
            expected = next(found, fallback)
        assert router.route(topic).station == expected, (topic, patterns)
