"""The Sparkplug B payload: decoding every datatype, encoding commands (Sparkplug 3.0.0 §6.4)."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kom.sparkplug import sparkplug_b_pb2 as pb
from kom.sparkplug._payload import (
    DataType,
    Out,
    PayloadError,
    decode,
    encode,
    pack_array,
    shortest_float32,
    typed_value,
)

from .strategies import sparkplug_values

NOW = datetime(2026, 12, 1, 8, 30, 15, 250000, tzinfo=UTC)


@given(sparkplug_values())
def test_encode_decode_round_trip(pair: tuple[int, object]) -> None:
    """Any value of any scalar or array datatype comes back equal after encode and decode."""
    datatype, value = pair
    payload = decode(encode([Out("m", datatype, value, alias=7)], NOW, seq=3))  # type: ignore[arg-type]
    assert payload.seq == 3
    assert payload.timestamp == NOW
    (metric,) = payload.metrics
    assert (metric.name, metric.alias, metric.datatype) == ("m", 7, datatype)
    back = metric.value()
    if datatype == DataType.Float:
        assert struct.pack("<f", back) == struct.pack("<f", value)  # type: ignore[arg-type]
    else:
        assert back == value


@pytest.mark.parametrize(
    ("datatype", "raw", "expected"),
    [
        (DataType.Int8, 0xFF, -1),  # one byte of two's complement
        (DataType.Int8, 0xFFFFFFFF, -1),  # sign-extended to 32 bits (both are sent in the wild)
        (DataType.Int8, 0x7F, 127),
        (DataType.Int16, 0x8000, -32768),
        (DataType.Int32, 0xFFFFFFFE, -2),
        (DataType.Int64, 2**64 - 1, -1),
        (DataType.UInt32, 0xFFFFFFFF, 4294967295),
        (DataType.Boolean, 1, True),
        (DataType.DateTime, 0, datetime(1970, 1, 1, tzinfo=UTC)),
        (DataType.Float, 50.34700012207031, 50.347),
        (DataType.Unknown, 0xFFFFFFFF, 0xFFFFFFFF),  # no datatype: kept as sent
    ],
)
def test_typed_values(datatype: int, raw: object, expected: object) -> None:
    """Raw oneof values read by datatype: two's complement, times in ms, float32 shortest."""
    assert typed_value(raw, datatype) == expected


def test_dataset_as_json_text() -> None:
    """A DataSet metric reads as JSON text with columns, type names and typed rows."""
    message = pb.Payload()
    m = message.metrics.add(name="table", datatype=DataType.DataSet)
    ds = m.dataset_value
    ds.num_of_columns = 3
    ds.columns.extend(["id", "temp", "ok"])
    ds.types.extend([DataType.Int32, DataType.Double, DataType.Boolean])
    row = ds.rows.add()
    row.elements.add(int_value=0xFFFFFFFF)
    row.elements.add(double_value=21.5)
    row.elements.add(boolean_value=True)
    (metric,) = decode(message.SerializeToString()).metrics
    assert orjson.loads(metric.value()) == {  # type: ignore[arg-type]
        "columns": ["id", "temp", "ok"],
        "types": ["Int32", "Double", "Boolean"],
        "rows": [[-1, 21.5, True]],
    }


def test_template_as_json_text() -> None:
    """A Template instance reads as JSON text with its reference, parameters and metrics."""
    message = pb.Payload()
    m = message.metrics.add(name="motor", datatype=DataType.Template)
    t = m.template_value
    t.template_ref = "Motor"
    t.version = "1.0"
    t.parameters.add(name="rated", type=DataType.UInt16, int_value=400)
    t.metrics.add(name="amps", datatype=DataType.Float, float_value=12.5)
    t.metrics.add(name="on", datatype=DataType.Boolean, boolean_value=False)
    (metric,) = decode(message.SerializeToString()).metrics
    assert orjson.loads(metric.value()) == {  # type: ignore[arg-type]
        "template_ref": "Motor",
        "version": "1.0",
        "is_definition": False,
        "parameters": {"rated": 400},
        "metrics": {"amps": 12.5, "on": False},
    }


def test_null_and_metric_time() -> None:
    """is_null gives no value; a metric's own timestamp is kept apart from the payload's."""
    data = encode([Out("a", DataType.Double, None, timestamp=NOW)], None)
    payload = decode(data)
    (metric,) = payload.metrics
    assert metric.is_null
    assert metric.value() is None
    assert metric.timestamp == NOW
    assert payload.timestamp is None
    assert payload.seq is None


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x12\x05abc", b"\x0a"])
def test_garbage_is_a_payload_error(data: bytes) -> None:
    """Bytes that are not a Sparkplug payload raise PayloadError, nothing else."""
    with pytest.raises(PayloadError):
        decode(data)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (DataType.Int8, 128),
        (DataType.UInt16, -1),
        (DataType.Int32, 1.5),
        (DataType.Boolean, 1),
        (DataType.String, 5),
        (DataType.Template, "x"),
    ],
)
def test_encode_refuses_values_the_datatype_cannot_hold(datatype: int, value: object) -> None:
    """A command value outside its datatype is refused with the metric's name, not sent wrong."""
    with pytest.raises(PayloadError, match=r"^speed: "):
        encode([Out("speed", datatype, value)], NOW)  # type: ignore[arg-type]


def test_boolean_array_packing() -> None:
    """§6.4.17: a BooleanArray is a 4-byte count, then bits from the most significant."""
    assert pack_array(DataType.BooleanArray, [True, False, True]) == b"\x03\x00\x00\x00\xa0"
    assert typed_value(b"\x09\x00\x00\x00\x80\x80", DataType.BooleanArray) == [
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    with pytest.raises(PayloadError):
        typed_value(b"\x09\x00\x00\x00\x80", DataType.BooleanArray)


@given(st.floats(width=32))
def test_shortest_float32_is_the_same_float32(x: float) -> None:
    """The shortened value of a float32 is that same float32 (NaN stays NaN)."""
    y = shortest_float32(x)
    if math.isnan(x):
        assert math.isnan(y)
    else:
        assert struct.pack("<f", y) == struct.pack("<f", x)
        assert len(repr(y)) <= len(repr(x))


@pytest.mark.parametrize(
    ("datatype", "hex_bytes", "expected"),
    [
        # Written out by hand (little-endian), not made by kom's encoder: a table that a
        # symmetric mistake in packing and unpacking cannot pass (§6.4.17 "Datatype Details").
        (DataType.Int8Array, "e97b", [-23, 123]),
        (DataType.Int16Array, "d08a3075", [-30000, 30000]),
        (DataType.Int32Array, "ffffffffcacf0400", [-1, 315338]),
        (DataType.Int64Array, "ffffffffffffffff0100000000000000", [-1, 1]),
        (DataType.UInt8Array, "17fa", [23, 250]),
        (DataType.UInt16Array, "1e0088cc", [30, 52360]),
        (DataType.UInt32Array, "3400000049fb55c4", [52, 3293969225]),
        (DataType.UInt64Array, "ffffffffffffffff", [2**64 - 1]),
        (DataType.FloatArray, "0000c03f000000c0", [1.5, -2.0]),
        (DataType.DoubleArray, "000000000000f83f", [1.5]),
        (DataType.BooleanArray, "0c00000034d0", [False, False, True, True, False, True] * 2),
        (DataType.StringArray, "4142430068656c6c6f00", ["ABC", "hello"]),
        (
            DataType.DateTimeArray,
            "c7d0907524010000b8bab89781010000",
            [
                datetime(2009, 10, 21, 5, 27, 55, 335000, tzinfo=UTC),
                datetime(2022, 6, 24, 21, 57, 55, tzinfo=UTC),
            ],
        ),
    ],
)
def test_arrays_from_written_out_bytes(datatype: int, hex_bytes: str, expected: object) -> None:
    """Every array datatype decodes bytes as the specification lays them out."""
    assert typed_value(bytes.fromhex(hex_bytes), datatype) == expected


@pytest.mark.parametrize(
    ("datatype", "field", "raw", "expected"),
    [
        (DataType.Int8, "int_value", 0xFFFFFF80, -128),
        (DataType.Int16, "int_value", 0x7FFF, 32767),
        (DataType.Int32, "int_value", 0x80000000, -(2**31)),
        (DataType.Int64, "long_value", 2**63, -(2**63)),
        (DataType.UInt8, "int_value", 255, 255),
        (DataType.UInt16, "int_value", 65535, 65535),
        (DataType.UInt32, "int_value", 2**32 - 1, 2**32 - 1),
        (DataType.UInt64, "long_value", 2**64 - 1, 2**64 - 1),
        (DataType.Float, "float_value", 0.5, 0.5),
        (DataType.Double, "double_value", -0.25, -0.25),
        (DataType.Boolean, "boolean_value", True, True),
        (DataType.String, "string_value", "ok", "ok"),
        (DataType.Text, "string_value", "long text", "long text"),
        (DataType.UUID, "string_value", "123e4567-e89b-12d3-a456-426614174000", None),
        (DataType.DateTime, "long_value", 1_000, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (DataType.Bytes, "bytes_value", b"\x00\xff", b"\x00\xff"),
        (DataType.File, "bytes_value", b"PK", b"PK"),
    ],
)
def test_scalars_from_a_payload_built_with_protobuf(
    datatype: int, field: str, raw: object, expected: object
) -> None:
    """Every scalar datatype decodes from a payload built with protobuf alone (§6.4.16)."""
    message = pb.Payload(seq=1)
    metric = message.metrics.add(name="m", datatype=datatype)
    setattr(metric, field, raw)
    (decoded,) = decode(message.SerializeToString()).metrics
    assert decoded.value() == (raw if expected is None else expected)
