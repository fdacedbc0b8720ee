"""Time for the hardware layer: a monotonic clock, sleeping, and timers, behind one interface.

Lock pulses, door debounce, buzzer patterns and the reader's waits all go through a
:class:`Clock`, so tests and benchmarks can run them with a :class:`ManualClock` (no real
sleeping, fully deterministic) while a real cabinet uses :class:`SystemClock` (one timer
thread for the whole cabinet, and one event thread for the callbacks of the cabinet's users).

The timer thread switches solenoids off, so nothing slow may run on it: callbacks that belong
to the user of the hardware layer (door edges, pulse ends, faults) go through
:meth:`Clock.dispatch`, which runs them on the event thread, in order.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
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

    def dispatch(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` soon, in the order dispatched, without holding up the timers.

        For callbacks that may be slow (the user's hooks): a timer callback that dispatches
        one does not wait for it (:class:`SystemClock` runs it on its event thread;
        :class:`ManualClock`, where nothing runs concurrently, at once). An exception in
        ``callback`` is logged.
        """

    def close(self) -> None:
        """Stop the timer machinery; pending timers are dropped, dispatched callbacks run."""


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


def _run_logged(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("dispatched callback %r failed", callback)


class SystemClock:
    """Real time; timer callbacks run one after another in a single daemon thread.

    Timer callbacks must be short (they delay each other, and lock expiry is one of them).
    Dispatched callbacks run one after another in a second daemon thread (``<name>-events``),
    so a slow one delays only the dispatched callbacks after it. An exception in a callback
    is logged and does not stop the others. After :meth:`close`, :meth:`dispatch` runs the
    callback at once in the calling thread.
    """

    #: Seconds :meth:`close` waits for the dispatched callbacks still queued.
    CLOSE_WAIT_S = 2.0

    def __init__(self, name: str = "hardware-timer") -> None:
        self._name = name
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._events: deque[Callable[[], None]] = deque()
        self._events_cond = threading.Condition()
        self._events_thread: threading.Thread | None = None
        self._events_closed = False

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

    def dispatch(self, callback: Callable[[], None]) -> None:
        with self._events_cond:
            if not self._events_closed:
                self._events.append(callback)
                if self._events_thread is None:
                    self._events_thread = threading.Thread(
                        target=self._run_events, name=f"{self._name}-events", daemon=True
                    )
                    self._events_thread.start()
                self._events_cond.notify()
                return
        _run_logged(callback)  # closed: nobody else would run it

    def _run_events(self) -> None:
        while True:
            with self._events_cond:
                while not self._events and not self._events_closed:
                    self._events_cond.wait()
                if not self._events:
                    return  # closed, and everything queued has run
                callback = self._events.popleft()
            _run_logged(callback)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        with self._events_cond:
            self._events_closed = True
            self._events_cond.notify_all()
            events_thread = self._events_thread
        current = threading.current_thread()
        if thread is not None and thread is not current:
            thread.join(timeout=2.0)
        if events_thread is not None and events_thread is not current:
            events_thread.join(timeout=self.CLOSE_WAIT_S)
            if events_thread.is_alive():
                logger.warning("dispatched callbacks still running at close; not waiting")


class ManualClock:
    """A clock that moves only when told to; timers run synchronously inside :meth:`advance`.

    ``sleep(s)`` advances the clock by ``s`` (so code that waits, like the reader, runs
    instantly and deterministically); :meth:`dispatch` runs the callback at once, in the
    caller. Thread-safe, but meant for single-threaded tests.
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

    def dispatch(self, callback: Callable[[], None]) -> None:
        _run_logged(callback)

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
