"""Tag addresses: parsed, checked against the tag type and compiled once at load (SPEC §4).

The JSON readers are on the hot path: a `JA=` address compiles to a tuple of steps walked
with plain subscripting (well under a microsecond), while `JP=` keeps jsonpath-ng for what
only a full JSONPath can do (filters, wildcards, recursion).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from ._binary import BinaryField, parse_layout
from ._model import ValueType

#: Returned by a reader when the addressed value is not in the document.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class Kind(enum.Enum):
    """What an address reads or writes; the value is its spelling in the file."""

    __hash__ = object.__hash__  # singletons: identity, in C (see ValueType)

    IN_TOPIC = "IN_TOPIC"
    IN_DATA = "IN_DATA"
    IN_ID = "IN_ID"
    ACK_ID = "ACK_ID"
    OUT_TOPIC = "OUT_TOPIC"
    OUT_VALUE = "OUT_VALUE"
    JSON = "JA="
    JSONPATH = "JP="
    TOPIC = "TOPIC="
    BINARY = "BIN="
    SPB = "SPB="  # a Sparkplug B metric by its BIRTH name (SPEC §14), input or output
    PROP = "PROP="  # SPEC §11: an MQTT 5 property of the PUBLISH


#: The one type each fixed address allows (SPEC §4 "Addresses").
FIXED_TYPES = {
    Kind.IN_TOPIC: ValueType.TxtI,
    Kind.IN_DATA: ValueType.TxtI,
    Kind.IN_ID: ValueType.Ci,
    Kind.ACK_ID: ValueType.Co,
    Kind.OUT_TOPIC: ValueType.TxtO,
    Kind.OUT_VALUE: ValueType.TxtO,
}

KINDS_TEXT = (
    "IN_TOPIC, IN_DATA, IN_ID, JA=, JP=, TOPIC=, BIN=, SPB=, PROP=, ACK_ID, OUT_TOPIC, OUT_VALUE"
)

#: SPEC §11: the PUBLISH properties a PROP= address may name (besides `user:<key>`).
PROPERTY_NAMES = (
    "content_type",
    "response_topic",
    "correlation_data",
    "message_expiry_interval",
    "payload_format_indicator",
)

Step = str | int
Reader = Callable[[Any], Any]


@attrs.frozen
class Address:
    """A parsed tag address; `read` takes the parsed JSON document (for JA=/JP=)."""

    text: str
    kind: Kind
    steps: tuple[Step, ...] = ()
    group: str | None = None
    read: Reader | None = attrs.field(default=None, eq=False, repr=False)
    #: For BIN=: the field's place, offset and type; `steps` are then the text field's.
    binary: BinaryField | None = None
    metric: str | None = None  # SPB=: the Sparkplug metric name, as written

    @property
    def is_json(self) -> bool:
        """Whether the address reads the parsed JSON document (needs payload_type json)."""
        if self.kind is Kind.BINARY:
            return self.binary is not None and self.binary.source is not None
        return self.kind in (Kind.JSON, Kind.JSONPATH)


class AddressSyntaxError(ValueError):
    pass


_NAME_END = re.compile(r"[.\[]")


def parse_json_address(text: str) -> tuple[Step, ...]:
    """Parse a JA= path into steps: keys as str, indexes 0-based as int.

    Grammar: `$` alone is the whole document; otherwise segments `key` separated by dots,
    each followed by any number of `[n]` (1-based); the path may start with `[n]`; a key
    with dots, brackets or spaces at either end may be written `["key"]` (JSON string).
    """
    if text == "$":
        return ()
    if not text:
        raise AddressSyntaxError("an empty JSON address (use JA=$ for the whole payload)")
    steps: list[Step] = []
    i, n = 0, len(text)
    expect_key = text[0] != "["
    while i < n:
        if expect_key:
            m = _NAME_END.search(text, i)
            end = m.start() if m else n
            key = text[i:end]
            if not key:
                raise AddressSyntaxError(f"empty key at position {i + 1} in {text!r}")
            steps.append(key)
            i = end
            expect_key = False
            continue
        ch = text[i]
        if ch == ".":
            if i + 1 >= n:
                raise AddressSyntaxError(f"{text!r} ends with a dot")
            i += 1
            expect_key = text[i] != "["
            if not expect_key:
                raise AddressSyntaxError(f"a dot followed by '[' at position {i + 1} in {text!r}")
            continue
        if ch != "[":
            raise AddressSyntaxError(f"unexpected {ch!r} at position {i + 1} in {text!r}")
        close = _bracket_end(text, i)
        inner = text[i + 1 : close]
        if inner.startswith('"'):
            try:
                key = orjson.loads(inner)
            except orjson.JSONDecodeError:
                raise AddressSyntaxError(f"bad quoted key {inner} in {text!r}") from None
            if not isinstance(key, str):
                raise AddressSyntaxError(f"bad quoted key {inner} in {text!r}")
            steps.append(key)
        else:
            if not inner.isdigit() or not inner.isascii():
                raise AddressSyntaxError(
                    f"an index is a whole number from 1, found [{inner}] in {text!r}"
                )
            index = int(inner)
            if index < 1:
                raise AddressSyntaxError(f"indexes start at 1, found [{inner}] in {text!r}")
            steps.append(index - 1)
        i = close + 1
    return tuple(steps)


def _bracket_end(text: str, start: int) -> int:
    """The position of the `]` closing the bracket at `start`, skipping a quoted key."""
    i = start + 1
    if i < len(text) and text[i] == '"':
        i += 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        i += 1
    close = text.find("]", i)
    if close < 0:
        raise AddressSyntaxError(f"unclosed '[' at position {start + 1} in {text!r}")
    return close


def format_json_address(steps: tuple[Step, ...]) -> str:
    """The canonical JA= text of `steps` (the inverse of parse_json_address)."""
    if not steps:
        return "$"
    out: list[str] = []
    for step in steps:
        if isinstance(step, int):
            out.append(f"[{step + 1}]")
        elif step and not _needs_quotes(step):
            out.append(f".{step}" if out else step)
        else:
            out.append("[" + orjson.dumps(step).decode() + "]")
    return "".join(out)


def _needs_quotes(key: str) -> bool:
    # Blanks at either end would be stripped from a tag address (`JA= key `).
    return key == "$" or key != key.strip() or any(c in key for c in ".[]")


def compile_steps(steps: tuple[Step, ...]) -> Reader:
    """A reader that walks `steps` through a parsed JSON document, or returns MISSING.

    Readers are shared between equal paths (a file with 1,000 stations of one device type
    has a dozen distinct paths, not 12,000).
    """
    return _compile_steps(_typed(steps))


def _typed(steps: tuple[Step, ...]) -> tuple[tuple[type, Step], ...]:
    """A cache key that tells 1 from True (equal, and equally hashed, in Python)."""
    return tuple((type(step), step) for step in steps)


@functools.lru_cache(maxsize=65536)
def _compile_steps(typed: tuple[tuple[type, Step], ...]) -> Reader:
    steps = tuple(step for _, step in typed)
    if not steps:
        return _identity
    if len(steps) == 1 and isinstance(steps[0], str):
        key = steps[0]

        def read_key(doc: Any) -> Any:
            if type(doc) is dict:
                return doc.get(key, MISSING)
            return MISSING

        return read_key

    def read(doc: Any) -> Any:
        node = doc
        for step in steps:
            kind = type(node)
            if kind is dict:
                if type(step) is not str:
                    return MISSING
                node = node.get(step, MISSING)
                if node is MISSING:
                    return MISSING
            elif kind is list:
                if type(step) is not int or step >= len(node):
                    return MISSING
                node = node[step]
            else:
                return MISSING
        return node

    return read


def _identity(doc: Any) -> Any:
    return doc


def compile_property(name: str) -> Reader:
    """A reader of one MQTT 5 PUBLISH property (SPEC §11), MISSING when absent.

    `user:<key>` reads the first user property with that key; binary data (correlation data)
    reads as text (UTF-8, undecodable bytes escaped).
    """
    if name.startswith("user:") and len(name) > len("user:"):
        key = name[len("user:") :]

        def read_user(props: Any) -> Any:
            for k, v in props.get("user_property", ()):
                if k == key:
                    return v
            return MISSING

        return read_user
    if name not in PROPERTY_NAMES:
        raise AddressSyntaxError(
            f"PROP= takes one of {', '.join(PROPERTY_NAMES)} or user:<key>, found {name!r}"
        )

    def read(props: Any) -> Any:
        value = props.get(name, MISSING)
        if type(value) is bytes:
            return value.decode("utf-8", "backslashreplace")
        return value

    return read


def compile_jsonpath(expression: str) -> Reader:
    """A reader for a JP= expression (jsonpath-ng extended syntax), first match or MISSING."""
    from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
    from jsonpath_ng.ext.parser import parse

    try:
        path = parse(expression)
    except (JsonPathLexerError, JsonPathParserError, ValueError, TypeError, AttributeError) as exc:
        raise AddressSyntaxError(f"bad JSONPath {expression!r}: {exc}") from exc
    except Exception as exc:  # jsonpath-ng raises bare Exception for some syntax errors
        raise AddressSyntaxError(f"bad JSONPath {expression!r}: {exc}") from exc

    def read(doc: Any) -> Any:
        try:
            found = path.find(doc)
        except Exception:  # a filter comparing mismatched types must not escape the core
            return MISSING
        return found[0].value if found else MISSING

    return read


@functools.lru_cache(maxsize=65536)
def parse_address(text: str) -> Address:
    """Parse one tag address; raises AddressSyntaxError with what was expected.

    Addresses are frozen values, so equal texts share one (files repeat them per device).
    """
    stripped = text.strip()
    upper = stripped.upper()
    if upper.startswith(Kind.SPB.value):
        # Metric names are case-sensitive and may hold '/', '.' and blanks inside (§6.4.3).
        metric = stripped[len(Kind.SPB.value) :].strip()
        if not metric:
            raise AddressSyntaxError("SPB= takes a Sparkplug metric name, found nothing")
        return Address(stripped, Kind.SPB, metric=metric)
    for kind in (Kind.JSON, Kind.JSONPATH, Kind.TOPIC, Kind.BINARY):
        if upper.startswith(kind.value):
            body = stripped[len(kind.value) :].strip()
            if kind is Kind.BINARY:
                return _binary_address(stripped, body)
            if kind is Kind.JSON:
                steps = parse_json_address(body)
                return Address(stripped, kind, steps=steps, read=compile_steps(steps))
            if kind is Kind.JSONPATH:
                if not body:
                    raise AddressSyntaxError("an empty JSONPath")
                return Address(stripped, kind, read=compile_jsonpath(body))
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", body):
                raise AddressSyntaxError(f"TOPIC= takes a regex group name, found {body!r}")
            return Address(stripped, kind, group=body)
    if upper.startswith(Kind.PROP.value):
        body = stripped[len(Kind.PROP.value) :].strip()
        return Address(stripped, Kind.PROP, read=compile_property(body))
    try:
        kind = Kind(upper)
    except ValueError:
        raise AddressSyntaxError(f"unknown address {stripped!r} (expected {KINDS_TEXT})") from None
    if kind in (Kind.JSON, Kind.JSONPATH, Kind.TOPIC, Kind.BINARY):  # pragma: no cover
        raise AddressSyntaxError(f"{stripped!r} needs a path")
    return Address(stripped, kind)


def _binary_address(text: str, body: str) -> Address:
    """`BIN=<json address>@<offset>:<type>`; `$` before the `@` is the payload itself."""
    source, at, layout = body.rpartition("@")
    if not at:
        raise AddressSyntaxError(
            f"BIN= takes <json address>@<offset>:<type> (like BIN=data@0:u16be), found {body!r}"
        )
    try:
        offset, kind = parse_layout(layout)
    except ValueError as exc:
        raise AddressSyntaxError(str(exc)) from None
    source = source.strip()
    if not source:
        raise AddressSyntaxError("BIN= needs a JSON address before '@' ($ for the payload itself)")
    if source == "$":
        return Address(text, Kind.BINARY, binary=BinaryField(None, offset, kind))
    steps = parse_json_address(source)
    field = BinaryField(steps, offset, kind)
    return Address(text, Kind.BINARY, steps=steps, read=compile_steps(steps), binary=field)


def check_type(address: Address, value_type: ValueType) -> str | None:
    """Why `value_type` cannot be used with `address`, or None.

    JA=, JP=, TOPIC= and BIN= fit every type: on an output type the device reports the
    output's state, which the tag reads like an input (seeds/004 allows JA= on TxtO, Co,
    Ao, Do and ToR); the tag is still written through `publish`.
    """
    wanted = FIXED_TYPES.get(address.kind)
    if wanted is not None and value_type is not wanted:
        return f"{address.kind.value} needs type {wanted.value}, found {value_type.value}"
    return None


def compile_many(paths: Sequence[tuple[Step, ...]]) -> Callable[[Any], list[Any]]:
    """One reader for several JA= paths; stations with the same paths share one (cached)."""
    return _compile_many(tuple(paths))


@functools.lru_cache(maxsize=65536)
def _compile_many(paths: tuple[tuple[Step, ...], ...]) -> Callable[[Any], list[Any]]:
    """One reader for several JA= paths: shared prefixes are walked once.

    The NETIO profile reads six values under `GlobalMeasure` and several under each
    `Outputs[n]`; a generated function that fetches each shared node once and stores
    every leaf in a list is several times faster than one walker per tag. The source is
    generated from the parsed steps only (keys through `repr`), never from raw text.
    """
    # Keyed by the paths themselves (fast: called for every station). Steps are what
    # parse_json_address makes, str keys and int indexes; a bool (equal to 0 or 1, which
    # would share a cache entry) is refused.
    if any(type(step) is bool for path in paths for step in path):
        raise TypeError("JSON address steps are str keys and int indexes, not bool")
    trie: dict[Any, Any] = {}
    for slot, steps in enumerate(paths):
        node = trie
        for step in steps:
            node = node.setdefault((type(step).__name__, step), {})
        node.setdefault(_LEAF, []).append(slot)
    lines = ["def read_many(doc):", f"    out = [MISSING] * {len(paths)}"]
    counter = [0]

    def emit(node: dict[Any, Any], var: str, indent: str) -> None:
        for slot in node.get(_LEAF, ()):
            lines.append(f"{indent}out[{slot}] = {var}")
        children = [(k, v) for k, v in node.items() if k is not _LEAF]
        for kind, container in (("str", "dict"), ("int", "list")):
            steps = [(k[1], child) for k, child in children if k[0] == kind]
            if not steps:
                continue
            lines.append(f"{indent}if type({var}) is {container}:")
            for step, child in steps:
                counter[0] += 1
                name = f"n{counter[0]}"
                if kind == "str":
                    lines.append(f"{indent}    {name} = {var}.get({step!r}, MISSING)")
                    lines.append(f"{indent}    if {name} is not MISSING:")
                else:
                    lines.append(f"{indent}    if len({var}) > {step}:")
                    lines.append(f"{indent}        {name} = {var}[{step}]")
                emit(child, name, indent + "        ")
        if not node.get(_LEAF) and not children:
            lines.append(f"{indent}pass")

    emit(trie, "doc", "    ")
    lines.append("    return out")
    namespace: dict[str, Any] = {"MISSING": MISSING}
    exec("\n".join(lines), namespace)
    reader: Callable[[Any], list[Any]] = namespace["read_many"]
    return reader


_LEAF = object()
