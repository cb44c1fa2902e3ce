"""The topic filters a line's broker-side session holds, remembered across runs of kom.

A broker that keeps a session keeps its subscriptions (MQTT 3.1.1 §3.1.2.4), and a
SUBSCRIBE for a filter it already holds makes it send every matching retained message
again (§3.8.4). So on a kept session kom subscribes only the filters the session lacks and
unsubscribes the ones no longer configured; for that it must know, after a restart, what
the session holds. That is kept in a small file per client id, written after each SUBACK
and UNSUBACK, in `$KOM_STATE_DIR` (default `$XDG_STATE_HOME/kom`, else
`~/.local/state/kom`). Without the file (first run, another machine, deleted) kom
subscribes every filter, as it always did: the retained values come again, marked
`retained`. Losing the file costs duplicates, never messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs

log = logging.getLogger("kom.line")


@attrs.frozen
class Subscriptions:
    """The filters a session holds and the QoS they were subscribed with."""

    filters: tuple[str, ...]
    qos: int


def plan(
    wanted: Sequence[str], qos: int, held: Subscriptions | None, session_present: bool
) -> tuple[list[str], list[str]]:
    """(filters to SUBSCRIBE, filters to UNSUBSCRIBE) for a session just connected.

    A new session holds nothing: every wanted filter. A kept one whose holdings are known:
    only the difference. Unknown holdings, or another QoS: every wanted filter again.
    """
    if not session_present or held is None:
        return list(wanted), []
    gone = [f for f in held.filters if f not in wanted]
    if held.qos != qos:
        return list(wanted), gone
    return [f for f in wanted if f not in held.filters], gone


def state_dir() -> Path:
    """Where kom keeps what outlives a run (see the module's text)."""
    explicit = os.environ.get("KOM_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kom"


def _path(client_id: str) -> Path:
    # Client ids may hold any character; the file is named by a digest and says whose it is.
    digest = hashlib.sha256(client_id.encode()).hexdigest()[:24]
    return state_dir() / f"subscriptions-{digest}.json"


def load(client_id: str) -> Subscriptions | None:
    """What the session of `client_id` held when kom last knew; None if unknown."""
    path = _path(client_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("client_id") != client_id:
            return None
        filters = tuple(str(f) for f in data["filters"])
        return Subscriptions(filters, int(data["qos"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("subscriptions of %r unreadable in %s: %s", client_id, path, exc)
        return None


def save(client_id: str, held: Subscriptions | None) -> None:
    """Remember what the session holds (None: forget it). Never raises: at worst, kom
    subscribes again on the next run."""
    path = _path(client_id)
    try:
        if held is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"client_id": client_id, "filters": list(held.filters), "qos": held.qos})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".subscriptions-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("cannot keep the subscriptions of %r in %s: %s", client_id, path, exc)
