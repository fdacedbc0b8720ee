"""Subject access: everything held about one pupil, as JSON.

Safeguarding details are included because the person running this is the data controller's
administrator; the DSL must review them before anything is disclosed (the law allows
withholding what would put a child at risk). The export says so in its ``notice``.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from sqlalchemy import inspect, or_, select
from sqlalchemy.orm import Session

from kiosk.cards import uid_reference
from kiosk.models import AuditEvent, Card, CustodyRecord, Exemption
from kiosk.pupils import find_by_admission

NOTICE = (
    "Subject access export. Card UIDs are not stored in clear (uid_ref is a one-way "
    "reference). Records marked restricted hold safeguarding details: the DSL must review "
    "them before disclosure."
)


def _row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {}
    for column in inspect(obj).mapper.column_attrs:
        if column.key in skip:
            continue
        value = getattr(obj, column.key)
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif hasattr(value, "value"):
            value = value.value
        values[column.key] = value
    return values


def export_pupil(session: Session, admission_number: str, now: datetime) -> dict[str, Any]:
    pupil = find_by_admission(session, admission_number)
    records = (
        session.execute(
            select(CustodyRecord)
            .where(CustodyRecord.pupil_id == pupil.id)
            .order_by(CustodyRecord.id)
        )
        .scalars()
        .all()
    )
    record_ids = [record.id for record in records]
    events = (
        session.execute(
            select(AuditEvent)
            .where(
                or_(
                    AuditEvent.pupil_id == pupil.id,
                    AuditEvent.custody_id.in_(record_ids) if record_ids else False,
                )
            )
            .order_by(AuditEvent.seq)
        )
        .scalars()
        .all()
    )
    cards = (
        session.execute(select(Card).where(Card.pupil_id == pupil.id).order_by(Card.id))
        .scalars()
        .all()
    )
    exemption_rows = (
        session.execute(
            select(Exemption).where(Exemption.pupil_id == pupil.id).order_by(Exemption.id)
        )
        .scalars()
        .all()
    )
    return {
        "exported_at": now.isoformat(),
        "notice": NOTICE,
        "pupil": _row(pupil),
        "contacts": [_row(contact, ("pupil_id",)) for contact in pupil.contacts],
        "cards": [
            {**_row(card, ("uid_hash",)), "uid_ref": uid_reference(card.uid_hash)} for card in cards
        ],
        "exemptions": [_row(exemption) for exemption in exemption_rows],
        "custody_records": [_row(record) for record in records],
        "audit_events": [
            {**_row(event, ("prev_hash", "hash", "details")), "details": json.loads(event.details)}
            for event in events
        ],
    }
