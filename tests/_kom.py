"""Helpers for tests that run kom against a real broker: configs, clients, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from kom import Config, Kom, Update, loads

WAIT = 10.0


def config(body: str, **line: Any) -> Config:
    """A configuration: `line` keys become the [line] table, `body` is the rest of the file."""
    rows = "\n".join(f"{key} = {_toml(value)}" for key, value in line.items())
    return loads(f"[line]\n{rows}\n{body}")


def text_station(prefix: str, name: str = "s", out: str = "out") -> str:
    """A station on `{prefix}/in` with a text input `data` (the payload) and a text output
    `cmd` that publishes its value to `{prefix}/{out}`."""
    return f"""
[[station]]
name = "{name}"
address = "{prefix}/in"
[[station.tag]]
name = "data"
type = "TxtI"
address = "IN_DATA"
[[station.tag]]
name = "cmd"
type = "TxtO"
publish = {{ topic = "{prefix}/{out}", payload = "{{value}}" }}
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


class Collector:
    """An update callback that keeps every update and lets a test wait for some."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self._cond = threading.Condition()

    def __call__(self, updates: Sequence[Update]) -> None:
        with self._cond:
            self.updates.extend(updates)
            self._cond.notify_all()

    def values(self, tag: str) -> list[Any]:
        with self._cond:
            return [u.value for u in self.updates if u.tag == tag]

    def of(self, tag: str) -> list[Update]:
        with self._cond:
            return [u for u in self.updates if u.tag == tag]

    def wait(self, check: Callable[[list[Update]], bool], timeout: float = WAIT) -> list[Update]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check(self.updates):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(u.tag, u.value, u.reason) for u in self.updates[-8:]]
                    raise TimeoutError(f"condition not met within {timeout} s; last updates {tail}")
                self._cond.wait(left)
            return list(self.updates)

    def wait_count(self, tag: str, count: int, timeout: float = WAIT) -> list[Any]:
        self.wait(lambda us: sum(1 for u in us if u.tag == tag) >= count, timeout)
        return self.values(tag)


def wait_until(check: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


class Publisher:
    """A plain paho client that publishes test messages (and may subscribe)."""

    def __init__(self, port: int, client_id: str = "", **kwargs: Any) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        self.received: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, what="publisher connected")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(WAIT)

    def messages(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.received if topic is None or m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(cfg: Config, collector: Collector | None = None, **kwargs: Any) -> Kom:
    kom = Kom(cfg, collector, **kwargs)
    kom.start()
    return kom


def by_tag(updates: Iterable[Update], tag: str) -> list[Update]:
    return [u for u in updates if u.tag == tag]
