"""BIN= addresses: binary fields in JSON text or in the payload itself (SPEC §15)."""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom._address import AddressSyntaxError, Kind, parse_address
from kom._binary import TYPES, BinaryDataError, BinaryField, decode_text, field_reader, trace
from kom._config import load, loads
from kom._core import LineCore
from kom._errors import ConfigError
from kom._model import Reason, Value
from kom._station import Message

from .test_decode import core_of, values

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
T0 = datetime(2026, 11, 22, 10, 0, 0, 600_000, tzinfo=UTC)


def as_is(raw: object) -> Value:
    """The unpacked number itself (the converter a BIN= reader hands it to)."""
    return cast(Value, raw)


def results(core: LineCore, topic: str, payload: bytes) -> dict[str, Value | Reason | None]:
    """Each tag's value, or its reason when invalid, for one message."""
    return values(core.process(Message(topic, payload, T0)).updates)


# --- the address -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "source", "offset", "kind"),
    [
        ("BIN=uplink_message.frm_payload@0:i16be", ("uplink_message", "frm_payload"), 0, "i16be"),
        ("bin=data@5:bit0", ("data",), 5, "bit0"),
        ("BIN= data @ 2 : u8 ", ("data",), 2, "u8"),
        ("BIN=$@3:f32le", None, 3, "f32le"),
        ("BIN=data@0:U16BE", ("data",), 0, "u16be"),
        ("BIN=rx[1].raw@10:u32le", ("rx", 0, "raw"), 10, "u32le"),
        ('BIN=["a@b"]@1:i8', ("a@b",), 1, "i8"),
    ],
)
def test_address_accepted(
    text: str, source: tuple[str | int, ...] | None, offset: int, kind: str
) -> None:
    """A BIN= address names its text field (JA= syntax, or $), a byte offset and a type."""
    address = parse_address(text)
    assert address.kind is Kind.BINARY
    assert address.binary == BinaryField(source, offset, kind)
    assert address.is_json is (source is not None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BIN=data", "BIN= takes <json address>@<offset>:<type>"),
        ("BIN=data@0", "expected <offset>:<type>"),
        ("BIN=data@-1:u8", "expected <offset>:<type>"),
        ("BIN=data@0:u24be", "unknown binary type 'u24be'"),
        ("BIN=data@0:bit8", "unknown binary type 'bit8'"),
        ("BIN=@0:u8", "needs a JSON address before '@'"),
        ("BIN=data[0]@0:u8", "indexes start at 1"),
        ("BIN=data@999999999999:u8", "beyond any payload"),
    ],
)
def test_address_refused(text: str, message: str) -> None:
    """A malformed BIN= address is refused with what was expected."""
    with pytest.raises(AddressSyntaxError, match=message.replace("[", r"\[")):
        parse_address(text)


# --- decoding: a table, then every type round trip -------------------------------------------


@pytest.mark.parametrize(
    ("data", "offset", "kind", "value"),
    [
        ("09297b0bc401", 0, "i16be", 2345),
        ("fdda", 0, "i16be", -550),
        ("fdda", 0, "u16be", 64986),
        ("dafd", 0, "i16le", -550),
        ("09297b0bc401", 2, "u8", 123),
        ("ff", 0, "i8", -1),
        ("ff", 0, "u8", 255),
        ("00000000ffffffff", 4, "u32be", 4294967295),
        ("ffffffff", 0, "i32le", -1),
        ("41bc0000", 0, "f32be", 23.5),
        ("0000bc41", 0, "f32le", 23.5),
        ("3ff8000000000000", 0, "f64be", 1.5),
        ("000000000000f83f", 0, "f64le", 1.5),
        ("05", 0, "bit0", True),
        ("05", 0, "bit1", False),
        ("05", 0, "bit2", True),
        ("80", 0, "bit7", True),
    ],
)
def test_decoded_value(data: str, offset: int, kind: str, value: object) -> None:
    """Known bytes read as the documented number (bit n: 0 is the least significant)."""
    read = field_reader(BinaryField(("d",), offset, kind), "hex", as_is)
    assert read(data) == value


_VALUES = {
    name: (
        st.floats(width=32 if name.startswith("f32") else 64)
        if name.startswith("f")
        else st.integers(
            *(
                (-(2 ** (8 * struct.calcsize(fmt) - 1)), 2 ** (8 * struct.calcsize(fmt) - 1) - 1)
                if name.startswith("i")
                else (0, 2 ** (8 * struct.calcsize(fmt)) - 1)
            )
        )
    )
    for name, (fmt, _what) in TYPES.items()
}


@given(
    st.sampled_from(sorted(TYPES)).flatmap(lambda kind: st.tuples(st.just(kind), _VALUES[kind])),
    st.binary(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["base64", "hex", "raw"]),
)
def test_round_trip(
    case: tuple[str, int | float], before: bytes, after: bytes, encoding: str
) -> None:
    """struct.pack at any offset, written in any encoding, reads back as the same number."""
    kind, value = case
    data = before + struct.pack(TYPES[kind][0], value) + after
    text: object = {
        "base64": base64.b64encode(data).decode(),
        "hex": data.hex(),
        "raw": data,
    }[encoding]
    got = field_reader(BinaryField(None, len(before), kind), encoding, as_is)(text)
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(got, float)
        assert math.isnan(got)
    else:
        assert got == value


@given(st.binary(min_size=1, max_size=8), st.data())
def test_bits_round_trip(data: bytes, draw: st.DataObject) -> None:
    """bit<n> of the byte at the offset is that bit of the byte, as a bool."""
    offset = draw.draw(st.integers(0, len(data) - 1))
    bit = draw.draw(st.integers(0, 7))
    read = field_reader(BinaryField(None, offset, f"bit{bit}"), "raw", as_is)
    assert read(data) is bool(data[offset] & (1 << bit))


@given(st.binary(max_size=16), st.sampled_from(sorted(TYPES)))
def test_too_short_is_refused(data: bytes, kind: str) -> None:
    """A field that reaches past the end of the data is a BinaryDataError, never an exception."""
    field = BinaryField(None, len(data), kind)
    with pytest.raises(BinaryDataError, match=f"needs {len(data) + field.size} bytes"):
        field_reader(field, "raw", as_is)(data)


@pytest.mark.parametrize(
    ("raw", "encoding", "message"),
    [
        ("CSl7C8Q", "base64", "not base64"),
        ("CSl7C8Q*", "base64", "not base64"),
        ("0929 7b", "hex", None),
        ("0g", "hex", "^not hex: 'g' is not a hex digit in '0g'$"),
        ("092", "hex", r"^not hex: an odd number of hex digits \(3\) in '092'$"),
        ("09 2", "hex", r"^not hex: an odd number of hex digits \(3\)"),
        (12, "base64", "expected base64 text, found 12"),
        (None, "hex", "expected hex text, found null"),
        (b"\xff", "base64", "non-ASCII"),
        (["AQ=="], "base64", "expected base64 text"),
    ],
)
def test_undecodable_text(raw: object, encoding: str, message: str | None) -> None:
    """Text that is not in its encoding is a BinaryDataError; hex may have blanks between bytes."""
    if message is None:
        assert decode_text(raw, encoding) == bytes.fromhex("09297b")
        return
    with pytest.raises(BinaryDataError, match=message):
        decode_text(raw, encoding)


# --- through the core: types, reasons, the payload itself -----------------------------------------

JSON_LINE = """
    [line]
    host = "broker"
    payload_type = "json"

    [[station]]
    name = "s"
    address = "up"
    [[station.tag]]
    name = "temp"
    type = "Ai"
    address = "BIN=data@0:i16be"
    scale = [0.01, 0]
    [[station.tag]]
    name = "open"
    type = "Di"
    address = "BIN=data@5:bit0"
    [[station.tag]]
    name = "flag"
    type = "Di"
    address = "BIN=data@2:u8"
    [[station.tag]]
    name = "raw"
    type = "TxtI"
    address = "BIN=hexdata@0:u16le"
    encoding = "hex"
    [[station.tag]]
    name = "rssi"
    type = "Ai"
    address = "JA=rssi"
"""


def test_json_fields_through_the_core() -> None:
    """BIN= tags read base64 and hex fields, scale them, and a number the type refuses is `type`."""
    core = core_of(JSON_LINE)
    got = results(core, "up", b'{"data":"CSl7C8QB","hexdata":"3412","rssi":-87}')
    assert got == {"temp": 23.45, "open": True, "flag": Reason.TYPE, "raw": "4660", "rssi": -87.0}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"data":"CSl7","hexdata":"34"}', {"temp": 23.45, "open": Reason.PARSE}),
        (b'{"data":"not base64!","hexdata":"zz"}', {"temp": Reason.PARSE, "raw": Reason.PARSE}),
        (b'{"data":17,"hexdata":null}', {"temp": Reason.PARSE, "raw": Reason.PARSE}),
        (b'{"hexdata":"3412"}', {"temp": Reason.MISSING, "raw": "4660"}),
        (b"not json", {"temp": Reason.PARSE, "raw": Reason.PARSE, "rssi": Reason.PARSE}),
    ],
)
def test_bad_binary_data(payload: bytes, expected: dict[str, object]) -> None:
    """Too short or undecodable data is `parse`; an absent field is `missing`, as with JA=."""
    got = results(core_of(JSON_LINE), "up", payload)
    assert {name: got[name] for name in expected} == expected


def test_parse_detail_names_the_tag_and_the_size() -> None:
    """The detail of a too-short field says how many bytes it needs and how many there are."""
    core = core_of(JSON_LINE)
    updates = core.process(Message("up", b'{"data":"CSl7","hexdata":"34"}', T0)).updates
    (open_,) = [u for u in updates if u.tag == "s.open"]
    assert open_.detail == "s.open: bit0 at offset 5 needs 6 bytes, the data has 3"
    # open and raw (one byte for a u16le) too short, flag 123 for a Di, rssi absent.
    assert core.counters.decode_errors == 4


PAYLOAD_LINE = """
    [line]
    host = "broker"
    payload_type = "json"
    max_payload = 64

    [[station]]
    name = "b"
    address = "bin/(?P<dev>[a-z]+)"
    payload_type = "text"
    [[station.tag]]
    name = "data"
    type = "TxtI"
    address = "IN_DATA"
    [[station.tag]]
    name = "dev"
    type = "TxtI"
    address = "TOPIC=dev"
    [[station.tag]]
    name = "level"
    type = "Ci"
    address = "BIN=$@1:u16le"
    [[station.tag]]
    name = "temp"
    type = "Ai"
    address = "BIN=$@3:f32be"
"""


def test_whole_payload_on_a_text_station() -> None:
    """BIN=$ reads the payload's own bytes, in file order with the topic tags."""
    core = core_of(PAYLOAD_LINE)
    payload = b"\x01" + struct.pack("<H", 513) + struct.pack(">f", -12.5)
    got = results(core, "bin/tank", payload)
    assert got == {"data": Reason.ENCODING, "dev": "tank", "level": 513, "temp": -12.5}
    assert results(core, "bin/tank", b"\x01\x02") == {
        "data": "\x01\x02",
        "dev": "tank",
        "level": Reason.PARSE,
        "temp": Reason.PARSE,
    }
    too_big = results(core, "bin/tank", bytes(65))
    assert too_big["level"] is Reason.PARSE
    assert too_big["data"] is Reason.PARSE


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            'address = "BIN=$@0:u8"',
            'BIN=$ reads the payload as bytes: give the station payload_type = "text"',
        ),
        ('address = "BIN=d@0:u8"\nencoding = "raw"', "'raw' is for BIN=$"),
        ('address = "BIN=d@0:u8"\nencoding = "base32"', "expected one of 'base64', 'hex', 'raw'"),
        ('address = "JA=d"\nencoding = "hex"', "encoding is for BIN= addresses, not JA="),
        (
            'publish = { topic = "x" }\nencoding = "hex"',
            "encoding is for BIN= addresses, not a tag without an address",
        ),
    ],
)
def test_configuration_errors(tag: str, message: str) -> None:
    """BIN=$ needs a text station, `raw` the payload, and `encoding` a BIN= address."""
    text = f"""
    [line]
    host = "broker"
    payload_type = "json"
    [[station]]
    name = "s"
    address = "up"
    [[station.tag]]
    name = "t"
    type = "Co"
    {tag}
    """
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text))
    assert any(message in e for e in info.value.errors), info.value.errors


def test_field_on_a_text_station_is_refused() -> None:
    """BIN= on a JSON field needs a JSON payload, like JA=."""
    text = '[line]\nhost = "b"\n[[station]]\nname = "s"\naddress = "up"\n'
    text += '[[station.tag]]\nname = "t"\ntype = "Ci"\naddress = "BIN=d@0:u8"\n'
    with pytest.raises(ConfigError, match='BIN= needs payload_type = "json"'):
        loads(text)


def test_trace_shows_the_bytes() -> None:
    """The explanation `kom route` prints names the bytes read and the whole data."""
    field = BinaryField(("data",), 3, "u16be")
    assert trace(field, "base64", "CSl7C8QB") == (
        "0b c4 at offset 3 of 6 bytes: 09 29 7b 0b c4 01 (base64 'CSl7C8QB')"
    )
    assert trace(field, "hex", "zz").startswith("not hex")
    assert field.describe("base64", "the JSON field data") == (
        "bytes 3..4 of the JSON field data (written in base64): unsigned 16-bit integer, big-endian"
    )


# --- the LoRaWAN profiles ---------------------------------------------------------------------

TTS_TOPIC = "v3/greenhouse@ttn/devices/th-07/up"
CHIRPSTACK_TOPIC = (
    "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/70b3d57ed005a1b2/event/up"
)


def profile_core(name: str, monkeypatch: pytest.MonkeyPatch) -> LineCore:
    """The core of an example profile (the secret it names set to a dummy)."""
    monkeypatch.setenv("TTS_API_KEY", "NNSXS.EXAMPLE")
    cfg = load(ROOT / "examples" / name)
    return LineCore(cfg.lines[0], cfg.stations)


def test_things_stack_uplink(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Things Stack v3 profile reads the bytes and the envelope of a real-shaped uplink."""
    core = profile_core("lorawan-tts-v3.toml", monkeypatch)
    processed = core.process(Message(TTS_TOPIC, (DATA / "tts-v3-uplink.json").read_bytes(), T0))
    got = {u.tag.split(".", 1)[1]: u.value for u in processed.updates}
    assert all(u.valid for u in processed.updates)
    assert got == {
        "temperature": 23.45,
        "humidity": 61.5,
        "battery": 3.012,
        "case_open": True,
        "fport": 2,
        "fcnt": 1234,
        "rssi": -87.0,
        "snr": 7.25,
        "gateway": "gw-roof-01",
        "gateway_time": datetime(2026, 11, 22, 10, 0, 0, 498_123, tzinfo=UTC),
        "received": datetime(2026, 11, 22, 10, 0, 0, 512_345, tzinfo=UTC),
        "spreading_factor": 7,
        "dev_eui": "70B3D57ED005A1B2",
    }
    assert {u.ts for u in processed.updates} == {
        datetime(2026, 11, 22, 10, 0, 0, 512_345, tzinfo=UTC)
    }


def test_chirpstack_uplink(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ChirpStack v4 profile reads the bytes and the envelope of a real-shaped uplink."""
    core = profile_core("lorawan-chirpstack-v4.toml", monkeypatch)
    payload = (DATA / "chirpstack-v4-uplink.json").read_bytes()
    processed = core.process(Message(CHIRPSTACK_TOPIC, payload, T0))
    got = {u.tag.split(".", 1)[1]: u.value for u in processed.updates}
    assert all(u.valid for u in processed.updates)
    assert got == {
        "temperature": -5.5,
        "humidity": 95.0,
        "battery": 2.95,
        "case_open": False,
        "fport": 2,
        "fcnt": 1234,
        "rssi": -79.0,
        "snr": 9.8,
        "gateway": "0016c001f153a14c",
        "gateway_time": datetime(2026, 11, 22, 10, 0, 0, 171_336, tzinfo=UTC),
        "received": datetime(2026, 11, 22, 10, 0, 0, 187_154, tzinfo=UTC),
        "spreading_factor": 7,
        "dev_eui": "70b3d57ed005a1b2",
    }


def _kom(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"TTS_API_KEY": "NNSXS.EXAMPLE", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "kom._cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
    )


def test_route_explains_the_bytes() -> None:
    """`kom route` shows each BIN= tag's value and the bytes it read, for the ChirpStack uplink."""
    payload = (DATA / "chirpstack-v4-uplink.json").read_text()
    out = _kom(
        "route", "examples/lorawan-chirpstack-v4.toml", CHIRPSTACK_TOPIC, "--payload", payload
    )
    lines = out.stdout.splitlines()
    at = lines.index("  th07.temperature = -5.5 °C  valid  (ts 2026-11-22T10:00:00.187Z)")
    assert lines[at + 1] == (
        "      read fd da at offset 0 of 6 bytes: fd da be 0b 86 00 (base64 '/dq+C4YA')"
    )
    assert "  th07.rssi = -79.0 dBm  valid  (ts 2026-11-22T10:00:00.187Z)" in lines


def test_check_explains_the_addresses() -> None:
    """`kom check` says in words which bytes each BIN= tag reads, stale_after and max_future."""
    out = _kom("check", "examples/lorawan-tts-v3.toml").stdout
    assert "stale after 3600 s" in out
    assert "  source times refused more than 300 s ahead (max_future)\n" in out
    assert (
        "= bytes 0..1 of the JSON field uplink_message.frm_payload (written in base64): "
        "signed 16-bit integer, big-endian"
    ) in out
    assert "= byte 5 of the JSON field uplink_message.frm_payload (written in base64): bit 0" in out


def test_route_reads_a_binary_payload_from_a_file(tmp_path: Path) -> None:
    """`kom route --payload-file` carries bytes a command line cannot (zero bytes) to BIN=$ tags."""
    cfg = tmp_path / "raw.toml"
    cfg.write_text(
        '[line]\nhost = "h"\n[[station]]\nname = "s"\naddress = "raw/1"\n'
        '[[station.tag]]\nname = "a"\ntype = "Ci"\naddress = "BIN=$@1:u16be"\n'
    )
    frame = tmp_path / "frame.bin"
    frame.write_bytes(b"\x00\x01\x00\xfe")
    out = _kom("route", str(cfg), "raw/1", "--payload-file", str(frame)).stdout.splitlines()
    assert out[1].startswith("  s.a = 256  valid")
    assert out[2] == "      read 01 00 at offset 1 of 4 bytes: 00 01 00 fe"
