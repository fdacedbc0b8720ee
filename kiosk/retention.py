"""Retention: keep records no longer than ``[policy] retention_days``.

A purge deletes, older than the cut-off: finished custody records, the audit events that
belong to nothing still kept, pupils who left (with their contacts, cards and exemptions)
and no longer have records, revoked cards and tokens, finished exemptions and commands.
It never deletes a record that was ever under safeguarding hold, nor its events, nor an
active record. The removed audit events are listed in an ``audit.purged`` checkpoint so the
chain still verifies. SQLite overwrites deleted content (``secure_delete``) and the WAL is
checkpointed afterwards, so purged data does not linger in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from kiosk.actors import Actor
from kiosk.audit import PURGE_KIND, AuditTrail, removed_runs
from kiosk.clock import Clock
from kiosk.models import (
    TERMINAL_STATES,
    ApiToken,
    AuditEvent,
    Card,
    Command,
    CommandStatus,
    CustodyRecord,
    Exemption,
    Pupil,
    PupilStatus,
)
from kiosk.policy import Policy

_CHUNK = 500


@dataclass
class PurgePlan:
    cutoff: datetime
    custody_ids: list[int] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)  # (seq, hash)
    pupil_ids: list[int] = field(default_factory=list)
    card_ids: list[int] = field(default_factory=list)
    exemption_ids: list[int] = field(default_factory=list)
    command_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    kept_held: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "custody_records": len(self.custody_ids),
            "audit_events": len(self.events),
            "pupils": len(self.pupil_ids),
            "cards": len(self.card_ids),
            "exemptions": len(self.exemption_ids),
            "commands": len(self.command_ids),
            "api_tokens": len(self.token_ids),
        }

    @property
    def empty(self) -> bool:
        return not any(self.counts().values())


def plan(session: Session, clock: Clock, policy: Policy) -> PurgePlan:
    """What a purge now would delete (nothing is changed)."""
    cutoff = clock.now() - timedelta(days=policy.config.retention_days)
    result = PurgePlan(cutoff=cutoff)
    result.custody_ids = list(
        session.execute(
            select(CustodyRecord.id).where(
                CustodyRecord.state.in_(TERMINAL_STATES),
                CustodyRecord.ended_at < cutoff,
                CustodyRecord.ever_held.is_(False),
            )
        ).scalars()
    )
    doomed = set(result.custody_ids)
    kept_records = {
        record_id
        for record_id in session.execute(select(CustodyRecord.id)).scalars()
        if record_id not in doomed
    }
    result.kept_held = session.execute(
        select(func.count()).select_from(CustodyRecord).where(CustodyRecord.ever_held.is_(True))
    ).scalar_one()
    result.events = [
        (seq, event_hash)
        for seq, event_hash, custody_id in session.execute(
            select(AuditEvent.seq, AuditEvent.hash, AuditEvent.custody_id)
            .where(AuditEvent.occurred_at < cutoff, AuditEvent.kind != PURGE_KIND)
            .order_by(AuditEvent.seq)
        )
        if custody_id is None or custody_id not in kept_records
    ]
    pupils_with_records = {
        pupil_id
        for record_id, pupil_id in session.execute(select(CustodyRecord.id, CustodyRecord.pupil_id))
        if record_id not in doomed
    }
    result.pupil_ids = [
        pupil_id
        for pupil_id in session.execute(
            select(Pupil.id).where(Pupil.status == PupilStatus.LEFT, Pupil.left_at < cutoff)
        ).scalars()
        if pupil_id not in pupils_with_records
    ]
    result.card_ids = list(
        session.execute(select(Card.id).where(Card.revoked_at < cutoff)).scalars()
    )
    result.exemption_ids = list(
        session.execute(
            select(Exemption.id).where(
                or_(
                    Exemption.ends_on < cutoff.date(),
                    and_(Exemption.revoked_at.is_not(None), Exemption.revoked_at < cutoff),
                )
            )
        ).scalars()
    )
    result.command_ids = list(
        session.execute(
            select(Command.id).where(
                Command.status.in_(
                    [CommandStatus.DONE, CommandStatus.FAILED, CommandStatus.CANCELLED]
                ),
                Command.finished_at < cutoff,
            )
        ).scalars()
    )
    result.token_ids = list(
        session.execute(select(ApiToken.id).where(ApiToken.revoked_at < cutoff)).scalars()
    )
    return result


def _delete_in_chunks(session: Session, model: Any, column: Any, values: list[Any]) -> None:
    for start in range(0, len(values), _CHUNK):
        session.execute(
            delete(model).where(column.in_(values[start : start + _CHUNK])),
            execution_options={"synchronize_session": False},
        )


def apply(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, purge: PurgePlan
) -> dict[str, int]:
    """Carry out ``purge`` in the caller's transaction and write the checkpoint event."""
    _delete_in_chunks(session, CustodyRecord, CustodyRecord.id, purge.custody_ids)
    _delete_in_chunks(session, Card, Card.id, purge.card_ids)
    _delete_in_chunks(session, Exemption, Exemption.id, purge.exemption_ids)
    _delete_in_chunks(session, Pupil, Pupil.id, purge.pupil_ids)  # contacts, cards cascade
    _delete_in_chunks(session, Command, Command.id, purge.command_ids)
    _delete_in_chunks(session, ApiToken, ApiToken.id, purge.token_ids)
    _delete_in_chunks(session, AuditEvent, AuditEvent.seq, [seq for seq, _ in purge.events])
    counts = purge.counts()
    if not purge.empty:
        audit.record(
            session,
            clock,
            actor,
            PURGE_KIND,
            details={
                "cutoff": purge.cutoff.isoformat(),
                "counts": counts,
                "runs": removed_runs(purge.events),
            },
        )
    session.expire_all()
    return counts
