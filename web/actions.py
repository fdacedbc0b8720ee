"""The web's write flows, shared by the HTML pages and the JSON API.

Each runs inside the caller's one transaction and calls the ledger or a kiosk service with
the signed-in actor and the app's clock; when a compartment must open, the command for the
kiosk is inserted in the same transaction, so the record and the request to open commit
together or not at all. No rule is decided here that the ledger decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiosk import cabinets, commands, exemptions
from kiosk.commands import CommandKind
from kiosk.errors import NotFound, PermissionDenied, ValidationError
from kiosk.models import (
    ACTIVE_STATES,
    Command,
    Compartment,
    Contact,
    CustodyRecord,
    CustodyState,
    Exemption,
    ExemptionKind,
    Kiosk,
    Pupil,
)

from . import core, queries

log = logging.getLogger(__name__)

SAFE = "safe"
IN_LOCKER = "locker"


@dataclass(frozen=True)
class Outcome:
    record: CustodyRecord
    command: Command | None = None


def pupil(session: Session, admission_number: str) -> Pupil:
    if not isinstance(admission_number, str) or not admission_number.strip():
        raise ValidationError("give the pupil's admission number")
    found = queries.pupil_by_admission(session, admission_number[:20])
    if found is None:
        raise NotFound(f"no pupil with admission number {admission_number.strip()[:20]!r}")
    return found


def _submit(
    session: Session, kiosk: Kiosk, kind: CommandKind, payload: dict[str, object]
) -> Command:
    """Queue a command for ``kiosk`` in the caller's transaction, as the signed-in user."""
    return commands.submit(
        session,
        core.actor(),
        core.clock(),
        core.instance().audit,
        kiosk=kiosk,
        kind=kind,
        payload=payload,
    )


def _open(
    session: Session, compartment: Compartment, record: CustodyRecord, purpose: str
) -> Command:
    return _submit(
        session,
        compartment.kiosk,
        CommandKind.OPEN_COMPARTMENT,
        {"compartment": compartment.number, "custody_id": record.id, "purpose": purpose},
    )


def confiscate(
    session: Session,
    *,
    admission_number: str,
    reason: str,
    where: str,
    device: str | None = None,
    referral: str | None = None,
) -> Outcome:
    """Confiscate a pupil's device: where it is (``locker``: their device in a locker), into
    a secure compartment of a kiosk (``kiosk:NAME``: the compartment opens), or to the office
    safe (``safe``). With ``referral`` the device goes straight under safeguarding hold."""
    instance, clock, actor = core.instance(), core.clock(), core.actor()
    ledger = instance.ledger
    who = pupil(session, admission_number)
    command = None
    if where == IN_LOCKER:
        daily = ledger.active_daily(session, who.id)
        if daily is None or daily.state is not CustodyState.IN_LOCKER:
            raise ValidationError(
                f"{who.admission_number} has no device in a locker; choose a secure "
                "compartment or the office safe"
            )
        record = ledger.confiscate(
            session, actor, clock, pupil=who, reason=reason, device=device, record=daily
        )
    elif where == SAFE:
        record = ledger.confiscate(session, actor, clock, pupil=who, reason=reason, device=device)
    elif isinstance(where, str) and where.startswith("kiosk:"):
        kiosk = cabinets.get_kiosk(session, where.removeprefix("kiosk:"))
        record = ledger.confiscate(
            session, actor, clock, pupil=who, reason=reason, device=device, kiosk=kiosk
        )
        assert record.compartment is not None
        command = _open(session, record.compartment, record, "confiscation")
    else:
        raise ValidationError("choose where the device goes: a secure compartment or the safe")
    if referral is not None:
        ledger.hold(session, actor, clock, record, reason=referral)
    return Outcome(record, command)


def release(
    session: Session,
    record_id: int,
    *,
    id_checked: bool,
    contact_id: int | None = None,
    collector_name: str | None = None,
    relationship: str | None = None,
) -> Outcome:
    """Release a confiscated device to a parent or carer; its compartment opens."""
    instance, clock, actor = core.instance(), core.clock(), core.actor()
    record = instance.ledger.get(session, record_id)
    contact = None
    if contact_id is not None:
        contact = session.get(Contact, contact_id)
        if contact is None or contact.pupil_id != record.pupil_id:
            raise ValidationError("that contact is not one of this pupil's contacts")
    instance.ledger.release_to_parent(
        session,
        actor,
        clock,
        record,
        id_checked=id_checked,
        contact=contact,
        collector_name=collector_name,
        relationship=relationship,
    )
    command = _open(session, record.compartment, record, "release") if record.compartment else None
    return Outcome(record, command)


def hold(session: Session, record_id: int, reason: str) -> Outcome:
    instance = core.instance()
    record = instance.ledger.get(session, record_id)
    instance.ledger.hold(session, core.actor(), core.clock(), record, reason=reason)
    return Outcome(record)


def lift_hold(session: Session, record_id: int, note: str) -> Outcome:
    instance = core.instance()
    record = instance.ledger.get(session, record_id)
    instance.ledger.lift_hold(session, core.actor(), core.clock(), record, note=note)
    return Outcome(record)


def hand_to_police(session: Session, record_id: int, reference: str) -> Outcome:
    """Hand a held device to the police; its compartment opens for the DSL."""
    instance = core.instance()
    record = instance.ledger.get(session, record_id)
    instance.ledger.hand_to_police(session, core.actor(), core.clock(), record, reference=reference)
    command = _open(session, record.compartment, record, "police") if record.compartment else None
    return Outcome(record, command)


def refer(session: Session, admission_number: str, reason: str) -> list[CustodyRecord]:
    """An urgent referral by admission number: hold every device of the pupil that the
    school has (in a locker or confiscated)."""
    instance, clock, actor = core.instance(), core.clock(), core.actor()
    who = pupil(session, admission_number)
    records = [
        record
        for record in instance.ledger.active_records(session, who.id)
        if record.state in (CustodyState.IN_LOCKER, CustodyState.CONFISCATED)
    ]
    if not records:
        raise ValidationError(
            f"the school holds no device of {who.admission_number} that can be held: "
            "confiscate it first and tick 'urgent safeguarding referral'"
        )
    for record in records:
        instance.ledger.hold(session, actor, clock, record, reason=reason)
    return records


def grant_exemption(
    session: Session,
    *,
    admission_number: str,
    kind: str,
    starts_on: date,
    ends_on: date | None,
    review_on: date | None,
    agreement_reference: str,
    notes: str = "",
) -> Exemption:
    instance = core.instance()
    return exemptions.grant(
        session,
        core.actor(),
        core.clock(),
        instance.audit,
        pupil=pupil(session, admission_number),
        kind=exemptions.parse_kind(kind) if isinstance(kind, str) else ExemptionKind(kind),
        starts_on=starts_on,
        ends_on=ends_on,
        review_on=review_on,
        agreement_reference=agreement_reference,
        notes=notes,
    )


def revoke_exemption(session: Session, exemption_id: int, reason: str) -> Exemption:
    """Revoke an exemption (admin); revoking one already revoked is a conflict with its
    state (409, ConflictError from the ledger), not bad input."""
    instance = core.instance()
    return exemptions.revoke(
        session,
        core.actor(),
        core.clock(),
        instance.audit,
        exemption_id=exemption_id,
        reason=reason,
    )


def open_compartment(session: Session, kiosk_name: str, number: int) -> Command:
    """Ask a kiosk to open one compartment (office). A compartment holding a device under
    safeguarding hold opens only for the DSL or an admin."""
    kiosk = cabinets.get_kiosk(session, kiosk_name)
    compartment = session.execute(
        select(Compartment).where(Compartment.kiosk_id == kiosk.id, Compartment.number == number)
    ).scalar_one_or_none()
    if compartment is None:
        raise NotFound(f"{kiosk.label} has no compartment {number}")
    record = session.execute(
        select(CustodyRecord).where(
            CustodyRecord.compartment_id == compartment.id,
            CustodyRecord.state.in_(ACTIVE_STATES),
        )
    ).scalar_one_or_none()
    payload: dict[str, object] = {"compartment": number, "purpose": "office"}
    if record is not None:
        if record.state is CustodyState.SAFEGUARDING_HOLD and not core.sees_restricted():
            raise PermissionDenied(
                f"compartment {number} holds a device under safeguarding hold: contact the DSL"
            )
        payload.update(custody_id=record.id, purpose="check")
    return _submit(session, kiosk, CommandKind.OPEN_COMPARTMENT, payload)


def open_all(session: Session, kiosk_name: str) -> Command:
    return _submit(session, cabinets.get_kiosk(session, kiosk_name), CommandKind.OPEN_ALL, {})


def enrol_next_card(session: Session, admission_number: str, kiosk_name: str) -> Command:
    """Ask a kiosk to give the next unknown card tapped on it to this pupil."""
    who = pupil(session, admission_number)
    kiosk = cabinets.get_kiosk(session, kiosk_name)
    return _submit(session, kiosk, CommandKind.ENROL_NEXT_CARD, {"pupil_id": who.id})


def only_kiosk(session: Session, name: str | None) -> Kiosk:
    """The kiosk ``name``, or the only kiosk when none is named."""
    if name:
        return cabinets.get_kiosk(session, name)
    kiosks = list(session.execute(select(Kiosk).order_by(Kiosk.name).limit(2)).scalars())
    if not kiosks:
        raise NotFound("no kiosk is registered; run `locker init`")
    if len(kiosks) > 1:
        raise ValidationError("there are several kiosks: name one with ?kiosk=NAME")
    return kiosks[0]
