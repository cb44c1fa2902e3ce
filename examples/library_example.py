"""Embedding kom in a host process: receive updates, acknowledge, write, switch modes.

    python examples/library_example.py CONFIG --broker HOST:PORT [options]

    --write STATION.TAG=VALUE   write an output tag once connected (repeatable)
    --mode STATION=MODE         switch a station on, off or to simulation (repeatable)
    --duration SECONDS          how long to run (default 10)
    --iterate                   pull updates with Kom.updates() instead of a callback

Every update is printed as it arrives. A station with an ACK_ID tag is acknowledged
after its message has been printed: the script writes the message's IN_ID back with
Kom.ack(). At the end the script prints the counters and closes kom. docs/library.md
explains each call.

Try it with the NETIO profile and a broker of your own (never a production broker):

    mosquitto -c CONF                 # CONF: "listener 18830 127.0.0.1", "allow_anonymous true"
    python examples/library_example.py examples/netio-4all.toml --broker 127.0.0.1:18830 \\
        --write netio.out1=false &
    mosquitto_pub -p 18830 -q 1 -t devices/netio-4All-25E0/messages/events/ \\
        -f tests/data/netio-4all-state.json
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import kom
from kom import Kom, Update, WriteError, WriteResult


def ack_stations(config: kom.Config) -> dict[str, str]:
    """The stations that use ACK_ID, each with the name of its IN_ID tag."""
    found: dict[str, str] = {}
    for station in config.stations:
        kinds = {t.address.kind.value: t.name for t in station.tags if t.address is not None}
        if "ACK_ID" in kinds and "IN_ID" in kinds:
            found[station.name] = kinds["IN_ID"]
    return found


_print_lock = threading.Lock()


def say(text: str) -> None:
    """Print one line; the dispatcher and the caller's thread both print."""
    with _print_lock:
        print(text, flush=True)


def show(update: Update) -> str:
    if update.valid:
        return f"{update.tag} = {update.value!r}  (ts {update.ts:%Y-%m-%d %H:%M:%S.%f} UTC)"
    return f"{update.tag} invalid: {update.reason}  {update.detail or ''}".rstrip()


class Consumer:
    """Receives updates on kom's dispatcher thread; acknowledges ACK_ID stations."""

    def __init__(self, acks: dict[str, str]) -> None:
        self._acks = acks  # station -> IN_ID tag name
        self._kom: Kom | None = None
        # Kom.open() starts the lines before it returns, so the first batch may arrive
        # before self._kom is set: wait for it (a few microseconds at most).
        self._attached = threading.Event()

    def attach(self, k: Kom) -> None:
        self._kom = k
        self._attached.set()

    def __call__(self, updates: Sequence[Update]) -> None:
        self._attached.wait()
        for update in updates:
            say(show(update))
            self.maybe_ack(update)

    def maybe_ack(self, update: Update) -> None:
        station, _, tag = update.tag.partition(".")
        if self._acks.get(station) == tag and update.valid and self._kom is not None:
            # IN_ID is the station's last update of a message: the whole message has been
            # handled above, so it may go. The broker gets PUBACK/PUBCOMP now, in order.
            assert isinstance(update.value, int)
            self._kom.ack(station, update.value)
            say(f"  acknowledged {station} message {update.value}")


def report(tag: str, future: Future[WriteResult]) -> None:
    """Print the outcome of a write; runs on whichever thread completes the future."""
    try:
        result = future.result()
    except WriteError as exc:
        say(f"write {tag}: failed [{exc.reason}] {exc}")
        return
    if result.local:
        say(f"write {tag}: done locally")
    else:
        say(f"write {tag}: completed on {result.topic!r} (QoS {result.qos})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--broker", required=True, help="HOST:PORT replacing every line's host")
    parser.add_argument("--write", action="append", default=[], metavar="STATION.TAG=VALUE")
    parser.add_argument("--mode", action="append", default=[], metavar="STATION=MODE")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--iterate", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        config = kom.load(args.config)  # validates; ConfigError lists every problem
    except kom.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2

    consumer = Consumer(ack_stations(config))
    if args.iterate:
        k = Kom.open(config, broker=args.broker)  # no callback: updates() iterates
    else:
        k = Kom.open(config, consumer, broker=args.broker)
    consumer.attach(k)
    try:
        if not k.wait_connected(timeout=10):
            errors = {name: line.last_error for name, line in k.lines.items()}
            print(f"not connected: {errors}", file=sys.stderr)
            return 1
        say(f"connected: {', '.join(f'{n} ({ln.endpoint})' for n, ln in k.lines.items())}")

        for item in args.mode:
            station, _, mode = item.partition("=")
            try:
                k.set_mode(station, mode)
            except (ValueError, kom.KomError) as exc:  # unknown station or mode
                print(f"--mode {item}: {exc}", file=sys.stderr)
                return 2
            say(f"station {station}: {k.station_state(station)}")

        for item in args.write:
            tag, _, value = item.partition("=")
            future = k.write(tag, value)  # text is converted like a payload value
            future.add_done_callback(functools.partial(report, tag))

        deadline = time.monotonic() + args.duration
        if args.iterate:
            while (left := deadline - time.monotonic()) > 0:
                # updates() ends after `timeout` seconds without a batch, or on close().
                for update in k.updates(timeout=min(left, 1.0)):
                    say(show(update))
                    consumer.maybe_ack(update)
                    if time.monotonic() >= deadline:
                        break
        else:
            time.sleep(args.duration)

        states = {n: ln.state.value for n, ln in k.lines.items()}
        say(f"line states: {states}")
        for name, counters in k.counters().items():
            nonzero = {
                key: v for key, v in counters.as_dict().items() if v and key != "last_message"
            }
            say(f"counters {name}: {nonzero}")
    finally:
        k.close()  # DISCONNECT; the callback still gets the last updates (reason comm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
