"""`kom run --http` end to end: real HTTP requests against a running kom and a NETIO simulator."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kom import Kom
from kom.http import serve
from kom.sim import NetioSimulator

from ._broker import Mosquitto
from ._http import KOM, NETIO_PROFILE, ROOT, KomRun, netio_inputs
from ._kom import Collector, config, text_station, wait_until

pytestmark = pytest.mark.broker

PROFILE = NETIO_PROFILE
DEVICE = "netio-4All-25E0"
RECORD_KEYS = {"tag", "value", "quality", "reason", "ts", "received", "topic"}
#: Every label kom's metrics may carry: none holds a tag's value or a topic (SPEC §13).
LABELS = {"line", "station", "sink", "state", "quality", "reason", "outcome", "le"}


@pytest.fixture
def netio(broker: Mosquitto) -> Iterator[NetioSimulator]:
    """A simulated NETIO 4All publishing its state every 0.3 s to the test's broker."""
    sim = NetioSimulator("127.0.0.1", broker.port, client_id=DEVICE, period=0.3)
    sim.start()
    assert sim.wait_connected(5)
    try:
        yield sim
    finally:
        sim.stop()


def metrics(run: KomRun) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape /metrics as Prometheus would, parsed by prometheus-client's own parser."""
    status, kind, body = run.get("/metrics")
    assert status == 200
    assert kind.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("kom_"):
                assert set(sample.labels) <= LABELS, sample
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[name, frozenset(labels.items())]


def test_endpoints_of_a_running_kom(
    broker: Mosquitto, netio: NetioSimulator, tmp_path: Path
) -> None:
    """/metrics, /health, /api/tags and the page answer; health turns 503 when the broker goes."""
    db = tmp_path / "kom.db"
    args = ["run", PROFILE, "--broker", broker.address, "--sink", f"sqlite:{db}"]
    with KomRun([*args, "--http", "127.0.0.1:0"]) as run:
        inputs = netio_inputs()
        wait_until(lambda: len(run.json("/api/tags")) == inputs, 15, "every input in /api/tags")
        tags = run.json("/api/tags")
        assert [t["tag"] for t in tags] == sorted(t["tag"] for t in tags)
        assert all(set(t) >= RECORD_KEYS for t in tags)  # SPEC §9 fields, and more may follow
        voltage = next(t for t in tags if t["tag"] == "netio.voltage")
        assert voltage["quality"] == "valid"
        assert isinstance(voltage["value"], float)
        assert voltage["topic"] == f"devices/{DEVICE}/messages/events/"
        # The values move on: a later read has a later receive time.
        wait_until(
            lambda: run.json("/api/tags?match=VOLTAGE")[0]["received"] > voltage["received"],
            5,
            "a newer voltage",
        )
        out1 = sorted(t["tag"] for t in tags if "out1_" in t["tag"])
        assert len(out1) > 2
        assert [t["tag"] for t in run.json("/api/tags?match=OUT1_&limit=2")] == out1[:2]

        status, kind, body = run.get("/health")
        assert (status, kind) == (200, "application/json")
        doc = orjson.loads(body)
        assert doc["status"] == "ok"
        assert doc["reasons"] == []
        (sink,) = doc["sinks"]
        assert sink["name"] == f"sqlite:{db}"
        assert sink["ok"] is True
        assert sink["rows"] > 0

        samples = metrics(run)
        assert value(samples, "kom_messages_received_total", line="line") > 0
        assert (
            value(samples, "kom_station_messages_received_total", line="line", station="netio") > 0
        )
        assert value(samples, "kom_line_connected", line="line") == 1
        assert value(samples, "kom_station_state", line="line", station="netio", state="on") == 1
        assert value(samples, "kom_updates_total", quality="valid") >= inputs
        assert value(samples, "kom_sink_rows_total", sink=f"sqlite:{db}") > 0
        assert value(samples, "kom_sink_commit_seconds_count", sink=f"sqlite:{db}") > 0
        assert value(samples, "kom_sink_ok", sink=f"sqlite:{db}") == 1
        assert value(samples, "kom_acks_pending", line="line") >= 0
        assert ("process_resident_memory_bytes", frozenset()) in samples

        status, kind, page = run.get("/")
        assert (status, kind) == (200, "text/html; charset=utf-8")
        assert b"/static/uPlot.iife.min.js" in page
        assert b"http://" not in page  # nothing from outside: plants have no internet
        assert b"https://" not in page
        status, kind, script = run.get("/static/uPlot.iife.min.js")
        assert status == 200
        assert kind.startswith("text/javascript")
        assert b"uPlot" in script
        assert run.get("/nothing")[0] == 404

        wait_until(lambda: len(run.json("/api/trend?tag=netio.voltage")["v"]) >= 2, 10, "a trend")

        # The broker goes away: the line is down, /health says so with the reason.
        broker.stop()
        wait_until(lambda: run.get("/health")[0] == 503, 15, "health 503")
        doc = orjson.loads(run.get("/health")[2])
        assert doc["status"] == "failing"
        assert any(r.startswith("line line is ") for r in doc["reasons"]), doc
        # ... and so does the log, at the default level (warning), where the journal has it.
        assert "line line: connection lost; reconnecting" in run.stderr
        samples = metrics(run)
        assert value(samples, "kom_line_connected", line="line") == 0
        # Every input tag of the station went invalid with reason comm (SPEC §1).
        comm = value(
            samples, "kom_updates_invalid_total", line="line", station="netio", reason="comm"
        )
        assert comm == inputs
        # (Stopping, mosquitto also publishes the device's will: those count too.)
        by_reason = sum(v for k, v in samples.items() if k[0] == "kom_updates_invalid_total")
        assert value(samples, "kom_updates_total", quality="invalid") == by_reason
        status_doc = run.json("/api/status")
        assert status_doc["healthy"] is False
        assert status_doc["lines"][0]["state"] != "connected"
        voltage = next(t for t in status_doc["tags"] if t["tag"] == "netio.voltage")
        assert (voltage["reason"], voltage["detail"]) == ("comm", "station 'netio': line down")
        # ... and comes back: connected and healthy again.
        broker.restart()
        wait_until(lambda: run.get("/health")[0] == 200, 30, "health 200 again")
        assert value(metrics(run), "kom_reconnects_total", line="line") >= 1
        assert run.stop() == 0


def test_health_names_a_sink_that_cannot_write(broker: Mosquitto, netio: NetioSimulator) -> None:
    """A sink on a full device makes /health 503 with its error, and /metrics counts failures."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    args = ["run", PROFILE, "--broker", broker.address, "--sink", "jsonl:/dev/full"]
    with KomRun([*args, "--http", "127.0.0.1:0"]) as run:
        wait_until(lambda: run.get("/health")[0] == 503, 15, "health 503")
        doc = orjson.loads(run.get("/health")[2])
        (reason,) = doc["reasons"]
        assert reason.startswith("sink jsonl:/dev/full: ")
        assert "disk full" in reason
        (sink,) = doc["sinks"]
        assert sink["ok"] is False
        assert sink["failing_since"] is not None
        samples = metrics(run)
        assert value(samples, "kom_sink_ok", sink="jsonl:/dev/full") == 0
        assert value(samples, "kom_sink_failures_total", sink="jsonl:/dev/full") >= 1
        # Nothing is acknowledged that was not stored: the device's QoS 1 messages wait.
        assert value(samples, "kom_sink_rows_total", sink="jsonl:/dev/full") == 0
        run.stop()
    assert "acknowledgements held, retrying" in run.stderr


def test_http_address_errors_are_one_clear_error() -> None:
    """A malformed or taken `--http` address ends kom run with exit 2, naming the option."""
    done = subprocess.run(
        [*KOM, "run", PROFILE, "--sink", "jsonl:-", "--http", "8080"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "kom run: --http '8080': expected HOST:PORT, e.g. 127.0.0.1:8080\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*KOM, "run", PROFILE, "--sink", "jsonl:-", "--http", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert done.stderr.decode() == f"kom run: --http 127.0.0.1:{port}: Address already in use\n"


def test_status_server_binds_an_ipv6_address() -> None:
    """`--http [::1]:0` serves on IPv6 loopback, as docs/operations.md says."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    kom = Kom(config(text_station("plant/s", "s"), host="127.0.0.1", port=1), Collector())
    server = serve(kom, None, "[::1]:0")
    try:
        assert server.url.startswith("http://[::1]:")
        # kom is not started: its line is not connected, /health says so over IPv6.
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "health", timeout=10)
        assert caught.value.code == 503
        assert orjson.loads(caught.value.read())["lines"][0]["name"] == "line"
    finally:
        server.close()


def test_json_logs_name_the_line(tmp_path: Path) -> None:
    """With --log-format json every stderr line is a JSON object; a line's events carry its name."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens: connecting is refused
    done = subprocess.run(
        [
            *KOM,
            "--log-format",
            "json",
            "--log-level",
            "info",
            "run",
            PROFILE,
            "--broker",
            f"127.0.0.1:{port}",
            "--sink",
            f"sqlite:{tmp_path / 'k.db'}",
            "--duration",
            "1.5",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    docs = [orjson.loads(line) for line in done.stderr.decode().splitlines()]
    assert docs
    assert all(set(d) >= {"time", "level", "logger", "line", "station", "event"} for d in docs)
    connecting = [d for d in docs if "connecting to" in d["event"]]
    assert connecting
    assert all(d["line"] == "line" and d["level"] == "info" for d in connecting)
    assert any(d["event"].startswith("kom run: stopped") for d in docs)


def test_demo_offers_the_page(tmp_path: Path) -> None:
    """`kom demo` prints its page's address, where the NETIO tags and their trend can be seen."""
    proc = subprocess.Popen(
        [
            *KOM,
            "demo",
            "--duration",
            "8",
            "--db",
            str(tmp_path / "demo.db"),
            "--http",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 15
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            found = re.search(r"status page is on (http://\S+/)", line)
            url = found.group(1) if found else None
        assert url, "kom demo printed no page address"
        import urllib.request

        def status() -> dict[str, object]:
            with urllib.request.urlopen(url + "api/status", timeout=5) as response:
                doc: dict[str, object] = orjson.loads(response.read())
                return doc

        inputs = netio_inputs()
        wait_until(lambda: status()["tags_total"] == inputs, 15, "the NETIO tags on the page")
        doc = status()
        assert doc["lines"][0]["state"] == "connected"  # type: ignore[index]
        assert doc["trend_seconds"] == 600

        def trend() -> list[float]:
            with urllib.request.urlopen(url + "api/trend?tag=netio.voltage", timeout=5) as r:
                points: list[float] = orjson.loads(r.read())["v"]
                return points

        wait_until(lambda: len(trend()) >= 3, 10, "the voltage trend")
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()


def test_served_from_a_host_process_with_writes_by_outcome(
    broker: Mosquitto, topic_prefix: str
) -> None:
    """`kom.http.serve` on an embedded Kom: writes are counted by outcome, /health has no sinks."""
    cfg = config(
        text_station(topic_prefix),
        host=broker.address,
        name="host",
        topic_filter=f"{topic_prefix}/#",
        publish_qos=1,
    )
    kom = Kom(cfg, Collector())
    server = serve(kom, None, "127.0.0.1:0")
    try:
        kom.start()
        assert kom.wait_connected(10)
        kom.write("s.cmd", "on").result(10)
        kom.write("s.cmd", "off").result(10)
        assert kom.write("s.nothing", 1).exception(1) is not None
        assert kom.write("nobody.x", 1).exception(1) is not None
        with urllib.request.urlopen(server.url + "metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert value(samples, "kom_writes_total", line="host", outcome="completed") == 2
        assert value(samples, "kom_writes_total", line="host", outcome="not-output") == 1
        assert value(samples, "kom_writes_total", line="", outcome="not-output") == 1
        assert not [name for name, _ in samples if name.startswith("kom_sink")]
        with urllib.request.urlopen(server.url + "health", timeout=10) as response:
            doc = orjson.loads(response.read())
        assert doc["status"] == "ok"
        assert doc["sinks"] == []
    finally:
        kom.close()
        server.close()
