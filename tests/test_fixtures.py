"""The test fixtures themselves work: real brokers, the fault proxy and the fake broker."""

from __future__ import annotations

import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests._broker import BrokerError, BrokerFactory, Mosquitto
from tests._fakebroker import FakeBroker, PacketType, packet, packet_id
from tests._proxy import FaultProxy, Mode

TIMEOUT = 5.0
# How long "silent" must last before a test believes it; far longer than a loopback round trip.
QUIET = 0.3


class Peer:
    """A paho client with its network loop in a thread, its messages in a queue."""

    def __init__(self, client_id: str, **options: Any) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **options)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            # Otherwise paho's loop sleeps a second before retrying, and loop_stop() waits for it.
            client.disconnect()
        self.connack.put((reason_code, flags.session_present))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: object,
    ) -> None:
        self.subacks.put(mid)

    def connect(self, host: str, port: int) -> tuple[ReasonCode, bool]:
        """Connect, start the loop and return the CONNACK's reason code and session present."""
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        return self.connack.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        _, mid = self.client.subscribe(topic, qos)
        assert self.subacks.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait until the broker has it (PUBACK for QoS 1)."""
        self.client.publish(topic, payload, qos).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        """Disconnect cleanly, stop the loop and close paho's sockets."""
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes its wake-up socket pair only in __del__, which the garbage collector may
        # run after the sockets' own finalizers: a ResourceWarning (paho.mqtt.python#627).
        self.client._reset_sockets()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """Make paho clients that are disconnected after the test."""
    made: list[Peer] = []

    def make(client_id: str, **options: Any) -> Peer:
        peer = Peer(client_id, **options)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def raw_connect(host: str, port: int, client_id: str = "raw") -> socket.socket:
    """Open a TCP connection and send an MQTT 3.1.1 CONNECT (clean session, keep alive 60)."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(name)) + name
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        sock.sendall(packet(PacketType.CONNECT, 0, body))
    except BaseException:
        sock.close()
        raise
    return sock


def recv_exactly(sock: socket.socket, size: int, timeout: float = TIMEOUT) -> bytes:
    """Read `size` bytes or fail on timeout or end of stream."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"end of stream after {data!r}")
        data += chunk
    return data


def is_silent(sock: socket.socket) -> bool:
    """Whether nothing arrives on the socket for QUIET seconds."""
    sock.settimeout(QUIET)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    return False


CONNACK_OK = packet(PacketType.CONNACK, 0, b"\x00\x00")
PINGREQ = packet(PacketType.PINGREQ, 0, b"")
PINGRESP = packet(PacketType.PINGRESP, 0, b"")


# -- Mosquitto ----------------------------------------------------------------------------------


def test_broker_round_trip(
    broker: Mosquitto, peers: Callable[..., Peer], topic_prefix: str
) -> None:
    """A message published to the test's broker reaches a subscriber, and the log counts both."""
    subscriber, publisher = peers("rt-sub"), peers("rt-pub")
    assert subscriber.connect(broker.host, broker.port)[0] == 0
    subscriber.subscribe(f"{topic_prefix}/#")
    assert publisher.connect(broker.host, broker.port)[0] == 0
    publisher.publish(f"{topic_prefix}/a", b"hello")
    message = subscriber.messages.get(timeout=TIMEOUT)
    assert (message.topic, message.payload) == (f"{topic_prefix}/a", b"hello")
    assert broker.connections("rt-sub") == 1
    assert broker.connections("rt-pub") == 1
    assert broker.address == f"127.0.0.1:{broker.port}"
    assert broker.port != 1883


def test_broker_tls_round_trip(
    broker_factory: BrokerFactory, peers: Callable[..., Peer], topic_prefix: str
) -> None:
    """A TLS broker serves a client that trusts its CA and checks the host name."""
    broker = broker_factory(tls=True)
    peer = peers("tls")
    peer.client.tls_set(ca_certs=broker.ca_file)
    assert peer.connect("localhost", broker.port)[0] == 0
    peer.subscribe(f"{topic_prefix}/t")
    peer.publish(f"{topic_prefix}/t", b"secret")
    assert peer.messages.get(timeout=TIMEOUT).payload == b"secret"


def test_broker_tls_rejects_wrong_ca(broker_factory: BrokerFactory) -> None:
    """A client trusting another CA fails certificate verification."""
    broker = broker_factory(tls=True)
    other = broker_factory(tls=True, start=False)
    # Plain ssl, not paho: paho leaks the socket of a failed handshake.
    context = ssl.create_default_context(cafile=other.ca_file)
    with (
        socket.create_connection((broker.host, broker.port), timeout=TIMEOUT) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="localhost").close()


def test_broker_client_certificate(
    broker_factory: BrokerFactory, peers: Callable[..., Peer]
) -> None:
    """With require_certificate, a client certificate from the CA is accepted."""
    broker = broker_factory(tls=True, require_certificate=True)
    peer = peers("cert")
    peer.client.tls_set(
        ca_certs=broker.ca_file, certfile=broker.client_cert_file, keyfile=broker.client_key_file
    )
    assert peer.connect("127.0.0.1", broker.port)[0] == 0


def test_broker_password_accepted_and_refused(
    broker_factory: BrokerFactory, peers: Callable[..., Peer]
) -> None:
    """A broker with users accepts the right password and refuses a wrong one or none."""
    broker = broker_factory(users={"scada": "s3cret", "other": "x"})
    good = peers("pw-good")
    good.client.username_pw_set("scada", "s3cret")
    assert good.connect(broker.host, broker.port)[0] == 0
    for client_id, credentials in (("pw-bad", ("scada", "wrong")), ("pw-none", None)):
        bad = peers(client_id)
        if credentials is not None:
            bad.client.username_pw_set(*credentials)
        reason, _ = bad.connect(broker.host, broker.port)
        assert reason.is_failure, reason


def test_broker_websockets_round_trip(
    broker_factory: BrokerFactory, peers: Callable[..., Peer], topic_prefix: str
) -> None:
    """A websockets client and a TCP client talk through one broker."""
    broker = broker_factory(websockets=True)
    ws, tcp = peers("ws", transport="websockets"), peers("tcp")
    assert ws.connect(broker.host, broker.ws_port)[0] == 0
    ws.subscribe(f"{topic_prefix}/w")
    assert tcp.connect(broker.host, broker.port)[0] == 0
    tcp.publish(f"{topic_prefix}/w", b"over ws")
    assert ws.messages.get(timeout=TIMEOUT).payload == b"over ws"
    assert broker.connections("ws") == 1


def test_broker_restart_keeps_persistent_session(
    broker_factory: BrokerFactory, peers: Callable[..., Peer], topic_prefix: str
) -> None:
    """A QoS 1 message queued for an offline persistent session survives stop() and restart()."""
    broker = broker_factory(persistence=True)
    topic = f"{topic_prefix}/queued"
    first = peers("persistent", clean_session=False)
    first.connect(broker.host, broker.port)
    first.subscribe(topic, qos=1)
    first.close()
    publisher = peers("persist-pub")
    publisher.connect(broker.host, broker.port)
    publisher.publish(topic, b"kept", qos=1)
    publisher.close()
    port = broker.port
    broker.stop()
    broker.restart()
    assert broker.port == port
    again = peers("persistent", clean_session=False)
    reason, session_present = again.connect(broker.host, broker.port)
    assert not reason.is_failure
    assert session_present
    message = again.messages.get(timeout=TIMEOUT)
    assert (message.topic, message.payload, message.qos) == (topic, b"kept", 1)
    assert broker.connections("persistent") == 2
    assert "mosquitto.db" in broker.log()


def test_broker_pause_makes_it_silent(broker: Mosquitto) -> None:
    """A paused broker answers nothing until resumed, then answers what it was sent."""
    sock = raw_connect(broker.host, broker.port)
    with sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        broker.pause()
        sock.sendall(PINGREQ)
        assert is_silent(sock)
        broker.resume()
        assert recv_exactly(sock, 2) == PINGRESP


def test_broker_kill_and_restart(broker: Mosquitto) -> None:
    """kill() drops connections at once; restart() serves the same port again."""
    sock = raw_connect(broker.host, broker.port, "killed")
    with sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        broker.kill()
        assert not broker.running
        with pytest.raises((ConnectionError, OSError)):
            recv_exactly(sock, 1)
    broker.restart()
    with raw_connect(broker.host, broker.port, "killed") as again:
        assert recv_exactly(again, 4) == CONNACK_OK
    broker.wait_for_log("as killed (", count=2)
    assert broker.connections("killed") == 2


def test_broker_bad_config_reports_the_log(broker_factory: BrokerFactory) -> None:
    """A config mosquitto rejects raises BrokerError carrying mosquitto's own complaint."""
    with pytest.raises(BrokerError, match='Unknown configuration variable "bogus_option"'):
        broker_factory(extra=["bogus_option 1"])


def test_broker_close_removes_everything(broker_factory: BrokerFactory) -> None:
    """close() ends the process and removes the temporary directory, even when paused."""
    broker = broker_factory(persistence=True)
    broker.pause()
    directory = broker.directory
    broker.close()
    assert not broker.running
    assert not directory.exists()


# -- FaultProxy ---------------------------------------------------------------------------------


@pytest.fixture
def proxy(broker: Mosquitto) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test's broker."""
    with FaultProxy(broker.host, broker.port) as instance:
        yield instance


def test_proxy_pass_through(
    proxy: FaultProxy, peers: Callable[..., Peer], topic_prefix: str
) -> None:
    """Through the proxy in pass-through mode a paho client works as if connected directly."""
    peer = peers("via-proxy")
    assert peer.connect(proxy.host, proxy.port)[0] == 0
    peer.subscribe(f"{topic_prefix}/p")
    peer.publish(f"{topic_prefix}/p", b"through")
    assert peer.messages.get(timeout=TIMEOUT).payload == b"through"
    assert proxy.active == 1
    assert proxy.mode is Mode.PASS


def test_proxy_blackhole_holds_then_releases(proxy: FaultProxy) -> None:
    """A blackhole forwards nothing but keeps the socket; pass_through() lets held bytes flow."""
    with raw_connect(proxy.host, proxy.port) as sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        proxy.blackhole()
        sock.sendall(PINGREQ)
        assert is_silent(sock)
        proxy.pass_through()
        assert recv_exactly(sock, 2) == PINGRESP


def test_proxy_reset_aborts_connections(proxy: FaultProxy) -> None:
    """reset() aborts open connections with RST, and later connections still get through."""
    with raw_connect(proxy.host, proxy.port) as sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            recv_exactly(sock, 1)
    with raw_connect(proxy.host, proxy.port) as again:
        assert recv_exactly(again, 4) == CONNACK_OK


def test_proxy_refuse_closes_new_connections(proxy: FaultProxy) -> None:
    """In refuse mode a new connection is closed at once while an open one goes on."""
    with raw_connect(proxy.host, proxy.port, "open") as sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        proxy.refuse()
        with pytest.raises((ConnectionError, OSError)), raw_connect(proxy.host, proxy.port) as new:
            recv_exactly(new, 4)
        sock.sendall(PINGREQ)
        assert recv_exactly(sock, 2) == PINGRESP


def test_proxy_latency_delays_each_direction(proxy: FaultProxy) -> None:
    """With latency d, a request-response round trip takes at least 2 d."""
    delay = 0.1
    with raw_connect(proxy.host, proxy.port) as sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        proxy.latency(delay)
        started = time.monotonic()
        sock.sendall(PINGREQ)
        assert recv_exactly(sock, 2) == PINGRESP
        assert time.monotonic() - started >= 2 * delay


def test_proxy_only_targets_loopback() -> None:
    """The proxy refuses a target that is not a loopback address."""
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 1883)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("example.com", 1883)


# -- FakeBroker ---------------------------------------------------------------------------------


def test_fake_broker_delivers_invalid_utf8_topic(peers: Callable[..., Peer]) -> None:
    """The fake broker sends a non-UTF-8 topic and records the client's PUBACKs in order."""
    with FakeBroker() as fake:
        peer = peers("fake-client")
        assert peer.connect(fake.host, fake.port)[0] == 0
        peer.subscribe("bad/#", qos=1)
        assert fake.client_ids == ["fake-client"]
        assert fake.send_publish(b"bad/\xff", b"raw", qos=1, packet_id=7) == 7
        assert fake.send_publish(b"bad/ok", b"fine", qos=1) == 1
        first, second = peer.messages.get(timeout=TIMEOUT), peer.messages.get(timeout=TIMEOUT)
        # paho has no public raw topic; .topic decodes and raises.
        assert first._topic == b"bad/\xff"
        with pytest.raises(UnicodeDecodeError):
            _ = first.topic
        assert (second.topic, second.payload) == ("bad/ok", b"fine")
        pubacks = fake.wait_for(PacketType.PUBACK, count=2)
        assert [packet_id(raw) for raw in pubacks] == [7, 1]
        kinds = [kind for kind, _ in fake.received]
        assert kinds[:2] == [PacketType.CONNECT, PacketType.SUBSCRIBE]
        # Disconnect before the fake broker goes, or paho waits a second to reconnect.
        peer.close()


def test_fake_broker_can_be_silent() -> None:
    """With ignore_pingreq the fake broker leaves PINGREQ unanswered but still records it."""
    with FakeBroker() as fake, raw_connect(fake.host, fake.port) as sock:
        assert recv_exactly(sock, 4) == CONNACK_OK
        sock.sendall(PINGREQ)
        assert recv_exactly(sock, 2) == PINGRESP
        fake.ignore_pingreq = True
        sock.sendall(PINGREQ)
        assert is_silent(sock)
        assert len(fake.wait_for(PacketType.PINGREQ, count=2)) == 2


def test_fake_broker_refuses_with_return_code() -> None:
    """A fake broker made with return_code=5 answers CONNECT with 'not authorized'."""
    with FakeBroker(return_code=5) as fake, raw_connect(fake.host, fake.port) as sock:
        assert recv_exactly(sock, 4) == packet(PacketType.CONNACK, 0, b"\x00\x05")


def test_fake_broker_serves_the_next_client_after_a_drop() -> None:
    """After drop_client() the fake broker accepts the client's reconnection."""
    got_dropped = threading.Event()
    with FakeBroker() as fake:
        with raw_connect(fake.host, fake.port, "first") as sock:
            assert recv_exactly(sock, 4) == CONNACK_OK
            fake.drop_client()
            try:
                recv_exactly(sock, 1)
            except (ConnectionError, OSError):
                got_dropped.set()
        assert got_dropped.is_set()
        with raw_connect(fake.host, fake.port, "second") as sock:
            assert recv_exactly(sock, 4) == CONNACK_OK
        assert fake.client_ids == ["first", "second"]
