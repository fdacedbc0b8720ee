"""What is wrong with a kiosk now, and what it stops.

A fault is known by a key: ``"reader"``, ``"wiring"``, ``"database"``, or a part of the
cabinet as the hardware names it (``"expander mcp1"``, ``"compartment 3 lock"``, ``"interrupt
line GPIO4"``). A part's fault is *scoped* when the kiosk knows which compartments the part
serves: only those go out of use (a lock, a door switch, an expander's compartments; an
interrupt line stops none, its doors are polled meanwhile). Anything else puts the whole kiosk
out of order until it is cleared. A fault the kiosk found itself (its own attempt to energise
a lock failed; no recovery will be reported) has a time after which its compartments are
tried again.

Only the bookkeeping lives here; the controller records faults in the audit trail and says
so on the screen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from hardware.errors import ExpanderError, HardwareError
from hardware.faults import expander_source

#: Faults that do not stop a deposit by themselves (a tap came: the reader works; a unit of
#: work that succeeds clears the database's).
NOT_BLOCKING = frozenset({"reader", "database"})


def lock_source(number: int) -> str:
    """The fault source of compartment ``number``'s lock (as the hardware names it)."""
    return f"compartment {number} lock"


def scope_of(source: str, compartments: Mapping[int, Any]) -> frozenset[int] | None:
    """The compartments a failing part takes out of use (``compartments``: the cabinet
    spec's, number -> CompartmentSpec); None: the whole kiosk."""
    match = re.fullmatch(r"compartment (\d+) (lock|door)", source)
    if match:
        return frozenset({int(match.group(1))})
    if source.startswith("expander "):
        name = source.removeprefix("expander ")
        return frozenset(
            number
            for number, compartment in compartments.items()
            if compartment.lock.expander == name or compartment.door.expander == name
        )
    if source.startswith("interrupt line "):
        return frozenset()  # the doors behind it are polled meanwhile: for the office
    return None


def source_of(error: HardwareError, failing: Mapping[str, str]) -> str:
    """The part a fault report is about: the failing source with that message (``failing``:
    the cabinet's faults), else what the error names."""
    message = str(error)
    for source, text in failing.items():
        if text == message:
            return source
    if isinstance(error, ExpanderError) and error.expander:
        return expander_source(error.expander)
    number = getattr(error, "number", None)
    return lock_source(number) if isinstance(number, int) else "hardware"


@dataclass(frozen=True)
class Cleared:
    """A fault as it was before :meth:`FaultBook.clear` (to put back if recording failed)."""

    message: str
    scope: frozenset[int] | None
    retry_at: float | None


class FaultBook:
    """The faults of a kiosk now. ``messages`` (key -> message) is what is published."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self._scope: dict[str, frozenset[int]] = {}
        self._retry_at: dict[str, float] = {}

    def set(
        self,
        key: str,
        message: str,
        *,
        compartments: Collection[int] | None = None,
        retry_at: float | None = None,
    ) -> bool:
        """Record (or update) a fault; True if it is new."""
        new = key not in self.messages
        self.messages[key] = message
        if compartments is None:
            self._scope.pop(key, None)
        else:
            self._scope[key] = frozenset(compartments)
        if retry_at is None:
            self._retry_at.pop(key, None)
        else:
            self._retry_at[key] = retry_at
        return new

    def clear(self, key: str) -> Cleared | None:
        message = self.messages.pop(key, None)
        scope = self._scope.pop(key, None)
        retry_at = self._retry_at.pop(key, None)
        return None if message is None else Cleared(message, scope, retry_at)

    def restore(self, key: str, cleared: Cleared) -> None:
        self.messages.setdefault(key, cleared.message)
        if cleared.scope is not None:
            self._scope.setdefault(key, cleared.scope)
        if cleared.retry_at is not None:
            self._retry_at.setdefault(key, cleared.retry_at)

    def scope(self, key: str) -> frozenset[int] | None:
        return self._scope.get(key)

    def out_of_use(self, now: float) -> set[int]:
        """Compartments out of use at monotonic time ``now`` because a part of theirs fails."""
        if not self._scope:
            return set()
        return {
            number
            for key, scope in self._scope.items()
            if self._retry_at.get(key, math.inf) > now
            for number in scope
        }

    def kiosk_wide(self) -> bool:
        """A fault that puts the whole kiosk out of order (not one compartment's part)."""
        return any(key not in self._scope for key in self.messages)

    def blocks_deposits(self) -> bool:
        """The cabinet cannot be trusted with a new deposit (wiring, an unknown part)."""
        return bool(self.messages) and any(
            key not in self._scope and key not in NOT_BLOCKING for key in self.messages
        )

    def none_of(self, compartments: Collection[int], now: float) -> bool:
        """Every one of ``compartments`` is out of use (and there is at least one)."""
        if not self._scope:
            return False
        wanted = set(compartments)
        return bool(wanted) and wanted <= self.out_of_use(now)


__all__ = ["Cleared", "FaultBook", "lock_source", "scope_of", "source_of"]
