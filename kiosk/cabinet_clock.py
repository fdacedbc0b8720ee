"""The kiosk controller's clocks: one object that is both the ledger's clock (``now()``, UTC
wall time) and the hardware's (monotonic time, timers, dispatch of hardware events).

Separate from :mod:`kiosk.clock` on purpose: these build on :mod:`hardware.clock`, and the web
process, which imports :mod:`kiosk.clock`, never imports the hardware layer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hardware.clock import ManualClock as HardwareManualClock
from hardware.clock import SystemClock as HardwareSystemClock


class LiveClock(HardwareSystemClock):
    """Real time: wall clock for the ledger, monotonic time and a timer thread for the
    hardware."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock(HardwareManualClock):
    """Time that moves only when told (tests and benchmarks): ``now()`` follows
    ``monotonic()``, and timers run inside :meth:`advance`."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start=1000.0)
        self._epoch = start.astimezone(UTC) - timedelta(seconds=1000.0)

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self.monotonic())

    def set(self, when: datetime) -> None:
        """Jump forward to ``when`` (running every timer due on the way)."""
        seconds = (when.astimezone(UTC) - self.now()).total_seconds()
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self.advance(seconds)


__all__ = ["LiveClock", "SimulatedClock"]
