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
    SPARKPLUG = "sparkplug"  # SPEC §14: by the Sparkplug topic's group, node and device


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


_FLAGS = re.compile(r"\(\?[aiLmsux]")
_SAFE_ESCAPES = frozenset("dws-._")
_QUANTIFIERS = frozenset("*+?{")


def level_key(pattern: str) -> tuple[int, str] | None:
    """A (level, text) that every topic the regex matches has, or None.

    The regex is split at its `/` characters. When the levels before level k can never
    match a `/` themselves (no `.`, no negated class but `[^/...]`, balanced groups and
    classes within the level, no quantifier on a `/`, no alternation or flags), the
    pattern's slashes are the topic's slashes, so a level k with no meta character at
    all must equal the topic's level k. Conservative: None whenever unsure.
    """
    if "|" in pattern or "\\/" in pattern or _FLAGS.match(pattern):
        return None
    levels = _split_levels(pattern)
    if levels is None:
        return None
    for k, level in enumerate(levels):
        if level[:1] in _QUANTIFIERS:
            return None  # a quantifier on the slash before this level
        if k > 0 and level and not any(c in _META for c in level):
            return (k, level)
        if not _stays_in_level(level):
            return None
    return None


def _class_has_slash(inner: str) -> bool:
    """Whether a character class body (no escapes) matches "/", itself or in a range."""
    if "/" in inner:
        return True
    for j in range(1, len(inner) - 1):
        if inner[j] == "-" and inner[j - 1] <= "/" <= inner[j + 1]:
            return True
    return False


def _split_levels(pattern: str) -> list[str] | None:
    """The pattern cut at each `/` outside a character class (None if a class is open)."""
    levels: list[str] = []
    start = i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return None
            i = end + 1
            continue
        if ch == "/":
            levels.append(pattern[start:i])
            start = i + 1
        i += 1
    levels.append(pattern[start:])
    return levels


def _stays_in_level(level: str) -> bool:
    """Whether this piece of a regex can only match text without `/`."""
    depth = 0
    i = 0
    while i < len(level):
        ch = level[i]
        if ch == "\\":
            if i + 1 >= len(level) or level[i + 1] not in _SAFE_ESCAPES:
                return False
            i += 2
            continue
        if ch == ".":
            return False
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
        elif ch == "[":
            end = level.find("]", i + 2)
            if end < 0:
                return False
            inner = level[i + 1 : end]
            if "\\" in inner:
                return False
            if inner.startswith("^"):
                if "/" not in inner:
                    return False  # a negated class matches "/" unless it names it
            elif _class_has_slash(inner):
                return False
            i = end + 1
            continue
        i += 1
    return depth == 0


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
        # Each regex is filed once: under a literal topic level when it has one that the
        # topic must carry at a fixed position (`plant/area(\d+)/dev0042/.*` needs
        # `dev0042` as level 2), else under its literal prefix.
        self._by_prefix: dict[str, list[tuple[int, int, re.Pattern[str]]]] = {}
        self._by_level: dict[tuple[int, str], list[tuple[int, int, re.Pattern[str]]]] = {}
        for rank, (address, index, pattern) in enumerate(regexes):
            key = level_key(address)
            if key is not None:
                self._by_level.setdefault(key, []).append((rank, index, pattern))
            else:
                bucket = self._by_prefix.setdefault(literal_prefix(address), [])
                bucket.append((rank, index, pattern))
        self._prefix_lengths = sorted({len(p) for p in self._by_prefix})
        self._wills: dict[str, list[tuple[int, bytes | None]]] = {}
        for index, topic, payload in wills:
            self._wills.setdefault(topic, []).append((index, payload))
        #: Whether any station has a will topic (asked for every message, so not a property).
        self.has_wills = bool(self._wills)
        self._cache: dict[str, Route] = {}
        self._cache_size = cache_size

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
        if self._by_level:
            by_level = self._by_level
            for position, part in enumerate(topic.split("/")):
                bucket = by_level.get((position, part))
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
