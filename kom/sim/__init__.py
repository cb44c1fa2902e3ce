"""Simulated devices for tests and the demo; the models here are pure (no I/O).

The simulators around them (`NetioSimulator`, `run_netio` behind `kom sim netio`, and the
Sparkplug edge node in `_sparkplug_sim`) own a thread and an MQTT session each: paho-mqtt
(public API) is their client, as a device's own would be. Nothing else in kom imports paho.
"""

from ._netio_model import NetioDevice
from ._netio_sim import NetioSimulator, parse_broker, run_netio

__all__ = ["NetioDevice", "NetioSimulator", "parse_broker", "run_netio"]
