"""Errors of the protocol core: the peer broke the protocol, or the caller asked for something
the protocol does not allow in this state."""

from __future__ import annotations

from ._reasons import reason_name


class MQTTError(Exception):
    """Root of the protocol core's errors; `code` is the MQTT 5 reason code that fits."""

    code = 0x82

    def __init__(self, message: str, code: int | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message)

    @property
    def reason(self) -> str:
        return reason_name(self.code)


class ProtocolError(MQTTError):
    """What the broker sent breaks the protocol (malformed packet, wrong packet now, ...)."""


class MalformedPacket(ProtocolError):
    """A packet that cannot be decoded (MQTT 5 §4.13: Malformed Packet, 0x81)."""

    code = 0x81


class LocalProtocolError(MQTTError, RuntimeError):
    """The caller asked for something illegal in the connection's state (a bug in kom)."""


class PacketTooLarge(MQTTError, ValueError):
    """A packet kom would send is bigger than the broker's Maximum Packet Size (0x95)."""

    code = 0x95


class NotAllowed(MQTTError, ValueError):
    """A PUBLISH the broker said it does not take (MQTT 5 CONNACK: Maximum QoS 0x9B, Retain
    Available 0x9A); sent anyway, the broker would close the connection."""

    code = 0x9B
