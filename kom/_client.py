"""The library API for a host process: open a configuration, receive updates, write, ack.

Each line runs on its own thread and hands its updates to the host (a callback and/or an
iterator) in batches: on its own thread while the host's callbacks are quick, through one
dispatcher thread (which merges batches) while they are slow or with `inline=False`. Only
then are the messages acknowledged to the broker (SPEC §5: "in the library when the
consumer's callback has returned"; a callback with `begin`, the sink writer, is begun on
the dispatcher and its batch acknowledged once the end `begin` returned has returned, which
the dispatcher calls after beginning the next batch). Callbacks never run two at a time.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from datetime import datetime
from typing import Any

import attrs

from ._config import Config, Endpoint, LineConfig, load
from ._core import Counters
from ._errors import KomError, WriteError
from ._line import Batch, Line, WriteResult, _utcnow
from ._model import Update

log = logging.getLogger("kom")

UpdatesCallback = Callable[[Sequence[Update]], None]
_STOP = object()
#: Callbacks that return within this many seconds let the next batch be handed over on its
#: line's thread; slower ones send the next batches through the dispatcher, so that the line
#: reads on while the host works (and the batches merge).
QUICK = 0.002
#: The most updates the dispatcher merges into one call (a single larger batch goes alone).
#: The SQLite sink's largest statement holds as many rows, so a full call is one statement
#: with little padding (100,000-message drains into SQLite, alternated: 16,200-18,500 msg/s
#: merging to 8,192 against 15,800-17,700 merging to 5,000).
MERGED = 8192


def tune_gc(threshold: int = 50_000) -> None:
    """Make Python's cyclic garbage collector run less often in a process that runs kom.

    kom allocates a dozen small tuples per message; with the default threshold (700) the
    collector runs every few dozen messages and, measured on the NETIO drain benchmark,
    costs about 15% of throughput. Updates hold no cycles, so collecting rarely is safe.
    `kom run` and `kom demo` call this; a host process embedding kom decides for itself.
    """
    gc.freeze()  # what exists after start-up (configuration, modules) is never collected
    gc.set_threshold(threshold, 20, 100)


def override_broker(config: Config, broker: str) -> Config:
    """Replace the host (and port) of every line: `--broker HOST[:PORT]` (SPEC §9)."""
    host, _, port_text = (
        broker.rpartition(":") if ":" in broker and not broker.endswith("]") else (broker, "", "")
    )
    if not host:
        host, port_text = broker, ""
    host = host.strip("[]")
    lines = []
    for line in config.lines:
        port = int(port_text) if port_text else line.endpoints[0].port
        lines.append(attrs.evolve(line, endpoints=(Endpoint(host, port),)))
    return attrs.evolve(config, lines=tuple(lines))


def write_outcome(future: Future[WriteResult]) -> str:
    """What became of a done write: "completed", "cancelled", or the reason of its
    WriteError ("error" for another exception): the outcome label of kom_writes_total."""
    try:
        exc = future.exception(timeout=0)
    except CancelledError:
        return "cancelled"
    return "completed" if exc is None else getattr(exc, "reason", None) or "error"


class Kom:
    """kom embedded in a host process.

    `Kom.open("stations.toml", on_updates=callback)` starts every line of the file;
    `updates()` iterates over updates for hosts that prefer pulling; `write()` returns a
    future completed by QoS; `close()` flushes, acknowledges and disconnects. Thread-safe.
    """

    def __init__(
        self,
        config: Config,
        on_updates: UpdatesCallback | None = None,
        *,
        iterate: bool | None = None,
        clock: Callable[[], datetime] = _utcnow,
        max_queue: int = 100_000,
        inline: bool = True,
    ) -> None:
        self.config = config
        self._callbacks: list[UpdatesCallback] = [on_updates] if on_updates else []
        self._iterate = iterate if iterate is not None else on_updates is None
        self._iter_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._room = threading.Condition(self._queued_lock)
        self._max_queue = max_queue
        # Held by whoever is calling the callbacks (a line thread or the dispatcher): they
        # run one at a time, and a batch goes inline only when nothing queued is before it.
        self._handing = threading.Lock()
        self._handing_owner: int | None = None  # the thread inside _hand_over
        self._pending = 0  # batches queued for the dispatcher, not yet handed over
        self._allow_inline = inline
        self._inline = inline  # the host is quick: the next batch may go over on its line
        self._clock = clock
        self.consumer_errors = 0
        self.delivered = 0
        #: Completed writes by (line, outcome): "completed" or the WriteError's reason.
        self.write_outcomes: Counter[tuple[str, str]] = Counter()
        self._outcomes_lock = threading.Lock()
        # Each line's outcome counter, made once (a write's future is given it when done).
        self._counters: dict[Line, Callable[[Future[WriteResult]], None]] = {}
        self.lines: dict[str, Line] = {}
        for line in config.lines:
            self.lines[line.name] = Line(line, config.stations_of(line.name), self._deliver, clock)
        self._dispatcher: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        config: Config | str | os.PathLike[str],
        on_updates: UpdatesCallback | None = None,
        *,
        broker: str | None = None,
        **kwargs: Any,
    ) -> Kom:
        """Load (if a path), validate and start every line."""
        cfg = config if isinstance(config, Config) else load(config)
        if broker:
            cfg = override_broker(cfg, broker)
        kom = cls(cfg, on_updates, **kwargs)
        kom.start()
        return kom

    def __repr__(self) -> str:
        return f"<Kom lines={list(self.lines)}>"

    def __enter__(self) -> Kom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_callback(self, callback: UpdatesCallback) -> None:
        self._callbacks.append(callback)

    def start(self) -> None:
        self._dispatcher = threading.Thread(target=self._dispatch, name="kom-dispatch", daemon=True)
        self._dispatcher.start()
        for line in self.lines.values():
            line.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop every line (DISCONNECT), hand over and acknowledge what is queued."""
        if self._closed:
            return
        self._closed = True
        # From inside a callback, wait for no thread: the dispatcher and the other lines may
        # themselves be waiting for this very hand-over to end.
        inside = self._handing_owner == threading.get_ident()
        for line in self.lines.values():
            line.close(0 if inside else timeout)
        self._queue.put(_STOP)
        if self._dispatcher is not None and not inside:
            self._dispatcher.join(timeout)
        self._iter_queue.put(_STOP)

    # -- hand-over ----------------------------------------------------------------------

    def _deliver(self, batch: Batch) -> None:
        if self._inline and batch.line.on_own_thread() and self._handing.acquire(blocking=False):
            # The host is quick and idle: hand the batch over on the line's own thread. A hop
            # to the dispatcher costs two thread wake-ups (about 150 µs a batch, measured on
            # a 2-core VM), and updates that wait for it outlive the collector's youngest
            # generation (most of a drain's collector time with the default collector).
            try:
                if not self._pending:  # nothing queued before it: order is kept
                    self._inline = self._hand_over((batch,)) < QUICK
                    return
            finally:
                self._handing.release()
        with self._room:
            self._queued += len(batch.updates)
            self._pending += 1
        self._queue.put(batch)
        # Back-pressure: a line's network thread waits while the host lags far behind, so
        # memory stays bounded (max_queue and the line's next batch); the broker then holds
        # the messages. The batch is queued first: one bigger than max_queue (many tags a
        # message) must reach the dispatcher, or the line would wait for itself.
        if batch.line.on_own_thread():
            with self._room:
                while self._queued > self._max_queue and not self._closed:
                    self._room.wait(0.5)

    def _dispatch(self) -> None:
        q = self._queue
        carried: Any = None  # a batch that did not fit the last call
        # Batches handed over to callbacks with `begin` (a SinkWriter), not yet committed
        # nor acknowledged: they are ended after the next batch is begun, or as soon as the
        # queue is empty, and only then acknowledged.
        begun: tuple[list[Any], int, list[Callable[[], None]]] | None = None
        while True:
            if carried is not None:
                first = carried
            elif begun is not None:
                try:
                    first = q.get_nowait()
                except queue.Empty:
                    self._end(*begun)
                    begun = None
                    first = q.get()
            else:
                first = q.get()
            carried = None
            if first is _STOP:
                if begun is not None:
                    self._end(*begun)
                return
            batches = [first]
            count = len(first.updates)
            stop = False
            while True:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if count + len(nxt.updates) > MERGED:
                    carried = nxt
                    break
                batches.append(nxt)
                count += len(nxt.updates)
            ends: list[Callable[[], None]] = []
            with self._handing:
                took = self._hand_over(batches, ends)
            if begun is not None:
                self._end(*begun)
                begun = None
            if ends:
                begun = (batches, count, ends)
            else:
                with self._handing:
                    self._settle(batches)
                    self._taken(batches, count, took)
            if stop:
                if begun is not None:
                    self._end(*begun)
                return

    def _taken(self, batches: Sequence[Batch], count: int, took: float) -> None:
        """Batches handed over and acknowledged: room in the queue. The caller holds
        `_handing`."""
        with self._room:
            self._pending -= len(batches)
            self._queued -= count
            self._room.notify_all()
            # Back to the line threads once the host is quick again: well within
            # QUICK for each line batch it took (batches merge while the host works).
            self._inline = self._allow_inline and took < QUICK / 4 * len(batches)

    def _end(self, batches: list[Batch], count: int, ends: list[Callable[[], None]]) -> None:
        """Wait until the callbacks begun on `batches` have ended (committed), then
        acknowledge them. Until then they count as pending: no batch goes over inline."""
        with self._handing:
            self._handing_owner = threading.get_ident()
            for end in ends:
                try:
                    end()
                except KomError as exc:  # e.g. a sink given up on close: its message
                    self.consumer_errors += 1
                    log.error("update callback failed: %s", exc)
                except Exception as exc:  # a consumer's bug must not stop the line
                    self.consumer_errors += 1
                    log.exception("update callback failed: %s", exc)
            self._handing_owner = None
            self._settle(batches)
            self._taken(batches, count, QUICK)

    def _hand_over(
        self, batches: Sequence[Batch], ends: list[Callable[[], None]] | None = None
    ) -> float:
        """Call the callbacks with the batches' updates, then acknowledge their messages.

        With `ends` (the dispatcher), a callback that has `begin(updates) -> end | None` is
        begun instead: its end functions are added to `ends`, and nothing is acknowledged
        here (the caller does it, after calling them: `_end`). The caller holds `_handing`.
        Returns the seconds the host's callbacks took.
        """
        if len(batches) == 1:
            updates = batches[0].updates
        else:
            updates = []
            for batch in batches:
                updates.extend(batch.updates)
        self._handing_owner = threading.get_ident()
        started = time.perf_counter()
        if updates:
            for callback in self._callbacks:
                try:
                    begin = getattr(callback, "begin", None)
                    if begin is not None and ends is not None:
                        end = begin(updates)
                        if end is not None:
                            ends.append(end)
                    else:
                        callback(updates)
                except KomError as exc:  # kom's own, e.g. a sink given up on close: its message
                    self.consumer_errors += 1
                    log.error("update callback failed: %s", exc)
                except Exception as exc:  # a consumer's bug must not stop the line
                    self.consumer_errors += 1
                    log.exception("update callback failed: %s", exc)
            if self._iterate:
                self._iter_queue.put(updates)
            self.delivered += len(updates)
        took = time.perf_counter() - started
        self._handing_owner = None
        if ends is None:
            self._settle(batches)
        return took

    def _settle(self, batches: Sequence[Batch]) -> None:
        """Acknowledge the batches' messages, line by line."""
        by_line: dict[Line, list[Batch]] = {}
        for batch in batches:
            by_line.setdefault(batch.line, []).append(batch)
        for line, taken in by_line.items():
            try:
                line.settle(taken)
            except Exception as exc:
                log.exception("acknowledging failed: %s", exc)

    def updates(self, timeout: float | None = None) -> Iterator[Update]:
        """Iterate over updates as they come; stops after `timeout` s without any, or on close."""
        while True:
            try:
                item = self._iter_queue.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _STOP:
                return
            yield from item

    # -- requests -----------------------------------------------------------------------

    def _line_of(self, station: str) -> Line:
        for line in self.lines.values():
            if station in line.core.by_name:
                return line
        raise KomError(f"no station named {station!r}")

    def write(self, tag: str, value: object) -> Future[WriteResult]:
        """Write `station.tag`; the future completes by QoS or fails with a WriteError."""
        station, _, name = tag.partition(".")
        try:
            line = self._line_of(station)
        except KomError:
            future: Future[WriteResult] = Future()
            future.set_exception(WriteError(f"{tag}: no such tag", tag, "not-output"))
            self._count_write("", future)
            return future
        future = line.write(station, name, value)
        count = self._counters.get(line)
        if count is None:
            count = self._counters[line] = functools.partial(self._count_write, line.name)
        future.add_done_callback(count)
        return future

    def _count_write(self, line: str, future: Future[WriteResult]) -> None:
        outcome = write_outcome(future)
        with self._outcomes_lock:
            self.write_outcomes[line, outcome] += 1

    def ack(self, station: str, value: int) -> None:
        """Acknowledge a station's message: the same as writing its ACK_ID tag."""
        self._line_of(station).acknowledge(station, value)

    def set_mode(self, station: str, mode: str) -> None:
        """Switch a station `on`, `off` or to `simulation` (SPEC §1, forced disconnection)."""
        if mode not in ("on", "off", "simulation"):
            raise ValueError(f"mode is on, off or simulation, found {mode!r}")
        self._line_of(station).set_mode(station, mode)

    def station_state(self, station: str) -> str:
        return self._line_of(station).core.by_name[station].state.value

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until every line that wants a connection has one."""
        deadline = time.monotonic() + timeout
        for line in self.lines.values():
            left = max(0.0, deadline - time.monotonic())
            if line.core.wants_connection and not line.connected_event.wait(left):
                return False
        return True

    def counters(self) -> dict[str, Counters]:
        """Counters per line (name) and per station (`line/station`)."""
        out: dict[str, Counters] = {}
        for line in self.lines.values():
            out[line.name] = line.core.counters
            core = line.core
            for station in core.stations:
                out[f"{line.name}/{station.name}"] = core.station_counters[station.name]
        return out

    def reload(self, config: Config) -> None:
        """Apply a new configuration: stations and tags change without reconnecting.

        Changed topic filters go out as UNSUBSCRIBE/SUBSCRIBE on the same session; a line
        whose connection parameters changed is reconnected; new lines start, gone ones stop.
        """
        old_lines = self.lines
        new_lines: dict[str, Line] = {}
        for line_cfg in config.lines:
            old = old_lines.get(line_cfg.name)
            stations = config.stations_of(line_cfg.name)
            if old is not None and _same_connection(old.config, line_cfg):
                old.replace(line_cfg, stations)
                new_lines[line_cfg.name] = old
            else:
                if old is not None:
                    old.close()
                line = Line(line_cfg, stations, self._deliver, self._clock)
                line.start()
                new_lines[line_cfg.name] = line
        for name, old in old_lines.items():
            if name not in new_lines:
                old.close()
        self.lines = new_lines
        self.config = config


def _same_connection(old: LineConfig, new: LineConfig) -> bool:
    """Whether two line configurations differ only where no reconnection is needed."""
    keep = ("topic_filters", "payload_type", "time_field", "time_mask", "time_zone",
            "ignore_missing_time", "debug", "max_payload", "max_held", "publish_qos",
            "publish_retain", "subscribe_qos",
            "max_future", "max_past", "sparkplug_rebirth_interval")  # fmt: skip
    if old.sparkplug_host_id and new.will is None:
        # A running line's will is the STATE will kom made for sparkplug_host_id (a file
        # cannot give both): the same host id is the same will.
        old = attrs.evolve(old, will=None)
    return attrs.evolve(old, **{k: getattr(new, k) for k in keep}) == new
