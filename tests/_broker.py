"""A real mosquitto process for integration tests, on free loopback ports with its own config.

Each `Mosquitto` owns a temporary directory holding its config, log, password file, certificates
and persistence database; `close()` removes it. Nothing here touches the system's broker on
port 1883 or any non-loopback address.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
# After stop(), the kernel may hold the port for a moment; restart() retries binding this long.
RESTART_BIND_TIMEOUT = 5.0
# Fresh ports come from bind(0) and may be taken by someone else before mosquitto binds them.
START_ATTEMPTS = 3

# "Error: Address already in use" (MQTT listener); libwebsockets says it its own way.
_BIND_FAILURE = re.compile(r"in use|Unable to create websockets listener")

_RUNNING = re.compile(r"mosquitto version \S+ running")

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


class BrokerError(RuntimeError):
    """The broker process could not be started or controlled; the message carries the log tail."""


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def mosquitto_binary() -> str | None:
    """Return the path of the mosquitto binary (PATH, then /usr/sbin and friends), or None."""
    return _which("mosquitto")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _websockets_bind_host() -> str:
    # mosquitto 2.0.11 ignores an IP address on a websockets listener and binds every interface
    # (eclipse-mosquitto/mosquitto#3045, fixed in 2.0.12); libwebsockets does honour an
    # interface name, so name the loopback interface when the system has one.
    try:
        socket.if_nametoindex("lo")
    except OSError:
        return HOST
    return "lo"


class Mosquitto:
    """A mosquitto broker process on a free 127.0.0.1 port, configured for one test.

    Options: `tls` serves the MQTT listener (and the websockets one) over TLS with a fresh trustme
    CA and a server certificate for localhost and 127.0.0.1; `require_certificate` also demands
    a client certificate (`client_cert_file`, `client_key_file` hold one the CA signed). `users`
    maps user names to passwords and turns anonymous access off. `websockets` adds a websockets
    listener on `ws_port`. `persistence` keeps a database in the temporary directory, saved on
    `stop()` and every `autosave_interval` seconds. `extra` lines are appended to the main
    listener's section of the config, so listener options apply to it. With `start=False` the
    files are written but no process runs until `start()`.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        require_certificate: bool = False,
        users: dict[str, str] | None = None,
        websockets: bool = False,
        persistence: bool = False,
        autosave_interval: int | None = None,
        extra: list[str] | None = None,
        start: bool = True,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto binary not found on PATH or in /usr/sbin")
        if require_certificate and not tls:
            raise ValueError("require_certificate needs tls=True")
        self._binary = binary
        self._tls = tls
        self._require_certificate = require_certificate
        self._users = dict(users or {})
        self._websockets = websockets
        self._persistence = persistence
        self._autosave_interval = autosave_interval
        self._extra = list(extra or [])
        self._dir = Path(tempfile.mkdtemp(prefix="kom-mosquitto-"))
        self._conf = self._dir / "mosquitto.conf"
        self._log = self._dir / "mosquitto.log"
        self._out = self._dir / "mosquitto.out"
        self._port = 0
        self._ws_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # The finalizer must not hold `self`; it sees the current process through this list.
        self._proc_box: list[subprocess.Popen[bytes]] = []
        self._paused = False
        self._closed = False
        # Whatever a test does, the process must not outlive the interpreter.
        self._finalizer = weakref.finalize(self, _cleanup, self._proc_box, self._dir)
        self._cert_files: dict[str, Path] = {}
        try:
            if tls:
                self._make_certificates()
            if self._users:
                self._write_password_file()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.address} {state}>"

    # -- addresses ------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the broker listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The MQTT (or MQTT over TLS) listener's port."""
        return self._port

    @property
    def ws_port(self) -> int:
        """The websockets listener's port; only with `websockets=True`."""
        if self._ws_port is None:
            raise AttributeError("this broker has no websockets listener (websockets=False)")
        return self._ws_port

    @property
    def address(self) -> str:
        """`host:port` of the MQTT listener."""
        return f"{HOST}:{self._port}"

    @property
    def directory(self) -> Path:
        """The temporary directory holding config, log, certificates and persistence."""
        return self._dir

    @property
    def ca_file(self) -> str:
        """PEM file of the CA that signed the server and client certificates."""
        return str(self._cert_file("ca"))

    @property
    def client_cert_file(self) -> str:
        """PEM file of a client certificate signed by `ca_file`."""
        return str(self._cert_file("client_cert"))

    @property
    def client_key_file(self) -> str:
        """PEM file of the private key of `client_cert_file`."""
        return str(self._cert_file("client_key"))

    @property
    def running(self) -> bool:
        """Whether the process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id, while a process exists."""
        return None if self._proc is None else self._proc.pid

    def _cert_file(self, name: str) -> Path:
        if name not in self._cert_files:
            raise AttributeError(f"{name}: this broker has no certificates (tls=False)")
        return self._cert_files[name]

    # -- setup ----------------------------------------------------------------------------------

    def _make_certificates(self) -> None:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        client = ca.issue_cert("kom-test-client", common_name="kom-test-client")
        files = {
            "ca": self._dir / "ca.pem",
            "server_cert": self._dir / "server.pem",
            "server_key": self._dir / "server.key",
            "client_cert": self._dir / "client.pem",
            "client_key": self._dir / "client.key",
        }
        ca.cert_pem.write_to_path(str(files["ca"]))
        server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(str(files["server_cert"]), append=True)
        server.private_key_pem.write_to_path(str(files["server_key"]))
        client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
        client.private_key_pem.write_to_path(str(files["client_key"]))
        self._cert_files = files

    def _write_password_file(self) -> None:
        tool = _which("mosquitto_passwd")
        if tool is None:
            raise BrokerError("mosquitto_passwd not found; it is needed for users=")
        path = self._dir / "passwd"
        for index, (user, password) in enumerate(self._users.items()):
            # -c creates the file; later users are added to it.
            create = ["-c"] if index == 0 else []
            result = subprocess.run(
                [tool, *create, "-b", str(path), user, password],
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                raise BrokerError(
                    f"mosquitto_passwd failed for user {user!r}: "
                    f"{result.stderr.decode(errors='replace').strip()}"
                )

    def _tls_lines(self) -> list[str]:
        if not self._tls:
            return []
        lines = [
            f"cafile {self._cert_files['ca']}",
            f"certfile {self._cert_files['server_cert']}",
            f"keyfile {self._cert_files['server_key']}",
        ]
        if self._require_certificate:
            lines.append("require_certificate true")
        return lines

    def _config_text(self) -> str:
        lines = [
            "# written by tests/_broker.py",
            f"log_dest file {self._log}",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto 2 drops to user "mosquitto", which cannot write our tmp dir.
            lines.append("user root")
        if self._users:
            lines += ["allow_anonymous false", f"password_file {self._dir / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if self._persistence:
            persistence_dir = self._dir / "persistence"
            persistence_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {persistence_dir}/"]
            if self._autosave_interval is not None:
                lines.append(f"autosave_interval {self._autosave_interval}")
        else:
            lines.append("persistence false")
        lines += ["", f"listener {self._port} {HOST}", "protocol mqtt", *self._tls_lines()]
        lines += self._extra
        if self._ws_port is not None:
            lines += [
                "",
                f"listener {self._ws_port} {_websockets_bind_host()}",
                "protocol websockets",
                *self._tls_lines(),
            ]
        return "\n".join(lines) + "\n"

    # -- process control ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker on fresh free ports and wait until it accepts connections."""
        if self._closed:
            raise BrokerError("this broker is closed")
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        for attempt in range(START_ATTEMPTS):
            self._port = free_port()
            self._ws_port = free_port() if self._websockets else None
            if self._launch(deadline=time.monotonic() + START_TIMEOUT):
                return
            if attempt == START_ATTEMPTS - 1:
                break
        raise BrokerError(f"mosquitto could not bind a free port:\n{self._log_tail()}")

    def restart(self) -> None:
        """Start again on the same port(s), config and persistence directory."""
        if self._closed:
            raise BrokerError("this broker is closed")
        if self.running:
            raise BrokerError(f"{self!r} is still running; stop() or kill() it first")
        deadline = time.monotonic() + RESTART_BIND_TIMEOUT
        while not self._launch(deadline=time.monotonic() + START_TIMEOUT):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto could not bind port {self._port} again:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _launch(self, *, deadline: float) -> bool:
        """Start one process; True once it listens, False if its port was in use."""
        self._conf.write_text(self._config_text())
        log_size = self._log.stat().st_size if self._log.exists() else 0
        with self._out.open("ab") as out:
            proc = subprocess.Popen(
                [self._binary, "-c", str(self._conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        self._proc_box[:] = [proc]
        self._paused = False
        ports = [self._port] if self._ws_port is None else [self._port, self._ws_port]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                self._proc_box.clear()
                if _BIND_FAILURE.search(self._new_log_text(log_size)):
                    return False
                raise BrokerError(
                    f"mosquitto exited with status {proc.returncode} on start:\n{self._log_tail()}"
                )
            # A port someone else holds accepts our probe while mosquitto fails to bind it, so
            # also wait for mosquitto 2's "running" line, logged once every listener is open.
            if (
                _RUNNING.search(self._new_log_text(log_size))
                and all(_port_accepts(port) for port in ports)
                and proc.poll() is None
            ):
                return True
            time.sleep(0.02)
        self._terminate(signal.SIGKILL)
        raise BrokerError(
            f"mosquitto did not accept connections on {ports} within {START_TIMEOUT} s:\n"
            f"{self._log_tail()}"
        )

    def _new_log_text(self, since: int) -> str:
        text = ""
        for path, offset in ((self._log, since), (self._out, 0)):
            with contextlib.suppress(OSError), path.open("rb") as file:
                file.seek(offset)
                text += file.read().decode(errors="replace")
        return text

    def _terminate(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                # A stopped process holds SIGTERM until continued (SIGKILL would not wait).
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False
        self._proc = None
        self._proc_box.clear()

    def stop(self) -> None:
        """Stop gracefully with SIGTERM (persistence is saved) and wait for the process to end."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Kill with SIGKILL: nothing is saved, connections die without a DISCONNECT."""
        self._terminate(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open but the broker says nothing."""
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"{self!r} is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused process go on with SIGCONT."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Kill the process if any (resuming it first) and remove the temporary directory."""
        if self._closed:
            return
        self._closed = True
        self._terminate(signal.SIGKILL)
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- log ------------------------------------------------------------------------------------

    def log(self) -> str:
        """The broker's log so far, across restarts (mosquitto appends to the same file)."""
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 20) -> str:
        """The end of the log, then the end of what mosquitto printed before its log was open."""
        tail = self.log().splitlines()[-lines:]
        with contextlib.suppress(OSError):
            printed = [
                line
                for line in self._out.read_text(errors="replace").splitlines()
                if "should not be run as root" not in line
            ]
            if printed:
                tail += ["--- stdout/stderr ---", *printed[-lines:]]
        return "\n".join(tail)

    def connections(self, client_id: str) -> int:
        """How many times a client with this id completed CONNECT, per the log."""
        pattern = re.compile(rf"New client connected from \S+ as {re.escape(client_id)} \(")
        return sum(1 for line in self.log().splitlines() if pattern.search(line))

    def wait_for_log(self, text: str, timeout: float = 5.0, count: int = 1) -> None:
        """Wait until `text` occurs at least `count` times in the log; raise TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{text!r} not in the log within {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)


class BrokerFactory(Protocol):
    """The `broker_factory` fixture: makes a started `Mosquitto` with these options."""

    def __call__(
        self,
        *,
        tls: bool = ...,
        require_certificate: bool = ...,
        users: dict[str, str] | None = ...,
        websockets: bool = ...,
        persistence: bool = ...,
        autosave_interval: int | None = ...,
        extra: list[str] | None = ...,
        start: bool = ...,
    ) -> Mosquitto: ...


def _cleanup(box: list[subprocess.Popen[bytes]], directory: Path) -> None:
    for proc in box:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    box.clear()
    shutil.rmtree(directory, ignore_errors=True)
