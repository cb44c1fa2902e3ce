"""Binary fields inside messages: `BIN=<json address>@<offset>:<type>` (SPEC §15).

LoRaWAN network servers hand a device's bytes on as text inside their JSON envelopes
(The Things Stack `uplink_message.frm_payload` in base64, ChirpStack `data` in base64, some
integrations in hex). A `BIN=` tag reads that text, decodes it to bytes, unpacks one field at
a byte offset and converts the number like any payload value. `BIN=$@...` reads the MQTT
payload itself as the bytes (a station with `payload_type = "text"`).

Pure and checked once at load: `parse_layout` refuses what cannot be read, and a field's
reader is built once per tag (`field_reader`).
"""

from __future__ import annotations

import base64
import binascii
import re
import string
import struct
from collections.abc import Callable

import attrs

from ._errors import ConversionError
from ._model import Value
from ._timemask import short_repr

__all__ = [
    "ENCODINGS",
    "TYPES",
    "BinaryDataError",
    "BinaryField",
    "decode_text",
    "field_reader",
    "parse_layout",
]

#: `<type>` -> (struct format, what it is); sizes come from the format.
TYPES: dict[str, tuple[str, str]] = {
    "u8": ("B", "unsigned 8-bit integer"),
    "i8": ("b", "signed 8-bit integer"),
    "u16be": (">H", "unsigned 16-bit integer, big-endian"),
    "u16le": ("<H", "unsigned 16-bit integer, little-endian"),
    "i16be": (">h", "signed 16-bit integer, big-endian"),
    "i16le": ("<h", "signed 16-bit integer, little-endian"),
    "u32be": (">I", "unsigned 32-bit integer, big-endian"),
    "u32le": ("<I", "unsigned 32-bit integer, little-endian"),
    "i32be": (">i", "signed 32-bit integer, big-endian"),
    "i32le": ("<i", "signed 32-bit integer, little-endian"),
    "f32be": (">f", "32-bit IEEE 754 float, big-endian"),
    "f32le": ("<f", "32-bit IEEE 754 float, little-endian"),
    "f64be": (">d", "64-bit IEEE 754 float, big-endian"),
    "f64le": ("<d", "64-bit IEEE 754 float, little-endian"),
}
_TYPES_TEXT = " ".join(TYPES) + " bit0..bit7"

#: How the bytes are written: text in a JSON field (base64, hex), or the payload as it is.
ENCODINGS = ("base64", "hex", "raw")

_LAYOUT = re.compile(r"(\d+)\s*:\s*([A-Za-z0-9]+)", re.ASCII)
_BIT = re.compile(r"bit([0-7])", re.ASCII)
#: Offsets beyond this are a typo, not a field: MQTT payloads stop at 256 MiB.
MAX_OFFSET = 256 << 20


class BinaryDataError(ConversionError):
    """The data cannot be read as bytes, or is too short for the field (reason `parse`)."""


@attrs.frozen
class BinaryField:
    """Where a `BIN=` tag's number is: the text field (None: the payload), offset, type."""

    source: tuple[str | int, ...] | None
    offset: int
    type: str

    @property
    def bit(self) -> int | None:
        """The bit number of a `bit<n>` field, else None."""
        m = _BIT.fullmatch(self.type)
        return int(m.group(1)) if m else None

    @property
    def size(self) -> int:
        """Bytes the field takes from `offset`."""
        if self.bit is not None:
            return 1
        return struct.calcsize(TYPES[self.type][0])

    def describe(self, encoding: str, where: str) -> str:
        """What the field reads, in words: `kom check` prints it under the tag."""
        end = self.offset + self.size - 1
        span = f"byte {self.offset}" if end == self.offset else f"bytes {self.offset}..{end}"
        bit = self.bit
        what = f"bit {bit} (0 = least significant)" if bit is not None else TYPES[self.type][1]
        written = "as they are" if encoding == "raw" else f"written in {encoding}"
        return f"{span} of {where} ({written}): {what}"


def parse_layout(text: str) -> tuple[int, str]:
    """`<offset>:<type>` as (offset, type); raises ValueError saying what was expected."""
    m = _LAYOUT.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected <offset>:<type> after '@' (like 0:u16be), found {text!r}")
    offset, kind = int(m.group(1)), m.group(2).lower()  # keywords are read in any case
    if offset > MAX_OFFSET:
        raise ValueError(f"offset {offset} is beyond any payload ({MAX_OFFSET} bytes)")
    if kind not in TYPES and _BIT.fullmatch(kind) is None:
        raise ValueError(f"unknown binary type {kind!r} (expected {_TYPES_TEXT})")
    return offset, kind


def decode_text(raw: object, encoding: str) -> bytes:
    """The bytes that `raw` (a JSON value, or the payload's bytes) stands for.

    Raises BinaryDataError for anything that is not text in `encoding`.
    """
    if encoding == "raw":
        if isinstance(raw, bytes):
            return raw
        if isinstance(raw, str):
            return raw.encode("utf-8")
        raise BinaryDataError(f"expected bytes, found {short_repr(raw)}", found=raw)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BinaryDataError(f"expected {encoding} text, found non-ASCII bytes") from None
    if not isinstance(raw, str):
        raise BinaryDataError(f"expected {encoding} text, found {short_repr(raw)}", found=raw)
    if encoding == "hex":
        return _from_hex(raw)
    try:
        # validate=True: characters outside the alphabet are an error, not skipped.
        return base64.b64decode(raw.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BinaryDataError(f"not {encoding}: {exc} in {short_repr(raw)}", found=raw) from None


def _from_hex(raw: str) -> bytes:
    """The bytes of hex text (blanks between bytes allowed), or a BinaryDataError saying why not."""
    digits = "".join(raw.split())
    bad = next((i for i, c in enumerate(digits) if c not in string.hexdigits), None)
    if bad is not None:
        why = f"{digits[bad]!r} is not a hex digit"
    elif len(digits) % 2:
        why = f"an odd number of hex digits ({len(digits)})"
    else:
        return bytes.fromhex(digits)
    raise BinaryDataError(f"not hex: {why} in {short_repr(raw)}", found=raw)


def field_reader(
    field: BinaryField, encoding: str, convert: Callable[[object], Value]
) -> Callable[[object], Value]:
    """A converter from the field's raw text (or payload) to the tag's value.

    Decodes, unpacks the number at the offset (a bool for `bit<n>`) and hands it to
    `convert`, the tag type's own converter, which refuses what the type cannot hold
    (reason `type`). Data that cannot be decoded or is too short raises BinaryDataError.
    """
    offset = field.offset
    end = offset + field.size
    bit = field.bit

    def too_short(data: bytes) -> BinaryDataError:
        return BinaryDataError(
            f"{field.type} at offset {offset} needs {end} bytes, the data has {len(data)}",
            found=data.hex(),
        )

    if bit is not None:

        def read_bit(raw: object) -> Value:
            data = decode_text(raw, encoding)
            if len(data) < end:
                raise too_short(data)
            return convert((data[offset] >> bit) & 1 == 1)

        return read_bit

    unpack = struct.Struct(TYPES[field.type][0]).unpack_from

    def read_number(raw: object) -> Value:
        data = decode_text(raw, encoding)
        if len(data) < end:
            raise too_short(data)
        return convert(unpack(data, offset)[0])

    return read_number


def trace(field: BinaryField, encoding: str, raw: object) -> str:
    """The bytes a field took from `raw` (its text, or the payload), in hex: `kom route`."""
    try:
        data = decode_text(raw, encoding)
    except BinaryDataError as exc:
        return str(exc)
    end = field.offset + field.size
    got = data[field.offset : end].hex(" ") or "nothing"
    shown = data[:32].hex(" ") + (" ..." if len(data) > 32 else "")
    source = "" if encoding == "raw" else f" ({encoding} {short_repr(raw)})"
    return f"{got} at offset {field.offset} of {len(data)} bytes: {shown}{source}"
