"""A min-heap of deadlines: `push(deadline, key)`, `pop_due(now)`, `next_deadline()`.

Owns the supervisor's timer queue (T-34). Entries cannot be cancelled: the
owner of a key ignores a stale wake-up (lifecycle.py does, for TimerFired), and
pushing the same (deadline, key) twice keeps one entry. A deadline is due when
`deadline <= now` (so a restart-timeout of 0 fires in the same loop iteration).
Pure: no clock; `now` is a parameter.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Generic, TypeVar
else:  # typing stays out of the supervisor (protocol/hints.py)
    from protocol.hints import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerHeap(Generic[K]):
    """Deadlines (monotonic seconds) with a key each, earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._entries: set[tuple[float, K]] = set()
        self._seq = 0  # ties keep insertion order; keys need not be comparable

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, key: K) -> None:
        """Wake `key` at `deadline`; an identical pending entry is not duplicated."""
        if (deadline, key) in self._entries:
            return
        self._entries.add((deadline, key))
        heapq.heappush(self._heap, (deadline, self._seq, key))
        self._seq += 1

    def pop_due(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is <= now, earliest first."""
        due: list[K] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            self._entries.discard((deadline, key))
            due.append(key)
        return due

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when empty (then wait forever)."""
        return self._heap[0][0] if self._heap else None

    def timeout_s(self, now: float) -> float | None:
        """Seconds to wait from `now` for the next deadline (>= 0), or None."""
        deadline = self.next_deadline()
        return None if deadline is None else max(0.0, deadline - now)
