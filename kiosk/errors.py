"""The one exception base of the kiosk package, and its families.

Every error a user can cause carries a message that says what went wrong and what to do;
the CLI prints it on one line and exits non-zero, the web app turns it into a 4xx.
"""

from __future__ import annotations


class LockerError(Exception):
    """Base of every error raised on purpose by the kiosk package."""

    exit_code = 1


class ConfigError(LockerError):
    """The configuration (config.toml or a LOCKER_* variable) is invalid: the message names
    the key."""

    exit_code = 78  # EX_CONFIG


class InstanceError(LockerError):
    """The instance directory is missing, not initialised, or unreadable."""

    exit_code = 78


class NotFound(LockerError):
    """A pupil, card, user, compartment or record does not exist."""


class ValidationError(LockerError):
    """Input is malformed (a bad UID, an empty reason, a date in the wrong form)."""


class PolicyError(LockerError):
    """The school's policy forbids this now (outside a window, wrong role, under hold)."""


class PermissionDenied(PolicyError):
    """The actor's role may not do this."""


class TransitionError(PolicyError):
    """The custody record is not in a state from which this operation is allowed."""


class ConflictError(LockerError):
    """The operation collides with the current state (already deposited, compartment busy,
    UID already enrolled, no free compartment)."""


class ImportRejected(LockerError):
    """A roster file was refused as a whole; ``problems`` lists every bad line."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class AuditChainBroken(LockerError):
    """``locker audit verify`` found an edited, removed or reordered event."""

    exit_code = 2
