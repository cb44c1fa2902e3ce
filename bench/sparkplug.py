"""Sparkplug B decoding, µs per message (no broker): a DDATA of 20 metrics by alias.

Beside the protobuf parse alone (`Payload.ParseFromString`, the generated code on the
installed protobuf runtime), kom's payload decode (records with typed values), and the whole
of `LineCore.process` on a line with the device's 20-tag station: parse, sequence check,
alias resolution against the DBIRTH, conversion to each tag's type, 20 Update tuples.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kom import loads
from kom._core import LineCore
from kom._station import Message
from kom.sparkplug import sparkplug_b_pb2 as pb
from kom.sparkplug._payload import DataType, Out, decode, encode

from ._common import Report, Row, Settings, median_spread, per_call_ns

#: (metric name, datatype, kom tag type, value) of the benchmark device's 20 metrics.
METRICS = [
    *((f"Line/Temp{i}", DataType.Double, "Ai", 20.5 + i) for i in range(8)),
    *((f"Line/Flow{i}", DataType.Float, "Ai", 3.25 + i) for i in range(4)),
    *((f"Line/Count{i}", DataType.Int32, "Ci", -40 + i) for i in range(4)),
    *((f"Line/Run{i}", DataType.Boolean, "Di", i % 2 == 0) for i in range(2)),
    *((f"Line/Mode{i}", DataType.String, "TxtI", "auto") for i in range(2)),
]
BASE = datetime(2026, 12, 1, tzinfo=UTC)


def _config() -> str:
    tags = "".join(
        f'[[station.tag]]\nname = "t{i}"\ntype = "{kind}"\naddress = "SPB={name}"\n'
        f"on_change = false\n"
        for i, (name, _, kind, _) in enumerate(METRICS)
    )
    return f'[line]\nhost = "127.0.0.1"\n[[station]]\nname = "dev"\nsparkplug = "g/n/d"\n{tags}'


def _ddata(seq: int) -> bytes:
    """A DDATA carrying every metric by alias with its own timestamp, as Tahu's edge nodes do."""
    at = BASE + timedelta(seconds=seq)
    out = [
        Out(None, dt, value, alias=i + 1, timestamp=at)
        for i, (_, dt, _, value) in enumerate(METRICS)
    ]
    return encode(out, at, seq)


def decoding(settings: Settings, report: Report) -> None:
    runs = max(5, settings.runs)
    n = 2_000 if settings.quick else 20_000
    config = loads(_config())
    core = LineCore(config.lines[0], config.stations)
    received = BASE
    birth = [Out(name, dt, value, alias=i + 1) for i, (name, dt, _, value) in enumerate(METRICS)]
    core.process(Message("spBv1.0/g/NBIRTH/n", encode([], BASE, 0), received))
    core.process(Message("spBv1.0/g/DBIRTH/n/d", encode(birth, BASE, 1), received))
    # 256 DDATA in seq order 2, 3, ... 255, 0, 1: cycling through them never breaks the seq.
    topic = "spBv1.0/g/DDATA/n/d"
    messages = [Message(topic, _ddata((2 + i) % 256), received) for i in range(256)]
    payloads = [m.payload for m in messages]
    check = core.process(messages[0])
    assert len(check.updates) == len(METRICS), check
    assert all(u.valid for u in check.updates), check
    core.process(messages[1])
    process = core.process

    def kom_loop(count: int) -> None:
        # Starts where the last call stopped (a multiple of 256 messages keeps the seq going).
        for k in range(count):
            process(messages[(k + 2) % 256])

    def decode_loop(count: int) -> None:
        for k in range(count):
            decode(payloads[k % 256])

    def parse_loop(count: int) -> None:
        for k in range(count):
            pb.Payload().ParseFromString(payloads[k % 256])

    def fields_loop(count: int) -> None:
        # The floor of any decoder on this runtime: upb parses lazily, so reading each
        # metric's fields is where the work is.
        for k in range(count):
            message = pb.Payload()
            message.ParseFromString(payloads[k % 256])
            for m in message.metrics:
                (m.alias, m.timestamp, m.datatype, m.is_null, getattr(m, m.WhichOneof("value")))

    n -= n % 256
    figures = {
        "fields": per_call_ns(fields_loop, n, runs),
        "kom": per_call_ns(kom_loop, n, runs, warmup=256),
        "decode": per_call_ns(decode_loop, n, runs),
        "parse": per_call_ns(parse_loop, n, runs),
    }
    assert core.sparkplug is not None
    assert not core.sparkplug.outgoing, "no rebirth was asked for"
    us = {k: median_spread([x / 1000 for x in v]) for k, v in figures.items()}
    value, spread = us["kom"]
    report.rows.append(
        Row(
            "Sparkplug DDATA, 20 metrics (LineCore.process)",
            value,
            "µs",
            "parse + read 5 fields a metric",
            us["fields"][0],
            spread=spread,
        )
    )
    report.rows.append(
        Row(
            "Sparkplug DDATA, 20 metrics (LineCore.process)",
            value,
            "µs",
            "protobuf parse alone",
            us["parse"][0],
            spread=spread,
        )
    )
    value, spread = us["decode"]
    for name, label in (
        ("parse", "protobuf parse alone"),
        ("fields", "parse + read 5 fields a metric"),
    ):
        report.rows.append(
            Row(
                "Sparkplug DDATA, 20 metrics (payload decode)",
                value,
                "µs",
                label,
                us[name][0],
                spread=spread,
            )
        )
    from google.protobuf.internal import api_implementation

    report.notes.append(
        f"sparkplug: a {len(payloads[0])}-byte DDATA of 20 metrics by alias, each with its own "
        "timestamp (8 Double, 4 Float, 4 Int32, 2 Boolean, 2 String) into a 20-tag station "
        f"(on_change = false); protobuf runtime {api_implementation.Type()!r}. "
        "LineCore.process = route to the Sparkplug host, parse, seq check, aliases, typed "
        "values, tag conversion, 20 Update tuples. upb parses lazily: the field reads are "
        "where the protobuf work is."
    )
