"""Reason codes by name: MQTT 5 §2.4 and the CONNACK return codes of MQTT 3.1.1 §3.2.2.3."""

from __future__ import annotations

#: MQTT 5 §2.4, table 2-6. Codes below 0x80 are successes, 0x80 and above failures. 0x00 is
#: "Success" for most packets, "Normal disconnection" in DISCONNECT and "Granted QoS 0" in SUBACK.
REASON_NAMES: dict[int, str] = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x11: "No subscription existed",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}

#: MQTT 3.1.1 §3.2.2.3, table 3.1: CONNACK return codes. 6-255 are reserved.
CONNACK_311: dict[int, str] = {
    0: "Connection Accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "Server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

#: SUBACK in MQTT 3.1.1 (§3.9.3): 0x80 is the one failure.
SUBACK_FAILURE = 0x80

#: CONNACK codes meaning "the broker does not speak this protocol version": 3.1.1's 1 and
#: MQTT 5's 0x84 (a 3.1.1 broker answers a version-5 CONNECT with return code 1).
UNSUPPORTED_VERSION = frozenset({1, 0x84})


def reason_name(code: int, *, packet: str = "", v5: bool = True) -> str:
    """The name of a reason code, with the code itself: `Not authorized (0x87)`.

    `packet` picks the meaning of the codes that depend on it (0x00 in DISCONNECT and SUBACK,
    the return codes of a 3.1.1 CONNACK).
    """
    if packet == "CONNACK" and (not v5 or 0 < code < 0x80):
        # Below 0x80 a version-5 CONNACK has no failure codes: a 3.1.1 broker answered.
        name = CONNACK_311.get(code, "reserved return code")
        return f"{name} ({code})"
    if packet == "DISCONNECT" and code == 0:
        name = "Normal disconnection"
    elif packet == "SUBACK" and code == 0:
        name = "Granted QoS 0"
    elif packet == "SUBACK" and code == 0x80 and not v5:
        name = "Failure"
    else:
        name = REASON_NAMES.get(code, "unknown reason code")
    return f"{name} (0x{code:02X})"


def is_failure(code: int) -> bool:
    """MQTT 5 §2.4: reason codes of 0x80 and above say the request failed."""
    return code >= 0x80
