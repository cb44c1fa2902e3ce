"""A TCP fault proxy on loopback: put it between a client and a broker, then break the path.

One background thread runs a selector loop over every socket, so faults are applied by the same
thread that moves the bytes and a control call returns only once its fault is in force.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import ipaddress
import selectors
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
CHUNK = 65536
# Stop reading from one side while this much is queued for the other (back-pressure).
MAX_QUEUED = 1 << 20
CONTROL_TIMEOUT = 5.0


class Mode(enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


def _loopback_address(host: str) -> str:
    if host == "localhost":
        return HOST
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"target host {host!r}: expected a loopback IP address") from None
    if not address.is_loopback:
        raise ValueError(f"target host {host!r}: expected a loopback IP address")
    return str(address)


def _abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Direction:
    """Bytes read from `source`, each chunk due for `sink` at its arrival time plus latency."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        self.source = source
        self.sink = sink
        self.queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self.queued = 0
        self.eof = False  # source said FIN; pass it on once the queue drains
        self.shut = False

    def due(self, now: float) -> bool:
        return bool(self.queue) and self.queue[0][0] <= now

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None


class _Pipe:
    """One proxied connection: the client's socket, the upstream socket and both directions."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.up = _Direction(client, upstream)
        self.down = _Direction(upstream, client)

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return (self.client, self.upstream)

    def abort(self) -> None:
        _abort(self.client)
        _abort(self.upstream)


class FaultProxy:
    """A loopback TCP proxy to `target_host:target_port` whose faults can be switched at run time.

    Clients connect to `host:port`. `pass_through()` forwards (the default), `latency(s)` forwards
    each chunk `s` seconds after it arrived, `blackhole()` keeps every socket open but moves no
    byte either way (held bytes flow again after `pass_through()`), `refuse()` closes new
    connections at once, and `reset()` aborts every current connection with RST. It only ever
    connects to the target, which must be a loopback address.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (_loopback_address(target_host), target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._lock = threading.Lock()
        self._commands: list[tuple[str, float, threading.Event]] = []
        self._mode = Mode.PASS
        self._latency = 0.0
        self._pipes: list[_Pipe] = []
        self._accepted = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy:{self._port}")
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.address} -> {self._target[0]}:{self._target[1]} {self._mode.value}>"
        )

    @property
    def host(self) -> str:
        """The loopback address clients connect to."""
        return HOST

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self._port

    @property
    def address(self) -> str:
        """`host:port` clients connect to."""
        return f"{HOST}:{self._port}"

    @property
    def mode(self) -> Mode:
        """The fault in force."""
        return self._mode

    @property
    def accepted(self) -> int:
        """How many connections the proxy has accepted (refused ones included)."""
        return self._accepted

    @property
    def active(self) -> int:
        """How many proxied connections are open now."""
        return len(self._pipes)

    # -- control (any thread) -------------------------------------------------------------------

    def _command(self, name: str, value: float = 0.0) -> None:
        done = threading.Event()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            self._commands.append((name, value, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if not done.wait(CONTROL_TIMEOUT):
            raise TimeoutError(f"{self!r}: the proxy thread did not apply {name!r}")

    def pass_through(self) -> None:
        """Forward both ways without delay; held bytes flow again."""
        self._command("pass")

    def latency(self, seconds: float) -> None:
        """Forward both ways, each chunk `seconds` after it arrived (per direction)."""
        if seconds < 0:
            raise ValueError(f"latency: expected seconds >= 0, got {seconds}")
        self._command("latency", seconds)

    def blackhole(self) -> None:
        """Keep every socket open but forward nothing either way, on old and new connections."""
        self._command("blackhole")

    def refuse(self) -> None:
        """Close new connections at once (with RST); open ones go on as before."""
        self._command("refuse")

    def reset(self) -> None:
        """Abort every current connection with RST; the mode stays and new ones are accepted."""
        self._command("reset")

    def close(self) -> None:
        """Stop the proxy thread and close every socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join(CONTROL_TIMEOUT)
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the proxy thread -----------------------------------------------------------------------

    def _apply(self, name: str, value: float) -> None:
        if name == "pass":
            self._mode, self._latency = Mode.PASS, 0.0
        elif name == "latency":
            self._mode, self._latency = Mode.PASS, value
        elif name == "blackhole":
            self._mode = Mode.BLACKHOLE
        elif name == "refuse":
            self._mode = Mode.REFUSE
        elif name == "reset":
            for pipe in self._pipes:
                pipe.abort()
            self._pipes.clear()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    commands, self._commands = self._commands, []
                    closed = self._closed
                for name, value, done in commands:
                    self._apply(name, value)
                    done.set()
                if closed:
                    return
                self._step()
        finally:
            for pipe in self._pipes:
                pipe.abort()
            self._pipes.clear()
            self._listener.close()
            self._wake_r.close()

    def _step(self) -> None:
        now = time.monotonic()
        interest: dict[socket.socket, int] = {
            self._listener: selectors.EVENT_READ,
            self._wake_r: selectors.EVENT_READ,
        }
        moving = self._mode is not Mode.BLACKHOLE
        timeout: float | None = None
        for pipe in self._pipes:
            for direction in (pipe.up, pipe.down):
                if moving and not direction.eof and direction.queued < MAX_QUEUED:
                    interest[direction.source] = (
                        interest.get(direction.source, 0) | selectors.EVENT_READ
                    )
                if moving and direction.due(now):
                    interest[direction.sink] = (
                        interest.get(direction.sink, 0) | selectors.EVENT_WRITE
                    )
                due = direction.next_due()
                if moving and due is not None and due > now:
                    timeout = due - now if timeout is None else min(timeout, due - now)
        # A fresh poll set each round: sockets closed by a fault never linger in it.
        with selectors.PollSelector() as selector:
            for sock, events in interest.items():
                selector.register(sock, events)
            ready = selector.select(timeout)
        for key, events in ready:
            ready_sock = key.fileobj
            if ready_sock is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif ready_sock is self._listener:
                self._accept()
            else:
                assert isinstance(ready_sock, socket.socket)
                self._service(ready_sock, events)
        self._pipes = [pipe for pipe in self._pipes if not self._finished(pipe)]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._accepted += 1
        if self._mode is Mode.REFUSE:
            _abort(client)
            return
        try:
            # Loopback connects complete (or fail) at once; a short timeout keeps the loop alive.
            upstream = socket.create_connection(self._target, timeout=1.0)
        except OSError:
            _abort(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pipes.append(_Pipe(client, upstream))

    def _service(self, sock: socket.socket, events: int) -> None:
        for pipe in self._pipes:
            if sock not in pipe.sockets():
                continue
            for direction in (pipe.up, pipe.down):
                if events & selectors.EVENT_READ and direction.source is sock:
                    self._read(pipe, direction)
                if events & selectors.EVENT_WRITE and direction.sink is sock:
                    self._write(pipe, direction)
            return

    def _read(self, pipe: _Pipe, direction: _Direction) -> None:
        if direction.eof or direction.source.fileno() < 0:
            return
        try:
            data = direction.source.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # The peer reset its side: pass the reset on to the other side.
            pipe.abort()
            return
        if not data:
            direction.eof = True
            self._shut_if_drained(direction)
            return
        direction.queue.append((time.monotonic() + self._latency, memoryview(data)))
        direction.queued += len(data)

    def _write(self, pipe: _Pipe, direction: _Direction) -> None:
        now = time.monotonic()
        while direction.due(now) and direction.sink.fileno() >= 0:
            due, chunk = direction.queue[0]
            try:
                sent = direction.sink.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pipe.abort()
                return
            direction.queued -= sent
            if sent < len(chunk):
                direction.queue[0] = (due, chunk[sent:])
                return
            direction.queue.popleft()
        self._shut_if_drained(direction)

    @staticmethod
    def _shut_if_drained(direction: _Direction) -> None:
        if direction.eof and not direction.queue and not direction.shut:
            direction.shut = True
            with contextlib.suppress(OSError):
                direction.sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _finished(pipe: _Pipe) -> bool:
        if pipe.client.fileno() < 0 or pipe.upstream.fileno() < 0:
            pipe.abort()
            return True
        if pipe.up.shut and pipe.down.shut:
            pipe.client.close()
            pipe.upstream.close()
            return True
        return False
