"""The small interfaces the controller depends on, and the events they deliver.

Real drivers (:mod:`hardware.gpio`, :mod:`hardware.rfid`) and the simulator implement these;
the controller never needs to know which it has. Reader callbacks run in the reader thread;
the cabinet's hooks (doors, pulse ends, faults) on the clock's event thread (see
:meth:`hardware.clock.Clock.dispatch`), never on the timer thread that switches locks off.
They should still be cheap (put the event on a queue and return): a slow one delays the
events after it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hardware.uid import format_uid

# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Tap:
    """A card arrived on the reader. ``uid`` is the whole UID (4, 7 or 10 bytes, no BCC).

    ``at`` is the reader clock's monotonic time in seconds; ``sak`` the card's select
    acknowledge (0x08 for MIFARE Classic 1K, 0x00 for Ultralight, ...).
    """

    uid: bytes
    at: float = 0.0
    sak: int = 0
    atqa: bytes = field(default=b"", compare=False)

    @property
    def uid_hex(self) -> str:
        """The UID as upper-case hex, e.g. ``"DEADBEEF"``."""
        return format_uid(self.uid)


@dataclass(frozen=True)
class DoorEvent:
    """A debounced door edge. ``forced`` is True when the door opened with its lock latched.

    A door counts as forced when it opens while its lock is not energised and the lock has
    not been energised within the last ``forced_grace_s`` seconds.
    """

    number: int
    is_open: bool
    forced: bool = False
    at: float = 0.0


@dataclass(frozen=True)
class PulseEnd:
    """A lock pulse ended (timer, :meth:`Lock.lock`, or close).

    ``door_opened`` tells whether the compartment's door was seen open while the lock was
    energised; False after a full pulse usually means nobody pulled the door, or a jammed latch.
    ``reason`` is ``"timer"``, ``"lock"`` or ``"close"``.
    """

    number: int
    seconds: float
    door_opened: bool
    reason: str = "timer"


TapCallback = Callable[[Tap], None]
ErrorCallback = Callable[[Exception], None]


# --------------------------------------------------------------------------- lines


class OutputLine(Protocol):
    """One digital output, in logical terms (active = the device is on)."""

    name: str

    def on(self) -> None:
        """Drive the active level. Raises HardwareError on an I/O failure."""

    def off(self) -> None:
        """Drive the inactive level. Raises HardwareError on an I/O failure."""

    @property
    def is_active(self) -> bool:
        """True while the active level is driven."""

    def close(self) -> None:
        """Drive the inactive level and release the pin; safe to call twice."""


class InputLine(Protocol):
    """One digital input, in electrical terms (``level`` True = high)."""

    name: str

    @property
    def level(self) -> bool:
        """The current level of the pin."""

    when_changed: Callable[[bool], None] | None

    def close(self) -> None:
        """Release the pin; safe to call twice."""


# --------------------------------------------------------------------------- devices


class CardReader(abc.ABC):
    """Yields taps: a card arriving is one tap, a card held still stays one tap.

    The same card tapped again after it left is a new tap. Taps and errors are delivered from
    one reader thread; a reader failure never kills the process: it is reported to
    ``on_error`` and retried.
    """

    @abc.abstractmethod
    def start(
        self,
        on_tap: TapCallback,
        on_error: ErrorCallback | None = None,
        on_recover: Callable[[], None] | None = None,
        *,
        thread: bool = True,
    ) -> None:
        """Register callbacks and start polling (in a thread unless ``thread`` is False)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop polling and wait for the thread to end; safe to call twice."""

    @abc.abstractmethod
    def poll_once(self) -> Tap | None:
        """Poll the reader once, synchronously; return the new tap, if any.

        Raises ReaderError/ReaderUnavailable on failure (callbacks are not called).
        """

    @abc.abstractmethod
    def step(self) -> Tap | None:
        """One cycle of the polling thread, synchronously: poll, deliver to the callbacks.

        Errors go to ``on_error`` (and are not raised); the next step retries.
        """

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False after an error until a poll succeeds again."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop and release the reader; safe to call twice."""


class Lock(abc.ABC):
    """A compartment's solenoid lock. Locked (de-energised) is the safe state."""

    number: int

    @abc.abstractmethod
    def pulse(self, seconds: float | None = None) -> float:
        """Energise for ``seconds`` (default ``unlock_s``), clamped to ``max_unlock_s``.

        Returns the seconds actually granted. Raises LockBusy when too many locks are
        energised already (retry later), LockError on an output failure.
        """

    @abc.abstractmethod
    def lock(self) -> None:
        """De-energise now (ends a pulse early); harmless when already locked."""

    @property
    @abc.abstractmethod
    def is_energised(self) -> bool:
        """True while the solenoid is energised (the latch is released)."""

    @abc.abstractmethod
    def close(self) -> None:
        """De-energise and release the output; safe to call twice."""


class DoorSwitch(abc.ABC):
    """A compartment's door (reed) switch, debounced."""

    number: int
    when_opened: Callable[[], None] | None
    when_closed: Callable[[], None] | None

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """The debounced state of the door."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the input; safe to call twice."""


class Indicators(abc.ABC):
    """The status RGB LED and the buzzer."""

    @abc.abstractmethod
    def status(self, state: str) -> None:
        """Show a state (``idle``, ``ok``, ``busy``, ``refused``, ``error``, ``alarm``, ``off``)
        or a colour name. Raises ValueError for an unknown name."""

    @abc.abstractmethod
    def beep(self, pattern: str) -> None:
        """Sound ``ok``, ``refused`` or ``alarm`` (replacing any pattern in progress)."""

    @abc.abstractmethod
    def off(self) -> None:
        """LED off, buzzer silent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Everything off and released; safe to call twice."""


__all__ = [
    "CardReader",
    "DoorEvent",
    "DoorSwitch",
    "ErrorCallback",
    "Indicators",
    "InputLine",
    "Lock",
    "OutputLine",
    "PulseEnd",
    "Tap",
    "TapCallback",
]
