"""JSON as some devices write it: a bare dotted version number (`"Version":2.5.4`).

NETIO firmware 2.5.x writes `Agent.Version` unquoted (seeds/001, the PowerDIN 4PZ's
netio.json: `"Version":2.5.4`), which is no JSON number, so a strict parser refuses the
whole document and every tag of the strip would go invalid for one field. kom reads such a
value as the text it stands for. Only documents that fail to parse are looked at again, so
well-formed JSON pays nothing.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["loads"]

# A value (after ':', '[' or ',') of digits with two or more dots, ending where a value ends.
_BARE_VERSION = re.compile(rb"([:\[,]\s*)(\d+(?:\.\d+){2,})(?=\s*[,}\]])")


def loads(payload: bytes | str) -> Any:
    """`orjson.loads`, but a bare dotted version number is read as its text.

    Raises orjson.JSONDecodeError, about the document as sent, when it is not JSON even so.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = payload.encode() if isinstance(payload, str) else payload
        repaired, count = _BARE_VERSION.subn(rb'\1"\2"', data)
        if not count:
            raise
        try:
            return orjson.loads(repaired)
        except orjson.JSONDecodeError:
            pass
        raise
