"""Who did it: every operation of the ledger takes an actor, and every audit event names one."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kiosk.models import Pupil, Role, User


class ActorRole(enum.StrEnum):
    PUPIL = "pupil"  # a pupil's card at a kiosk
    KIOSK = "kiosk"  # the kiosk controller acting on what it saw (a door closed)
    SYSTEM = "system"  # the CLI, timers, start-up reconciliation
    STAFF = Role.STAFF.value
    OFFICE = Role.OFFICE.value
    DSL = Role.DSL.value
    ADMIN = Role.ADMIN.value


STAFF_ROLES: frozenset[ActorRole] = frozenset(
    {ActorRole.STAFF, ActorRole.OFFICE, ActorRole.DSL, ActorRole.ADMIN}
)


@dataclass(frozen=True)
class Actor:
    """The person or process behind an operation.

    ``label`` is what the audit trail records: ``user:alice``, ``pupil:1234`` (admission
    number), ``kiosk:main`` or ``system:cli``.
    """

    role: ActorRole
    label: str
    user_id: int | None = None
    pupil_id: int | None = None
    kiosk: str | None = None

    @classmethod
    def for_user(cls, user: User, kiosk: str | None = None) -> Actor:
        return cls(
            ActorRole(user.role.value), f"user:{user.username}", user_id=user.id, kiosk=kiosk
        )

    @classmethod
    def for_pupil(cls, pupil: Pupil, kiosk: str | None = None) -> Actor:
        return cls(
            ActorRole.PUPIL, f"pupil:{pupil.admission_number}", pupil_id=pupil.id, kiosk=kiosk
        )

    @classmethod
    def for_kiosk(cls, name: str) -> Actor:
        return cls(ActorRole.KIOSK, f"kiosk:{name}", kiosk=name)

    @classmethod
    def system(cls, what: str = "cli") -> Actor:
        return cls(ActorRole.SYSTEM, f"system:{what}")

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES
