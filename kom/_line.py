"""A running line: one thread owns the MQTT session, connects, fails over, reconnects.

The loop is thin: read from the session (kom's own MQTT engine, `kom/_mqtt.py`), ask the
core what each message means, queue the updates for the host, keep kom's own timers
(PINGREQ, reply timeouts), and acknowledge to the broker in arrival order once the host has
taken the updates (SPEC §2, §5, §6). Writes are decided and published on this thread too:
a station's output values and topic groups change nowhere else.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from datetime import UTC, datetime
from typing import NamedTuple

import attrs

from . import _subscriptions as subscriptions
from ._acks import AckOrder
from ._address import Kind
from ._backoff import backoff
from ._config import Endpoint, LineConfig, StationConfig, TagConfig
from ._confirm import (
    Confirmations,
    Pending,
    default_response_topic,
    new_correlation,
    response_topics,
)
from ._convert import parse_write_value
from ._core import LineCore, Processed
from ._errors import AckError, BrokerRefused, ConversionError, KomError, LineError, WriteError
from ._model import Quality, Update, Value, ValueType, new_record
from ._mqtt import Events, RawMessage, Session, SkippedPayload, _never
from ._outbox import Outbox
from ._outputs import Message as OutputMessage
from ._outputs import OutputMemory, on_connect, only_changes
from ._publish import render
from ._station import Message, Station, StationState
from ._timemask import Zone
from ._topic import check_topic
from .mqtt import reason_name
from .sparkplug._station import state_will

log = logging.getLogger("kom.line")


class LineState(enum.Enum):
    IDLE = "idle"  # forced disconnection: no station wants the line
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing-off"
    CLOSED = "closed"


_L = LineState
LINE_TRANSITIONS = {
    _L.IDLE: frozenset({_L.CONNECTING, _L.CLOSED}),
    _L.CONNECTING: frozenset({_L.CONNECTED, _L.CONNECTING, _L.BACKING_OFF, _L.IDLE, _L.CLOSED}),
    _L.CONNECTED: frozenset({_L.CONNECTING, _L.BACKING_OFF, _L.IDLE, _L.CLOSED}),
    _L.BACKING_OFF: frozenset({_L.CONNECTING, _L.IDLE, _L.CLOSED}),
    _L.CLOSED: frozenset(),
}


class Batch(NamedTuple):
    """Updates handed to the host at once, with the messages settled by handing them over."""

    line: Line
    updates: list[Update]
    settles: list[tuple[int, int, int]]  # (generation, mid, qos)


@attrs.frozen
class WriteResult:
    """A completed write: the tag, where it went and with which QoS."""

    tag: str
    topic: str | None
    qos: int | None
    mid: int | None = None
    local: bool = False
    #: The broker took a QoS 2 write at QoS 1 (answered PUBACK): `qos` is then 1.
    downgraded: bool = False
    #: Left out: the message repeated the tag's last one (publish only changes).
    unchanged: bool = False
    #: SPEC §11 confirmed writes: "read-back" or "response" when the device confirmed it.
    confirmed: str | None = None
    #: confirm = "response": the payload of the response that confirmed it.
    response: bytes | None = None


#: A write asked for, to decide on the line's thread: (future, full tag name, the function
#: that decides it or None for a tag's write, then that write's station, tag and value).
_Asked = tuple[Future[WriteResult], str, Callable[[], None] | None, str, str, object]


class _Outgoing(NamedTuple):
    """A write waiting for the line's thread to publish it, then for its completion.

    Its first five fields are the message as `Session.publish_many` takes it.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: MQTT 5 PUBLISH properties (a tag's user_properties), None without.
    properties: dict[str, object] | None
    future: Future[WriteResult]
    tag: str
    deadline: float | None
    outbox_id: int | None


_NEVER = float("inf")

#: Writes the line's loop decides in a pass before publishing them and reading the broker's
#: answers: writes fired at once start going out after the first few hundred are decided,
#: not after all of them (5,000 fired at once, single runs: about 20,000 -> 36,000 writes/s).
DECIDE_BURST = 256

#: Writes a line keeps in flight at once (published, completion not yet in); more wait in
#: the line's queue (the broker's Receive Maximum may bound them further, in the session).
WINDOW = 1000


#: A line hands its updates over once its batch holds this many: fewer than the collector's
#: default threshold of new objects (700), so that with a quick consumer they are gone before
#: a collection would move them to an older generation (where every full collection walks
#: them again). Measured on a 1,000-station QoS 0 drain: 11-12 full collections per 100,000
#: messages in batches of 256 packets (3,072 updates), none in batches of 300 updates.
BATCH_UPDATES = 256

#: check_topic for the topics of writes, which repeat (a tag's topic is usually fixed).
_topic_problem = functools.lru_cache(maxsize=1024)(check_topic)

#: The receive clock, called for every message: a partial is one call into C.
_utcnow: Callable[[], datetime] = functools.partial(datetime.now, UTC)


class Line(Events):
    """One line: a thread that keeps an MQTT session to one of the line's brokers."""

    def __init__(
        self,
        config: LineConfig,
        stations: Sequence[StationConfig],
        deliver: Callable[[Batch], None],
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        config = state_will(config, clock())  # SPEC §14: sparkplug_host_id's STATE will
        self.config = config
        self.core = LineCore(config, stations)
        if config.debug:
            # `debug = true` shows the line's messages whatever the process's log level.
            log.setLevel(logging.DEBUG)
        self._deliver = deliver
        self._clock = clock
        self._lock = threading.RLock()
        # Acknowledgement order has a lock of its own: the dispatcher settles batches while
        # the network thread routes and decodes, and the two should not wait on each other.
        self._ack_lock = threading.Lock()
        self._arrivals: list[tuple[int, int]] = []  # QoS 1/2 arrivals until the next flush
        self._unsettled = 0  # batches with messages to acknowledge, handed over, not settled
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.state = LineState.IDLE
        self.endpoint: str | None = None
        self.last_error: str | None = None
        self.generation = 0
        self._acks = AckOrder()
        self._session: Session | None = None
        self._thread: threading.Thread | None = None
        self._batch: list[Update] = []
        self._settles: list[tuple[int, int, int]] = []
        # Writes have a lock of their own, never held while calling the session.
        self._writes_lock = threading.Lock()
        self._writes: dict[int, _Outgoing] = {}  # published, by packet id
        # Writes asked for by any thread, decided on the line's thread (a station's output
        # values and groups are the line's): see _Asked.
        self._asked: deque[_Asked] = deque()
        # Writes decided, for the line's thread to publish: a burst of writes goes out in
        # one system call.
        self._outgoing: deque[_Outgoing] = deque()
        self._woken = False  # a wake-up for the outgoing queue is on its way
        # Writes taken to be handed to the session, not yet registered in _writes (under
        # _writes_lock): while any are, later writes queue behind them, keeping their order.
        self._in_transit = 0
        self._expired: set[int] = set()  # mids whose writes timed out, completion still due
        # No write queued or in flight has a deadline before this (a lower bound, under
        # _writes_lock): the line's loop looks for overdue writes only once it has passed.
        self._next_expiry = _NEVER
        # The line's thread is running (set before it starts, cleared as it ends): writes
        # asked for meanwhile are decided there.
        self._running = False
        self._ident: int | None = None  # the line's thread, while it runs
        self._outbox = Outbox(config.outbox, config.name) if config.outbox else None
        # Outbox rows by packet id, kept apart from futures: a write that timed out for its
        # caller may still complete later, and only then may its row go.
        self._outbox_ids: dict[int, int] = {}
        self._recovered = self._outbox.pending() if self._outbox else []
        self._short_sessions = 0
        self.takeovers = 0
        self._early: dict[int, tuple[bool, str]] = {}
        self._requests: dict[int, tuple[str, float]] = {}  # SUBACK/UNSUBACK deadlines
        self._subscribed: tuple[str, ...] = ()
        self._subscribing: dict[int, tuple[str, ...]] = {}  # filters by SUBSCRIBE mid
        self._wanted = tuple(f.text for f in config.topic_filters)
        self._filters_changed = False  # a reload changed the filters: the line's thread acts
        #: Filters the broker refused (SUBACK 0x80 or above): retried with back-off.
        self.refused_filters: dict[str, int] = {}  # filter -> refusals in a row
        self._retry_at: float | None = None
        # What a kept session holds from an earlier run (see _subscriptions).
        self._held = (
            None if config.effective_clean_session else subscriptions.load(config.client_id)
        )
        self._ping_sent: float | None = None
        self._half_read_since: float | None = None
        self._missing_time_warned: set[str] = set()
        self._stamp = clock()  # the receive time of the messages of the last socket read
        self._stamped_reads = -1
        self._outputs = OutputMemory()
        self.connected_event = threading.Event()
        # SPEC §11 confirmed writes: those waiting for their read-back or response, and the
        # response topics subscribed beside the line's filters.
        self._confirmations = Confirmations()
        self._confirm_lock = threading.Lock()
        self._response_topics = frozenset(response_topics(stations, config.client_id, config.name))

    def __repr__(self) -> str:
        return f"<Line {self.config.name!r} {self.state.value} {self.endpoint or ''}>".replace(
            " >", ">"
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def acks_pending(self) -> int:
        """QoS 1/2 messages received and not yet acknowledged to the broker (SPEC §13)."""
        return len(self._acks) + len(self._arrivals)

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kom-line-{self.name}", daemon=True)
        self._running = True
        try:
            self._thread.start()
        except BaseException:
            self._running = False
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread: flush, send DISCONNECT, fail writes still pending."""
        self._say_offline(min(timeout, 2.0))
        self._closed.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._writes_lock:
            pending = [(w.future, w.tag) for w in self._writes.values()]
            self._writes.clear()
            pending += [(w.future, w.tag) for w in self._take_outgoing()]
            while self._asked:
                future, full, *_ = self._asked.popleft()
                pending.append((future, full))
        with self._lock:
            if self._session is not None and (self._thread is None or not self._thread.is_alive()):
                self._session.close()
            if self._outbox is not None:
                self._outbox.close()
        with self._confirm_lock:
            pending += [(p.future, p.tag) for p in self._confirmations.take_all()]
        for future, tag in pending:
            _fail(future, WriteError(f"{tag}: line closed", tag, "not-connected"))

    def replace(self, config: LineConfig, stations: Sequence[StationConfig]) -> None:
        """New stations and tags on the same session (configuration reload, SPEC §2).

        A station whose configuration is unchanged keeps its state, held messages and
        last values; changed topic filters go out as SUBSCRIBE, then UNSUBSCRIBE.
        """
        config = state_will(config, self._clock(), self.config.will)
        core = LineCore(config, stations)
        with self._lock:
            core.carry_over(self.core, connected=self.state is LineState.CONNECTED)
            self.core = core
            self.config = config
            self._response_topics = frozenset(
                response_topics(stations, config.client_id, config.name)
            )
        self.change_filters([f.text for f in config.topic_filters])
        self._wake.set()

    def _move(self, to: LineState) -> None:
        if to is self.state:
            return
        if to not in LINE_TRANSITIONS[self.state]:
            raise KomError(
                f"line {self.name!r}: illegal transition {self.state.value} -> {to.value}"
            )
        log.debug("line %s: %s -> %s", self.name, self.state.value, to.value)
        self.state = to

    def _run(self) -> None:
        self._ident = threading.get_ident()
        try:
            self._run_line()
        finally:
            self._running = False

    def _run_line(self) -> None:
        round_ = 0
        index = 0
        endpoints = self.config.endpoints
        while not self._closed.is_set():
            try:
                if self._asked:
                    self._decide_writes()
                if not self.core.wants_connection:
                    self._move(LineState.IDLE)
                    self._wait(self._wake, 1.0)
                    self._wake.clear()
                    if self._asked:
                        self._decide_writes()
                    continue
                self._move(LineState.CONNECTING)
                endpoint = endpoints[index % len(endpoints)]
                if self._connect_and_serve(endpoint):
                    round_ = 0
                index += 1
                if (
                    index % len(endpoints) == 0
                    and not self._closed.is_set()
                    and self.core.wants_connection
                ):
                    round_ += 1
                    wait = backoff(round_, self.config.reconnect_min, self.config.reconnect_max)
                    if wait > 0:
                        self._move(LineState.BACKING_OFF)
                        log.info("line %s: next attempt in %.1f s", self.name, wait)
                        self._wait(self._closed, wait)
            except Exception as exc:  # the line's thread must never die
                self.core.counters.callback_errors += 1
                log.exception("line %s: unexpected error: %s", self.name, exc)
                self._closed.wait(0.5)
        self._move(LineState.CLOSED)
        with self._lock:
            if self._session is not None:
                self._session.close()  # the thread that owns the socket releases it

    def _session_for_line(self) -> Session:
        with self._lock:
            return self._make_session()

    def _make_session(self) -> Session:
        if self._session is None:
            self._session = Session(self.config, self)
            self._session.pause_reading = self._stop_reading
            # SIGTERM while connecting: the session gives up at once (SPEC §9).
            self._session.cancelled = self._closed.is_set
        return self._session

    def _connect_and_serve(self, endpoint: Endpoint) -> bool:
        """One connection: connect, subscribe, loop until lost. True when it connected."""
        session = self._session_for_line()
        self.endpoint = str(endpoint)
        log.info("line %s: connecting to %s as %r", self.name, endpoint, self.config.client_id)
        try:
            connected = session.connect(endpoint, self.config.reply_timeout or 30.0)
        except BrokerRefused as exc:
            self._attempt_failed(str(exc))
            return False
        except LineError as exc:
            self._attempt_failed(str(exc))
            return False
        with self._lock, self._ack_lock:
            self.generation += 1
            self._acks.reset()
            self._arrivals.clear()
            self._settles.clear()
            self._requests.clear()
            self._subscribing.clear()
            self._filters_changed = False
            self._ping_sent = None
            released = self.core.connected(self.generation, self._clock())
            if released:
                self._batch.extend(released)
            if self.state is not LineState.CONNECTING:
                self._move(LineState.CONNECTING)
            self._move(LineState.CONNECTED)
            self.core.counters.reconnects += 1 if self.generation > 1 else 0
            self.last_error = None
        log.info(
            "line %s: connected to %s (session present: %s)",
            self.name,
            endpoint,
            connected.session_present,
        )
        server_keep_alive = connected.properties.get("server_keep_alive")
        if server_keep_alive is not None and server_keep_alive != self.config.keep_alive:
            # MQTT 5 §3.2.2.3.14: the broker's keep-alive replaces the one kom asked for.
            log.info(
                "line %s: the broker sets the keep-alive to %d s (kom asked for %d s)",
                self.name,
                server_keep_alive,
                self.config.keep_alive,
            )
        if self.config.protocol == "auto":
            log.info("line %s: speaking MQTT %s", self.name, connected.protocol)
        if connected.assigned_client_id:
            log.info(
                "line %s: broker assigned client id %r", self.name, connected.assigned_client_id
            )
        self._subscribe(session, connected.session_present)
        self._send_sparkplug()
        self._resend_recovered(session)
        self._publish_on_connect()
        self.connected_event.set()
        started = time.monotonic()
        lost = self._serve(session)
        self.connected_event.clear()
        return not (lost and self._taken_over(time.monotonic() - started))

    def _taken_over(self, lasted: float) -> bool:
        """Whether the broker keeps closing the session right after it opens.

        Brokers identify clients by client id only (MQTT 3.1.1 §3.1.3.1): a second process
        with the same id makes the broker close the older session, and two such processes
        knock each other off forever. MQTT 5 says so ("Session taken over"); for 3.1.1,
        three sessions in a row lost within seconds of opening say the same. Either way it
        is reported, counted, and the line backs off instead of reconnecting at once.
        """
        explicit = "taken over" in (self.last_error or "").lower()
        session = self._session
        if not explicit and session is not None and session.explained:
            # The loss has a named cause (a protocol error, a refused QoS 2 PUBLISH, the
            # broker's DISCONNECT): that is what the log says, not a takeover.
            self._short_sessions = 0
            return False
        short = lasted < max(5.0, 2 * self.config.reply_timeout)
        self._short_sessions = self._short_sessions + 1 if short else 0
        if not explicit and self._short_sessions < 3:
            return False
        self.takeovers += 1
        log.error(
            "line %s: the broker closed the session %s after it opened (%s); is another "
            "client using client id %r? Backing off.",
            self.name,
            "at once" if explicit else f"{self._short_sessions} times in a row",
            self.last_error or "connection lost",
            self.config.client_id,
        )
        return True

    def _resend_recovered(self, session: Session) -> None:
        """Send the outbox writes a previous run of kom left behind (after a crash)."""
        if not self._recovered:
            return
        recovered, self._recovered = self._recovered, []
        for row in recovered:
            mid, _ = session.publish(row.topic, row.payload, row.qos, row.retain)
            with self._writes_lock:
                early = self._early.pop(mid, None)
                if early is None:
                    self._outbox_ids[mid] = row.id
            if early is not None and early[0] and self._outbox is not None:
                self._outbox.done(row.id)
        log.warning("line %s: resent %d write(s) left in the outbox", self.name, len(recovered))

    def _attempt_failed(self, reason: str) -> None:
        self.core.counters.connect_failures += 1
        self.last_error = reason
        self._expire_writes(time.monotonic())
        log.warning("line %s: %s", self.name, reason)
        self._report_down()

    def _report_down(self) -> None:
        """Active stations into communication error, their inputs invalid (SPEC §2).

        Once per outage without a flag: the core skips stations already in that state.
        """
        with self._lock:
            updates = self.core.lost(self._clock())
        if updates:
            self._deliver(Batch(self, updates, []))

    def _subscribe(self, session: Session, session_present: bool) -> None:
        # SPEC §11: the response topics of confirmed writes are subscribed with the filters.
        wanted = self._wanted + tuple(sorted(self._response_topics - set(self._wanted)))
        now = time.monotonic()
        timeout = self.config.reply_timeout
        qos = self.config.subscribe_qos
        with self._lock:
            if self._subscribed:
                self._held = subscriptions.Subscriptions(self._subscribed, qos)
            # A kept session keeps its subscriptions: subscribing a held filter again would
            # make the broker resend its retained messages (MQTT 3.1.1 §3.8.4).
            new, gone = subscriptions.plan(wanted, qos, self._held, session_present)
            # The new filters first, then the old ones go: a message published between the
            # two requests then matches a subscription either way (MQTT 3.1.1 §3.8.4, §3.10.4:
            # the broker handles one client's packets in order). Overlapping filters may
            # deliver a message twice meanwhile: at least once, never none.
            if new:
                mid = session.subscribe(new, qos)
                self._requests[mid] = ("SUBACK", now + timeout if timeout else float("inf"))
                self._subscribing[mid] = tuple(new)
            elif session_present and wanted:
                log.info("line %s: the kept session holds %s", self.name, ", ".join(wanted))
            if gone:
                mid = session.unsubscribe(gone)
                self._requests[mid] = ("UNSUBACK", now + timeout if timeout else float("inf"))
            self._subscribed = wanted
            self.refused_filters = {f: n for f, n in self.refused_filters.items() if f in wanted}

    def change_filters(self, filters: Sequence[str]) -> None:
        """New topic filters: SUBSCRIBE the new, then UNSUBSCRIBE the old, on the same session
        (sent by the line's thread, which owns the session)."""
        with self._lock:
            self._wanted = tuple(filters)
            self._filters_changed = True
        self._poke()

    def _poke(self) -> None:
        """Wake the line's thread, wherever it waits (for the broker, or to reconnect)."""
        if not self._wake.is_set():  # connected, the thread never clears it: no lock taken
            self._wake.set()
        session = self._session
        if session is not None:
            session.wake()

    def _retry_refused(self, session: Session, now: float) -> None:
        """SUBSCRIBE again the filters the broker refused, once their back-off has passed."""
        if self._retry_at is None or now < self._retry_at or not self.refused_filters:
            return
        self._retry_at = None
        filters = tuple(self.refused_filters)
        timeout = self.config.reply_timeout
        with self._lock:
            mid = session.subscribe(filters, self.config.subscribe_qos)
            self._requests[mid] = ("SUBACK", now + timeout if timeout else float("inf"))
            self._subscribing[mid] = filters
        log.info("line %s: subscribing again to %s", self.name, ", ".join(filters))

    def on_own_thread(self) -> bool:
        """Whether the caller is this line's network thread."""
        return self._thread is threading.current_thread()

    def _stop_reading(self) -> bool:
        """Asked before every buffered packet: whether to hand the batch over first."""
        if len(self._batch) >= BATCH_UPDATES:
            return True
        core = self.core  # one call when nothing is held
        return core.holds and core.holding_too_much()

    def _serve(self, session: Session) -> bool:
        """Loop until the connection ends; True when it was lost (not closed by kom)."""
        paused = False
        while not self._closed.is_set():
            if self.core.holding_too_much():
                # SPEC §5: held messages are bounded. Brokers do not all keep to their own
                # in-flight window (mosquitto 2.0.11 does not), so kom stops reading until
                # the consumer catches up; TCP then holds the broker back.
                if not paused:
                    paused = True
                    self.core.counters.pauses += 1
                    log.warning(
                        "line %s: a station holds max_held messages; reading paused", self.name
                    )
                if self._asked:
                    self._decide_writes()  # an ACK_ID write is what frees the station
                session.idle(0.05)
                self._ping_sent = None  # the broker's answers wait unread in the socket
                self._expire_writes(time.monotonic())
                self._send_outgoing(session)  # writes go out while reading waits
                continue
            paused = False
            if self._asked:
                self._decide_writes(DECIDE_BURST)
            if self._filters_changed:
                with self._lock:
                    self._filters_changed = False
                    self._subscribe(session, True)
            busy = self._batch or self._asked or (self._outgoing and len(self._writes) < WINDOW)
            alive = session.loop(0.0 if busy else 0.05)
            self._flush()
            self._send_outgoing(session)
            if not alive:
                log.warning("line %s: connection lost; reconnecting", self.name)
                break
            now = time.monotonic()
            self._retry_refused(session, now)
            problem = self._check_timers(session, now)
            if self.core.staleness is not None:
                self._check_stale()
            if problem is not None:
                log.warning("line %s: %s; reconnecting", self.name, problem)
                self.last_error = problem
                session.drop()
                break
            if not self.core.wants_connection:
                log.info("line %s: every station is off or simulated: disconnecting", self.name)
                session.disconnect()
                self._lost("forced disconnection")
                return False
        else:
            self._drain_acknowledgements()
            session.disconnect()
            self._lost("closed")
            return False
        self._lost(self.last_error or "connection lost")
        return True

    def _drain_acknowledgements(self, timeout: float = 2.0) -> None:
        """On close, let the host take what is queued so it is acknowledged before DISCONNECT.

        Without this, messages handed over during shutdown would be redelivered by the
        broker to the next run (no loss, but needless duplicates).
        """
        self._flush()
        deadline = time.monotonic() + timeout
        while self._unsettled > 0 and time.monotonic() < deadline:
            time.sleep(0.01)

    def _lost(self, reason: str) -> None:
        with self._lock, self._ack_lock:
            dropped = self._acks.reset()
            self._arrivals.clear()
            self._settles.clear()
        # Writes not yet published stay in kom's queue, in order, with the writes made while
        # the line is down: the line's thread sends them after reconnecting, unless their
        # reply_timeout has passed by then (QoS 0 ones fail below).
        with self._writes_lock:
            failed = [(w.future, w.tag) for w in self._writes.values() if w.qos == 0]
            for mid in [m for m, w in self._writes.items() if w.qos == 0]:
                del self._writes[mid]
            if self._outgoing and self._outgoing[0].qos == 0:
                failed += [(w.future, w.tag) for w in self._take_outgoing()]
        for future, tag in failed:
            _fail(future, WriteError(f"{tag}: connection lost", tag, "not-connected"))
        if dropped:
            log.info("line %s: %d unacknowledged messages will be redelivered", self.name, dropped)
        self.last_error = reason
        self._report_down()

    def _check_timers(self, session: Session, now: float) -> str | None:
        cfg = self.config
        last = session.last_received()
        if cfg.ping_interval > 0:
            if self._ping_sent is None:
                if now - last >= cfg.ping_interval:
                    session.ping()
                    self._ping_sent = now
            elif last >= self._ping_sent:
                self._ping_sent = None
            elif cfg.reply_timeout > 0 and now - self._ping_sent >= cfg.reply_timeout:
                return f"no PINGRESP within {cfg.reply_timeout:g} s"
        if cfg.reply_timeout > 0:
            if session.reading_packet():
                if self._half_read_since is None:
                    self._half_read_since = now
                elif now - max(self._half_read_since, last) >= cfg.reply_timeout:
                    return f"a packet stayed half read for {cfg.reply_timeout:g} s"
            else:
                self._half_read_since = None
            with self._lock:
                for mid, (what, deadline) in self._requests.items():
                    if now >= deadline:
                        return f"no {what} for request {mid} within {cfg.reply_timeout:g} s"
            self._expire_writes(now)
        elif self._confirmations:
            self._expire_confirmations(now)
        return None

    def _check_stale(self) -> None:
        """SPEC §16: the inputs of stations quiet for their `stale_after` turn invalid."""
        with self._lock:
            updates = self.core.stale(self._clock())
            if updates:
                self._batch.extend(updates)
        if updates:
            self._flush()

    def _expire_writes(self, now: float) -> None:
        """Fail the writes whose reply_timeout passed, connected or not (SPEC §6).

        A write that reports failure is never sent later. One still in kom's queue (made
        while the line was down, or waiting for the window) is dropped with its outbox row.
        One already handed to the session is forgotten there with its outbox row: if it was
        sent, the broker may have it ("timeout" then means "unknown"), but the session does
        not send it again after reconnecting, with DUP, nor its PUBREL, as MQTT 3.1.1 §4.4
        would have it on a kept session (`mqtt.Connection.forget` keeps its packet id out of
        use meanwhile).
        """
        if now < self._next_expiry:  # nothing is overdue: no need to look
            if self._confirmations:
                self._expire_confirmations(now)
            return
        forgotten: list[int] = []
        rows: list[int | None] = []  # their outbox rows
        with self._writes_lock:
            expired = [
                (m, w)
                for m, w in self._writes.items()
                if w.deadline is not None and now >= w.deadline
            ]
            for mid, write in expired:
                del self._writes[mid]
                if write.qos == 0:
                    self._expired.add(mid)  # its "written" may still be reported
                    continue
                forgotten.append(mid)
                rows.append(self._outbox_ids.pop(mid, None))
            late: list[_Outgoing] = []
            if self._outgoing:
                waiting = self._take_outgoing()
                late = [w for w in waiting if w.deadline and now >= w.deadline]
                self._outgoing.extend(w for w in waiting if not (w.deadline and now >= w.deadline))
            deadlines = [w.deadline for w in self._writes.values() if w.deadline is not None]
            deadlines += [w.deadline for w in self._outgoing if w.deadline is not None]
            self._next_expiry = min(deadlines, default=_NEVER)
        session = self._session
        if forgotten and session is not None:
            session.forget(forgotten)
        for row in rows:
            if row is not None and self._outbox is not None:
                self._outbox.done(row)
        for future, tag in [(w.future, w.tag) for _, w in expired]:
            _fail(future, self._timeout_error(tag))
        self._time_out(late)
        if self._confirmations:
            self._expire_confirmations(now)

    def _expire_confirmations(self, now: float) -> None:
        """SPEC §11: a confirmed write whose device did not confirm in time fails `unconfirmed`."""
        with self._confirm_lock:
            late = self._confirmations.expire(now)
        for pending in late:
            self.core.counters.unconfirmed_writes += 1
            why = pending.why_not()
            log.warning("line %s: write not confirmed: %s", self.name, why)
            _fail(pending.future, WriteError(why, pending.tag, "unconfirmed"))

    def _confirm(self, done: Sequence[Pending]) -> None:
        for pending in done:
            _complete(pending.future, pending.result())

    def _time_out(self, late: Sequence[_Outgoing]) -> None:
        """Fail writes that were never sent, and forget their outbox rows: never sent later."""
        for write in late:
            if write.outbox_id is not None and self._outbox is not None:
                self._outbox.done(write.outbox_id)
            _fail(write.future, self._timeout_error(write.tag))

    def _timeout_error(self, tag: str) -> WriteError:
        return WriteError(
            f"{tag}: no completion within {self.config.reply_timeout:g} s", tag, "timeout"
        )

    def _wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for `event` up to `seconds`, deciding writes and failing overdue ones meanwhile.

        Writes wake `_wake`: waiting for `_closed`, the thread wakes for them too.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if event is not self._wake and self._wake.wait(min(left, 0.25)):
                self._wake.clear()
            elif event is self._wake and event.wait(min(left, 0.25)):
                return True
            if self._asked:
                self._decide_writes()
            if event.is_set():
                return True
            self._expire_writes(time.monotonic())
        return event.is_set()

    # -- session events (network thread) ------------------------------------------------

    def message(self, raw: RawMessage) -> None:
        self.take([raw], 0, _never)

    def take(self, batch: Sequence[object], start: int, pause: Callable[[], bool]) -> int:
        """The messages of a batch of the session's events, in order (Events.take).

        This is the hot path of a drain: the common case is written out once here, and every
        rarer one has its own method. The receive time is taken once per read from the
        socket: the messages of one read arrived together (and the sink formats the time of
        a batch's messages once).
        """
        session = self._session
        reads = session.reads if session is not None else -1
        if reads != self._stamped_reads or reads < 0:
            self._stamp = self._clock()
            self._stamped_reads = reads
        received = self._stamp
        lock = self._lock
        generation = self.generation  # set on this thread alone, when a connection starts
        raw_message = RawMessage
        at = start
        count = len(batch)
        while at < count:
            raw = batch[at]
            if type(raw) is not raw_message or pause():
                return at
            at += 1
            try:
                try:
                    topic = raw.topic.decode()
                except UnicodeDecodeError:
                    self._bad_topic(raw)
                    continue
                # Read for each message, as the core below: a reload (any thread) swaps them.
                responses = self._response_topics
                if responses and topic in responses:
                    self._responded(raw, topic)
                    continue
                payload = raw.payload if raw.size < 0 else self._oversize(raw, topic)
                qos = raw.qos
                msg = new_record(
                    Message,
                    (
                        topic,
                        payload,
                        received,
                        qos,
                        raw.mid,
                        raw.dup,
                        raw.retain,
                        generation,
                        raw.properties,
                    ),
                )
                with lock:
                    if qos:
                        # Registered in arrival order at the next flush, before anyone can
                        # settle it.
                        self._arrivals.append((raw.mid, qos))
                    core = self.core
                    processed = core.process(msg)
                    updates = processed.updates
                    if updates:
                        self._batch.extend(updates)
                    if qos and processed.settled:
                        self._settles.append((generation, raw.mid, qos))
                if updates and self._confirmations:
                    self._read_back(updates)
                sparkplug = core.sparkplug
                if sparkplug is not None and (sparkplug.outgoing or sparkplug.problems):
                    self._send_sparkplug()
                if raw.dup:
                    # SPEC §5: a redelivery is reported (counted in `duplicates`, and logged).
                    log.info(
                        "line %s: redelivered message (DUP) m%d on %s", self.name, raw.mid, topic
                    )
                station = processed.station
                if (
                    station is not None
                    and station.decoder.time_missing
                    and station.name not in self._missing_time_warned
                ):
                    self._time_missing(station)
                if self.config.debug:
                    self._debug_message(raw, topic, processed)
            except Exception as exc:  # the line's own bug: counted, reading goes on
                self.callback_failed("on_message", exc, raw.topic)
        return at

    def _bad_topic(self, raw: RawMessage) -> None:
        self.core.counters.bad_topics += 1
        log.warning(
            "line %s: dropped a message with an invalid UTF-8 topic %r", self.name, raw.topic[:80]
        )
        if raw.qos:
            # Acknowledge it anyway: the broker would redeliver it forever otherwise.
            with self._lock:
                self._arrivals.append((raw.mid, raw.qos))
                self._settles.append((self.generation, raw.mid, raw.qos))

    def _oversize(self, raw: RawMessage, topic: str) -> SkippedPayload:
        """Skipped as it streamed in (over max_payload): the station reports it (SPEC §8)."""
        self.core.counters.oversize += 1
        log.warning(
            "line %s: skipped a PUBLISH of %d bytes on %s (over max_payload)",
            self.name,
            raw.size,
            topic,
        )
        return SkippedPayload(raw.size)

    def _time_missing(self, station: Station) -> None:
        """SPEC §7: warned once per station, unless ignore_missing_time."""
        self._missing_time_warned.add(station.name)
        if not self.config.ignore_missing_time:
            why = "in the payload" if self.config.time_field else "configured (time_field)"
            log.warning(
                "line %s: station %s: no time field %s; values take the receive time",
                self.name,
                station.name,
                why,
            )

    def _debug_message(self, raw: RawMessage, topic: str, processed: Processed) -> None:
        """SPEC §2 debug: every message (payload cut short) and every value."""
        station = processed.station
        log.debug(
            "line %s: %s q%d m%d %r -> %s (%s)",
            self.name,
            topic,
            raw.qos,
            raw.mid,
            raw.payload[:120],
            station.name if station else None,
            processed.route.rule.value,
        )
        for u in processed.updates:
            log.debug(
                "line %s:   %s = %r %s %s", self.name, u.tag, u.value, u.quality, u.reason or ""
            )

    def _read_back(self, updates: Sequence[Update]) -> None:
        """SPEC §11: valid values read may confirm writes waiting for their read-back.

        Not retained ones: the broker's stored value, sent because kom subscribed, says
        nothing of what the device did with the write. With retain_as_published a device's
        live message keeps its retain flag too, and counts.
        """
        done: list[Pending] = []
        any_retained = self.config.retain_as_published
        with self._confirm_lock:
            for u in updates:
                if u.quality is Quality.VALID and (any_retained or not u.retained):
                    done += self._confirmations.read(u.tag, u.value)
        self._confirm(done)

    def _responded(self, raw: RawMessage, topic: str) -> None:
        """SPEC §11: a PUBLISH on a response topic; its correlation data names the write.

        Settled at once (it is kom's own answer, not a station's value). A response for no
        waiting write (late, or another client's) is counted and logged.
        """
        if raw.qos:
            with self._lock:
                self._arrivals.append((raw.mid, raw.qos))
                self._settles.append((self.generation, raw.mid, raw.qos))
        correlation = (raw.properties or {}).get("correlation_data")
        done: list[Pending] = []
        if isinstance(correlation, bytes | bytearray):
            with self._confirm_lock:
                done = self._confirmations.responded(bytes(correlation), raw.payload)
        if done:
            self._confirm(done)
            return
        self.core.counters.stray_responses += 1
        log.info(
            "line %s: a response on %s for no waiting write (correlation data %r)",
            self.name,
            topic,
            correlation,
        )

    def _say_offline(self, timeout: float) -> None:
        """SPEC §14: a host application that stops cleanly says so in its STATE itself
        (DISCONNECT discards the will that would have)."""
        sparkplug = self.core.sparkplug
        offline = sparkplug.offline() if sparkplug is not None else None
        if offline is None or self.state is not LineState.CONNECTED:
            return
        topic, payload = offline
        try:
            self.publish_raw(topic, payload, qos=1, retain=True).result(timeout)
        except Exception as exc:  # closing goes on: the broker still has the will
            log.warning("line %s: sparkplug: STATE offline not confirmed: %s", self.name, exc)

    def _send_sparkplug(self) -> None:
        """Publish what the Sparkplug host part asks for (SPEC §14: STATE, rebirth NCMDs)."""
        sparkplug = self.core.sparkplug
        if sparkplug is None:
            return
        with self._lock:
            outgoing, sparkplug.outgoing = sparkplug.outgoing, []
            problems, sparkplug.problems = sparkplug.problems, []
        for problem in problems:
            log.warning("line %s: sparkplug: %s", self.name, problem)
        for topic, payload, qos, retain in outgoing:
            log.info("line %s: sparkplug: publishing %s", self.name, topic)
            future = self.publish_raw(topic, payload, qos=qos, retain=retain)
            future.add_done_callback(functools.partial(_log_failure, self.name, topic))

    def _flush(self) -> None:
        with self._lock:
            if self._arrivals:
                # Under both locks (always taken in this order), so that arrivals are
                # registered in order and before anyone can settle them.
                with self._ack_lock:
                    self._acks.arrived_many(self._arrivals)
                self._arrivals = []
            if not self._batch and not self._settles:
                return
            batch = Batch(self, self._batch, self._settles)
            if self._settles:
                self._unsettled += 1
            self._batch = []
            self._settles = []
        self._deliver(batch)

    def settle(self, batches: Sequence[Batch]) -> None:
        """The host took these batches of this line: acknowledge their messages, in order.

        One write to the broker for all of them (the batches of a backlog merge).
        """
        settles = [s for batch in batches for s in batch.settles]
        if not settles:
            return
        self._settle_many(settles)
        with self._lock:
            self._unsettled -= sum(1 for batch in batches if batch.settles)

    def _settle_many(self, settles: Sequence[tuple[int, int, int]]) -> None:
        with self._ack_lock:
            session = self._session
            current = self.generation
            ready = self._acks.done_many([mid for gen, mid, _ in settles if gen == current])
            if session is not None and ready:
                session.ack_many(ready)

    def published(self, mid: int, ok: bool, reason: str, granted_qos: int | None = None) -> None:
        """The session finished a PUBLISH (the line's thread)."""
        if granted_qos is not None:
            # SPEC §11: a QoS 2 write answered with PUBACK is reported as downgraded.
            self.core.counters.downgraded_writes += 1
            log.warning("line %s: write m%d %s", self.name, mid, reason)
        with self._writes_lock:
            write = self._writes.pop(mid, None)
            outbox_id = self._outbox_ids.pop(mid, None) if self._outbox_ids else None
            expired = False
            if self._expired and mid in self._expired:
                self._expired.discard(mid)
                expired = True
            if write is None and outbox_id is None and not expired:
                # Completed before _publish() registered it: it picks this up.
                self._early[mid] = (ok, reason)
                return
        if outbox_id is not None and ok and self._outbox is not None:
            self._outbox.done(outbox_id)
        if ok and granted_qos is None and write is not None:  # the usual answer: done
            _complete(write.future, WriteResult(write.tag, write.topic, write.qos, mid))
            return
        if not ok:
            # SPEC §11: a refusal reaches the log and the counters, not only the write.
            self.core.counters.refused_writes += 1
            tag = write.tag if write is not None else "a write"
            log.warning("line %s: the broker refused %s (m%d): %s", self.name, tag, mid, reason)
        if write is not None:
            result = WriteResult(write.tag, write.topic, write.qos, mid)
            if granted_qos is not None:
                result = attrs.evolve(result, qos=granted_qos, downgraded=True)
            _completed(write.future, result, ok, reason)

    def subscribed(self, mid: int, granted: list[int], reason_string: str | None = None) -> None:
        """SUBACK: a refused filter (0x80 or above) is logged, counted, kept in `last_error`
        and `refused_filters` (with the broker's reason string, SPEC §11), and subscribed
        again after a back-off."""
        with self._lock:
            self._requests.pop(mid, None)
            filters = self._subscribing.pop(mid, self._subscribed)
        refused = []
        for f, code in zip(filters, granted, strict=False):
            if code >= 0x80:
                refused.append(f)
                tries = self.refused_filters[f] = self.refused_filters.get(f, 0) + 1
                self.core.counters.refused_subscriptions += 1
                session = self._session  # "auto" speaks what the broker took
                v5 = session.protocol == "5" if session is not None else False
                why = reason_name(code, packet="SUBACK", v5=v5)
                if reason_string:
                    why += f": {reason_string}"
                self.last_error = f"the broker refused the subscription {f!r}: {why}"
                log.error("line %s: %s (refusal %d)", self.name, self.last_error, tries)
            else:
                self.refused_filters.pop(f, None)
        if refused:
            most = max(self.refused_filters[f] for f in refused)
            wait = backoff(most, self.config.reconnect_min, self.config.reconnect_max)
            self._retry_at = time.monotonic() + wait
        self._keep_subscriptions(all(code < 0x80 for code in granted))
        log.info("line %s: subscribed %s (granted %s)", self.name, ", ".join(filters), granted)

    def unsubscribed(self, mid: int) -> None:
        with self._lock:
            self._requests.pop(mid, None)
        self._keep_subscriptions(True)

    def _keep_subscriptions(self, granted: bool) -> None:
        """Remember what the kept session holds now, for the next run (forget it on refusal)."""
        cfg = self.config
        if cfg.effective_clean_session:
            return
        held = subscriptions.Subscriptions(self._subscribed, cfg.subscribe_qos)
        subscriptions.save(cfg.client_id, held if granted else None)

    def disconnected(self, reason: str) -> None:
        if reason.startswith("protocol error"):
            self.core.counters.protocol_errors += 1
        elif reason.startswith("the broker sent DISCONNECT"):
            self.core.counters.broker_disconnects += 1
        self.last_error = f"disconnected: {reason}"

    def callback_failed(self, where: str, exc: BaseException, topic: bytes | None) -> None:
        self.core.counters.callback_errors += 1
        log.error("line %s: %s failed (topic %r): %r", self.name, where, topic, exc)

    # -- host requests (any thread) -------------------------------------------------------

    def acknowledge(self, station_name: str, value: object) -> None:
        """ACK_ID written: settle the held message, release the next one (SPEC §5)."""
        with self._lock:
            station = self.core.by_name[station_name]
            generation = self.generation
            finished, nxt = station.acknowledge(value)
        if finished.qos and finished.generation == generation:
            self._settle_many([(generation, finished.mid, finished.qos)])
        with self._lock:
            if nxt is not None:
                self._batch.extend(nxt.updates)
        if nxt is not None:
            self._flush()

    def set_mode(self, station_name: str, mode: str) -> None:
        """Switch a station on, off or into simulation; may connect or disconnect the line."""
        with self._lock:
            station = self.core.by_name[station_name]
            target = StationState(mode)
            if target is StationState.ON and self.state is not LineState.CONNECTED:
                target = StationState.COMM
            if station.state is not target and not (target is StationState.ON and station.active):
                station.move(target)
                if target is StationState.ON:
                    self.core.switched_on(station_name, self._clock())
        self._wake.set()

    def write(self, station_name: str, tag_name: str, value: object) -> Future[WriteResult]:
        """Write an output tag; the future completes by QoS or fails with a reason (SPEC §6).

        Any thread may write; the write is decided (value converted, topic rendered from the
        station's output values and groups) and published on the line's thread.
        """
        future: Future[WriteResult] = Future()
        full = f"{station_name}.{tag_name}"
        self._ask((future, full, None, station_name, tag_name, value))
        return future

    def _ask(self, asked: _Asked) -> None:
        """Hand a write to the line's thread (or decide it here if the thread is not running)."""
        future, full = asked[0], asked[1]
        if self._closed.is_set():
            _fail(future, WriteError(f"{full}: line closed", full, "not-connected"))
            return
        if not self._running or self._ident == threading.get_ident():
            self._asked.append(asked)
            self._decide_writes()
            return
        if self._outbox is None:
            self._asked.append(asked)
            self._poke()
            return
        # With an outbox, write() returns once the write's row is committed (decided on the
        # line's thread): a crash of kom after that loses nothing.
        decided = threading.Event()

        def decide_and_tell() -> None:
            try:
                self._decide(asked)
            finally:
                decided.set()

        self._asked.append((future, full, decide_and_tell, "", "", None))
        self._poke()
        decided.wait(max(self.config.reply_timeout, 5.0))

    def _decide(self, asked: _Asked) -> None:
        """Decide one write asked for: a tag's write, or the function that decides it."""
        future, full, decide, station_name, tag_name, value = asked
        if decide is None:
            self._write(future, station_name, tag_name, full, value)
        else:
            decide()

    def _decide_writes(self, most: int | None = None) -> None:
        """Decide the writes asked for so far (`most` of them at most), in order, then
        publish them.

        Only those asked for when it starts: writes keep coming while it runs (another
        thread fires them), and the decided ones should go out meanwhile, not after the last.
        """
        asked = self._asked
        count = len(asked) if most is None else min(len(asked), most)
        for _ in range(count):
            try:
                entry = asked.popleft()
            except IndexError:  # another thread took it (a line not running)
                break
            future, full = entry[0], entry[1]
            try:
                self._decide(entry)
            except WriteError as exc:
                _fail(future, exc)
            except AckError as exc:
                _fail(future, WriteError(str(exc), full, "rejected"))
            except Exception as exc:  # the caller always learns the outcome
                _fail(future, WriteError(f"{full}: {exc}", full, "rejected"))
        session = self._session
        if session is not None and self._outgoing and self.state is LineState.CONNECTED:
            # While the line is down writes wait in kom's queue (see _publish).
            self._send_outgoing(session)

    def _write(
        self,
        future: Future[WriteResult],
        station_name: str,
        tag_name: str,
        full: str,
        value: object,
    ) -> None:
        station = self.core.by_name.get(station_name)
        tag = station.config.tag(tag_name) if station else None
        if station is None or tag is None:
            raise WriteError(f"{full}: no such tag", full, "not-output")
        kind = tag.address.kind if tag.address is not None else None
        if kind is Kind.ACK_ID:
            self.acknowledge(station_name, _as_int(value))
            _complete(future, WriteResult(full, None, None, local=True))
            return
        if station.state is StationState.SIMULATION:
            converted = self._convert(tag.type, value, full, station.config.time_zone)
            update = Update(
                full,
                converted,
                Quality.VALID,
                None,
                self._clock(),
                self._clock(),
                None,
                "simulation",
            )
            self._deliver(Batch(self, [update], []))
            _complete(future, WriteResult(full, None, None, local=True))
            return
        if not tag.type.is_output:
            raise WriteError(f"{full}: {tag.type.value} is not an output type", full, "not-output")
        converted = self._convert(tag.type, value, full, station.config.time_zone)
        if kind is Kind.OUT_TOPIC:
            station.output_values[tag_name] = converted
            _complete(future, WriteResult(full, None, None, local=True))
            return
        if kind is Kind.OUT_VALUE:
            topic_tag = station.config.tag_by_kind(Kind.OUT_TOPIC)
            topic = station.output_values.get(topic_tag.name) if topic_tag else None
            if not isinstance(topic, str):
                raise WriteError(
                    f"{full}: OUT_TOPIC has no value yet (give it a default)", full, "topic"
                )
            payload = str(converted).encode()
        elif kind is Kind.SPB and self.core.sparkplug is not None:
            # SPEC §14: an NCMD or DCMD with the metric (by alias when the BIRTH gave one).
            topic, payload = self.core.sparkplug.command(
                station.config, tag, converted, self._clock()
            )
        elif tag.publish is not None:
            topic, payload = render(tag.publish, converted, station_name, tag_name, station.groups)
        else:
            raise WriteError(
                f"{full}: the tag has neither OUT_VALUE nor publish", full, "not-output"
            )
        problem = _topic_problem(topic)
        if problem:
            raise WriteError(f"{full}: {problem}", full, "topic")
        cfg = self.config
        own = tag.publish
        if (
            cfg.publish_only_changes
            or cfg.publish_on_connect
            or (own is not None and (own.only_changes or own.on_connect))
        ):  # a publishing option applies (else neither function can say yes)
            changes = only_changes(tag, cfg)
            if (changes or on_connect(tag, cfg)) and not self._remember(
                future, OutputMessage(full, topic, payload), changes
            ):
                return
        properties: dict[str, object] | None = None
        if tag.user_properties:
            properties = {"user_property": tag.user_properties}
        if tag.confirm is not None:
            inner, properties = self._confirming(future, tag, full, converted, properties)
            try:
                self._publish(inner, full, topic, payload, properties=properties)
            except WriteError as exc:
                _fail(inner, exc)  # it waits no more for its confirmation
            return
        self._publish(future, full, topic, payload, properties=properties)

    def _confirming(
        self,
        future: Future[WriteResult],
        tag: TagConfig,
        full: str,
        value: Value,
        properties: dict[str, object] | None,
    ) -> tuple[Future[WriteResult], dict[str, object] | None]:
        """SPEC §11: register a confirmed write before it is published.

        Returns the future the publishing completes (the broker's answer) and the PUBLISH's
        properties; `future`, the caller's, completes when both the broker and the device
        have answered.
        """
        confirm = tag.confirm
        assert confirm is not None
        cfg = self.config
        timeout = cfg.reply_timeout if confirm.timeout is None else confirm.timeout
        expected: object = None
        key: str | bytes
        if confirm.how == "read-back":
            key = confirm.tag or ""
            name, _, tag_name = key.partition(".")
            other = self.core.by_name.get(name)
            target = other.config.tag(tag_name) if other is not None else None
            if other is None or target is None:
                raise WriteError(f"{full}: confirm_tag {key!r} is not on this line", full)
            # Compared as the input tag reads it (SPEC §11): converted to its type.
            expected = self._convert(target.type, value, full, other.config.time_zone)
        else:
            if self._session is not None and self._session.protocol != "5":
                raise WriteError(
                    f'{full}: confirm = "response" needs MQTT 5; the broker speaks 3.1.1',
                    full,
                    "unconfirmed",
                )
            key = new_correlation()
            properties = dict(properties or {})
            properties["response_topic"] = confirm.response_topic or default_response_topic(
                cfg.client_id, cfg.name
            )
            properties["correlation_data"] = key
        deadline = time.monotonic() + timeout if timeout > 0 else None
        pending = Pending(future, full, confirm.how, key, expected, deadline, timeout)
        with self._confirm_lock:
            self._confirmations.add(pending)
        inner: Future[WriteResult] = Future()

        def published(done: Future[WriteResult]) -> None:
            exc = done.exception()
            with self._confirm_lock:
                if exc is not None:
                    self._confirmations.drop(pending)
                    finished = False
                else:
                    finished = self._confirmations.published(pending, done.result())
            if exc is not None:
                _fail(future, exc)
            elif finished:
                self._confirm([pending])

        inner.add_done_callback(published)
        return inner, properties

    def _remember(self, future: Future[WriteResult], message: OutputMessage, changes: bool) -> bool:
        """Note an output's message for its publishing options; False: leave it out (unchanged)."""
        outputs = self._outputs
        if changes and outputs.unchanged(message):
            result = WriteResult(message.tag, message.topic, None, local=True, unchanged=True)
            _complete(future, result)
            return False
        outputs.write(message)
        if changes:

            def forget_failed(done: Future[WriteResult]) -> None:
                if done.exception() is not None:
                    outputs.failed(message)

            future.add_done_callback(forget_failed)
        return True

    def _publish_on_connect(self) -> None:
        """Publish the current value of every output with `on_connect` (ioBroker, seeds/003)."""
        with self._lock:
            messages = self._outputs.on_connect(self.core.stations, self.config)
        for message in messages:
            future: Future[WriteResult] = Future()
            future.add_done_callback(_log_on_connect_failure)
            try:
                self._publish(future, message.tag, message.topic, message.payload)
            except WriteError as exc:
                _fail(future, exc)
        if messages:
            log.info("line %s: published %d output value(s) on connect", self.name, len(messages))

    def _convert(
        self, value_type: ValueType, value: object, full: str, zone: Zone | None = None
    ) -> Value:
        """A written value as the tag's type; `zone` is the station's own, when it has one."""
        try:
            return parse_write_value(
                value_type, value, self.config.time_mask, zone or self.config.time_zone
            )
        except ConversionError as exc:
            raise WriteError(f"{full}: {exc}", full, "rejected") from exc

    def _publish(
        self,
        future: Future[WriteResult],
        full: str,
        topic: str,
        payload: bytes,
        *,
        qos: int | None = None,
        retain: bool | None = None,
        properties: dict[str, object] | None = None,
    ) -> None:
        """Publish a write; `qos` and `retain` default to the line's publish_qos/_retain;
        `properties` go with it on MQTT 5 (SPEC §11)."""
        cfg = self.config
        qos = cfg.publish_qos if qos is None else qos
        retain = cfg.publish_retain if retain is None else retain
        session = self._session
        if session is None or (qos == 0 and self.state is not LineState.CONNECTED):
            raise WriteError(f"{full}: line {self.name!r} is not connected", full, "not-connected")
        deadline = time.monotonic() + cfg.reply_timeout if cfg.reply_timeout > 0 else None
        outbox = self._outbox
        outbox_id = None
        if outbox is not None and qos > 0:
            # Committed before the session sees it: a crash from here on loses nothing.
            outbox_id = outbox.add(full, topic, payload, qos, retain)
        write = _Outgoing(
            topic, payload, qos, retain, properties, future, full, deadline, outbox_id
        )
        with self._writes_lock:
            # Published by _send_outgoing, on the line's thread, after the writes before it,
            # in one burst. While the line is down a write waits in kom's queue, not the
            # session's: one whose reply_timeout passes there is dropped as it fails, never
            # sent later (SPEC §6).
            self._outgoing.append(write)
            if deadline is not None and deadline < self._next_expiry:
                self._next_expiry = deadline

    def _send_outgoing(self, session: Session) -> None:
        """Publish the queued writes that fit the window (the line's thread)."""
        self._woken = False
        if not self._outgoing:
            return
        now = time.monotonic()
        with self._writes_lock:
            writes = self._take_outgoing(in_transit=True, most=WINDOW - len(self._writes))
            # Overdue while waiting (a reconnection takes time): failed, not sent.
            late = [w for w in writes if w.deadline is not None and now >= w.deadline]
            if late:
                writes = [w for w in writes if not (w.deadline is not None and now >= w.deadline)]
                self._in_transit -= len(late)
        self._time_out(late)
        self._publish_now(writes, session)

    def _publish_now(self, writes: Sequence[_Outgoing], session: Session) -> None:
        """Hand writes to the session and keep their futures until completion (no kom lock held).

        The caller counted `writes` in `_in_transit` (under _writes_lock); they leave it
        here, registered, in the same hold of the lock.
        """
        if not writes:
            return
        sent: Sequence[int | Exception]
        try:
            sent = session.publish_many(writes)  # each write begins with its message
        except Exception as exc:  # a write's caller always learns the outcome
            sent = [exc] * len(writes)
        refused: list[tuple[_Outgoing, Exception]] = []
        finished: list[tuple[_Outgoing, WriteResult, tuple[bool, str]]] = []
        registered = self._writes
        expired = self._expired
        early = self._early
        with self._writes_lock:
            self._in_transit -= len(writes)
            for write, mid in zip(writes, sent, strict=True):
                if type(mid) is not int:
                    refused.append((write, mid))  # type: ignore[arg-type]
                    continue
                if expired:
                    expired.discard(mid)  # the mid is this write's now
                answer = early.pop(mid, None) if early else None
                if answer is None:
                    registered[mid] = write  # its completion comes with `published`
                    if write.outbox_id is not None:
                        self._outbox_ids[mid] = write.outbox_id
                else:
                    result = WriteResult(write.tag, write.topic, write.qos, mid)
                    finished.append((write, result, answer))
        for write, problem in refused:
            why = "not-connected" if write.qos == 0 and not session.connected else "rejected"
            _fail(write.future, WriteError(f"{write.tag}: {problem}", write.tag, why))
        for write, result, (ok, reason) in finished:
            if ok and self._outbox is not None and write.outbox_id is not None:
                self._outbox.done(write.outbox_id)
            _completed(write.future, result, ok, reason)

    def _take_outgoing(self, in_transit: bool = False, most: int | None = None) -> list[_Outgoing]:
        """Take writes not yet published from the queue, oldest first (under _writes_lock).

        `in_transit`: they are to be handed to the session (`_publish_now`), and count as on
        their way until then, so that no write made meanwhile overtakes them.
        """
        outgoing = self._outgoing
        if most is None or most >= len(outgoing):
            waiting = list(outgoing)
            outgoing.clear()
        else:
            waiting = [outgoing.popleft() for _ in range(max(most, 0))]
        if in_transit:
            self._in_transit += len(waiting)
        return waiting

    def publish_raw(
        self, topic: str, payload: bytes, qos: int | None = None, retain: bool | None = None
    ) -> Future[WriteResult]:
        """Publish a message not tied to a tag (by default the line's QoS and retain)."""
        future: Future[WriteResult] = Future()

        def decide() -> None:
            problem = check_topic(topic)
            if problem:
                raise WriteError(problem, None, "topic")
            self._publish(future, topic, topic, payload, qos=qos, retain=retain)

        self._ask((future, topic, decide, "", "", None))
        return future


def _as_int(value: object) -> object:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _log_failure(line: str, topic: str, future: Future[WriteResult]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("line %s: sparkplug: %s not published: %s", line, topic, exc)


def _log_on_connect_failure(future: Future[WriteResult]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("publish on connect: %s", exc)


def _complete(future: Future[WriteResult], result: WriteResult) -> None:
    # Not contextlib.suppress: this runs for every write, and try costs nothing.
    try:  # noqa: SIM105
        future.set_result(result)
    except InvalidStateError:  # cancelled, or failed already (e.g. timed out): no change
        pass


def _fail(future: Future[WriteResult], exc: BaseException) -> None:
    try:  # noqa: SIM105
        future.set_exception(exc)
    except InvalidStateError:
        pass


def _completed(future: Future[WriteResult], result: WriteResult, ok: bool, reason: str) -> None:
    """The broker's answer to a published write: success, or the reason it refused."""
    if ok:
        _complete(future, result)
    else:
        tag = result.tag
        _fail(future, WriteError(f"{tag}: broker refused: {reason}", tag, "rejected"))
