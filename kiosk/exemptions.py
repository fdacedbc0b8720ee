"""Exemptions: written agreements that let a pupil keep a device, approved by an admin.

Kinds follow the schools' policies: medical (e.g. glucose monitoring), educational visit,
young carer, other. An exemption has start and end dates (or no end date and a review
date), the approving admin and the reference of the written agreement.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from kiosk.actors import Actor, ActorRole
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.db import Executor, connection_of
from kiosk.errors import ConflictError, NotFound, PermissionDenied, ValidationError
from kiosk.models import Exemption, ExemptionKind, Pupil
from kiosk.text import clean_text


def parse_kind(value: str) -> ExemptionKind:
    normalised = value.strip().lower().replace(" ", "_").replace("-", "_")
    try:
        return ExemptionKind(normalised)
    except ValueError:
        kinds = ", ".join(kind.value for kind in ExemptionKind)
        raise ValidationError(f"unknown exemption kind {value!r}; kinds are {kinds}") from None


def grant(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    *,
    pupil: Pupil,
    kind: ExemptionKind,
    starts_on: date,
    ends_on: date | None,
    agreement_reference: str,
    review_on: date | None = None,
    notes: str = "",
) -> Exemption:
    """Record an exemption approved by ``actor`` (an admin)."""
    if actor.role is not ActorRole.ADMIN:
        raise PermissionDenied("only an admin may approve an exemption")
    reference = clean_text(agreement_reference, "the written agreement's reference", max_length=120)
    notes = clean_text(notes, "notes", max_length=500, required=False)
    if ends_on is not None and ends_on < starts_on:
        raise ValidationError(f"the exemption ends ({ends_on}) before it starts ({starts_on})")
    if ends_on is None and review_on is None:
        raise ValidationError("an exemption with no end date needs a review date")
    exemption = Exemption(
        pupil_id=pupil.id,
        kind=kind,
        starts_on=starts_on,
        ends_on=ends_on,
        review_on=review_on,
        agreement_reference=reference,
        notes=notes,
        approved_by_id=actor.user_id,
        approved_by=actor.label,
        created_at=clock.now(),
    )
    session.add(exemption)
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "exemption.granted",
        pupil_id=pupil.id,
        details={
            "exemption": exemption.id,
            "kind": kind.value,
            "starts_on": starts_on.isoformat(),
            "ends_on": ends_on.isoformat() if ends_on else None,
            "review_on": review_on.isoformat() if review_on else None,
            "agreement": reference,
        },
    )
    return exemption


def revoke(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    *,
    exemption_id: int,
    reason: str,
) -> Exemption:
    if actor.role is not ActorRole.ADMIN:
        raise PermissionDenied("only an admin may revoke an exemption")
    exemption = session.get(Exemption, exemption_id)
    if exemption is None:
        raise NotFound(f"no exemption {exemption_id}")
    if exemption.revoked_at is not None:
        raise ConflictError(f"exemption {exemption_id} was already revoked")
    reason = clean_text(reason, "the reason for revoking", max_length=500)
    exemption.revoked_at, exemption.revoked_by = clock.now(), actor.label
    exemption.revoke_reason = reason
    audit.record(
        session,
        clock,
        actor,
        "exemption.revoked",
        pupil_id=exemption.pupil_id,
        details={"exemption": exemption.id, "reason": reason},
    )
    return exemption


def active_on(session: Session, day: date, pupil_ids: list[int] | None = None) -> list[Exemption]:
    """Exemptions in force on ``day`` (not revoked, started, not ended)."""
    query = select(Exemption).where(
        Exemption.revoked_at.is_(None),
        Exemption.starts_on <= day,
        or_(Exemption.ends_on.is_(None), Exemption.ends_on >= day),
    )
    if pupil_ids is not None:
        query = query.where(Exemption.pupil_id.in_(pupil_ids))
    return list(session.execute(query.order_by(Exemption.id)).scalars())


_EXEMPTIONS = Exemption.__table__
_EXEMPT_ON = (
    select(_EXEMPTIONS.c.id)
    .where(
        _EXEMPTIONS.c.pupil_id == bindparam("pupil_id"),
        _EXEMPTIONS.c.revoked_at.is_(None),
        _EXEMPTIONS.c.starts_on <= bindparam("day"),
        or_(_EXEMPTIONS.c.ends_on.is_(None), _EXEMPTIONS.c.ends_on >= bindparam("day")),
    )
    .limit(1)
)


def is_exempt(executor: Executor, pupil_id: int, day: date) -> bool:
    """Whether an exemption of the pupil is in force on ``day`` (one small query)."""
    row = connection_of(executor).execute(_EXEMPT_ON, {"pupil_id": pupil_id, "day": day})
    return row.first() is not None
