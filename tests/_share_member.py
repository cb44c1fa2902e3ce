"""A paho subscriber for the shared-subscription measurements, run as its own process so that
a test can SIGKILL it (no DISCONNECT): `python tests/_share_member.py PORT ID PROTOCOL EXPIRY
ACK FILTER`. It prints `connected session_present=N` and then `PAYLOAD DUP` a message; with
ACK 0 it never acknowledges a message (PUBACK held, as kom holds it until the sink commits).
PROTOCOL is 3.1.1 (EXPIRY > 0: clean session off; 0: on) or 5 (EXPIRY: the session expiry
interval, clean start off).
"""

from __future__ import annotations

import sys
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    port, client_id, protocol, expiry, ack, topic_filter = sys.argv[1:7]
    v5 = protocol == "5"
    kwargs: dict[str, Any] = {} if v5 else {"clean_session": int(expiry) == 0}
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        **kwargs,
    )
    client.manual_ack_set(ack == "0")

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        print(f"connected session_present={int(flags.session_present)}", flush=True)
        c.subscribe(topic_filter, 1)

    def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        print(f"{message.payload.decode()} {int(message.dup)}", flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(expiry)
        client.connect("127.0.0.1", int(port), clean_start=False, properties=props)
    else:
        client.connect("127.0.0.1", int(port))
    client.loop_forever()


if __name__ == "__main__":
    main()
