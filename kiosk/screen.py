"""What the kiosk says: the screen, its wording for pupils and staff, and the kiosk's
published state.

- :class:`Screen` holds what the screen shows now (tone, title, message, a first name and an
  initial at most, the compartment), numbered so that a screen held for a few seconds goes
  back to idle only if nothing replaced it meanwhile.
- The wording the people at the kiosk read lives here, in one place: short, plain, and never
  more of a pupil's name than the policy's display name; never a hint of a safeguarding hold.
- :class:`StatePublisher` writes the kiosk's state (screen, faults, alarms, network) to its
  row, with each unit of work, when it changed; and, on a shared database, to a file next to
  the instance that the kiosk's own screen reads while the database is out of reach.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, update

from kiosk.clock import Clock
from kiosk.errors import ConflictError, LockerError, PolicyError
from kiosk.models import Kiosk
from kiosk.offline import state_file

log = logging.getLogger(__name__)

#: Seconds a screen stays before the kiosk goes back to its idle screen.
SCREEN_HOLD_S = 6.0

# ------------------------------------------------------------------------------ wording

TAP_YOUR_CARD = "Tap your card"
SEE_THE_OFFICE = "Please see the school office."
OUT_OF_ORDER = ("Out of order", SEE_THE_OFFICE)
KIOSK_FAULT = ("Kiosk fault", SEE_THE_OFFICE)
NOT_RECOGNISED = ("Card not recognised", SEE_THE_OFFICE)
NOT_ACTIVE = ("Card not active", SEE_THE_OFFICE)
LOCKER_OPEN = "Your locker is open"
PUT_IT_IN = "Put your device in and close the door."
TAKE_IT = "Take your device and close the door."
TAKE_IT_BYE = "Take your device and close the door. See you tomorrow!"
OPEN_FOR_YOU = "It is open for you."
DOOR_DID_NOT_OPEN = "The door did not open"
TAP_AGAIN = "Please tap your card again."
TO_THE_OFFICE = "Take the device to the school office."
#: A device confiscated or held: the same words either way (a hold is not for the pupil to
#: learn of at a kiosk).
WITH_THE_OFFICE = (
    "Your device is with the school office: a parent or carer must collect it from the office."
)
CANNOT_OPEN_NOW = "Your locker cannot be opened just now: please see the school office."
THANK_YOU = ("Thank you", "See you tomorrow!")
STAFF_MODE = (
    "Staff mode",
    "Tap the pupil's card to confiscate their device, or your card to finish.",
)
STAFF_MODE_ENDED = "Staff mode ended"
TAP_STAFF_CARD_AGAIN = "Tap your staff card again."
OFFLINE_STAFF = ("Staff actions need the network", "Please use the office page meanwhile.")
TAP_THE_NEW_CARD = "Tap the new card"
ENROLLING = "A card is being enrolled: tap the new card, or wait for it to time out."
NOT_ENROLLED = "Card not enrolled"
ENROLLING_OFFLINE = "Enrolling a card needs the network."
ENROLLED = "Card enrolled"
CANNOT_CONFISCATE = "Cannot confiscate"
OPENING_EVERY = ("Opening every compartment", "Please stand back.")
CLOSE_THE_DOOR = "Please close the door"
DOOR_FORCED = "Door forced open"


def hello(name: str) -> str:
    return f"Hello {name}"


def sentence(text: str) -> str:
    """``text`` ending with one full stop (a name may end with an initial's)."""
    return text if text.endswith(".") else text + "."


def for_whom(label: str) -> str:
    """ "For Harry O." (who a card is being enrolled for)."""
    return sentence(f"For {label}")


def other_cabinet(kiosk: str | None) -> str:
    return f"Your device is in another cabinet ({kiosk})."


def refusal(exc: LockerError) -> str:
    """The ledger's reason, as a sentence."""
    return str(exc).capitalize() + "."


def locked_away(number: int) -> tuple[str, str]:
    return "Locked away", f"Locker {number}. Have a good day!"


def locker(number: int) -> str:
    return f"Locker {number}."


def secure_compartment(number: int) -> str:
    return f"Secure compartment {number}"


def put_their_device_in(name: str) -> str:
    return f"Put {name}'s device in and close the door."


def secured(number: int) -> tuple[str, str]:
    return "Device secured", f"Secure compartment {number} is locked."


def reason_of(exc: LockerError) -> str:
    """The reason code of a refusal the ledger gave (for the tap's audit event)."""
    if isinstance(exc, ConflictError) and str(exc).startswith("no free"):
        return "no_free_compartment"
    if isinstance(exc, ConflictError):
        return "conflict"
    if isinstance(exc, PolicyError) and "between" in str(exc):
        return "outside_window"
    return "not_allowed" if isinstance(exc, PolicyError) else "refused"


# ------------------------------------------------------------------------------ the screen


class Screen:
    """What the kiosk's screen shows now."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seq = 0
        self.current: dict[str, Any] = {}

    def show(
        self,
        tone: str,
        title: str,
        message: str = "",
        *,
        name: str | None = None,
        compartment: int | None = None,
    ) -> int:
        """Show it; returns its number (``seq``)."""
        self.seq += 1
        self.current = {
            "seq": self.seq,
            "tone": tone,
            "title": title,
            "message": message,
            "name": name or None,
            "compartment": compartment,
            "at": self.clock.now().isoformat(),
        }
        return self.seq


# ------------------------------------------------------------------------------ publishing

_PUBLISH_STATE = (
    update(Kiosk.__table__)
    .where(Kiosk.__table__.c.id == bindparam("kiosk_id"))
    .values(state=bindparam("state"))
)


class StatePublisher:
    """Publishes a kiosk's state in its row, and (``to_file``) in its state file."""

    def __init__(self, home: Path, kiosk: str, label: str, *, to_file: bool) -> None:
        self.path = state_file(home, kiosk)
        self.kiosk, self.label = kiosk, label
        self.to_file = to_file
        self.kiosk_id = 0
        #: The state last written (None: write the next one whatever it is).
        self.published: dict[str, Any] | None = None

    def write(self, connection: Connection, state: dict[str, Any], *, unit: str | None) -> bool:
        """Write ``state`` if it changed (with ``unit``, the unit of work's key, always,
        with the key); True if written."""
        if state == self.published and unit is None:
            return False
        row = state if unit is None else {**state, "unit": unit}
        connection.execute(_PUBLISH_STATE, {"kiosk_id": self.kiosk_id, "state": row})
        self.published = state
        return True

    def write_file(self, heartbeat_at: datetime) -> None:
        """The state last published, in the state file (best effort): at every heartbeat,
        and at every change while the database is out of reach."""
        if not self.to_file or self.published is None:
            return
        data = {
            "kiosk": self.kiosk,
            "label": self.label,
            "heartbeat_at": heartbeat_at.isoformat(),
            "state": self.published,
        }
        try:
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)


__all__ = ["SCREEN_HOLD_S", "Screen", "StatePublisher", "reason_of"]
