"""Routing a PUBLISH to a station (SPEC §3).

Order: station will topic, `#` catch-all, exact address, regular expressions in descending
order of their text (whole-topic match), `.*` fallback. Thousands of regexes are not tried
one by one: each regex is filed under the literal prefix every topic it matches must start
with, so a topic only tries the regexes whose prefix it starts with (still in descending
order), and decisions are cached per topic because SCADA topics repeat.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple


class Rule(enum.StrEnum):
    WILL = "will"
    CATCH_ALL = "catch-all"
    EXACT = "exact"
    REGEX = "regex"
    FALLBACK = "fallback"
    UNROUTED = "unrouted"


class Route(NamedTuple):
    """Where a topic goes: the station's index (None when unrouted), the rule, regex groups."""

    station: int | None
    rule: Rule
    groups: Mapping[str, str | None]


class WillHit(NamedTuple):
    """Stations whose will this message is (`hit`), and stations it clears (`cleared`)."""

    hit: tuple[int, ...]
    cleared: tuple[int, ...]


_NO_GROUPS: Mapping[str, str | None] = {}
UNROUTED = Route(None, Rule.UNROUTED, _NO_GROUPS)
_META = set(".^$*+?{}[]|()\\")
_ESCAPED_LITERAL = set("/.-_:#%@!&=~,;'\"<> $*+?{}[]|()\\^")


def literal_prefix(pattern: str) -> str:
    """The text every string matched (whole) by `pattern` must start with; may be empty.

    Conservative: stops at the first meta character, drops a literal made optional by a
    following quantifier, and gives up (empty) on any alternation.
    """
    if "|" in pattern:
        return ""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 < len(pattern) and pattern[i + 1] in _ESCAPED_LITERAL:
                out.append(pattern[i + 1])
                i += 2
                continue
            break
        if ch in _META:
            if ch in "?*{" and out:
                out.pop()
            break
        out.append(ch)
        i += 1
    return "".join(out)


class Router:
    """Decides the station of each topic; built once per configuration of a line."""

    def __init__(
        self,
        addresses: Iterable[str],
        wills: Iterable[tuple[int, str, bytes | None]] = (),
        cache_size: int = 65536,
        patterns: Sequence[re.Pattern[str] | None] | None = None,
    ) -> None:
        """`patterns`, when given, are the addresses already compiled (None: not a regex)."""
        self._catch_all: int | None = None
        self._fallback: int | None = None
        self._exact: dict[str, int] = {}
        regexes: list[tuple[str, int, re.Pattern[str]]] = []
        for index, address in enumerate(addresses):
            if address == "#":
                self._catch_all = index
            elif address == ".*":
                self._fallback = index
                self._exact[address] = index  # rule 3 first: the topic ".*" itself is exact
            else:
                self._exact[address] = index
                if literal_prefix(address) == address:
                    continue  # no meta character: it matches itself only, as the exact rule does
                if patterns is not None:
                    pattern = patterns[index]
                    if pattern is not None:
                        regexes.append((address, index, pattern))
                    continue
                # An address that is no regular expression still routes by exact match.
                with contextlib.suppress(re.error):
                    regexes.append((address, index, re.compile(address)))
        regexes.sort(key=lambda r: r[0], reverse=True)
        # Each regex keeps its rank in the descending order, so candidates from several
        # prefix buckets can be merged back into that order.
        self._by_prefix: dict[str, list[tuple[int, int, re.Pattern[str]]]] = {}
        for rank, (address, index, pattern) in enumerate(regexes):
            bucket = self._by_prefix.setdefault(literal_prefix(address), [])
            bucket.append((rank, index, pattern))
        self._prefix_lengths = sorted({len(p) for p in self._by_prefix})
        self._wills: dict[str, list[tuple[int, bytes | None]]] = {}
        for index, topic, payload in wills:
            self._wills.setdefault(topic, []).append((index, payload))
        self._cache: dict[str, Route] = {}
        self._cache_size = cache_size

    @property
    def has_wills(self) -> bool:
        return bool(self._wills)

    def will(self, topic: str, payload: bytes) -> WillHit | None:
        """SPEC §3 rule 1: is this message a station's will, or does it clear one?"""
        entries = self._wills.get(topic)
        if entries is None:
            return None
        hit = tuple(i for i, expected in entries if not expected or payload == expected)
        cleared = tuple(i for i, expected in entries if expected and payload != expected)
        return WillHit(hit, cleared)

    def route(self, topic: str) -> Route:
        """SPEC §3 rules 2-6 for `topic` (the will rule is `will()`)."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        route = self._decide(topic)
        cache = self._cache
        if len(cache) >= self._cache_size:
            # Bounded: drop the oldest decision (dicts keep insertion order).
            del cache[next(iter(cache))]
        cache[topic] = route
        return route

    def _decide(self, topic: str) -> Route:
        if self._catch_all is not None:
            return Route(self._catch_all, Rule.CATCH_ALL, _NO_GROUPS)
        index = self._exact.get(topic)
        if index is not None:
            return Route(index, Rule.EXACT, _NO_GROUPS)
        candidates: list[tuple[int, int, re.Pattern[str]]] = []
        by_prefix = self._by_prefix
        for length in self._prefix_lengths:
            if length > len(topic):
                break
            bucket = by_prefix.get(topic[:length])
            if bucket:
                candidates.extend(bucket)
        if len(candidates) > 1:
            candidates.sort(key=_rank)
        for _, index, pattern in candidates:
            m = pattern.fullmatch(topic)
            if m is not None:
                groups = m.groupdict() if pattern.groupindex else _NO_GROUPS
                return Route(index, Rule.REGEX, groups)
        if self._fallback is not None:
            return Route(self._fallback, Rule.FALLBACK, _NO_GROUPS)
        return UNROUTED


def _rank(candidate: tuple[int, int, re.Pattern[str]]) -> int:
    return candidate[0]
