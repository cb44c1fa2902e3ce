"""Processing of input values: inversion, scaling, limits, dead band, change-only (SPEC §4).

Beyond the MQTT model, from the same SCADA system's tag processing. Pure and per tag: the
station keeps the last reported value and passes it in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import attrs

from ._model import Reason, Value, ValueType

__all__ = ["Processing"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_isfinite = math.isfinite


def _scale(value: Sequence[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"scale must be [a, b] for a·x+b, found {list(value)!r}")
    return (float(value[0]), float(value[1]))


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _finite(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not _isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, found {value!r}")


def _round_half_away(x: float) -> int:
    # Round half away from zero, as SCADA scaling does (round() would give 2 for 2.5).
    if x.is_integer():
        return int(x)
    whole = math.floor(abs(x) + 0.5)
    return whole if x > 0 else -whole


@attrs.frozen
class Processing:
    """How a tag's converted value is processed before it is reported.

    `apply` runs inversion (digital), scaling and limits (analog and integer); `should_report`
    runs the dead band and change-only filters. With `minimum` or `maximum` set and `limits`
    None, out-of-range values are discarded. Which options fit which tag type is the
    configuration loader's check; here each option acts on the values it can act on and
    leaves the others alone.
    """

    invert: bool = False
    scale: tuple[float, float] | None = attrs.field(default=None, converter=_scale)
    minimum: float | None = attrs.field(default=None, converter=_optional_float, validator=_finite)
    maximum: float | None = attrs.field(default=None, converter=_optional_float, validator=_finite)
    limits: Literal["clamp", "discard"] | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.in_(("clamp", "discard"))),
    )
    deadband: float | None = attrs.field(default=None, converter=_optional_float)
    on_change: bool = False

    # Derived once, so that apply() does no set-up per value.
    _identity: bool = attrs.field(init=False, eq=False, repr=False)
    _clamp: bool = attrs.field(init=False, eq=False, repr=False)
    _int_scale: tuple[int, int] | None = attrs.field(init=False, eq=False, repr=False)
    _int_low: int = attrs.field(init=False, eq=False, repr=False)
    _int_high: int = attrs.field(init=False, eq=False, repr=False)

    @scale.validator
    def _check_scale(self, _: object, value: tuple[float, float] | None) -> None:
        if value is not None and not (_isfinite(value[0]) and _isfinite(value[1])):
            raise ValueError(f"scale must be finite numbers, found {list(value)!r}")

    @deadband.validator
    def _check_deadband(self, _: object, value: float | None) -> None:
        if value is not None and not (_isfinite(value) and value >= 0):
            raise ValueError(f"deadband must be a finite number >= 0, found {value!r}")

    @maximum.validator
    def _check_order(self, _: object, value: float | None) -> None:
        if value is not None and self.minimum is not None and self.minimum > value:
            raise ValueError(f"maximum {value!r} is below minimum {self.minimum!r}")

    @_identity.default
    def _no_apply(self) -> bool:
        return not (self.invert or self.scale or self._bounded)

    @_clamp.default
    def _clamps(self) -> bool:
        return self.limits == "clamp"

    @_int_scale.default
    def _exact_scale(self) -> tuple[int, int] | None:
        # Integral factors keep integer tags exact beyond 2**53.
        if self.scale is not None and all(x.is_integer() for x in self.scale):
            return (int(self.scale[0]), int(self.scale[1]))
        return None

    # The integers an integer tag is clamped to.
    @_int_low.default
    def _integer_low(self) -> int:
        # Not finite: the validator, which runs after the defaults, refuses it.
        if self.minimum is None or not _isfinite(self.minimum):
            return _INT64_MIN
        return math.ceil(self.minimum)

    @_int_high.default
    def _integer_high(self) -> int:
        if self.maximum is None or not _isfinite(self.maximum):
            return _INT64_MAX
        return math.floor(self.maximum)

    @property
    def _bounded(self) -> bool:
        return self.minimum is not None or self.maximum is not None

    @classmethod
    def default_for(cls, value_type: ValueType) -> Processing:
        """The processing of a tag that sets none: change-only for digital tags (SPEC §4).

        The configuration loader starts from this and evolves it with the tag's own options.
        """
        return _DIGITAL if value_type.kind == "digital" else _NONE

    def apply(self, value: Value) -> tuple[Value, Reason | None]:
        """`(value, None)` after inversion, scaling and limits, or `(None, reason)`.

        Reason LIMITS: out of range and discarded (or no integer lies within the range for an
        integer clamp). Reason TYPE: scaling left the float range or the 64-bit range. Never
        raises for a value of a tag's type.
        """
        if self._identity:
            return value, None
        if isinstance(value, bool):
            return (not value if self.invert else value), None
        if isinstance(value, int):
            return self._apply_integer(value)
        if isinstance(value, float):
            return self._apply_analog(value)
        return value, None

    def _apply_analog(self, x: float) -> tuple[Value, Reason | None]:
        if self.scale is not None:
            x = self.scale[0] * x + self.scale[1]
        if not _isfinite(x):
            return None, Reason.TYPE
        low, high = self.minimum, self.maximum
        if low is not None and x < low:
            return (low, None) if self._clamp else (None, Reason.LIMITS)
        if high is not None and x > high:
            return (high, None) if self._clamp else (None, Reason.LIMITS)
        return x, None

    def _apply_integer(self, n: int) -> tuple[Value, Reason | None]:
        if self._int_scale is not None:
            n = self._int_scale[0] * n + self._int_scale[1]
        elif self.scale is not None:
            try:
                x = self.scale[0] * n + self.scale[1]
            except OverflowError:  # n beyond the float range
                return None, Reason.TYPE
            if not _isfinite(x):
                return None, Reason.TYPE
            n = _round_half_away(x)
        if not _INT64_MIN <= n <= _INT64_MAX:
            return None, Reason.TYPE
        # int/float comparisons are exact in Python, so the float bounds are used as given.
        low, high = self.minimum, self.maximum
        if low is not None and n < low:
            if not self._clamp:
                return None, Reason.LIMITS
            n = self._int_low
            if high is not None and n > high:
                return None, Reason.LIMITS
        elif high is not None and n > high:
            if not self._clamp:
                return None, Reason.LIMITS
            n = self._int_high
            if low is not None and n < low:
                return None, Reason.LIMITS
        return n, None

    def should_report(self, value: Value, valid: bool, last: tuple[Value, bool] | None) -> bool:
        """Whether an update with `value` and validity `valid` is handed out.

        `last` is the last reported `(value, valid)`, None before the first. The first update,
        a change of validity and every invalid update are reported; a valid one after a valid
        one is held back when its change is below `deadband`, or when `on_change` and equal.
        """
        if last is None or not valid:
            return True
        last_value, last_valid = last
        if not last_valid:
            return True
        if (
            self.deadband is not None
            and isinstance(value, int | float)
            and isinstance(last_value, int | float)
            and abs(value - last_value) < self.deadband
        ):
            return False
        return not (self.on_change and value == last_value)


_NONE = Processing()
_DIGITAL = Processing(on_change=True)
