"""Simulated devices for tests and the demo; the models here are pure (no I/O).

The simulators around them (`NetioSimulator`, `run_netio` behind `kom sim netio`) own a
thread and an MQTT session each.
"""

from ._netio_model import NetioDevice
from ._netio_sim import NetioSimulator, parse_broker, run_netio

__all__ = ["NetioDevice", "NetioSimulator", "parse_broker", "run_netio"]
