"""A minimal MQTT 3.1.1 client over a bare socket: the publishers and the broker-ceiling reader.

Publishers run in their own processes (multiprocessing, spawn) and write pre-built PUBLISH
packets in large chunks, so that they are far faster than any consumer measured here. The
reader parses PUBLISH packets and sends PUBACKs with no more work than MQTT needs: it shows
the ceiling of a Python consumer against this broker.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from collections.abc import Sequence
from multiprocessing.queues import Queue
from typing import Any

HOST = "127.0.0.1"
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
CHUNK = 256 * 1024
MAX_OUTSTANDING = 20_000  # QoS 1 publishes not yet acknowledged (packet ids are 16 bits)


def remaining_length(n: int) -> bytes:
    """MQTT 3.1.1 §2.2.3 variable-length encoding."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, clean: bool, keep_alive: int = 0) -> bytes:
    flags = 0x02 if clean else 0x00
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive) + _string(client_id)
    return bytes([CONNECT << 4]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int) -> bytes:
    variable = _string(topic) + (struct.pack("!H", mid) if qos else b"")
    size = len(variable) + len(payload)
    return bytes([(PUBLISH << 4) | (qos << 1)]) + remaining_length(size) + variable + payload


def subscribe_packet(mid: int, topic_filter: str, qos: int) -> bytes:
    body = struct.pack("!H", mid) + _string(topic_filter) + bytes([qos])
    return bytes([(SUBSCRIBE << 4) | 0x02]) + remaining_length(len(body)) + body


class Packets:
    """Splits a byte stream into (type, flags, body) packets."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while pos + 2 <= end:
            first = buf[pos]
            i = pos + 1
            size = 0
            shift = 0
            complete = False
            while i < end:
                byte = buf[i]
                size |= (byte & 0x7F) << shift
                i += 1
                if byte < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete or i + size > end:
                break
            out.append((first >> 4, first & 0x0F, bytes(buf[i : i + size])))
            pos = i + size
        del buf[:pos]
        return out


def open_session(port: int, client_id: str, clean: bool) -> tuple[socket.socket, Packets]:
    """Connect and wait for CONNACK; raises ConnectionError when refused."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean))
    packets = Packets()
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("broker closed the connection before CONNACK")
        for kind, _, body in packets.feed(data):
            if kind == CONNACK:
                if body[1] != 0:
                    raise ConnectionError(f"CONNACK refused: {body[1]}")
                return sock, packets


def end_session(port: int, client_id: str) -> None:
    """Wipe `client_id`'s session: a clean start, then DISCONNECT.

    A drained session left behind would stay subscribed, and the broker would queue every
    later run's messages for it too (gigabytes over a full suite, and a slower broker).
    """
    sock, _ = open_session(port, client_id, clean=True)
    sock.sendall(bytes([DISCONNECT << 4, 0]))
    sock.close()


def prepare_session(port: int, client_id: str, topic_filter: str, qos: int) -> None:
    """Make a persistent session subscribed to `topic_filter`, then leave it offline.

    The broker then queues every matching message for it (queue_qos0_messages for QoS 0).
    """
    sock, packets = open_session(port, client_id, clean=True)
    sock.close()  # a clean start wipes any older session of this id
    sock, packets = open_session(port, client_id, clean=False)
    sock.sendall(subscribe_packet(1, topic_filter, qos))
    granted = None
    while granted is None:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("broker closed the connection before SUBACK")
        for kind, _, body in packets.feed(data):
            if kind == SUBACK:
                granted = body[2]
    if granted != qos:
        raise ConnectionError(f"SUBACK granted QoS {granted}, wanted {qos}")
    sock.sendall(bytes([DISCONNECT << 4, 0]))
    sock.close()


# -- publishers (child processes) ---------------------------------------------------------


def device_topic(index: int) -> str:
    return f"devices/dev{index + 1:04d}/messages/events/"


class _Acks(threading.Thread):
    """Counts PUBACKs and notices PINGRESP on a publisher's socket."""

    def __init__(self, sock: socket.socket, packets: Packets) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.packets = packets
        self.acked = 0
        self.pong = threading.Event()
        self.cond = threading.Condition()

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                self.pong.set()
                with self.cond:
                    self.cond.notify_all()
                return
            acks = 0
            for kind, _, _ in self.packets.feed(data):
                if kind == PUBACK:
                    acks += 1
                elif kind == PINGRESP:
                    self.pong.set()
            if acks:
                with self.cond:
                    self.acked += acks
                    self.cond.notify_all()


TIME_KEY = b'"Time":"'
TIME_WIDTH = len("2026-11-22T10:00:00+00:00")


def time_offsets(payloads: Sequence[bytes]) -> list[int]:
    """Where each payload's `Agent.Time` text starts (ISO 8601, 25 characters)."""
    return [p.index(TIME_KEY) + len(TIME_KEY) for p in payloads]


def stamped(payload: bytes, offset: int, epoch: int) -> bytes:
    """`payload` with its time text set to `epoch` (seconds since 1970, UTC)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch)).encode()
    return payload[:offset] + text + payload[offset + TIME_WIDTH :]


def publish_worker(
    *,
    port: int,
    qos: int,
    first: int,
    count: int,
    payloads: Sequence[bytes],
    devices: int,
    ready: Any,
    go: Any,
    results: Queue[dict[str, float]],
    base_epoch: int | None = None,
) -> None:
    """Publish messages `first..first+count-1` as fast as possible, then PINGREQ/PINGRESP.

    Message i goes to device i % devices with payload i % len(payloads); with `base_epoch`,
    its time is `base_epoch + i` seconds, so that times move on through a run as a device's
    clock does (the payloads repeat, their times do not). The PINGRESP comes after the broker
    has handled every PUBLISH before it on this connection, so the reported end time is when
    the broker holds (has queued) all of them.
    """
    offsets = time_offsets(payloads) if base_epoch is not None else []
    sock, packets = open_session(port, f"bench-pub-{first}-{time.monotonic_ns()}", clean=True)
    sock.settimeout(None)
    acks = _Acks(sock, packets)
    acks.start()
    topics = [_string(device_topic(d)) for d in range(devices)]
    header = bytes([(PUBLISH << 4) | (qos << 1)])
    sizes = len(payloads)
    ready.set()
    go.wait()
    t0 = time.monotonic()
    chunk: list[bytes] = []
    chunk_bytes = 0
    pack = struct.Struct("!H").pack
    for i in range(first, first + count):
        topic = topics[i % devices]
        payload = payloads[i % sizes]
        if base_epoch is not None:
            payload = stamped(payload, offsets[i % sizes], base_epoch + i)
        if qos:
            mid = pack(i % 65535 + 1)
            size = len(topic) + 2 + len(payload)
            packet = header + remaining_length(size) + topic + mid + payload
        else:
            size = len(topic) + len(payload)
            packet = header + remaining_length(size) + topic + payload
        chunk.append(packet)
        chunk_bytes += len(packet)
        if chunk_bytes >= CHUNK:
            sock.sendall(b"".join(chunk))
            chunk.clear()
            chunk_bytes = 0
            if qos:
                sent = i - first + 1
                with acks.cond:
                    while sent - acks.acked > MAX_OUTSTANDING and not acks.pong.is_set():
                        acks.cond.wait(1.0)
    if chunk:
        sock.sendall(b"".join(chunk))
    sock.sendall(bytes([PINGREQ << 4, 0]))
    if qos:
        with acks.cond:
            while acks.acked < count and not acks.pong.is_set():
                acks.cond.wait(1.0)
    acks.pong.wait(60)
    t1 = time.monotonic()
    sock.sendall(bytes([DISCONNECT << 4, 0]))
    sock.close()
    results.put({"start": t0, "end": t1, "count": count, "acked": acks.acked})


def _fine_timer_slack() -> None:
    """Let this process's sleeps end within a µs of their time, not Linux's default 50 µs
    (prctl PR_SET_TIMERSLACK): the pacing sleeps last about 100 µs at 10,000 msg/s."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns
    except (OSError, AttributeError):
        pass


def paced_worker(
    *,
    port: int,
    qos: int,
    rate: float,
    seconds: float,
    warmup: float,
    devices: int,
    template: bytes,
    results: Queue[dict[str, float]],
) -> None:
    """Publish `rate` messages a second for `warmup + seconds`, each alone in one send().

    The payload starts with the send time, `{"Bench":{"SentNs":<time.monotonic_ns()>},`
    (CLOCK_MONOTONIC is system-wide on Linux), followed by `template` minus its first `{`.
    TCP_NODELAY is on, so the publisher's own socket adds no Nagle delay.
    """
    period = 1e9 / rate
    # Below 0.2 ms between messages, sleep out even a few µs: spinning to the next send took
    # a whole core at 10,000 msg/s (2.77 s of CPU in 2.79 s), one of the machine's two, from
    # the consumer being measured. Longer periods keep the last 0.1-0.2 ms spun, as before.
    spin = period >= 200_000
    if not spin:
        _fine_timer_slack()
    sock, _ = open_session(port, f"bench-paced-{time.monotonic_ns()}", clean=True)
    topics = [_string(device_topic(d)) for d in range(devices)]
    header = bytes([(PUBLISH << 4) | (qos << 1)])
    rest = template[1:]
    total = int(rate * (warmup + seconds))
    start = time.monotonic_ns()
    measure_from = start + int(warmup * 1e9)
    sent = 0
    late = 0
    while sent < total:
        now = time.monotonic_ns()
        due = min(total, int((now - start) / period) + 1)
        if due - sent > 1:
            late += due - sent - 1
        while sent < due:
            stamp = time.monotonic_ns()
            payload = b'{"Bench":{"SentNs":' + str(stamp).encode() + b"}," + rest
            topic = topics[sent % devices]
            mid = struct.pack("!H", sent % 65535 + 1) if qos else b""
            size = len(topic) + len(mid) + len(payload)
            sock.sendall(header + remaining_length(size) + topic + mid + payload)
            sent += 1
        next_due = start + sent * period
        wait = (next_due - time.monotonic_ns()) / 1e9
        if wait > 0.0002:
            time.sleep(wait - 0.0001)
        elif wait > 0 and not spin:
            time.sleep(wait)
    end = time.monotonic_ns()
    sock.sendall(bytes([PINGREQ << 4, 0]))
    sock.settimeout(10)
    try:
        while sock.recv(CHUNK):
            sock.sendall(bytes([DISCONNECT << 4, 0]))
            break
    except OSError:
        pass
    sock.close()
    results.put(
        {
            "start_ns": start,
            "measure_from_ns": measure_from,
            "end_ns": end,
            "sent": sent,
            "late": late,
        }
    )


# -- the broker-ceiling reader (in the measuring process) ----------------------------------


def drain_raw(port: int, client_id: str, qos: int, count: int, timeout: float) -> tuple[float, int]:
    """Connect to a pre-loaded session and read `count` PUBLISHes, acknowledging QoS 1.

    Returns (seconds from connect to the last message, messages received).
    The packet framing of `Packets.feed` is written out inline here on purpose:
    this loop measures the broker's ceiling, and a call and a list per chunk would
    lower it.
    """
    t0 = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean=False))
    sock.settimeout(1.0)
    buf = b""
    received = 0
    deadline = time.monotonic() + timeout
    t_last = t0
    puback = bytes([PUBACK << 4, 2])
    while received < count and time.monotonic() < deadline:
        try:
            data = sock.recv(CHUNK)
        except TimeoutError:
            continue
        if not data:
            break
        buf = buf + data if buf else data
        pos = 0
        end = len(buf)
        acks: list[bytes] = []
        while pos + 2 <= end:
            first = buf[pos]
            i = pos + 1
            size = 0
            shift = 0
            complete = False
            while i < end:
                byte = buf[i]
                size |= (byte & 0x7F) << shift
                i += 1
                if byte < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete or i + size > end:
                break
            if first >> 4 == PUBLISH:
                received += 1
                if first & 0x06:
                    topic_len = (buf[i] << 8) | buf[i + 1]
                    j = i + 2 + topic_len
                    acks.append(puback + buf[j : j + 2])
            pos = i + size
        buf = buf[pos:]
        if acks:
            sock.sendall(b"".join(acks))
        t_last = time.perf_counter()
    try:
        sock.sendall(bytes([DISCONNECT << 4, 0]))
    finally:
        sock.close()
    return t_last - t0, received
