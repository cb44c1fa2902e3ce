"""A station's JSON fields read with msgspec: only the addressed fields are decoded.

`orjson.loads` builds every value of a document, and `read_many` then walks to the dozen a
station reads: for the 910-byte NETIO document, orjson and the walk took 4.5 µs a message,
while msgspec decoding into Structs made from the station's paths (every other field skipped
unbuilt) took 1.6 µs (docs/performance.md). The result must be exactly what
`read_many(orjson.loads(payload))` gives, so the reader gives up (raises) whenever it could
differ, and the caller then takes the general path:

- anything msgspec refuses (malformed JSON, a node of another type than the path expects,
  null on the way, nesting too deep), and any non-ASCII payload (msgspec does not check the
  UTF-8 of fields it skips, orjson does);
- an integer outside 64 bits (orjson reads it as a float) or an object or array at a tag's
  address (the values inside it could hold such an integer): the leaves are typed scalars.

One difference is left: a number beyond a float's range (`1e400`) in a field no tag reads is
skipped here, while orjson refuses the whole document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec

from ._address import _LEAF, MISSING, Step, path_trie

#: What the fast reader raises when the caller must take the general path.
FAST_FAILURES = (msgspec.MsgspecError, RecursionError)

#: What a tag's address may hold here: a scalar, and an integer within 64 bits (orjson reads
#: larger ones as floats; msgspec refuses them here, and the general path reads them).
_Scalar = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float | str | bool | None


def compile_fast(paths: Sequence[tuple[Step, ...]]) -> Callable[[bytes], list[Any]] | None:
    """A reader of an ASCII payload into the values at `paths` (MISSING where absent).

    None when the paths cannot be typed (the root or a node read both as an object and as an
    array, a value read both whole and inside): those stations take the general path.
    """
    return _compile_fast(tuple(paths))


@functools.lru_cache(maxsize=65536)
def _compile_fast(paths: tuple[tuple[Step, ...], ...]) -> Callable[[bytes], list[Any]] | None:
    if not paths or any(type(step) is bool for path in paths for step in path):
        return None
    trie = path_trie(paths)
    if _LEAF in trie or any(kind != "str" for kind, _ in trie):
        return None
    # One attribute name per key, the same in every Struct (the elements of an array share one).
    attribute: dict[str, str] = {}
    for path in paths:
        for step in path:
            if type(step) is str and step not in attribute:
                attribute[step] = f"f{len(attribute)}"
    counter = [0]
    empties: dict[int, Any] = {}  # an array node's id -> its element's absent value

    def typed(node: dict[Any, Any]) -> tuple[Any, Any] | None:
        """The msgspec type of a node and its value when absent, or None when it has none.

        Absent fields take a value that the generated steps can walk on: MISSING for a
        scalar, an object's Struct with every field absent, an empty array. The Structs are
        frozen and not tracked by the garbage collector (they hold no cycles).
        """
        children = [k for k in node if k is not _LEAF]
        if not children:
            return _Scalar, MISSING
        if _LEAF in node or len({kind for kind, _ in children}) > 1:
            return None
        if children[0][0] == "int":
            # Every index of the array has one element type: the union of what is read.
            element = typed(_merge([node[key] for key in children]))
            if element is None:
                return None
            empties[id(node)] = element[1]
            item = element[0]
            return tuple[item, ...], ()  # type: ignore[valid-type]
        fields = []
        rename = {}
        for key in children:
            child = typed(node[key])
            if child is None:
                return None
            name = attribute[key[1]]
            fields.append((name, child[0], child[1]))
            rename[name] = key[1]
        counter[0] += 1
        try:
            struct = msgspec.defstruct(
                f"Node{counter[0]}", fields, rename=rename, frozen=True, gc=False
            )
        except ValueError:  # a key msgspec cannot match (a quote, a backslash, a control)
            return None
        return struct, struct()

    root = typed(trie)
    if root is None:
        return None
    constants: dict[str, Any] = {}
    lines = ["def read_fast(payload):", "    doc = decode(payload)"]
    at: dict[int, str] = {}  # slot -> the variable holding its value
    names = [0]

    def emit(node: dict[Any, Any], var: str) -> None:
        for slot in node.get(_LEAF, ()):
            at[slot] = var
        children = [k for k in node if k is not _LEAF]
        empty = None
        if children and children[0][0] == "int":
            # An index beyond the array's end reads the element's absent value.
            empty = f"E{len(constants)}"
            constants[empty] = empties[id(node)]
        for key in children:
            names[0] += 1
            name = f"n{names[0]}"
            kind, step = key
            if kind == "str":
                lines.append(f"    {name} = {var}.{attribute[step]}")
            else:
                lines.append(f"    {name} = {var}[{step}] if len({var}) > {step} else {empty}")
            emit(node[key], name)

    emit(trie, "doc")
    lines.append(f"    return [{', '.join(at[slot] for slot in range(len(paths)))}]")
    namespace: dict[str, Any] = {"decode": msgspec.json.Decoder(root[0]).decode, **constants}
    exec("\n".join(lines), namespace)
    reader: Callable[[bytes], list[Any]] = namespace["read_fast"]
    return reader


def _merge(nodes: list[dict[Any, Any]]) -> dict[Any, Any]:
    """One trie node holding what each of `nodes` holds (the elements of one array)."""
    merged: dict[Any, Any] = {}
    for node in nodes:
        for key, child in node.items():
            if key is _LEAF:
                merged.setdefault(_LEAF, []).extend(child)
            else:
                merged[key] = _merge([merged[key], child]) if key in merged else child
    return merged
