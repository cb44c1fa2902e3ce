"""A scripted fake MQTT 3.1.1 broker on loopback, written on raw sockets.

It does just enough to keep a client connected (CONNACK, SUBACK, UNSUBACK, PINGRESP, the QoS
handshakes) and otherwise does what the test tells it: send PUBLISH packets no real broker would
send (a topic that is not UTF-8), stay silent, drop the client. Every packet the client sends is
recorded in arrival order.
"""

from __future__ import annotations

import contextlib
import enum
import io
import socket
import struct
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
WAIT_TIMEOUT = 5.0


class PacketType(enum.IntEnum):
    """MQTT 3.1.1 control packet types (§2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


Packet = tuple[PacketType, bytes]


def encode_remaining_length(length: int) -> bytes:
    """The variable-length "remaining length" of a fixed header (§2.2.3)."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def packet(kind: PacketType, flags: int, body: bytes) -> bytes:
    """A whole packet: fixed header byte, remaining length, then `body`."""
    return bytes([kind << 4 | flags]) + encode_remaining_length(len(body)) + body


def packet_id(raw: bytes) -> int:
    """The packet identifier of a PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK or UNSUBACK packet."""
    header = _header_length(raw)
    value: int = struct.unpack_from("!H", raw, header)[0]
    return value


def publish_id(raw: bytes) -> int:
    """The packet identifier of a QoS 1 or 2 PUBLISH packet (after its topic)."""
    _, offset = _utf8_string(raw, _header_length(raw))
    value: int = struct.unpack_from("!H", raw, offset)[0]
    return value


def _header_length(raw: bytes) -> int:
    index = 1
    while raw[index] & 0x80:
        index += 1
    return index + 1


def _utf8_string(data: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("!H", data, offset)
    start = offset + 2
    return data[start : start + length], start + length


class FakeBroker:
    """A fake MQTT 3.1.1 broker on a free 127.0.0.1 port that serves one client at a time.

    Answers CONNECT with CONNACK (session present 0, `return_code`), SUBSCRIBE with SUBACK
    granting the requested QoS, UNSUBSCRIBE with UNSUBACK, PINGREQ with PINGRESP, and completes
    QoS 1/2 handshakes both ways. Set `ignore_pingreq` or `ignore_subscribe` (any time) to make
    it silent to those. `received` lists every packet the client sent as (type, raw bytes); when
    a client disconnects the next one is accepted.
    """

    def __init__(self, *, return_code: int = 0) -> None:
        self.return_code = return_code
        self.ignore_pingreq = False
        self.ignore_subscribe = False
        #: Leave the client's QoS 1/2 PUBLISH unanswered (no PUBACK/PUBREC).
        self.ignore_publish = False
        #: Like a 3.1.1-only broker, answer an MQTT 5 CONNECT with "refuse" (CONNACK return
        #: code 1, unacceptable protocol version) or "close" (drop the connection), or accept it.
        self.version_5: str = "accept"
        #: Keep PUBCOMP back until `release_pubcomp()`.
        self.hold_pubcomp = False
        #: MQTT 5 refusals with a reason string: (reason code, reason string) for CONNECT
        #: (CONNACK), SUBSCRIBE (each filter in SUBACK), PUBLISH (PUBACK, or PUBREC for QoS 2).
        self.refuse: dict[PacketType, tuple[int, str]] = {}
        self._v5 = False  # the connected client spoke MQTT 5 in its CONNECT
        self._held_pubcomp: list[bytes] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(8)
        self._port: int = self._listener.getsockname()[1]
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._client: socket.socket | None = None
        self._received: list[Packet] = []
        self._client_ids: list[str] = []
        self._next_id = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"FakeBroker:{self._port}")
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self) -> str:
        state = "connected" if self._client is not None else "waiting"
        return f"<FakeBroker {self.address} {state}>"

    @property
    def host(self) -> str:
        """The loopback address it listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port

    @property
    def address(self) -> str:
        """`host:port`."""
        return f"{HOST}:{self._port}"

    @property
    def received(self) -> list[Packet]:
        """A copy of every packet clients sent, in arrival order."""
        with self._changed:
            return list(self._received)

    @property
    def client_ids(self) -> list[str]:
        """The client id of every CONNECT so far."""
        with self._changed:
            return list(self._client_ids)

    def packets(self, kind: PacketType) -> list[bytes]:
        """The raw bytes of every received packet of one type."""
        return [raw for got, raw in self.received if got is kind]

    def wait_for(
        self, kind: PacketType, count: int = 1, timeout: float = WAIT_TIMEOUT
    ) -> list[bytes]:
        """Wait until `count` packets of `kind` arrived; return all of them; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [raw for got, raw in self._received if got is kind]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [got.name for got, _ in self._received]
                    raise TimeoutError(
                        f"expected {count} {kind.name} within {timeout} s; received {kinds}"
                    )
                self._changed.wait(left)

    def wait_connected(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until a client has sent CONNECT and is still connected."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._client is None or not self._client_ids:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no client connected within {timeout} s")
                self._changed.wait(left)

    def send_publish(
        self,
        topic: bytes,
        payload: bytes,
        qos: int = 0,
        packet_id: int | None = None,
        *,
        retain: bool = False,
        dup: bool = False,
    ) -> int | None:
        """Send a PUBLISH with these exact topic bytes; return its packet id (None for QoS 0)."""
        if qos not in (0, 1, 2):
            raise ValueError(f"qos: expected 0, 1 or 2, got {qos}")
        if qos and packet_id is None:
            self._next_id = self._next_id % 65535 + 1
            packet_id = self._next_id
        body = struct.pack("!H", len(topic)) + topic
        if qos:
            assert packet_id is not None
            body += struct.pack("!H", packet_id)
        flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
        self.send_raw(packet(PacketType.PUBLISH, flags, body + payload))
        return packet_id if qos else None

    def send_raw(self, data: bytes) -> None:
        """Send bytes to the connected client as they are."""
        self.wait_connected()
        client = self._client
        if client is None:
            raise ConnectionError("the client went away")
        with self._send_lock:
            client.sendall(data)

    def send_stream(self, pieces: Iterable[bytes]) -> None:
        """Send pieces of one packet back to back: no answer of the broker's (a PUBREL for the
        client's PUBREC) gets in between them, as one would with `send_raw` per piece."""
        self.wait_connected()
        client = self._client
        if client is None:
            raise ConnectionError("the client went away")
        with self._send_lock:
            for piece in pieces:
                client.sendall(piece)

    def send_disconnect(self, code: int, reason_string: str) -> None:
        """An MQTT 5 DISCONNECT from the server with a reason code and reason string, then the
        connection closed (§3.14.4: the server closes it after sending DISCONNECT)."""
        self.send_raw(
            packet(PacketType.DISCONNECT, 0, bytes([code]) + reason_properties(reason_string))
        )
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def release_pubcomp(self) -> None:
        """Send the PUBCOMPs held back by `hold_pubcomp`."""
        held, self._held_pubcomp = self._held_pubcomp, []
        for ident in held:
            self.send_raw(packet(PacketType.PUBCOMP, 0, ident))

    def drop_client(self) -> None:
        """Close the current client's connection abruptly (RST)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop serving and close every socket."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
        self.drop_client()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(WAIT_TIMEOUT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the serving thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._changed:
                self._client = client
                self._changed.notify_all()
            try:
                self._talk(client)
            except OSError:
                pass
            finally:
                with self._changed:
                    self._client = None
                    self._changed.notify_all()
                client.close()

    def _talk(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        with reader:
            while True:
                raw = _read_packet(reader)
                if raw is None:
                    return
                kind = PacketType(raw[0] >> 4)
                with self._changed:
                    self._received.append((kind, raw))
                    if kind is PacketType.CONNECT:
                        self._client_ids.append(_connect_client_id(raw))
                    self._changed.notify_all()
                if kind is PacketType.CONNECT:
                    self._v5 = raw[_header_length(raw) + 6] == 5
                if kind is PacketType.CONNECT and self._v5:
                    if self.version_5 == "close":
                        return
                    if self.version_5 == "refuse":
                        client.sendall(packet(PacketType.CONNACK, 0, b"\x00\x01"))
                        return
                reply = self._reply(kind, raw)
                if reply:
                    with self._send_lock:
                        client.sendall(reply)
                if kind is PacketType.DISCONNECT:
                    return

    def _reply(self, kind: PacketType, raw: bytes) -> bytes:
        body = raw[_header_length(raw) :]
        if kind in self.refuse:
            return self._refusal(kind, raw, body)
        if kind is PacketType.CONNECT:
            return packet(PacketType.CONNACK, 0, bytes([0, self.return_code]))
        if kind is PacketType.PINGREQ:
            return b"" if self.ignore_pingreq else packet(PacketType.PINGRESP, 0, b"")
        if kind is PacketType.SUBSCRIBE:
            if self.ignore_subscribe:
                return b""
            granted = bytearray()
            offset = 2
            props = b""
            if self._v5:  # §3.8.2.1: properties after the packet id
                length, offset = _variable_int(body, 2)
                offset += length
                props = b"\x00"
            while offset < len(body):
                _, offset = _utf8_string(body, offset)
                granted.append(body[offset] & 0x03)
                offset += 1
            return packet(PacketType.SUBACK, 0, body[:2] + props + bytes(granted))
        if kind is PacketType.UNSUBSCRIBE:
            return packet(PacketType.UNSUBACK, 0, body[:2])
        if kind is PacketType.PUBLISH:
            qos = raw[0] >> 1 & 0x03
            if qos and not self.ignore_publish:
                _, offset = _utf8_string(body, 0)
                ident = body[offset : offset + 2]
                reply = PacketType.PUBACK if qos == 1 else PacketType.PUBREC
                return packet(reply, 0, ident)
            return b""
        if kind is PacketType.PUBREL:
            if self.hold_pubcomp:
                self._held_pubcomp.append(body[:2])
                return b""
            return packet(PacketType.PUBCOMP, 0, body[:2])
        if kind is PacketType.PUBREC:
            # MQTT 3.1.1 §3.6.1: PUBREL has flags 0b0010.
            return packet(PacketType.PUBREL, 0x02, body[:2])
        return b""

    def _refusal(self, kind: PacketType, raw: bytes, body: bytes) -> bytes:
        """The MQTT 5 answer refusing `raw` with `self.refuse[kind]` (§3.2, §3.4, §3.5, §3.9)."""
        code, text = self.refuse[kind]
        props = reason_properties(text)
        if kind is PacketType.CONNECT:
            return packet(PacketType.CONNACK, 0, bytes([0, code]) + props)
        if kind is PacketType.SUBSCRIBE:
            length, offset = _variable_int(body, 2)
            offset += length
            codes = bytearray()
            while offset < len(body):
                _, offset = _utf8_string(body, offset)
                codes.append(code)
                offset += 1
            return packet(PacketType.SUBACK, 0, body[:2] + props + bytes(codes))
        if kind is PacketType.PUBLISH:
            qos = raw[0] >> 1 & 0x03
            if not qos:
                return b""
            _, offset = _utf8_string(body, 0)
            reply = PacketType.PUBACK if qos == 1 else PacketType.PUBREC
            return packet(reply, 0, body[offset : offset + 2] + bytes([code]) + props)
        raise ValueError(f"no refusal for {kind.name}")


def reason_properties(text: str) -> bytes:
    """MQTT 5 properties holding one Reason String (0x1F), with their length in front."""
    raw = text.encode()
    props = b"\x1f" + struct.pack("!H", len(raw)) + raw
    return encode_remaining_length(len(props)) + props


def _variable_int(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def _read_exactly(reader: io.BufferedReader, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = reader.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_packet(reader: io.BufferedReader) -> bytes | None:
    """One whole packet from the stream, or None at end of stream."""
    first = _read_exactly(reader, 1)
    if first is None:
        return None
    header = bytearray(first)
    length = 0
    for shift in range(0, 28, 7):
        byte = _read_exactly(reader, 1)
        if byte is None:
            return None
        header += byte
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
    body = _read_exactly(reader, length) if length else b""
    if body is None:
        return None
    return bytes(header) + body


def _connect_client_id(raw: bytes) -> str:
    body = raw[_header_length(raw) :]
    _, offset = _utf8_string(body, 0)  # protocol name
    level = body[offset]
    offset += 1 + 1 + 2  # protocol level, connect flags, keep alive
    if level == 5:  # MQTT 5 §3.1.2.11: properties, their length a variable byte integer
        length, offset = _variable_int(body, offset)
        offset += length
    client_id, _ = _utf8_string(body, offset)
    return client_id.decode(errors="replace")
