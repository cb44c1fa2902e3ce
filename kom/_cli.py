"""The command line: check, route, run, write, sim, discover, demo (SPEC §9, §14)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs
import orjson

from ._address import Kind, format_json_address
from ._config import Config, LineConfig, StationConfig, TagConfig, load
from ._errors import ConfigError, KomError, SinkError, WriteError
from ._model import Update
from ._router import literal_prefix
from ._topic import TopicFilter, overlapping

log = logging.getLogger("kom")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: The reader of standard output went away (`kom check FILE | head -5`): the status a shell
#: gives a program that SIGPIPE ended (128 + 13), without the signal itself, which would
#: also end `kom run` when a broker's socket breaks.
EXIT_PIPE = 141


class UsageError(KomError, ValueError):
    """A command-line argument was refused: one line on stderr, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from ._logs import configure

    configure(args.log_level, args.log_format, sys.stderr)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"kom: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SinkError as exc:
        # A sink that cannot open (a full disk, a read-only directory): one line, exit 2
        # before any line connects; a service manager restarts kom once it can write.
        print(f"kom: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"kom {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KomError as exc:
        print(f"kom: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE


def _quiet_stdout() -> None:
    """Point standard output at /dev/null: the interpreter's last flush finds no reader either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kom", description="MQTT client driver for SCADA systems and historians"
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object a line"
    )
    sub = p.add_subparsers(metavar="COMMAND", dest="command")

    c = sub.add_parser("check", help="validate a configuration and print its routing table")
    c.add_argument("config")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("route", help="explain where a topic goes and what its tags would read")
    r.add_argument("config")
    r.add_argument("topic")
    given = r.add_mutually_exclusive_group()
    given.add_argument("--payload", default="", help="the message payload (text)")
    given.add_argument(
        "--payload-file", help="read the payload's bytes from this file (- for stdin): binary data"
    )
    r.add_argument("--line", help="the line to route on (default: the first)")
    r.add_argument("--qos", type=int, default=0, choices=[0, 1, 2])
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_route)

    run = sub.add_parser("run", help="run every line of a configuration into historian sinks")
    run.add_argument("config")
    run.add_argument(
        "--sink",
        action="append",
        help="sqlite:PATH (default sqlite:kom.db), jsonl:-, jsonl:PATH or "
        "postgresql://USER@HOST[:PORT]/DB[?table=NAME]; several: a batch is acknowledged "
        "when every sink has stored it",
    )
    run.add_argument("--broker", help="HOST[:PORT] replacing every line's host")
    run.add_argument(
        "--instance",
        help="NAME of this instance: each line's client id gets -NAME (several instances "
        "sharing a $share/GROUP/FILTER subscription)",
    )
    run.add_argument("--watch", action="store_true", help="show a live table of tags")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument(
        "--http", metavar="HOST:PORT", help="serve /metrics, /health, /api/tags and a status page"
    )
    run.set_defaults(func=cmd_run)

    w = sub.add_parser("write", help="write one output tag and wait for its completion")
    w.add_argument("config")
    w.add_argument("tag", help="station.tag")
    w.add_argument("value")
    w.add_argument("--broker", help="HOST[:PORT] replacing the line's host")
    w.add_argument("--timeout", type=float, default=10.0)
    w.set_defaults(func=cmd_write)

    sim = sub.add_parser("sim", help="device simulators")
    simsub = sim.add_subparsers(metavar="DEVICE")
    n = simsub.add_parser("netio", help="a simulated NETIO 4All power strip")
    n.add_argument("--broker", default="127.0.0.1:1883")
    n.add_argument("--id", default="netio-4All-25E0")
    n.add_argument("--mode", default="generic", choices=["generic", "flex"])
    n.add_argument("--outputs", type=int, default=4)
    n.add_argument(
        "--period", type=float, default=1.0, help="update period in seconds; 0: on change only"
    )
    n.add_argument("--inputs", type=int, default=2, help="digital inputs with S0 counters (0..8)")
    n.add_argument("--duration", type=float)
    n.add_argument("--verbose", action="store_true")
    n.set_defaults(func=cmd_sim_netio)
    spb = simsub.add_parser("sparkplug", help="a simulated Sparkplug B edge node with two devices")
    spb.add_argument("--broker", default="127.0.0.1:1883")
    spb.add_argument("--group", default="plant")
    spb.add_argument("--node", default="edge1")
    spb.add_argument("--period", type=float, default=1.0)
    spb.add_argument("--duration", type=float)
    spb.add_argument("--verbose", action="store_true")
    spb.set_defaults(func=cmd_sim_sparkplug)

    disc = sub.add_parser(
        "discover", help="list the Sparkplug B nodes, devices and metrics seen in BIRTHs"
    )
    disc.add_argument("config")
    disc.add_argument("--seconds", type=float, default=10.0, help="how long to listen")
    disc.add_argument("--broker", help="HOST[:PORT] replacing every line's host")
    disc.set_defaults(func=cmd_discover)

    d = sub.add_parser("demo", help="broker + simulated NETIO + kom into SQLite, on this machine")
    d.add_argument("--duration", type=float, default=20.0)
    d.add_argument("--db", default="kom-demo.db")
    d.add_argument("--plain", action="store_true", help="print lines instead of the live table")
    d.add_argument(
        "--sparkplug", action="store_true", help="a Sparkplug B edge node instead of the NETIO"
    )
    d.add_argument(
        "--http",
        metavar="HOST:PORT",
        default="127.0.0.1:8765",
        help="the status page's address (default 127.0.0.1:8765, another free port if taken; "
        "'off' for none)",
    )
    d.set_defaults(func=cmd_demo)
    return p


# -- check ------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from ._advice import config_warnings

    config = load(args.config)
    for warning in config_warnings(config):
        print(f"kom: warning: {warning}", file=sys.stderr)
    print(
        f"{args.config}: OK — {len(config.lines)} line(s), {len(config.stations)} station(s), "
        f"{sum(len(s.tags) for s in config.stations)} tag(s)"
    )
    for line in config.lines:
        _print_line(line)
        stations = config.stations_of(line.name)
        for station in stations:
            _print_station(station)
        print("  routing (first rule that applies wins):")
        for row in routing_table(stations):
            print(f"    {row}")
        for a, b in overlapping(list(line.topic_filters)):
            print(
                f"  warning: line {line.name}: topic filters {a!r} and {b!r} overlap: a broker "
                "that sends a copy for each matching subscription makes kom store such a "
                "message twice (not counted as a duplicate)"
            )
    return EXIT_OK


def _print_line(line: LineConfig) -> None:
    hosts = ", ".join(str(e) for e in line.endpoints)
    cid = f"{line.client_id!r}" + (" (derived)" if line.client_id_derived else "")
    if line.client_id == "":
        cid = "'' (broker-assigned: clean session forced)"
    print(
        f"line {line.name}: {hosts} {line.transport}{' TLS' if line.tls else ''} "
        f"MQTT {line.protocol}"
    )
    print(
        f"  client id {cid}, clean session {line.effective_clean_session}, "
        f"keep alive {line.keep_alive} s, "
        f"ping {line.ping_interval:g} s, reply timeout {line.reply_timeout:g} s"
    )
    print(
        f"  subscribe {', '.join(_filter_text(f.text) for f in line.topic_filters)} "
        f"(QoS {line.subscribe_qos}); "
        f"publish QoS {line.publish_qos}{' retained' if line.publish_retain else ''}; "
        f"payload {line.payload_type}"
    )
    if line.sparkplug_host_id:
        print(f"  sparkplug host application {line.sparkplug_host_id!r} (STATE, SPEC §14)")
    options = [
        name
        for name, on in (
            ("only changes", line.publish_only_changes),
            ("current values on connect", line.publish_on_connect),
        )
        if on
    ]
    if options:
        print(f"  outputs publish {' and '.join(options)}")
    bounds = _time_bounds(line.max_future, line.max_past)
    if bounds:  # SPEC §16: the stations' default, shown where they are set
        print(f"  source times refused {' or '.join(bounds)}")


def _filter_text(text: str) -> str:
    """A filter as `kom check` lists it: quoted when a comma or blank would split it."""
    return repr(text) if "," in text or text != text.strip() else text


def _time_bounds(max_future: float | None, max_past: float | None) -> list[str]:
    """SPEC §16 in words: how far a source time may be from the receive time."""
    out = []
    if max_future is not None:
        out.append(f"more than {max_future:g} s ahead (max_future)")
    if max_past is not None:
        out.append(f"more than {max_past:g} s behind (max_past)")
    return out


def _print_station(station: StationConfig) -> None:
    will = f", will {station.will_topic!r}" if station.will_topic else ""
    # SPEC §16 and the station's own time zone, when it has them.
    times = [
        f"{key.replace('_', ' ')} {value:g} s"
        for key, value in (
            ("stale_after", station.stale_after),
            ("max_future", station.max_future),
            ("max_past", station.max_past),
        )
        if value is not None
    ]
    if station.time_zone is not None:
        times.append(f"time zone {station.time_zone.text}")
    extra = "".join(f", {t}" for t in times)
    print(f"  station {station.name} [{station.mode}] address {station.address!r}{will}{extra}")
    for tag in station.tags:
        where = _tag_sources(tag)
        unit = f" [{tag.unit}]" if tag.unit else ""
        print(f"    {tag.name:<24} {tag.type.value:<5} {where}{unit}")
        binary = tag.address.binary if tag.address else None
        if binary is not None:  # SPEC §15: what a BIN= address reads, in words
            print(
                f"    {'':<24} {'':<5} = {binary.describe(tag.encoding or 'base64', _source(tag))}"
            )


def _tag_sources(tag: TagConfig) -> str:
    """What `kom check` shows of a tag: its address, its publish template and own options."""
    parts = [tag.address.text] if tag.address else []
    if tag.publish is not None:
        own = [
            f"{name} = {str(value).lower()}"
            for name, value in (
                ("only_changes", tag.publish.only_changes),
                ("on_connect", tag.publish.on_connect),
            )
            if value is not None
        ]
        parts.append(f"publish {tag.publish.topic}" + (f" ({', '.join(own)})" if own else ""))
    if tag.confirm is not None:  # SPEC §11 confirmed writes
        confirm = tag.confirm
        by = f" of {confirm.tag}" if confirm.tag else ""
        if confirm.how == "response":
            by = f" on {confirm.response_topic or 'kom/<client id>/response'}"
        within = "reply_timeout" if confirm.timeout is None else f"{confirm.timeout:g} s"
        parts.append(f"confirm {confirm.how}{by} within {within}")
    return ", ".join(parts)


def routing_table(stations: Sequence[StationConfig]) -> list[str]:
    """The routing rules of one line's stations in the order SPEC §3 applies them."""
    # SPEC §14: spBv1.0/ messages go by group, node and device, before the rules of §3.
    rows = [f"spb    {s.sparkplug!r} -> {s.name}" for s in stations if s.sparkplug]
    stations = [s for s in stations if not s.sparkplug]
    rows += [f"will   {s.will_topic!r} -> {s.name}" for s in stations if s.will_topic]
    rows += [f"all    '#' -> {s.name}" for s in stations if s.address == "#"]
    rows += [f"exact  {s.address!r} -> {s.name}" for s in stations if s.address not in ("#", ".*")]
    regexes = sorted(
        (s for s in stations if s.regex is not None and literal_prefix(s.address) != s.address),
        key=lambda s: s.address,
        reverse=True,
    )
    rows += [f"regex  {s.address!r} -> {s.name}" for s in regexes]
    rows += [f"other  '.*' -> {s.name}" for s in stations if s.address == ".*"]
    return rows


# -- route ------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace) -> int:
    from ._core import LineCore
    from ._sinks import record
    from ._station import Message

    config = load(args.config)
    try:
        line = config.line(args.line) if args.line else config.lines[0]
    except KeyError:
        names = ", ".join(repr(line.name) for line in config.lines)
        raise UsageError(
            f"--line {args.line!r}: no such line in {args.config} (lines: {names})"
        ) from None
    core = LineCore(line, config.stations_of(line.name))
    core.connected(1)
    now = datetime.now(UTC)
    payload = _payload(args)
    processed = core.process(Message(args.topic, payload, now, args.qos, 1 if args.qos else 0))
    station = processed.station.name if processed.station else None
    rule = processed.route.rule.value
    if args.json:
        out = {"station": station, "rule": rule, "updates": [record(u) for u in processed.updates]}
        sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
        return EXIT_OK
    print(f"line {line.name}: {args.topic!r} -> {station or 'nobody'} (rule: {rule})")
    if processed.route.groups:
        print("  groups: " + ", ".join(f"{k}={v!r}" for k, v in processed.route.groups.items()))
    units = {f"{s.name}.{t.name}": t.unit for s in config.stations for t in s.tags}
    notes = binary_notes(processed.station.config, payload) if processed.station else {}
    for u in processed.updates:
        print("  " + describe(u, units.get(u.tag)))
        if u.tag in notes:
            print(f"      read {notes[u.tag]}")
    return EXIT_OK


def _source(tag: TagConfig) -> str:
    """Where a BIN= tag's bytes come from, in words."""
    binary = tag.address.binary if tag.address else None
    if binary is None or binary.source is None:
        return "the payload"
    return f"the JSON field {format_json_address(binary.source)}"


def _payload(args: argparse.Namespace) -> bytes:
    """The payload `kom route` routes: `--payload` text, or the bytes of `--payload-file`."""
    if args.payload_file is None:
        return bytes(args.payload.encode("utf-8", "surrogateescape"))
    if args.payload_file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.payload_file).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"--payload-file {args.payload_file!r}: cannot read it: {exc.strerror or exc}"
        ) from exc


def binary_notes(station: StationConfig, payload: bytes) -> dict[str, str]:
    """The bytes each BIN= tag of `station` reads from `payload`, by full tag name (SPEC §15)."""
    from ._address import MISSING
    from ._binary import trace
    from ._lenient import loads as lenient_json

    notes: dict[str, str] = {}
    doc: object = MISSING
    for tag in station.tags:
        binary = tag.address.binary if tag.address else None
        if binary is None or tag.address is None:
            continue
        if binary.source is None:
            raw: object = payload
        else:
            if doc is MISSING:
                try:
                    doc = lenient_json(payload)
                except orjson.JSONDecodeError:
                    return notes
            raw = tag.address.read(doc) if tag.address.read else MISSING
            if raw is MISSING:
                continue
        notes[f"{station.name}.{tag.name}"] = trace(binary, tag.encoding or "base64", raw)
    return notes


def describe(update: Update, unit: str | None = None) -> str:
    from ._sinks import record

    rec = record(update)
    if update.valid:
        return (
            f"{update.tag} = {rec['value']!r}{' ' + unit if unit else ''}  valid  (ts {rec['ts']})"
        )
    return f"{update.tag} = null  invalid: {update.reason}  {update.detail or ''}".rstrip()


# -- run --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ._client import Kom, tune_gc
    from ._scaleout import share_warnings, with_instance
    from ._sinks import SinkWriter, open_sink

    config = load(args.config)
    tune_gc()
    if args.broker:
        config = with_broker(config, args.broker)
    if args.instance is not None:
        try:
            config = with_instance(config, args.instance)
        except ConfigError as exc:  # a bad --instance: one line, as for --sink
            raise UsageError("; ".join(exc.errors)) from exc
    for warning in share_warnings(config):
        log.warning("%s", warning)
    sinks = []
    for url in args.sink or ["sqlite:kom.db"]:
        try:
            sinks.append(open_sink(url))
        except (OSError, sqlite3.Error, ConfigError) as exc:
            for sink in sinks:
                sink.close()
            if isinstance(exc, ConfigError):  # its one error already names the --sink
                raise UsageError("; ".join(exc.errors)) from exc
            raise UsageError(f"--sink {url!r}: cannot open it: {exc}") from exc
    writer = SinkWriter(sinks)
    # The sinks write on the dispatcher thread, so that the lines read on meanwhile (SQLite
    # lets go of the interpreter lock while it inserts) and batches merge into transactions.
    kom = Kom(config, writer, iterate=False, inline=False)
    status = None
    if args.http:
        from .http import serve

        try:
            status = serve(kom, writer, args.http)
        except ConfigError as exc:  # its one error already names --http
            writer.close()
            raise UsageError("; ".join(exc.errors)) from exc
        log.warning("kom run: status page on %s (/metrics, /health, /api/tags)", status.url)
    stop = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, frame: object) -> None:
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        reload_requested.set()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    view = None
    if args.watch:
        from ._watch import LiveView

        view = LiveView(kom, title=f"kom run {args.config}")
        kom.add_callback(view)
    kom.start()
    log.warning("kom run: %d line(s), sinks %s", len(config.lines), ", ".join(map(repr, sinks)))
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        if view is not None:
            from rich.live import Live

            with Live(view.render(), refresh_per_second=4, screen=False) as live:
                while _running(stop, deadline, writer.ended):
                    _maybe_reload(reload_requested, kom, args)
                    live.update(view.render())
        else:
            while _running(stop, deadline, writer.ended):
                _maybe_reload(reload_requested, kom, args)
    finally:
        if writer.ended.is_set():
            # A sink that can never write again holds its batch on the dispatcher: close the
            # lines first (nothing of that batch is acknowledged), then let the batch go.
            for line in kom.lines.values():
                line.close()
            writer.close()
            kom.close()
        else:
            kom.close()
            writer.close()
        if status is not None:
            status.close()
    log.warning("kom run: stopped; %d updates written", writer.updates)
    if writer.ended.is_set():
        _quiet_stdout()
        return EXIT_PIPE
    return EXIT_OK


def with_broker(config: Config, broker: str) -> Config:
    """`--broker HOST[:PORT]` in place of every line's host; a malformed one is a user error."""
    from ._client import override_broker
    from .sim import parse_broker

    try:
        parse_broker(broker)
        return override_broker(config, broker)
    except ValueError as exc:
        raise UsageError(f"--broker {broker!r}: expected HOST[:PORT] or [IPv6]:PORT") from exc


def _running(stop: threading.Event, deadline: float | None, ended: threading.Event) -> bool:
    stop.wait(0.25)
    if stop.is_set() or ended.is_set():
        return False
    return deadline is None or time.monotonic() < deadline


def _maybe_reload(flag: threading.Event, kom: object, args: argparse.Namespace) -> None:
    from ._client import Kom
    from ._scaleout import with_instance

    if not flag.is_set():
        return
    flag.clear()
    assert isinstance(kom, Kom)
    try:
        config = load(args.config)
        if args.broker:
            config = with_broker(config, args.broker)
        if args.instance is not None:
            config = with_instance(config, args.instance)
    except (ConfigError, UsageError) as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return
    kom.reload(config)
    log.warning("configuration reloaded: %d station(s)", len(config.stations))


# -- write ------------------------------------------------------------------------------


def cmd_write(args: argparse.Namespace) -> int:
    from ._client import Kom

    config = load(args.config)
    if args.broker:
        config = with_broker(config, args.broker)
    try:
        station, tag = config.find_tag(args.tag)
    except KeyError:
        print(f"kom write: no tag {args.tag!r} in {args.config}", file=sys.stderr)
        return EXIT_CONFIG
    refused = _not_writable(station, tag)
    if refused:  # known from the file alone: said before connecting, as a user error
        print(f"kom write: {args.tag}: {refused} [not-output]", file=sys.stderr)
        return EXIT_CONFIG
    # A read-back confirmed write needs the value read back: the writer subscribes then.
    config = writer_config(config, station.line, reading=tag.confirm is not None)
    with Kom(config, iterate=False) as kom:
        kom.start()
        if not kom.wait_connected(args.timeout):
            line = kom.lines[station.line]
            print(
                f"kom write: {args.tag}: not connected ({line.last_error or 'no answer'})",
                file=sys.stderr,
            )
            return EXIT_FAILED
        future = kom.write(args.tag, args.value)
        try:
            result = future.result(args.timeout)
        except WriteError as exc:
            print(f"kom write: {exc} [{exc.reason}]", file=sys.stderr)
            return EXIT_FAILED
        except TimeoutError:
            print(
                f"kom write: {args.tag}: no completion within {args.timeout:g} s", file=sys.stderr
            )
            return EXIT_FAILED
    how = {0: "written to the socket", 1: "acknowledged (PUBACK)", 2: "completed (PUBCOMP)"}
    if result.local:
        print(f"{args.tag} = {args.value}: set")
    else:
        confirmed = f", confirmed by {result.confirmed}" if result.confirmed else ""
        print(
            f"{args.tag} = {args.value}: published to {result.topic!r} with QoS {result.qos}, "
            f"{how.get(result.qos or 0, 'done')}{confirmed}"
        )
    return EXIT_OK


def _not_writable(station: StationConfig, tag: TagConfig) -> str:
    """Why a write of `tag` cannot publish whatever the broker does ("" when it may).

    The same refusals as the line's, for a station that starts on or off (a simulated one
    takes a write of any tag).
    """
    kind = tag.address.kind if tag.address is not None else None
    if station.mode == "simulation" or kind is Kind.ACK_ID:
        return ""
    if not tag.type.is_output:
        return f"{tag.type.value} is not an output type"
    if tag.publish is None and kind not in (Kind.OUT_VALUE, Kind.OUT_TOPIC, Kind.SPB):
        return "the tag has neither OUT_VALUE nor publish"
    return ""


def writer_config(config: Config, line_name: str, *, reading: bool = False) -> Config:
    """The configuration `kom write` connects with: one line, its own client id.

    Reusing the running driver's client id would knock that driver off the broker, so
    the writer takes a derived id with a clean session and subscribes to nothing (but for
    a confirmed write, `reading`: then to the line's filters, to read the value back, SPEC
    §11). It publishes the one value asked for: publish-on-connect, meant for the running
    driver, would send every other output's default again.
    """
    line = config.line(line_name)
    line = attrs.evolve(
        line,
        client_id=f"{line.client_id or 'kom'}-write-{os.getpid()}",
        clean_session=True,
        topic_filters=line.topic_filters if reading else (),
        will=None,
        publish_on_connect=False,
        sparkplug_host_id=None,  # the running host's STATE is not the writer's to change
    )
    stations = tuple(
        attrs.evolve(s, tags=tuple(_not_on_connect(t) for t in s.tags))
        for s in config.stations
        if s.line == line_name
    )
    return attrs.evolve(config, lines=(line,), stations=stations)


def _not_on_connect(tag: TagConfig) -> TagConfig:
    if tag.publish is None or not tag.publish.on_connect:
        return tag
    return attrs.evolve(tag, publish=attrs.evolve(tag.publish, on_connect=False))


# -- sim, demo --------------------------------------------------------------------------


def cmd_sim_netio(args: argparse.Namespace) -> int:
    from .sim import run_netio

    return run_netio(
        args.broker,
        id=args.id,
        mode=args.mode,
        outputs=args.outputs,
        period=args.period,
        inputs=args.inputs,
        duration=args.duration,
        verbose=args.verbose,
    )


def cmd_sim_sparkplug(args: argparse.Namespace) -> int:
    from .sim._sparkplug_sim import run_sparkplug

    return run_sparkplug(
        args.broker,
        group=args.group,
        node=args.node,
        period=args.period,
        duration=args.duration,
        verbose=args.verbose,
    )


def cmd_discover(args: argparse.Namespace) -> int:
    """SPEC §14 `kom discover`: listen, then print what the BIRTHs declared."""
    from ._client import Kom, override_broker
    from .sparkplug._discover import fragment, listing

    if not args.seconds > 0:
        print(f"kom discover: --seconds must be above 0, found {args.seconds:g}", file=sys.stderr)
        return EXIT_CONFIG
    config = load(args.config)
    if args.broker:
        config = override_broker(config, args.broker)
    config = discover_config(config)
    kom = Kom(config, iterate=False)
    try:
        kom.start()
        if not kom.wait_connected(min(args.seconds, 10.0)):
            errors = "; ".join(f"{n}: {ln.last_error}" for n, ln in kom.lines.items())
            print(f"kom discover: not connected ({errors})", file=sys.stderr)
            return EXIT_FAILED
        print(f"kom discover: listening for {args.seconds:g} s ...", file=sys.stderr, flush=True)
        time.sleep(args.seconds)
    finally:
        kom.close()
    for name, line in kom.lines.items():
        sparkplug = line.core.sparkplug
        if sparkplug is None:
            continue
        text = listing(sparkplug.host)
        print(f"# line {name}: " + ("nothing seen" if not text else "seen in BIRTHs"))
        if text:
            print("\n".join(f"# {row}" for row in text.splitlines()))
            print()
            print(fragment(sparkplug.host))
    return EXIT_OK


def discover_config(config: Config) -> Config:
    """The configuration `kom discover` listens with: every line on `spBv1.0/#`, no stations,
    a client id of its own and a clean session (a running kom keeps its own session)."""
    lines = tuple(
        attrs.evolve(
            line,
            client_id=f"{line.client_id or 'kom'}-discover-{os.getpid()}",
            clean_session=True,
            topic_filters=(TopicFilter("spBv1.0/#"),),
            payload_type="sparkplug_b",
            will=None,
            sparkplug_host_id=None,
        )
        for line in config.lines
    )
    return attrs.evolve(config, lines=lines, stations=())


def cmd_demo(args: argparse.Namespace) -> int:
    if args.sparkplug:
        from ._demo import run_sparkplug_demo

        return run_sparkplug_demo(
            duration=args.duration,
            db=Path(args.db),
            plain=args.plain or not sys.stdout.isatty(),
            http=None if args.http == "off" else args.http,
        )
    from ._demo import run_demo

    return run_demo(
        duration=args.duration,
        db=Path(args.db),
        plain=args.plain or not sys.stdout.isatty(),
        http=None if args.http == "off" else args.http,
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
