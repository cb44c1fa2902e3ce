"""Hypothesis strategies shared by kom's tests."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from kom._timemask import Zone

#: Strings a payload plausibly carries where a number, a state or a time is expected.
lookalike_strings = st.one_of(
    st.integers().map(str),
    st.floats().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f" {x:+.3f} ".replace(".", ",")),
    st.sampled_from(
        [
            "true",
            "FALSE",
            "On",
            "off",
            "trans",
            "ERR",
            "1",
            "0",
            "nan",
            "-inf",
            "1_000",
            "١٢",
            "00:05:00",
            "99:59:59.5",
            "-00:00:01",
            "2026-01-01T00:00:00Z",
            "",
            " ",
            "1e999",
        ]
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.integers(),  # beyond 64 bits: Python callers may pass them
    st.floats(),  # NaN and infinities included: Python callers may pass them
    st.text(max_size=20),
    lookalike_strings,
)

#: Any JSON value as a JSON decoder or a Python caller hands it over.
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def instants(first_year: int = 1970, last_year: int = 2199) -> st.SearchStrategy[datetime]:
    """Aware UTC datetimes with millisecond precision between two years, inclusive."""
    return st.datetimes(
        min_value=datetime(first_year, 1, 1), max_value=datetime(last_year, 12, 31, 23, 59, 59)
    ).map(lambda dt: dt.replace(microsecond=dt.microsecond // 1000 * 1000, tzinfo=UTC))


#: Zone.UTC and fixed offsets within ±23:59.
fixed_zones = st.one_of(
    st.just(Zone.UTC),
    st.builds(
        lambda sign, minutes, colon: Zone.parse(
            f"{sign}{minutes // 60:02d}{':' if colon else ''}{minutes % 60:02d}"
        ),
        st.sampled_from("+-"),
        st.integers(0, 24 * 60 - 1),
        st.booleans(),
    ),
)

# Literals that cannot be read as a token or a digit, so that any mask of them is unambiguous.
_LITERAL_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=["Cs", "Nd"],
    exclude_characters="ymdhisYMDHIS" + string.digits,
)


@st.composite
def time_masks(draw: st.DrawFn) -> tuple[str, bool]:
    """A mask with every field once, in any order, between any literals; and whether it has `yy`."""
    year = draw(st.sampled_from(["yyyy", "yy", "YYYY"]))
    tokens = [year, "mm", "dd", "hh", "mi", "ss", "mss"]
    tokens = [draw(st.sampled_from([t, t.upper()])) for t in tokens]
    order = draw(st.permutations(tokens))
    literals = draw(st.lists(st.text(_LITERAL_CHARS, max_size=3), min_size=8, max_size=8))
    text = literals[0] + "".join(t + lit for t, lit in zip(order, literals[1:], strict=False))
    return text, year.lower() == "yy"


#: Durations to the microsecond, within the ±2**33 s that float seconds hold to the microsecond.
durations = st.timedeltas(min_value=timedelta(days=-99_000), max_value=timedelta(days=99_000))


# --- The pure core: JSON addresses, routing, acknowledgements, payloads --------------------
# (used by test_address.py, test_router.py, test_acks.py and test_decode.py)

#: Object keys as devices write them, and the awkward ones a JA= formatter has to quote.
json_keys = st.one_of(
    st.text(max_size=6),
    st.sampled_from(
        [
            "a",
            "Time",
            "a.b",
            "[1]",
            "x[",
            "]",
            '"',
            '"q"',
            "\\",
            " sp ",
            " ",
            "",
            "$",
            "$.a",
            "é",
            "温度",
            "a b",
            '["x"]',
            "\t",
            "1",
            "JA=x",
            "\u2028",
            "\u00a0x",
        ]
    ),
)

#: Scalars that survive a JSON round trip (no NaN; big integers included).
plain_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)

#: JSON documents whose objects use `json_keys`.
json_documents = st.recursive(
    plain_json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def documents_with_leaf(draw: st.DrawFn) -> tuple[object, tuple[str | int, ...], object]:
    """A JSON document, the steps (keys, 0-based indexes) of one of its leaves, and that leaf.

    A leaf is a scalar or an empty array or object; the document itself is the leaf of `()`.
    """
    doc = draw(json_documents)
    steps: list[str | int] = []
    node = doc
    while isinstance(node, dict | list) and node:
        if isinstance(node, dict):
            key = draw(st.sampled_from(sorted(node)))
            steps.append(key)
            node = node[key]
        else:
            index = draw(st.integers(0, len(node) - 1))
            steps.append(index)
            node = node[index]
    return doc, tuple(steps), node


# Topic levels from a small alphabet, so that addresses and topics collide often.
_TOPIC_TEXT = st.text(st.sampled_from("ab/.1"), min_size=1, max_size=6)
_REGEX_TAILS = st.sampled_from(
    [".*", ".+", "[ab]+", "[^/]+", "b?", "a*", "a{0,2}", "a{2}", r"\d", r"\d*", "(?P<g>[^/]+)",
     "(?P<g>a|b)/(?P<h>.*)", "(a|b)", "a|b", "/.*|b", "(?:/[ab])*", r"\.", r"\..?", "[.]", "$",
     "", "[", "(?i)A", "^a"]
)  # fmt: skip


#: Station addresses of every kind SPEC §3 names; some are no valid regex (exact only).
station_addresses = st.one_of(
    _TOPIC_TEXT,
    st.builds(lambda prefix, tail: prefix + tail, _TOPIC_TEXT | st.just(""), _REGEX_TAILS),
    st.sampled_from(["#", ".*", "a|a/b", "[ab]/.*", "(a|b)+", "a/(?P<dev>[^/]+)/b", r"\w+"]),
)


@st.composite
def addresses_and_topics(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Distinct station addresses of one line, and topics to route: random or equal to one."""
    addresses = draw(st.lists(station_addresses, min_size=1, max_size=8, unique=True))
    topics = draw(
        st.lists(_TOPIC_TEXT | st.sampled_from(addresses) | st.text(max_size=6), max_size=8)
    )
    return addresses, topics


#: Packet identifiers of QoS 1/2 messages in arrival order (distinct while in flight).
arrival_orders = st.lists(
    st.tuples(st.integers(1, 65535), st.sampled_from([1, 2])),
    max_size=20,
    unique_by=lambda entry: entry[0],
)

#: Payloads a broker may hand over: any bytes, JSON text of any value (NaN, huge numbers,
#: lookalike strings), and pathological nesting.
payloads = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.text(max_size=16).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


#: (Sparkplug datatype code, a value of it) for the scalar datatypes kom encodes (§6.4.16).
def sparkplug_values() -> st.SearchStrategy[tuple[int, object]]:
    from kom.sparkplug._payload import DataType as D

    def ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
        if signed:
            return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        return st.integers(0, (1 << bits) - 1)

    times = st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
    ).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
    pairs = [
        *(
            st.tuples(st.just(int(code)), ints(bits, True))
            for code, bits in ((D.Int8, 8), (D.Int16, 16), (D.Int32, 32), (D.Int64, 64))
        ),
        *(
            st.tuples(st.just(int(code)), ints(bits, False))
            for code, bits in ((D.UInt8, 8), (D.UInt16, 16), (D.UInt32, 32), (D.UInt64, 64))
        ),
        st.tuples(st.just(int(D.Double)), st.floats(allow_nan=False)),
        st.tuples(st.just(int(D.Float)), st.floats(width=32, allow_nan=False)),
        st.tuples(st.just(int(D.Boolean)), st.booleans()),
        st.tuples(st.sampled_from([int(D.String), int(D.Text), int(D.UUID)]), st.text()),
        st.tuples(st.just(int(D.DateTime)), times),
        st.tuples(st.sampled_from([int(D.Bytes), int(D.File)]), st.binary()),
        st.tuples(st.just(int(D.Int16Array)), st.lists(ints(16, True))),
        st.tuples(st.just(int(D.UInt64Array)), st.lists(ints(64, False))),
        st.tuples(st.just(int(D.DoubleArray)), st.lists(st.floats(allow_nan=False))),
        st.tuples(st.just(int(D.BooleanArray)), st.lists(st.booleans())),
        st.tuples(
            st.just(int(D.StringArray)),
            st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8"))),
        ),
        st.tuples(st.just(int(D.DateTimeArray)), st.lists(times)),
    ]
    return st.one_of(pairs)
