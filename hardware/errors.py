"""Exceptions of the hardware layer.

Every error raised on purpose by :mod:`hardware` is a :class:`HardwareError`, so the controller
can catch one class, report it and retry. Messages say what happened and what to do about it.
"""

from __future__ import annotations


class HardwareError(Exception):
    """Base class of every error raised by the hardware layer."""


class HardwareConfigError(HardwareError, ValueError):
    """The ``[hardware]`` configuration is invalid; the message names the key."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class PinConfigError(HardwareConfigError):
    """A pin of the pin map is invalid: used twice, reserved (SPI, I2C), or missing on the board.

    ``compartment`` is the compartment number when the pin belongs to one (else None), ``pin``
    the pin as written in the configuration.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        compartment: int | None = None,
        pin: str | None = None,
    ) -> None:
        super().__init__(message, key=key)
        self.compartment = compartment
        self.pin = pin


class BackendUnavailable(HardwareError):
    """The chosen backend cannot run here (for example ``gpio`` on a machine without GPIO)."""


class ReaderError(HardwareError):
    """The card reader failed (I/O error, inconsistent answers). The reader thread retries."""


class ReaderUnavailable(ReaderError):
    """No card reader answers: SPI disabled, reader unplugged or unpowered, or library missing."""


class ExpanderError(HardwareError):
    """An MCP23017 I/O expander did not answer on the I2C bus, or an I2C transfer failed.

    ``expander`` is the name of the expander (``"mcp1"``) when the error is about one.
    """

    def __init__(self, message: str, *, expander: str | None = None) -> None:
        super().__init__(message)
        self.expander = expander


class LockError(HardwareError):
    """A lock could not be driven (closed device, I/O error on its output)."""

    def __init__(self, message: str, *, number: int | None = None) -> None:
        super().__init__(message)
        self.number = number


class LockBusy(LockError):
    """The lock cannot be energised yet; retry after ``retry_after`` seconds at most.

    Raised instead of blocking the caller: either too many locks are energised at once (the
    power supply would brown out if more solenoids were energised together), or
    (``resting``) this solenoid is still resting after its last pulse (``lock_rest_s``).
    """

    def __init__(
        self,
        message: str,
        *,
        number: int | None = None,
        energised: tuple[int, ...] = (),
        retry_after: float = 0.0,
        resting: bool = False,
    ) -> None:
        super().__init__(message, number=number)
        self.energised = energised
        self.retry_after = retry_after
        self.resting = resting


#: Another name for :class:`LockBusy`, as used in the issue text.
TooManyUnlocks = LockBusy


class DeviceClosed(HardwareError):
    """The device was closed; open the cabinet again to use it."""


__all__ = [
    "BackendUnavailable",
    "DeviceClosed",
    "ExpanderError",
    "HardwareConfigError",
    "HardwareError",
    "LockBusy",
    "LockError",
    "PinConfigError",
    "ReaderError",
    "ReaderUnavailable",
    "TooManyUnlocks",
]
