"""The live view: a table of tags updating in place (value, quality, age, station, rate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ._client import Kom
from ._model import Update


class LiveView:
    """Keeps the last update of every tag; `render()` gives a rich table of them."""

    def __init__(self, kom: Kom, title: str = "kom") -> None:
        self.kom = kom
        self.title = title
        self._last: dict[str, Update] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._rate = 0.0
        self._mark = (time.monotonic(), 0)
        self.events: list[str] = []
        self._units = {
            f"{s.name}.{t.name}": t.unit or "" for s in kom.config.stations for t in s.tags
        }

    def __call__(self, updates: Sequence[Update]) -> None:
        with self._lock:
            for update in updates:
                self._last[update.tag] = update
            self._count += len(updates)

    def last(self, tag: str) -> Update | None:
        """The latest update of `tag`, or None when none came yet."""
        with self._lock:
            return self._last.get(tag)

    def note(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        self.events.append(f"{stamp}  {text}")
        del self.events[:-6]

    def render(self) -> Group:
        now = time.monotonic()
        with self._lock:
            last = dict(self._last)
            count = self._count
        then, before = self._mark
        if now - then >= 1.0:
            self._rate = (count - before) / (now - then)
            self._mark = (now, count)
        head = Table.grid(padding=(0, 2))
        for line in self.kom.lines.values():
            c = line.core.counters
            head.add_row(
                Text(f"line {line.name}", style="bold"),
                Text(line.state.value, style="green" if line.state.value == "connected" else "red"),
                f"{line.endpoint or '-'}",
                f"msgs {c.received}",
                f"updates {count}",
                f"{self._rate:,.0f} updates/s",
            )
        table = Table(title=self.title, expand=False, header_style="bold cyan")
        for column in ("tag", "value", "unit", "quality", "age", "station"):
            table.add_column(column, justify="right" if column in ("value", "age") else "left")
        wall = datetime.now(UTC)
        for name in sorted(last):
            u = last[name]
            station = name.partition(".")[0]
            try:
                state = self.kom.station_state(station)
            except Exception:
                state = "?"
            quality = Text("valid", style="green") if u.valid else Text(f"{u.reason}", style="red")
            table.add_row(
                name,
                _show(u.value),
                self._units.get(name, ""),
                quality,
                _age(wall - u.received),
                state,
            )
        parts: list[Table | Text] = [head, table]
        if self.events:
            parts.append(Text("\n".join(self.events), style="yellow"))
        return Group(*parts)


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def _age(delta: timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.0f}m"
