"""Acknowledgements to the broker in arrival order (MQTT 3.1.1 §4.6), as a pure queue."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence


class AckOrder:
    """Releases PUBACK/PUBCOMP in the order the messages arrived on one connection.

    Every QoS 1/2 message is registered as it arrives; `done()` marks one processed and
    returns the run of messages that may now be acknowledged: an acknowledgement given
    early waits for the earlier ones. A lost connection `reset()`s the queue, since
    the broker redelivers unacknowledged messages on the next one (persistent session).
    """

    __slots__ = ("_done", "_pending", "_waiting")

    def __init__(self) -> None:
        self._pending: deque[tuple[int, int]] = deque()
        self._waiting: set[int] = set()
        self._done: set[int] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def __repr__(self) -> str:
        return f"AckOrder(pending={len(self._pending)}, done={len(self._done)})"

    def arrived(self, mid: int, qos: int) -> None:
        """Register a QoS 1/2 message in arrival order."""
        self._pending.append((mid, qos))
        self._waiting.add(mid)

    def arrived_many(self, arrivals: Sequence[tuple[int, int]]) -> None:
        """Register several (mid, qos) arrivals, in their order."""
        self._pending.extend(arrivals)
        self._waiting.update(mid for mid, _ in arrivals)

    def done_many(self, mids: Sequence[int]) -> list[tuple[int, int]]:
        """`done()` for each of `mids` in turn; what they release, in order.

        The common case, a run of messages processed in the order they arrived with none
        done early, is taken in one step (a batch of a backlog is hundreds of them).
        """
        if not mids:
            return []
        pending = self._pending
        count = len(mids)
        if not self._done and count <= len(pending) and pending[0][0] == mids[0]:
            head = list(itertools.islice(pending, count))
            if [mid for mid, _ in head] == list(mids):
                for _ in range(count):
                    pending.popleft()
                self._waiting.difference_update(mids)
                return head
        ready: list[tuple[int, int]] = []
        for mid in mids:
            ready.extend(self.done(mid))
        return ready

    def done(self, mid: int) -> list[tuple[int, int]]:
        """Mark `mid` processed; return the (mid, qos) pairs now to acknowledge, in order."""
        waiting = self._waiting
        if mid not in waiting:
            return []  # stale: from a connection that is gone, or acknowledged already
        pending = self._pending
        if pending[0][0] == mid:
            # The common case: processed in arrival order.
            waiting.discard(mid)
            ready = [pending.popleft()]
        else:
            self._done.add(mid)
            ready = []
        done = self._done
        while done and pending and pending[0][0] in done:
            entry = pending.popleft()
            done.discard(entry[0])
            waiting.discard(entry[0])
            ready.append(entry)
        return ready

    def reset(self) -> int:
        """Forget every pending message (connection lost); return how many there were."""
        count = len(self._pending)
        self._pending.clear()
        self._waiting.clear()
        self._done.clear()
        return count
