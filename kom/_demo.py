"""`kom demo`: a local broker, a simulated NETIO 4All and kom writing into SQLite.

Everything runs on this machine on loopback: a private mosquitto on a free port, the
simulator publishing its state every second, kom with the NETIO profile, a live table,
and one output switched half-way through so its new state can be seen coming back.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Protocol

import attrs

from ._client import Kom, override_broker, tune_gc
from ._config import load
from ._errors import ConfigError, KomError, WriteError
from ._localbroker import LocalBroker
from ._sinks import SinkWriter, SqliteSink
from ._watch import LiveView
from .http import StatusServer
from .http._state import TREND_SECONDS

PROFILE = "netio-4all.toml"
DEVICE_ID = "netio-4All-25E0"


def profile_path(profile: str = PROFILE) -> Path:
    """A profile (default NETIO's) in examples/ beside the package (an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples" / profile, Path.cwd() / "examples" / profile):
        if candidate.is_file():
            return candidate
    raise KomError(f"cannot find examples/{profile}; run kom demo from the kom checkout")


def _setup(
    profile: str, device: str, duration: float, db: Path
) -> tuple[LocalBroker, Kom, SinkWriter, LiveView]:
    """The demo's broker, and kom with a profile writing into SQLite with a live view."""
    config = load(profile_path(profile))
    tune_gc()
    print(
        f"kom demo: starting a local broker, a simulated {device} and kom ({duration:g} s)",
        file=sys.stdout,
    )
    broker = LocalBroker()
    config = override_broker(config, broker.address)
    # A demo client id of its own, so the demo never takes over another kom's session.
    config = attrs.evolve(
        config,
        lines=tuple(attrs.evolve(ln, client_id=f"kom-demo-{broker.port}") for ln in config.lines),
    )
    writer = SinkWriter([SqliteSink(db)])
    kom = Kom(config, writer, iterate=False, inline=False)  # as kom run does
    view = LiveView(kom, title=f"kom demo — {device} on {broker.address} → {db}")
    kom.add_callback(view)
    return broker, kom, writer, view


def _offer_page(
    kom: Kom, writer: SinkWriter, view: LiveView, http: str | None, duration: float
) -> StatusServer | None:
    """The status page (SPEC §13) while the demo runs, its trends as long as the demo.

    When the address is taken (another demo, another program), any free port will do.
    """
    if not http:
        return None
    from .http import parse_address, serve

    trend = max(TREND_SECONDS, duration)
    try:
        status = serve(kom, writer, http, trend_seconds=trend)
    except ConfigError:
        host, _port = parse_address(http)
        anywhere = f"[{host}]:0" if ":" in host else f"{host}:0"
        status = serve(kom, writer, anywhere, trend_seconds=trend)
    print(f"kom demo: the status page is on {status.url} while the demo runs", file=sys.stdout)
    view.note(f"status page: {status.url}")
    return status


def _summary(kom: Kom, writer: SinkWriter, db: Path, writes_ok: int) -> int:
    counters = kom.counters().get("line")
    rows = _count_rows(db)
    print(
        f"kom demo: {counters.received if counters else 0} messages, {writer.updates} updates, "
        f"{writes_ok} write(s); {rows} rows in {db.resolve()} (table updates)",
        file=sys.stdout,
    )
    return 0 if writer.updates else 1


def run_demo(duration: float, db: Path, plain: bool, http: str | None = None) -> int:
    from .sim import NetioSimulator

    out = sys.stdout
    broker, kom, writer, view = _setup(PROFILE, "NETIO 4All", duration, db)
    status = _offer_page(kom, writer, view, http, duration)
    sim = NetioSimulator("127.0.0.1", broker.port, client_id=DEVICE_ID, period=1.0)
    writes_ok = 0
    switched_at = duration * 0.4
    switched = False
    start = time.monotonic()
    try:
        kom.start()
        sim.start()
        if not kom.wait_connected(10):
            raise KomError("kom could not connect to the demo broker")
        view.note(f"kom connected to {broker.address}; NETIO simulator publishing every 1 s")
        live = None
        if not plain:
            from rich.live import Live

            live = Live(view.render(), refresh_per_second=4)
            live.start()
        last_print = 0.0
        try:
            while (elapsed := time.monotonic() - start) < duration:
                if not switched and elapsed >= switched_at:
                    switched = True
                    before = sim.device.output_state(1)
                    target = not bool(before)
                    view.note(
                        f"writing netio.out1 = {str(target).lower()} "
                        f"(output 1 is {'on' if before else 'off'})"
                    )
                    try:
                        result = kom.write("netio.out1", target).result(5)
                        writes_ok += 1
                        view.note(f"write completed (QoS {result.qos}) on {result.topic}")
                    except (WriteError, TimeoutError) as exc:
                        view.note(f"write failed: {exc}")
                    if plain:
                        print("  " + "\n  ".join(view.events[-2:]), file=out)
                if live is not None:
                    live.update(view.render())
                elif elapsed - last_print >= 2.0:
                    last_print = elapsed
                    _plain_status(view, out)
                time.sleep(0.2)
        finally:
            if live is not None:
                live.update(view.render())
                live.stop()
        state = view.last("netio.out1_state")
        if switched and state is not None:
            print(f"netio.out1_state now reads {state.value} ({state.quality.value})", file=out)
    except KeyboardInterrupt:
        pass
    finally:
        _close(sim, kom, writer, broker, status)
    return _summary(kom, writer, db, writes_ok)


class _Device(Protocol):
    def stop(self) -> None: ...


def _close(
    sim: _Device, kom: Kom, writer: SinkWriter, broker: LocalBroker, status: StatusServer | None
) -> None:
    """Stop a demo's parts: the device first, then kom and its sinks, the broker, the page."""
    sim.stop()
    kom.close()
    writer.close()
    broker.close()
    if status is not None:
        status.close()


_NETIO_PICKS = [
    "netio.voltage",
    "netio.frequency",
    "netio.total_load",
    "netio.out1_state",
    "netio.out1_load",
]


def _plain_status(view: LiveView, out: object, picks: list[str] = _NETIO_PICKS) -> None:
    parts = []
    for name in picks:
        u = view.last(name)
        if u is not None:
            parts.append(f"{name.partition('.')[2]}={u.value if u.valid else 'invalid'}")
    print("  " + "  ".join(parts), file=out)  # type: ignore[call-overload]


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM updates").fetchone()[0])
    except sqlite3.Error:
        return 0


SPARKPLUG_PROFILE = "sparkplug.toml"
_SPARKPLUG_PICKS = ["pump1.pressure", "pump1.speed", "tank1.level", "tank1.alarm", "edge1.uptime"]


def run_sparkplug_demo(duration: float, db: Path, plain: bool, http: str | None = None) -> int:
    """`kom demo --sparkplug`: the same with a Sparkplug B edge node and two devices (SPEC §14).

    kom is the host application (STATE `spBv1.0/STATE/kom`); half-way through it writes
    pump1's Speed (a DCMD by alias), and near the end the edge node loses its connection so
    its NDEATH will makes every tag invalid (`will`) until it comes back and births again.
    """
    from .sim._sparkplug_sim import EdgeNodeSimulator

    out = sys.stdout
    broker, kom, writer, view = _setup(SPARKPLUG_PROFILE, "Sparkplug B edge node", duration, db)
    status = _offer_page(kom, writer, view, http, duration)
    sim = EdgeNodeSimulator("127.0.0.1", broker.port, period=1.0)
    writes_ok = 0
    steps = {duration * 0.4: "write", duration * 0.6: "death"}
    start = time.monotonic()
    live = None
    try:
        kom.start()
        if not kom.wait_connected(10):
            raise KomError("kom could not connect to the demo broker")
        sim.start()
        view.note(f"kom connected to {broker.address} as Sparkplug host 'kom'")
        if not plain:
            from rich.live import Live

            live = Live(view.render(), refresh_per_second=4)
            live.start()
        last_print = 0.0
        shown = 0  # events printed so far (plain output)
        while (elapsed := time.monotonic() - start) < duration:
            for at in [at for at in steps if elapsed >= at]:
                step = steps.pop(at)
                if step == "write":
                    target = 1200 + int(elapsed)
                    view.note(f"writing pump1.speed_cmd = {target} (a DCMD)")
                    try:
                        result = kom.write("pump1.speed_cmd", target).result(5)
                        writes_ok += 1
                        view.note(f"write completed (QoS {result.qos}) on {result.topic}")
                    except (WriteError, TimeoutError) as exc:
                        view.note(f"write failed: {exc}")
                else:
                    view.note(
                        "the edge node drops off the broker: its NDEATH will arrives; "
                        f"it is back in {duration * 0.15:.1f} s with new BIRTHs"
                    )
                    sim.drop(pause=duration * 0.15)
                if plain:
                    print("  " + "\n  ".join(view.events[shown:]), file=out)
                    shown = len(view.events)
            if live is not None:
                live.update(view.render())
            elif elapsed - last_print >= 2.0:
                last_print = elapsed
                _plain_status(view, out, _SPARKPLUG_PICKS)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.update(view.render())
            live.stop()
        if plain:
            _plain_status(view, out, _SPARKPLUG_PICKS)  # the births after the edge node's return
        _close(sim, kom, writer, broker, status)
    return _summary(kom, writer, db, writes_ok)
