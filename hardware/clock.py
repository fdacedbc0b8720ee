"""Time for the hardware layer: a monotonic clock, sleeping, and timers, behind one interface.

Lock pulses, door debounce, buzzer patterns and the reader's waits all go through a
:class:`Clock`, so tests and benchmarks can run them with a :class:`ManualClock` (no real
sleeping, fully deterministic) while a real cabinet uses :class:`SystemClock` (one timer
thread for the whole cabinet).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class TimerHandle(Protocol):
    """What :meth:`Clock.call_later` returns."""

    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran."""


class Clock(Protocol):
    """Time source and timer factory. Times are in seconds."""

    def monotonic(self) -> float:
        """Seconds since an arbitrary point; never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now, in the clock's timer context."""

    def close(self) -> None:
        """Stop the timer machinery; pending callbacks are dropped."""


class _Entry:
    __slots__ = ("callback", "cancelled", "due", "seq")

    def __init__(self, due: float, seq: int, callback: Callable[[], None]) -> None:
        self.due = due
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _Entry) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class SystemClock:
    """Real time; callbacks run one after another in a single daemon thread.

    Callbacks must be short. An exception in one is logged and does not stop the others.
    """

    def __init__(self, name: str = "hardware-timer") -> None:
        self._name = name
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Entry:
        entry = _Entry(time.monotonic() + max(0.0, delay), next(self._seq), callback)
        with self._cond:
            if self._closed:
                entry.cancelled = True
                return entry
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0].due - time.monotonic()
                    if wait <= 0:
                        entry = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                entry.callback()
            except Exception:
                logger.exception("timer callback %r failed", entry.callback)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)


class ManualClock:
    """A clock that moves only when told to; timers run synchronously inside :meth:`advance`.

    ``sleep(s)`` advances the clock by ``s`` (so code that waits, like the reader, runs
    instantly and deterministically). Thread-safe, but meant for single-threaded tests.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._closed = False

    def monotonic(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Entry:
        entry = _Entry(self._now + max(0.0, delay), next(self._seq), callback)
        with self._lock:
            if self._closed:
                entry.cancelled = True
            else:
                heapq.heappush(self._heap, entry)
        return entry

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running each due callback at its due time."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        while True:
            with self._lock:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap or self._heap[0].due > target:
                    self._now = max(self._now, target)
                    return
                entry = heapq.heappop(self._heap)
                self._now = max(self._now, entry.due)
            entry.callback()

    def run_pending(self) -> None:
        """Run the callbacks that are already due, without moving time."""
        self.advance(0.0)

    @property
    def pending(self) -> int:
        """Number of timers not yet run nor cancelled."""
        with self._lock:
            return sum(1 for entry in self._heap if not entry.cancelled)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._heap.clear()


__all__ = ["Clock", "ManualClock", "SystemClock", "TimerHandle"]
