"""Several `kom run` instances sharing one subscription (SPEC §12): instance ids and the
checks of what a `$share/GROUP/FILTER` subscription changes for a configuration.

With a shared subscription the broker hands each message to one member of the group, so
each instance sees only some of a station's messages (docs/scale-out.md).
"""

from __future__ import annotations

import re

import attrs

from ._address import Kind
from ._config import Config
from ._errors import ConfigError

INSTANCE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def with_instance(config: Config, instance: str) -> Config:
    """Give every line a client id of its own for `--instance NAME`.

    Several `kom run` processes of one configuration share a `$share/...` subscription; each
    needs its own stable client id (the line's, plus `-NAME`), so that each keeps its own
    persistent session across restarts (its unacknowledged messages come back to it) and
    none knocks another off the broker.
    """
    if not INSTANCE.fullmatch(instance):
        raise ConfigError([f"--instance: a name matches [A-Za-z0-9_-]{{1,64}}, found {instance!r}"])
    lines = tuple(
        attrs.evolve(line, client_id=f"{line.client_id or 'kom'}-{instance}")
        for line in config.lines
    )
    return attrs.evolve(config, lines=lines)


def share_warnings(config: Config) -> list[str]:
    """What goes wrong on lines that subscribe with `$share/`: one text per finding.

    A tag that reports only changes (`on_change`, `deadband`) compares with the last value
    *this* instance saw; another instance may have stored a different value in between, so a
    change back (true, false, true) can be left out of the historian. An `ACK_ID` station
    hands out one message at a time per instance only, so its order across the group is lost.
    """
    found: list[str] = []
    for line in config.lines:
        if not any(f.share_group for f in line.topic_filters):
            continue
        filtered: list[str] = []
        acked: list[str] = []
        for station in config.stations_of(line.name):
            for tag in station.tags:
                p = tag.processing
                if p.on_change or p.deadband is not None:
                    filtered.append(f"{station.name}.{tag.name}")
                if tag.address is not None and tag.address.kind is Kind.ACK_ID:
                    acked.append(station.name)
        if filtered:
            found.append(
                f"line {line.name}: shared subscription, but {len(filtered)} tag(s) report only "
                f"changes (on_change or deadband), e.g. {filtered[0]}: each instance compares "
                "with the values it saw, so a change back can be missed; set on_change = false"
            )
        if acked:
            found.append(
                f"line {line.name}: shared subscription, but station {acked[0]} uses ACK_ID: "
                "its messages are handed out one at a time per instance, not across the group"
            )
    return found
