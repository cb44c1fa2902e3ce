"""`--log-format json`: one JSON object a log line, for journald, Loki or Elasticsearch.

Each object has `time` (ISO 8601, UTC), `level`, `logger`, `line` and `station` (null when the
event concerns none) and `event` (the message); an exception adds `error` (its traceback).
`line` and `station` come from the record's `extra` when given, else from the message's own
"line %s" / "station %s" arguments (kom's log messages name them that way), else, for `line`,
from the thread that logged (a line's thread is named `kom-line-NAME`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

#: A printf conversion in a log format string, e.g. %s, %r, %d, %.1f, %-7s.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_THREAD_PREFIX = "kom-line-"
_ENDS_WITH = {name: re.compile(rf"(?<![A-Za-z_]){name}$") for name in ("line", "station")}


def named_arguments(fmt: str, args: tuple[Any, ...]) -> dict[str, str]:
    """The `line` and `station` arguments of a log call whose text says "line %s", "station %r"."""
    found: dict[str, str] = {}
    index = 0
    for match in _CONVERSION.finditer(fmt):
        if match.group() == "%%":
            continue
        before = fmt[: match.start()].rstrip(" '\"")
        for name in ("line", "station"):
            if name not in found and index < len(args) and _ENDS_WITH[name].search(before):
                found[name] = str(args[index])
        index += 1
    return found


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        named: dict[str, str] = {}
        if isinstance(record.msg, str) and isinstance(record.args, tuple):
            named = named_arguments(record.msg, record.args)
        line = getattr(record, "line", None) or named.get("line")
        if line is None and (record.threadName or "").startswith(_THREAD_PREFIX):
            line = (record.threadName or "").removeprefix(_THREAD_PREFIX)
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "line": line,
            "station": getattr(record, "station", None) or named.get("station"),
            "event": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str, fmt: str, stream: Any) -> None:
    """Set up the root logger for the command line: `text` (the default) or `json`."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
