"""The HTTP side of `kom run --http HOST:PORT` (SPEC §13), on threads of its own.

Endpoints: `/metrics` (Prometheus text), `/health` (200 or 503, JSON), `/api/tags` (the latest
update of every tag), `/api/status` and `/api/trend` (the page's data), `/` (the page) and
`/static/…` (its files, served from the package: plants have no internet). The standard
library's threading server answers each request on a thread of its own; a sampler thread
keeps line states and trends once a second. Neither ever takes a line's lock.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from .._client import Kom
from .._errors import ConfigError
from .._sinks import SinkWriter
from ._metrics import StationText, registry, scrape
from ._state import TREND_SECONDS, TagTable, Trends
from ._status import Observer, health_body, status_body, tags_body

log = logging.getLogger("kom.http")

#: Files of the page, by name under /static/, with their content types.
STATIC = {
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "LICENSE.uPlot": "text/plain; charset=utf-8",
}
#: How often the sampler looks at line states and takes trend points.
SAMPLE_SECONDS = 1.0


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6; port 0 for any free port) for `--http`."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError([f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080"])
    return host, int(port_text)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class StatusServer:
    """Serves a running `Kom`: start() binds and starts the threads, close() stops them.

    Give it the `TagTable` that was added as one of kom's callbacks (`kom.add_callback`), and
    the `SinkWriter` whose sinks /health reports (None: no sinks, as in a host process).
    """

    def __init__(
        self,
        kom: Kom,
        address: tuple[str, int],
        table: TagTable,
        writer: SinkWriter | None = None,
        *,
        trend_seconds: float = TREND_SECONDS,
    ) -> None:
        self.kom = kom
        self.writer = writer
        self.table = table
        self.trends = Trends(trend_seconds)
        self.observer = Observer(kom, table, self.trends)
        self.registry = registry(kom, writer, table)
        self.stations = StationText(kom)
        self._page = _static("index.html")
        self._files = {name: (_static(name), kind) for name, kind in STATIC.items()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        host, port = address
        # The standard library's server binds IPv4 unless told: `[::1]:9464` needs IPv6.
        server = _ServerIPv6 if ":" in host else ThreadingHTTPServer
        try:
            self._httpd = server(address, self._handler())
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise ConfigError([f"--http {shown}:{port}: {exc.strerror or exc}"]) from exc
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def __repr__(self) -> str:
        return f"<StatusServer {self.url}>"

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, name="kom-http", daemon=True),
            threading.Thread(target=self._sample, name="kom-http-sampler", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._threads:
            self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(5)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.observer.sample()
            except Exception as exc:  # the page must never take kom down
                log.exception("status sampler: %s", exc)
            self._stop.wait(SAMPLE_SECONDS)

    # -- requests -------------------------------------------------------------------------

    def respond(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        first = {k: v[0] for k, v in query.items() if v}
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, scrape(self.registry, self.stations)
        if path == "/health":
            ok, report = health_body(self.kom, self.writer)
            return (200 if ok else 503), *_json(report)
        if path == "/api/tags":
            limit = _limit(first.get("limit"))
            return 200, *_json(tags_body(self.table, first.get("match", ""), limit))
        if path == "/api/status":
            limit = _limit(first.get("limit"))
            doc = status_body(self.kom, self.writer, self.observer, first.get("match", ""), limit)
            return 200, *_json(doc)
        if path == "/api/trend":
            tag = first.get("tag", "")
            self.trends.want(tag)
            times, values = self.trends.series(tag, time.time())
            return 200, *_json({"tag": tag, "t": times, "v": values})
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self._page
        name = path.removeprefix("/static/")
        if name in self._files:
            content, kind = self._files[name]
            return 200, kind, content
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "kom"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                try:
                    status, kind, body = server.respond(parts.path, parse_qs(parts.query))
                except Exception as exc:
                    log.exception("GET %s failed: %s", self.path, exc)
                    status, kind, body = 500, "text/plain; charset=utf-8", b"internal error\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # A scraper that gave up waiting: nothing to answer, nothing to report.
                    log.debug("GET %s: the client went away", self.path)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        return Handler


class _ServerIPv6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _json(body: object) -> tuple[str, bytes]:
    return "application/json", orjson.dumps(body)


def _limit(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def serve(
    kom: Kom, writer: SinkWriter | None, address: str, *, trend_seconds: float = TREND_SECONDS
) -> StatusServer:
    """Bind `address` (`HOST:PORT`), add the status callback to `kom` and start serving.

    Call it before `kom.start()`, so that the page sees every update from the first on.
    Raises ConfigError (naming `--http`) for a malformed address or one that cannot be bound.
    """
    table = TagTable()
    server = StatusServer(kom, parse_address(address), table, writer, trend_seconds=trend_seconds)
    kom.add_callback(table)
    server.start()
    return server
