"""The kiosk loop's timers: named, on the controller's monotonic clock, at most one per
(name, key) (a new one replaces it), run by the loop itself when due (never in a thread).

``Timers.after(3.0, "pending", 42)`` then, once the clock has passed it, ``pop_due()`` gives
``("pending", 42)``. A timer replaced or cancelled is dropped lazily from the heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator


class Timers:
    """A heap of named timers; ``now`` is the monotonic clock they run on."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._heap: list[tuple[float, int, str, Hashable]] = []
        self._seq = itertools.count()
        self._live: dict[tuple[str, Hashable], tuple[int, float]] = {}

    def after(self, seconds: float, name: str, key: Hashable = None) -> None:
        """Due in ``seconds``; replaces a timer of the same name and key."""
        self.at(self._now() + seconds, name, key)

    def at(self, when: float, name: str, key: Hashable = None) -> None:
        seq = next(self._seq)
        self._live[(name, key)] = (seq, when)
        heapq.heappush(self._heap, (when, seq, name, key))

    def cancel(self, name: str, key: Hashable = None) -> None:
        self._live.pop((name, key), None)

    def pending(self, name: str, key: Hashable = None) -> bool:
        return (name, key) in self._live

    def pop_due(self) -> tuple[str, Hashable] | None:
        """The next timer due by now (removed), or None."""
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            _, seq, name, key = heapq.heappop(self._heap)
            if self._live.get((name, key), (None,))[0] != seq:
                continue  # replaced or cancelled
            del self._live[(name, key)]
            return name, key
        return None

    def next_at(self) -> float | None:
        """When the next live timer is due (None: there is none)."""
        heap = self._heap
        while heap and self._live.get((heap[0][2], heap[0][3]), (None,))[0] != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def named(self, name: str) -> Iterator[tuple[Hashable, float]]:
        """The keys of the live timers called ``name``, and when each is due."""
        for (timer, key), (_, when) in list(self._live.items()):
            if timer == name:
                yield key, when


__all__ = ["Timers"]
