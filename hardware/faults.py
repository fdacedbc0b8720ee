"""Fault reporting: each failing part reported once per outage, and its recovery once.

A part of the cabinet that keeps failing (an expander that no longer answers on I2C, a lock
output that cannot be switched off) is retried by the driver every few milliseconds; the user
of the hardware layer must hear about it once, not once per retry, and must hear when it
works again. A :class:`FaultReporter` keeps the set of failing *sources* (short stable names
such as ``"expander mcp1"`` or ``"compartment 3 lock"``) and calls its hooks only when a
source starts or stops failing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hardware.errors import ExpanderError, HardwareError

logger = logging.getLogger(__name__)

FaultCallback = Callable[[HardwareError], None]
RecoverCallback = Callable[[str], None]


def expander_source(name: str) -> str:
    """The fault source name of expander ``name``."""
    return f"expander {name}"


def source_of(exc: HardwareError, default: str) -> str:
    """The fault source of ``exc``: its expander if it names one, else ``default``."""
    if isinstance(exc, ExpanderError) and exc.expander:
        return expander_source(exc.expander)
    return default


class FaultReporter:
    """Remembers which sources are failing; reports each outage and each recovery once.

    ``on_fault(error)`` is called when a source that was working fails (with the first error
    of the outage; later errors of the same outage are only logged at debug level);
    ``on_recover(source)`` when a failing source works again. Both are called in the thread
    that noticed, outside the reporter's lock; an exception in them is logged. Thread-safe.
    """

    def __init__(
        self,
        on_fault: FaultCallback | None = None,
        on_recover: RecoverCallback | None = None,
    ) -> None:
        self.on_fault = on_fault
        self.on_recover = on_recover
        self._lock = threading.Lock()
        self._failing: dict[str, HardwareError] = {}

    def fault(self, source: str, error: HardwareError) -> bool:
        """``source`` failed with ``error``. Returns True if this starts an outage (reported)."""
        with self._lock:
            first = source not in self._failing
            if first:
                self._failing[source] = error
        if not first:
            logger.debug("%s still failing: %s", source, error)
            return False
        logger.warning("%s failed: %s", source, error)
        _call(self.on_fault, error)
        return True

    def ok(self, source: str) -> bool:
        """``source`` worked. Returns True if it was failing (its recovery is reported)."""
        if source not in self._failing:  # the common case, without taking the lock
            return False
        with self._lock:
            if self._failing.pop(source, None) is None:
                return False
        logger.warning("%s works again", source)
        _call(self.on_recover, source)
        return True

    def failing(self, source: str) -> bool:
        """True while ``source`` is failing."""
        return source in self._failing

    @property
    def faults(self) -> dict[str, HardwareError]:
        """The failing sources and the first error of each outage (a copy)."""
        with self._lock:
            return dict(self._failing)


def _call(callback: Callable[..., None] | None, *args: object) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        logger.exception("fault callback %r failed", callback)


__all__ = ["FaultReporter", "expander_source", "source_of"]
