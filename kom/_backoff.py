"""Capped exponential back-off with full jitter, as a pure function (zero in tests)."""

from __future__ import annotations

import random

_testing = False


def set_testing(on: bool) -> None:
    """Make every back-off zero, so tests of reconnection do not wait."""
    global _testing  # noqa: PLW0603 - one process-wide switch, like stamina's set_testing
    _testing = on


def is_testing() -> bool:
    return _testing


def backoff(
    attempt: int, minimum: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnection round `attempt` (1, 2, ...).

    The ceiling doubles from `minimum` each round up to `maximum`; the wait is drawn
    uniformly between half the ceiling and the ceiling, so a fleet of drivers that lost
    one broker together does not come back in lockstep.
    """
    if _testing or attempt <= 0 or maximum <= 0:
        return 0.0
    # The exponent is capped: 2.0 ** 1025 overflows a float (round 1,026, about six hours of
    # outage with the defaults), and past 2 ** 64 any minimum has long reached the maximum.
    ceiling = min(maximum, minimum * 2.0 ** min(attempt - 1, 64))
    draw = (rng or random).random()
    return ceiling / 2 + draw * ceiling / 2
