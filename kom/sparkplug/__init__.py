"""Sparkplug B (Eclipse Sparkplug 3.0.0): kom as a host application (SPEC §14).

`_payload` decodes and encodes the protobuf payload, `_host` keeps each edge node's state
(births, aliases, seq, bdSeq) without I/O, `_station` turns metrics into tag updates on a
line, `_discover` lists what BIRTHs declared (the edge node simulator for tests and the demo,
is `kom.sim._sparkplug_sim`).
The package imports nothing itself: kom's configuration reads its topic rules without
loading protobuf.
"""
