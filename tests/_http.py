"""`kom run --http` as a subprocess for tests: start it, find its page's address, fetch."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
KOM = [sys.executable, "-m", "kom._cli"]
_URL = re.compile(r"status page on (http://\S+/)")
NETIO_PROFILE = "examples/netio-4all.toml"


def netio_inputs() -> int:
    """How many input tags the NETIO profile has (each gets a value from a state message)."""
    from kom import load

    (station,) = load(ROOT / NETIO_PROFILE).stations
    return sum(1 for tag in station.tags if tag.address is not None)


class KomRun:
    """`kom run … --http 127.0.0.1:0`: a subprocess whose stderr is collected as it comes."""

    def __init__(self, args: Sequence[str], cwd: Path = ROOT, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [*KOM, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_url(timeout)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = _URL.search(line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("kom run printed no status page address:\n" + self.stderr)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET `path`, 503 and 404 included."""
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    def json(self, path: str) -> Any:
        status, _kind, body = self.get(path)
        assert status == 200, (status, body)
        return orjson.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode

    def __enter__(self) -> KomRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
