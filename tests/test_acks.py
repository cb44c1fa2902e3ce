"""Acknowledgements to the broker in arrival order (SPEC §5, MQTT 3.1.1 §4.6)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kom._acks import AckOrder
from tests.strategies import arrival_orders


def order_of(*arrivals: int) -> AckOrder:
    """An AckOrder with QoS 1 messages `arrivals` registered in that order."""
    order = AckOrder()
    for mid in arrivals:
        order.arrived(mid, 1)
    return order


@pytest.mark.parametrize(
    ("arrivals", "dones", "released"),
    [
        # processed in arrival order: each is released at once
        ([1, 2, 3], [1, 2, 3], [[1], [2], [3]]),
        # processed early: waits for the earlier ones, then all go in arrival order
        ([1, 2, 3], [3, 2, 1], [[], [], [1, 2, 3]]),
        ([1, 2, 3], [2, 1, 3], [[], [1, 2], [3]]),
        ([1, 2, 3], [1, 3, 2], [[1], [], [2, 3]]),
        ([7, 3, 5], [5, 7, 3], [[], [7], [3, 5]]),
        # unknown and stale ids release nothing and disturb nothing
        ([1, 2], [9, 1, 2], [[], [1], [2]]),
        ([1, 2], [1, 1, 2, 2], [[1], [], [2], []]),
        ([1, 2], [2, 2, 1], [[], [], [1, 2]]),
        ([], [1], [[]]),
    ],
)
def test_ack_order(arrivals: list[int], dones: list[int], released: list[list[int]]) -> None:
    """Each done() releases the run of messages that may now be acknowledged, in arrival order."""
    order = order_of(*arrivals)
    got = [[mid for mid, _ in order.done(mid)] for mid in dones]
    assert got == released
    assert len(order) == len(arrivals) - sum(map(len, released))


def test_ack_order_keeps_qos() -> None:
    """Released entries carry their QoS, so a QoS 2 message gets PUBCOMP and a QoS 1 PUBACK."""
    order = AckOrder()
    order.arrived(10, 2)
    order.arrived(11, 1)
    assert order.done(11) == []
    assert order.done(10) == [(10, 2), (11, 1)]


def test_ack_order_mid_reused_after_release() -> None:
    """A packet id acknowledged to the broker may come again and is a new message."""
    order = order_of(1, 2)
    assert order.done(1) == [(1, 1)]
    order.arrived(1, 2)
    assert order.done(1) == []
    assert order.done(2) == [(2, 1), (1, 2)]


def test_ack_order_reset() -> None:
    """reset() forgets every pending message (connection lost); later done()s are stale."""
    order = order_of(1, 2, 3)
    assert order.done(2) == []
    assert order.reset() == 3
    assert len(order) == 0
    assert order.done(1) == []
    assert order.done(3) == []
    order.arrived(4, 1)
    assert order.done(4) == [(4, 1)]
    assert order.reset() == 0


def test_ack_order_repr() -> None:
    """The repr counts pending and early-done messages."""
    order = order_of(1, 2)
    order.done(2)
    assert repr(order) == "AckOrder(pending=2, done=1)"


@settings(max_examples=200, deadline=None)
@given(st.data(), arrival_orders)
def test_ack_order_property(data: st.DataObject, arrivals: list[tuple[int, int]]) -> None:
    """For any arrivals and any completion order, each is released once, in arrival order."""
    order = AckOrder()
    for mid, qos in arrivals:
        order.arrived(mid, qos)
    ids = [mid for mid, _ in arrivals]
    completion = data.draw(st.permutations(ids), label="completion")
    unknown = st.integers(1, 65535).filter(lambda mid: mid not in ids)
    released: list[tuple[int, int]] = []
    completed: set[int] = set()
    for mid in completion:
        released.extend(order.done(mid))
        completed.add(mid)
        # A repeated done() and an unknown id change nothing.
        assert order.done(mid) == []
        assert order.done(data.draw(unknown, label="unknown")) == []
        # Released so far: the longest run of completed messages from the first arrival.
        run = next((i for i, m in enumerate(ids) if m not in completed), len(ids))
        assert released == arrivals[:run]
    assert released == arrivals
    assert len(order) == 0


@settings(max_examples=200, deadline=None)
@given(st.data(), arrival_orders)
def test_done_many_is_done_in_turn(data: st.DataObject, arrivals: list[tuple[int, int]]) -> None:
    """Registering and completing in groups releases exactly what one at a time does."""
    ids = [mid for mid, _ in arrivals]
    completion = data.draw(st.permutations(ids), label="completion")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=5), label="cuts"))
    one, many = AckOrder(), AckOrder()
    for mid, qos in arrivals:
        one.arrived(mid, qos)
    many.arrived_many(arrivals)
    bounds = [0, *cuts, len(completion)]
    for start, end in itertools.pairwise(bounds):
        group = completion[start:end]
        expected = [pair for mid in group for pair in one.done(mid)]
        assert many.done_many(group) == expected
        assert len(many) == len(one)
    assert repr(many) == repr(one)


def test_done_many_in_arrival_order_takes_the_run_at_once() -> None:
    """A run processed in arrival order is released whole; a stale id in it changes nothing."""
    order = AckOrder()
    order.arrived_many([(1, 1), (2, 2), (3, 1)])
    assert order.done_many([]) == []
    assert order.done_many([1, 2]) == [(1, 1), (2, 2)]
    assert order.done_many([9]) == []
    assert order.done_many([3, 3]) == [(3, 1)]
    assert len(order) == 0
