"""Processing of input values: inversion, scaling, limits, dead band, change-only (SPEC §4)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kom._model import Reason, Value, ValueType
from kom._processing import Processing

finite = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(-(2**63), 2**63 - 1)


def same(a: object, b: object) -> bool:
    """Equal, and of the same type (so that True is not taken for 1 or 1.0)."""
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(
    ("options", "value", "expected"),
    [
        ({}, 1.5, (1.5, None)),
        ({}, "text", ("text", None)),
        ({"invert": True}, True, (False, None)),
        ({"invert": True}, False, (True, None)),
        ({"invert": False}, True, (True, None)),
        ({"scale": (2, 1)}, 3.0, (7.0, None)),
        ({"scale": (2, 1)}, 3, (7, None)),
        ({"scale": [0.5, 0]}, 5, (3, None)),  # 2.5 rounds away from zero
        ({"scale": (0.5, 0)}, -5, (-3, None)),
        ({"scale": (0.5, 0)}, 3, (2, None)),  # 1.5
        ({"scale": (0.1, 0)}, 14, (1, None)),  # 1.4000000000000001
        ({"scale": (3, 0)}, 2**62 + 1, (None, Reason.TYPE)),  # beyond 64 bits
        ({"scale": (1, 1)}, 2**53 + 1, (2**53 + 2, None)),  # integral factors stay exact
        ({"scale": (1e308, 0)}, 10.0, (None, Reason.TYPE)),  # beyond the float range
        ({"scale": (1.5, 0)}, 2**63 - 1, (None, Reason.TYPE)),
        ({"minimum": 0, "maximum": 10}, 11.0, (None, Reason.LIMITS)),  # discard by default
        ({"minimum": 0, "maximum": 10}, 10.0, (10.0, None)),  # bounds are inside
        ({"minimum": 0, "maximum": 10}, -1, (None, Reason.LIMITS)),
        ({"minimum": 0, "limits": "discard"}, -0.5, (None, Reason.LIMITS)),
        ({"maximum": 10, "limits": "clamp"}, 11.0, (10.0, None)),
        ({"minimum": 0, "maximum": 10, "limits": "clamp"}, -3.0, (0.0, None)),
        ({"minimum": 0.5, "maximum": 9.5, "limits": "clamp"}, 12, (9, None)),
        ({"minimum": 0.5, "maximum": 9.5, "limits": "clamp"}, -12, (1, None)),
        ({"minimum": 0.2, "maximum": 0.8, "limits": "clamp"}, 5, (None, Reason.LIMITS)),
        ({"minimum": 0.2, "maximum": 0.8, "limits": "clamp"}, 0.5, (0.5, None)),
        ({"scale": (10, 0), "maximum": 50, "limits": "clamp"}, 7.0, (50.0, None)),  # scale first
        ({"minimum": 0}, float("nan"), (None, Reason.TYPE)),
        ({"scale": (2, 0)}, "text", ("text", None)),
    ],
)
def test_apply(
    options: dict[str, Any], value: Value, expected: tuple[Value, Reason | None]
) -> None:
    """apply inverts, scales and checks limits in that order, never raising."""
    result = Processing(**options).apply(value)
    assert same(result[0], expected[0])
    assert result[1] is expected[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"minimum": 5, "maximum": 1}, "maximum 1.0 is below minimum 5.0"),
        ({"deadband": -1}, "deadband must be a finite number >= 0"),
        ({"deadband": float("nan")}, "deadband must be a finite number >= 0"),
        ({"limits": "wrap"}, "'limits' must be in"),
        ({"scale": (1,)}, r"scale must be \[a, b\]"),
        ({"scale": (float("inf"), 0)}, "scale must be finite numbers"),
        ({"minimum": float("-inf")}, "minimum must be a finite number"),
        ({"maximum": float("nan")}, "maximum must be a finite number"),
    ],
)
def test_refused_options(options: dict[str, Any], message: str) -> None:
    """Options that make no sense are a ValueError when the processing is built."""
    with pytest.raises(ValueError, match=message):
        Processing(**options)


def test_options_are_normalised() -> None:
    """Numbers become floats and a scale list a tuple, so that equal options compare equal."""
    p = Processing(scale=[2, 1], minimum=0, maximum=10, deadband=1)
    assert p == Processing(scale=(2.0, 1.0), minimum=0.0, maximum=10.0, deadband=1.0)
    assert p.scale == (2.0, 1.0)
    assert type(p.minimum) is float
    assert hash(p) == hash(attrs.evolve(p))


def test_repr() -> None:
    """The repr shows the options and none of the derived state."""
    assert repr(Processing(invert=True)) == (
        "Processing(invert=True, scale=None, minimum=None, maximum=None, limits=None,"
        " deadband=None, on_change=False)"
    )


@pytest.mark.parametrize(
    ("value_type", "on_change"),
    [
        (ValueType.Di, True),
        (ValueType.Do, True),
        (ValueType.Ai, False),
        (ValueType.Ci, False),
        (ValueType.Qi, False),
        (ValueType.TxtI, False),
        (ValueType.TiA, False),
    ],
)
def test_default_for(value_type: ValueType, on_change: bool) -> None:
    """Change-only reporting is on by default for digital tags only."""
    assert Processing.default_for(value_type) == Processing(on_change=on_change)


def test_default_for_evolves() -> None:
    """The loader's evolve() of a default keeps the derived state consistent."""
    p = attrs.evolve(Processing.default_for(ValueType.Di), invert=True)
    assert p.on_change
    assert p.apply(True) == (False, None)


@pytest.mark.parametrize(
    ("options", "value", "valid", "last", "expected"),
    [
        ({}, 1.0, True, None, True),
        ({"on_change": True}, 1.0, True, None, True),  # the first is always reported
        ({}, 1.0, True, (1.0, True), True),
        ({"on_change": True}, 1.0, True, (1.0, True), False),
        ({"on_change": True}, 2.0, True, (1.0, True), True),
        ({"on_change": True}, True, True, (True, True), False),
        ({"on_change": True}, "a", True, ("a", True), False),
        ({"on_change": True}, 1.0, True, (None, False), True),  # valid again
        ({"on_change": True}, None, False, (1.0, True), True),  # invalid now
        ({"on_change": True}, None, False, (None, False), True),  # invalid again
        ({"deadband": 0.5}, 1.4, True, (1.0, True), False),
        ({"deadband": 0.5}, 1.5, True, (1.0, True), True),  # at the band: reported
        ({"deadband": 0.5}, 0.4, True, (1.0, True), True),
        ({"deadband": 0.5}, 1.0, True, (1.0, True), False),
        ({"deadband": 2}, 12, True, (10, True), True),
        ({"deadband": 2}, 11, True, (10, True), False),
        ({"deadband": 0}, 1.0, True, (1.0, True), True),
        ({"deadband": 0, "on_change": True}, 1.0, True, (1.0, True), False),
        ({"deadband": 0.5}, "text", True, ("other", True), True),  # not a number: no band
        ({"deadband": 0.5}, 1.0, False, (1.0, True), True),
    ],
)
def test_should_report(
    options: dict[str, Any],
    value: Value,
    valid: bool,
    last: tuple[Value, bool] | None,
    expected: bool,
) -> None:
    """First, invalid and validity changes are reported; dead band and change-only filter others."""
    assert Processing(**options).should_report(value, valid, last) is expected


@st.composite
def bounds(draw: st.DrawFn) -> tuple[float | None, float | None]:
    """A minimum, a maximum, or both in order."""
    low = draw(st.none() | finite)
    high = draw(st.none() | finite)
    assume(low is not None or high is not None)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return low, high


@given(
    limits=bounds(),
    value=finite | int64,
    scale=st.none() | st.tuples(finite, finite),
)
def test_clamp_stays_within(
    limits: tuple[float | None, float | None], value: float, scale: tuple[float, float] | None
) -> None:
    """Clamping gives a value within [minimum, maximum], or None with a reason, nothing else."""
    low, high = limits
    result, reason = Processing(scale=scale, minimum=low, maximum=high, limits="clamp").apply(value)
    if result is None:
        # TYPE: scaling left the number range; LIMITS: no integer lies within the bounds.
        assert reason is Reason.TYPE or (type(value) is int and reason is Reason.LIMITS)
        return
    assert reason is None
    assert type(result) is type(value)
    assert low is None or result >= low
    assert high is None or result <= high


@given(limits=bounds(), value=finite | int64)
def test_discard_keeps_or_refuses(limits: tuple[float | None, float | None], value: float) -> None:
    """Discarding keeps an in-range value as it is and refuses any other with reason limits."""
    low, high = limits
    inside = (low is None or value >= low) and (high is None or value <= high)
    result = Processing(minimum=low, maximum=high).apply(value)
    assert result == ((value, None) if inside else (None, Reason.LIMITS))


@given(
    value=st.none() | st.booleans() | finite | st.floats() | int64 | st.text(max_size=5),
    last=st.none() | st.tuples(st.none() | finite | int64, st.booleans()),
    valid=st.booleans(),
    deadband=st.none() | st.floats(0, 1e300),
    on_change=st.booleans(),
)
def test_should_report_never_raises(
    value: Value,
    last: tuple[Value, bool] | None,
    valid: bool,
    deadband: float | None,
    on_change: bool,
) -> None:
    """should_report answers for any value and last report, and always reports the first."""
    p = Processing(deadband=deadband, on_change=on_change)
    assert isinstance(p.should_report(value, valid, last), bool)
    assert p.should_report(value, valid, None)
