"""Kiosks and their compartments, kept in step with the configuration.

``locker init`` (and the kiosk controller at start) registers this machine's cabinet from
``[kiosk]``: compartments 1..N, the secure ones as listed. Changing the numbers later adds
compartments, changes the kind of free ones, and takes out of service those no longer in
the configuration; a compartment that still holds a device is never changed under it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.config import KioskConfig
from kiosk.errors import NotFound, ValidationError
from kiosk.models import ACTIVE_STATES, Compartment, CompartmentKind, CustodyRecord, Kiosk

REMOVED_REASON = "not in the configuration"


def get_kiosk(session: Session, name: str) -> Kiosk:
    kiosk = session.execute(select(Kiosk).where(Kiosk.name == name)).scalar_one_or_none()
    if kiosk is None:
        raise NotFound(f"no kiosk {name!r}; run `locker init` on that kiosk first")
    return kiosk


def register(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, config: KioskConfig
) -> tuple[Kiosk, list[str]]:
    """Create or update the kiosk named in ``config``; returns it and a list of changes."""
    now = clock.now()
    changes: list[str] = []
    kiosk = session.execute(select(Kiosk).where(Kiosk.name == config.name)).scalar_one_or_none()
    if kiosk is None:
        kiosk = Kiosk(name=config.name, label=config.label)
        session.add(kiosk)
        session.flush()
        changes.append(f"kiosk {config.name} registered")
    elif kiosk.label != config.label:
        kiosk.label = config.label
        changes.append(f"kiosk {config.name} renamed {config.label!r}")

    occupied = set(
        session.execute(
            select(CustodyRecord.compartment_id).where(
                CustodyRecord.state.in_(ACTIVE_STATES), CustodyRecord.compartment_id.is_not(None)
            )
        ).scalars()
    )
    existing = {
        compartment.number: compartment
        for compartment in session.execute(
            select(Compartment).where(Compartment.kiosk_id == kiosk.id)
        ).scalars()
    }
    secure = set(config.secure_compartments)
    for number in range(1, config.compartments + 1):
        kind = CompartmentKind.SECURE if number in secure else CompartmentKind.PUPIL
        compartment = existing.get(number)
        if compartment is None:
            session.add(
                Compartment(
                    kiosk_id=kiosk.id,
                    number=number,
                    kind=kind,
                    label=str(number),
                    updated_at=now,
                )
            )
            changes.append(f"compartment {number} added ({kind.value})")
            continue
        if compartment.kind is not kind:
            if compartment.id in occupied:
                changes.append(
                    f"compartment {number} stays {compartment.kind.value} until it is emptied"
                )
            else:
                compartment.kind, compartment.updated_at = kind, now
                changes.append(f"compartment {number} is now {kind.value}")
        if compartment.out_of_service and compartment.out_of_service_reason == REMOVED_REASON:
            compartment.out_of_service, compartment.out_of_service_reason = False, None
            changes.append(f"compartment {number} back in service")
    for number, compartment in existing.items():
        if number > config.compartments and not compartment.out_of_service:
            compartment.out_of_service = True
            compartment.out_of_service_reason = REMOVED_REASON
            compartment.updated_at = now
            changes.append(f"compartment {number} taken out of service (not in the configuration)")
    if changes:
        session.flush()
        audit.record(
            session,
            clock,
            actor,
            "config.kiosk_registered",
            kiosk=kiosk.name,
            details={"changes": changes[:100], "compartments": config.compartments},
        )
    return kiosk, changes


def return_to_service(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, kiosk_name: str, number: int
) -> str | None:
    """Put compartment ``number`` of ``kiosk_name`` back in service (after a jammed lock or
    door was fixed); returns the reason it was out of service, or None if it was not.

    Raises NotFound for an unknown kiosk or compartment, and ValidationError for a
    compartment taken out because it is no longer in ``[kiosk] compartments`` (change the
    configuration instead).
    """
    kiosk = get_kiosk(session, kiosk_name)
    compartment = session.execute(
        select(Compartment)
        .where(Compartment.kiosk_id == kiosk.id, Compartment.number == number)
        .with_for_update()
    ).scalar_one_or_none()
    if compartment is None:
        raise NotFound(f"kiosk {kiosk_name!r} has no compartment {number}")
    if compartment.out_of_service_reason == REMOVED_REASON:
        raise ValidationError(
            f"compartment {number} is out of service because it is not in the configuration; "
            "raise [kiosk] compartments and run `locker init` instead"
        )
    was = compartment.out_of_service_reason if compartment.out_of_service else None
    if not compartment.out_of_service and compartment.failed_unlocks == 0:
        return None
    compartment.out_of_service = False
    compartment.out_of_service_reason = None
    compartment.failed_unlocks = 0
    compartment.updated_at = clock.now()
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "compartment.in_service",
        kiosk=kiosk.name,
        details={"compartment": number, "was": was},
    )
    return was


def count_failed_unlock(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    compartment_id: int,
    *,
    out_of_service_after: int,
) -> int:
    """The rule for a jammed lock: compartment ``compartment_id`` was unlocked for someone
    who meant to open it (a pupil, a member of staff at the kiosk) and its door never
    opened. After ``out_of_service_after`` such failures in a row (a door seen open resets
    the count) the compartment is taken out of service until the office puts it back
    (:func:`return_to_service`). Returns the count."""
    compartment = session.get(Compartment, compartment_id)
    if compartment is None:
        raise NotFound(f"no compartment {compartment_id}")
    compartment.failed_unlocks += 1
    compartment.updated_at = clock.now()
    if compartment.failed_unlocks >= out_of_service_after and not compartment.out_of_service:
        compartment.out_of_service = True
        compartment.out_of_service_reason = (
            f"the door did not open after {compartment.failed_unlocks} unlocks (jammed lock?)"
        )
        session.flush()
        audit.record(
            session,
            clock,
            actor,
            "compartment.out_of_service",
            details={
                "compartment": compartment.number,
                "reason": compartment.out_of_service_reason,
            },
        )
    return compartment.failed_unlocks


def take_out_of_service(
    session: Session, kiosk: Kiosk, number: int | None, reason: str, clock: Clock
) -> bool:
    """Compartment ``number`` of ``kiosk`` out of service for ``reason`` (what a kiosk
    recorded while offline, replayed); False if it already was, or does not exist."""
    compartment = session.execute(
        select(Compartment).where(Compartment.kiosk_id == kiosk.id, Compartment.number == number)
    ).scalar_one_or_none()
    if compartment is None or compartment.out_of_service:
        return False
    compartment.out_of_service = True
    compartment.out_of_service_reason = reason[:200]
    compartment.updated_at = clock.now()
    return True
