"""Hypothesis strategies for MQTT packets and properties, for MQTT 3.1.1 (`v5=False`) and 5.0."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kom import mqtt
from kom.mqtt._properties import BIN, BYTE, PAIR, PROPERTIES, STR, U16, U32, VARINT

#: MQTT strings: UTF-8 without U+0000 (MQTT 3.1.1 §1.5.3) and without surrogates.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
topics = texts.filter(bool).map(str.encode)
packet_ids = st.integers(1, 0xFFFF)

_VALUES: dict[str, st.SearchStrategy[Any]] = {
    BYTE: st.integers(0, 0xFF),
    U16: st.integers(0, 0xFFFF),
    U32: st.integers(0, 0xFFFF_FFFF),
    VARINT: st.integers(1, 268_435_455),
    STR: texts,
    BIN: st.binary(max_size=12),
    PAIR: st.tuples(texts, texts),
}


def properties(packet: str) -> st.SearchStrategy[dict[str, Any]]:
    """Any set of the MQTT 5 properties `packet` allows, each with a value of its type."""
    allowed = {name: kind for name, kind, where in PROPERTIES.values() if packet in where}
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for name, kind in allowed.items():
        if name == "user_property":
            parts[name] = st.lists(_VALUES[PAIR], min_size=1, max_size=3).map(tuple)
        elif name == "subscription_identifier":
            most = 3 if packet == "PUBLISH" else 1
            parts[name] = st.lists(_VALUES[VARINT], min_size=1, max_size=most).map(tuple)
        else:
            parts[name] = _VALUES[kind]
    return st.fixed_dictionaries({}, optional=parts)  # type: ignore[arg-type]


def _props(packet: str, v5: bool) -> st.SearchStrategy[dict[str, Any]]:
    return properties(packet) if v5 else st.just({})


def packets(v5: bool) -> st.SearchStrategy[mqtt.Packet]:
    """Any of the 15 control packets (14 in MQTT 3.1.1: no AUTH) that the version can carry."""
    return st.one_of(*packets_by_type(v5).values())


def packets_by_type(v5: bool) -> dict[str, st.SearchStrategy[Any]]:
    """A strategy for each control packet the version can carry, by the packet's name: a
    round trip of each type alone draws enough of them to reach every field and flag."""
    code = st.integers(0, 0xFF) if v5 else st.just(0)

    def ack(cls: type[Any], name: str) -> st.SearchStrategy[Any]:
        return st.builds(cls, packet_ids, code, _props(name, v5))

    will = st.builds(
        mqtt.Will,
        texts,
        st.binary(max_size=20),
        st.integers(0, 2),
        st.booleans(),
        _props("WILL", v5),
    )
    connect = st.builds(
        mqtt.Connect,
        texts,
        st.booleans(),
        st.integers(0, 0xFFFF),
        st.none() | texts,
        st.none() | st.binary(max_size=12),
        st.none() | will,
        _props("CONNECT", v5),
        st.just(5 if v5 else 4),
    )
    publish = st.integers(0, 2).flatmap(
        lambda qos: st.builds(
            mqtt.Publish,
            topics,
            st.binary(max_size=40),
            st.just(qos),
            st.booleans(),
            st.booleans() if qos else st.just(False),
            packet_ids if qos else st.just(0),
            _props("PUBLISH", v5),
        )
    )
    option = st.booleans() if v5 else st.just(False)
    subscription = st.builds(
        mqtt.Subscription,
        texts.filter(bool),
        st.integers(0, 2),
        option,
        option,
        st.integers(0, 2) if v5 else st.just(0),
    )
    suback_codes = st.integers(0, 0xFF) if v5 else st.sampled_from([0, 1, 2, 0x80])
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "CONNECT": connect,
        "CONNACK": st.builds(
            mqtt.Connack, st.booleans(), st.integers(0, 0xFF), _props("CONNACK", v5)
        ),
        "PUBLISH": publish,
        "PUBACK": ack(mqtt.Puback, "PUBACK"),
        "PUBREC": ack(mqtt.Pubrec, "PUBREC"),
        "PUBREL": ack(mqtt.Pubrel, "PUBREL"),
        "PUBCOMP": ack(mqtt.Pubcomp, "PUBCOMP"),
        "SUBSCRIBE": st.builds(
            mqtt.Subscribe,
            packet_ids,
            st.lists(subscription, min_size=1, max_size=3).map(tuple),
            _props("SUBSCRIBE", v5),
        ),
        "SUBACK": st.builds(
            mqtt.Suback,
            packet_ids,
            st.lists(suback_codes, min_size=1, max_size=3).map(tuple),
            _props("SUBACK", v5),
        ),
        "UNSUBSCRIBE": st.builds(
            mqtt.Unsubscribe,
            packet_ids,
            st.lists(texts.filter(bool), min_size=1, max_size=3).map(tuple),
            _props("UNSUBSCRIBE", v5),
        ),
        "UNSUBACK": st.builds(
            mqtt.Unsuback,
            packet_ids,
            st.lists(st.integers(0, 0xFF), max_size=3).map(tuple) if v5 else st.just(()),
            _props("UNSUBACK", v5),
        ),
        "PINGREQ": st.just(mqtt.Pingreq()),
        "PINGRESP": st.just(mqtt.Pingresp()),
        "DISCONNECT": st.builds(mqtt.Disconnect, code, _props("DISCONNECT", v5)),
    }
    if v5:
        by_type["AUTH"] = st.builds(mqtt.Auth, code, _props("AUTH", v5))
    return by_type
