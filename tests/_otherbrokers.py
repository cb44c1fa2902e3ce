"""nats-server (MQTT listener) and RabbitMQ (MQTT plugin) processes for interop tests, each on
free loopback ports with its own configuration and data directory, removed on close."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ._broker import HOST, _which, free_port


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((HOST, port)) == 0:
                return True
        time.sleep(0.1)
    return False


class OtherBroker:
    """A broker process; `port` is its MQTT listener. `skip_reason` is set when it cannot run."""

    name = "broker"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"kom-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.skip_reason: str | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        path = self.dir / "out.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Nats(OtherBroker):
    """nats-server with JetStream (which its MQTT listener needs) and its own server_name."""

    name = "nats"

    def __init__(self) -> None:
        super().__init__()
        binary = _which("nats-server")
        if binary is None:
            self.skip_reason = "nats-server is not installed"
            return
        client_port = free_port()
        conf = self.dir / "nats.conf"
        conf.write_text(
            f"listen: {HOST}:{client_port}\n"
            f"server_name: kom_test_{self.port}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f"mqtt {{ listen: {HOST}:{self.port} }}\n"
        )
        with (self.dir / "out.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        if not _wait_port(self.port, 15, self.proc):
            self.skip_reason = f"nats-server did not start: {self.log()[-400:]}"

    def version(self) -> str:
        binary = _which("nats-server") or "nats-server"
        return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


class RabbitMQ(OtherBroker):
    """A RabbitMQ node of its own (name, ports, data) with only the MQTT plugin enabled.

    The Debian start script runs the node as the `rabbitmq` user, so its directory is handed
    to that user; without root or the binaries the tests skip.
    """

    name = "rabbitmq"

    def __init__(self) -> None:
        super().__init__()
        self.node = f"komtest{self.port}@localhost"
        binary = _which("rabbitmq-server")
        if binary is None:
            self.skip_reason = "rabbitmq-server is not installed"
            return
        if os.geteuid() != 0:
            self.skip_reason = "starting a RabbitMQ node of its own needs root (rabbitmq user)"
            return
        amqp, dist = free_port(), free_port()
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{amqp}\n"
            f"mqtt.listeners.tcp.default = {HOST}:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        for path in self.dir.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.dir / "feature_flags"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        with (self.dir / "out.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [binary], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        if not _wait_port(self.port, 60, self.proc):
            self.skip_reason = f"RabbitMQ did not start: {self.log()[-400:]}"

    def close(self) -> None:
        ctl = _which("rabbitmqctl")
        if ctl is not None and self.proc is not None and self.proc.poll() is None:
            subprocess.run(
                [ctl, "-n", self.node, "stop"], env=self.env, capture_output=True, timeout=60
            )
        super().close()
