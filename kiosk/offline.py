"""Kiosks that keep working when the school's database cannot be reached.

A kiosk on a shared (PostgreSQL) database keeps a **local mirror**: a SQLite file with the
same schema holding what it needs to serve deposits and collections (pupils, cards, staff
names, the cabinets, the active custody records and exemptions). The mirror is refreshed in
full every minute, and the records the kiosk changes are copied into it after every unit of
work, so nothing the kiosk has just done is missing when the network goes.

While the database is out of reach the controller runs the same ledger on the mirror: the
policy is the same, and the mirror's audit events are the **outbox**. Confiscation and
enrolment, which need a member of staff's judgement and the central record, are refused.

On reconnect the outbox is **replayed**: each offline event is applied centrally, in order,
at the time it happened, in its own transaction together with an ``offline_replays`` row
whose unique key (kiosk, offline session, local seq) makes it happen exactly once, even if
the replay is interrupted and resumed. A deposit is re-created in the compartment the device
is really in. What the centre changed meanwhile wins: a collection of a device that was
confiscated or held meanwhile is recorded as a conflict and flagged for the office, never
forced through.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from kiosk import cabinets
from kiosk.actors import Actor
from kiosk.audit import GENESIS_HASH
from kiosk.clock import Clock, ManualClock
from kiosk.custody import FLAG_CHECK, FLAG_OFFLINE_CONFLICT
from kiosk.db import Database
from kiosk.errors import LockerError
from kiosk.instance import Instance
from kiosk.models import (
    ACTIVE_STATES,
    DAILY_ACTIVE_STATES,
    AuditEvent,
    AuditHead,
    Base,
    Card,
    Compartment,
    CustodyKind,
    CustodyRecord,
    Exemption,
    Kiosk,
    OfflineReplay,
    Pupil,
    User,
)

log = logging.getLogger(__name__)

REFRESH_S = 60.0
NO_PASSWORD = "!"  # staff password hashes never leave the central database

_local_meta = MetaData()
_STATE = Table(
    "offline_state",
    _local_meta,
    Column("key", String(40), primary_key=True),
    Column("value", String(200), nullable=False),
)
# Tables copied from the centre, parents first (foreign keys are on in the mirror).
_COPIED = (Kiosk, Compartment, Pupil, User, Card, Exemption, CustodyRecord)
# The trigger of migration 0002 that moves the audit head with every insert (the mirror is a
# cache built from the models, not migrated; the custody guards stay central, where the
# record is kept: the mirror's records are replaced wholesale on every refresh).
_HEAD_SEQ = select(AuditHead.__table__.c.seq).where(AuditHead.__table__.c.id == 1)
_HEAD_FOLLOWS = text("""
    CREATE TRIGGER IF NOT EXISTS trg_audit_head_follows AFTER INSERT ON audit_events
    FOR EACH ROW
    BEGIN
        UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash, updated_at = NEW.occurred_at
        WHERE id = 1;
    END""")


def mirror_path(home: Path, kiosk: str) -> Path:
    return home / f"offline-{kiosk}.db"


def state_file(home: Path, kiosk: str) -> Path:
    """Where a kiosk on a shared database also publishes its state, for its own screen to
    read while the database is out of reach (``web.kiosk_screen``)."""
    return home / f"kiosk-{kiosk}-state.json"


class LocalMirror:
    """The kiosk's local copy of what it needs, and its outbox while offline."""

    def __init__(self, home: Path, kiosk: str) -> None:
        self.path = mirror_path(home, kiosk)
        url = URL.create("sqlite", database=str(self.path)).render_as_string()
        self.database = Database(url)
        Base.metadata.create_all(self.database.engine)
        _local_meta.create_all(self.database.engine)
        with self.database.transaction() as session:
            head_columns = {
                row[1] for row in session.execute(text("PRAGMA table_info(audit_head)"))
            }
            if "seal" not in head_columns:  # a mirror made before heads were sealed
                session.execute(text("ALTER TABLE audit_head ADD COLUMN seal VARCHAR(64)"))
            session.execute(_HEAD_FOLLOWS)
            if session.get(AuditHead, 1) is None:
                session.add(
                    AuditHead(
                        id=1,
                        seq=0,
                        hash=GENESIS_HASH,
                        updated_at=datetime.fromtimestamp(0).astimezone(),
                    )
                )

    def close(self) -> None:
        self.database.dispose()

    # ------------------------------------------------------------------ copying

    @property
    def ready(self) -> bool:
        """Whether the mirror holds a copy to work from."""
        with self.database.reader() as session:
            return session.execute(select(Kiosk.id).limit(1)).first() is not None

    def refresh(self, central: Database, *, end_session: bool = False) -> bool:
        """Copy everything again; False (and nothing changed) while an offline session
        awaits replay, unless ``end_session`` (its replay is done): the session then ends
        in the same transaction, so no record made offline outlives its replay here."""
        with central.reader() as source:
            if central.dialect == "postgresql":
                # One snapshot for every table: a commit landing between two of the reads
                # would otherwise give a copy whose rows point at rows it does not have.
                source.connection(
                    execution_options={
                        "isolation_level": "REPEATABLE READ",
                        "postgresql_readonly": True,
                    }
                )
            copied = {model: _rows(source, model) for model in _COPIED}
        with self.database.transaction() as session:
            if session.execute(select(_STATE.c.key).limit(1)).first() is not None:
                if not end_session:
                    return False
                session.execute(delete(_STATE))
            for model in reversed(_COPIED):
                session.execute(delete(model.__table__))
            session.execute(delete(AuditEvent.__table__))
            for model in _COPIED:
                if copied[model]:
                    session.execute(insert(model.__table__), copied[model])
            head = session.get(AuditHead, 1)
            assert head is not None
            head.seq, head.hash = 0, GENESIS_HASH
        log.debug(
            "offline mirror refreshed: %s",
            {model.__tablename__: len(rows) for model, rows in copied.items()},
        )
        return True

    def sync_records(self, central: Database, kiosk_id: int, since: datetime) -> None:
        """Copy this kiosk's records changed since ``since`` (after each unit of work)."""
        table = CustodyRecord.__table__
        with central.reader() as source:
            rows = [
                dict(row)
                for row in source.execute(
                    select(table).where(table.c.kiosk_id == kiosk_id, table.c.updated_at >= since)
                ).mappings()
            ]
        if not rows:
            return
        active = [row for row in rows if row["state"] in ACTIVE_STATES]
        compartments = [row["compartment_id"] for row in active if row["compartment_id"]]
        deposits = [
            row["pupil_id"]
            for row in active
            if row["kind"] is CustodyKind.DAILY and row["state"] in DAILY_ACTIVE_STATES
        ]
        with self.database.transaction() as session:
            session.execute(delete(table).where(table.c.id.in_([row["id"] for row in rows])))
            if active:  # a copy of a record that ended centrally since must not block these
                session.execute(
                    delete(table).where(
                        or_(
                            and_(
                                table.c.state.in_(ACTIVE_STATES),
                                table.c.compartment_id.in_(compartments),
                            ),
                            and_(
                                table.c.kind == CustodyKind.DAILY,
                                table.c.state.in_(DAILY_ACTIVE_STATES),
                                table.c.pupil_id.in_(deposits),
                            ),
                        ),
                    )
                )
            session.execute(insert(table), rows)

    # ------------------------------------------------------------------ offline sessions

    def session(self) -> tuple[str, int] | None:
        """The open offline session: (id, the local audit seq it started after)."""
        with self.database.reader() as session:
            values = dict(session.execute(select(_STATE.c.key, _STATE.c.value)).all())
        if "session" not in values:
            return None
        return values["session"], int(values["start_seq"])

    def begin_session(self) -> str:
        """Start recording an outbox (idempotent: an open session continues)."""
        current = self.session()
        if current is not None:
            return current[0]
        session_id = str(uuid.uuid4())
        with self.database.transaction() as session:
            head = session.get(AuditHead, 1)
            assert head is not None
            session.execute(
                insert(_STATE),
                [
                    {"key": "session", "value": session_id},
                    {"key": "start_seq", "value": str(head.seq)},
                ],
            )
        return session_id

    @staticmethod
    def head_seq(connection: Connection) -> int:
        """The seq of the mirror's last audit event (in the caller's transaction)."""
        return int(connection.execute(_HEAD_SEQ).scalar_one())

    def note_redo(self, connection: Connection, before: int, how: str, unit: str) -> None:
        """In the offline unit of work on ``connection``: its events (after local seq
        ``before``) do again what central unit ``unit`` did ("done": it committed
        centrally; "doubt": its commit may have, the reply was lost). The replay skips them
        when the centre has them already."""
        last = self.head_seq(connection)
        if last > before:
            connection.execute(
                insert(_STATE),
                {
                    "key": f"redo:{before + 1}",
                    "value": json.dumps({"last": last, "how": how, "unit": unit}),
                },
            )

    def redo_notes(self) -> list[RedoNote]:
        """What :meth:`note_redo` noted in the open offline session, oldest first."""
        with self.database.reader() as session:
            rows = session.execute(
                select(_STATE.c.key, _STATE.c.value).where(_STATE.c.key.like("redo:%"))
            ).all()
        notes = []
        for key, value in rows:
            data = json.loads(value)
            notes.append(
                RedoNote(
                    int(key.removeprefix("redo:")), int(data["last"]), data["how"], data["unit"]
                )
            )
        return sorted(notes, key=lambda note: note.first)

    def outbox(self, after_seq: int) -> list[AuditEvent]:
        with self.database.reader() as session:
            return list(
                session.execute(
                    select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq)
                ).scalars()
            )


@dataclass(frozen=True)
class RedoNote:
    """Local events ``first``..``last`` (seqs) did again offline what a central unit of work
    did (``how`` "done") or may have done ("doubt"); ``unit`` is that unit's key."""

    first: int
    last: int
    how: str
    unit: str


def _rows(session: Session, model: type[Base]) -> list[dict[str, Any]]:
    table = model.__table__
    query = select(table)
    if model is CustodyRecord:
        query = query.where(table.c.state.in_([state.value for state in ACTIVE_STATES]))
    elif model is Card or model is Exemption:
        query = query.where(table.c.revoked_at.is_(None))
    rows = [dict(row) for row in session.execute(query).mappings()]
    if model is User:
        for row in rows:
            row["password_hash"] = NO_PASSWORD
    return rows


# ------------------------------------------------------------------------------ replay


@dataclass
class ReplaySummary:
    session: str
    applied: int = 0
    copied: int = 0
    skipped: int = 0
    #: Events of units of work that had committed centrally already (a reply lost).
    already_central: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    #: Records made offline: local id -> central id (None when it could not be recorded).
    created: dict[int, int | None] = field(default_factory=dict)


class Replayer:
    """Applies a kiosk's outbox to the central database, once, in order."""

    def __init__(self, instance: Instance, mirror: LocalMirror, kiosk: str, clock: Clock) -> None:
        self.instance = instance
        self.central = instance.database
        self.ledger = instance.ledger
        self.audit = instance.audit
        self.mirror = mirror
        self.kiosk_name = kiosk
        self.clock = clock
        self.kiosk_actor = Actor.for_kiosk(kiosk)

    def replay(self) -> ReplaySummary | None:
        """Replay the open session; None when there is none. Safe to call again after an
        interruption: what was applied is not applied twice. The session stays open until
        ``LocalMirror.refresh(end_session=True)`` copies the result back."""
        current = self.mirror.session()
        if current is None:
            return None
        session_id, start_seq = current
        summary = ReplaySummary(session_id)
        with self.central.reader() as session:
            kiosk = cabinets.get_kiosk(session, self.kiosk_name)
            done = {
                row.local_seq: row.custody_id
                for row in session.execute(
                    select(OfflineReplay).where(
                        OfflineReplay.kiosk_id == kiosk.id, OfflineReplay.session == session_id
                    )
                ).scalars()
            }
            # The key of the last unit of work this kiosk committed centrally.
            last_unit = kiosk.state.get("unit") if isinstance(kiosk.state, dict) else None
        central = set()  # local seqs of events whose unit of work the centre has already
        for note in self.mirror.redo_notes():
            if note.how == "done" or note.unit == last_unit:
                central.update(range(note.first, note.last + 1))
        events = self.mirror.outbox(start_seq)
        created = summary.created
        for event in events:  # deposits already replayed before an interruption
            if event.kind == "custody.deposit_started" and event.seq in done:
                created[event.custody_id] = done[event.seq]
        for event in events:
            if event.seq in done:
                summary.skipped += 1
                continue
            with self.central.transaction() as session:
                if event.seq in central:
                    outcome, custody_id = self._already_central(session, kiosk, event, created)
                    summary.already_central += 1
                else:
                    outcome, custody_id = self._apply(session, kiosk, event, created, summary)
                session.add(
                    OfflineReplay(
                        kiosk_id=kiosk.id,
                        session=session_id,
                        local_seq=event.seq,
                        kind=event.kind,
                        outcome=outcome,
                        custody_id=custody_id,
                        applied_at=self.clock.now(),
                    )
                )
        with self.central.transaction() as session:
            self.audit.record(
                session,
                self.clock,
                self.kiosk_actor,
                "kiosk.offline_replayed",
                details={
                    "session": session_id,
                    "events": len(events),
                    "applied": summary.applied,
                    "copied": summary.copied,
                    "already_done": summary.skipped,
                    "already_central": summary.already_central,
                    "conflicts": summary.conflicts,
                },
            )
        log.info(
            "offline session %s replayed: %d applied, %d copied, %d already done, %d conflicts",
            session_id,
            summary.applied,
            summary.copied,
            summary.skipped,
            len(summary.conflicts),
        )
        return summary

    # ------------------------------------------------------------------ one event

    def _already_central(
        self, session: Session, kiosk: Kiosk, event: AuditEvent, created: dict[int, int | None]
    ) -> tuple[str, int | None]:
        """An event the kiosk wrote again offline for a unit of work that had committed
        centrally (its reply was lost): nothing to apply. A deposit it started is the one
        the centre holds: the newest daily record of the pupil in that compartment (no
        later one can exist: the kiosk went offline at once)."""
        local = event.custody_id
        if event.kind == "custody.deposit_started":
            number = json.loads(event.details).get("compartment")
            central_id = session.execute(
                select(CustodyRecord.id)
                .join(Compartment, Compartment.id == CustodyRecord.compartment_id)
                .where(
                    CustodyRecord.pupil_id == event.pupil_id,
                    CustodyRecord.kiosk_id == kiosk.id,
                    CustodyRecord.kind == CustodyKind.DAILY,
                    Compartment.number == number,
                )
                .order_by(CustodyRecord.id.desc())
                .limit(1)
            ).scalar()
            created[local] = central_id
            return "already_central", central_id
        return "already_central", created.get(local, local) if local is not None else None

    def _apply(
        self,
        session: Session,
        kiosk: Kiosk,
        event: AuditEvent,
        created: dict[int, int | None],
        summary: ReplaySummary,
    ) -> tuple[str, int | None]:
        details = json.loads(event.details)
        at = ManualClock(event.occurred_at)  # when it happened (it never moves on)
        kind = event.kind
        if not kind.startswith("custody."):
            if kind == "compartment.out_of_service":
                self._out_of_service(session, kiosk, details, at)
            self.audit.record(
                session,
                at,
                self.kiosk_actor,
                kind,
                kiosk=event.kiosk,
                pupil_id=event.pupil_id,
                custody_id=created.get(event.custody_id, event.custody_id)
                if event.custody_id is not None
                else None,
                details={**details, "offline": True},
                restricted=event.restricted,
            )
            summary.copied += 1
            return "copied", None
        try:
            with session.begin_nested():
                custody_id = self._apply_custody(session, kiosk, event, details, at, created)
        except LockerError as exc:
            return self._conflict(session, kiosk, event, details, at, created, exc, summary)
        summary.applied += 1
        return "applied", custody_id

    def _out_of_service(
        self, session: Session, kiosk: Kiosk, details: dict[str, Any], at: Clock
    ) -> None:
        """A lock that jammed while offline is out of service centrally too."""
        cabinets.take_out_of_service(
            session, kiosk, details.get("compartment"), str(details.get("reason") or "offline"), at
        )

    def _actor(self, session: Session, event: AuditEvent) -> Actor:
        if event.actor.startswith("pupil:") and event.pupil_id is not None:
            pupil = session.get(Pupil, event.pupil_id)
            if pupil is not None:
                return Actor.for_pupil(pupil, self.kiosk_name)
        return self.kiosk_actor

    def _record(
        self, session: Session, event: AuditEvent, created: dict[int, int | None]
    ) -> CustodyRecord:
        local = event.custody_id
        central = created.get(local, local) if local is not None else None
        record = session.get(CustodyRecord, central) if central is not None else None
        if record is None:
            raise LockerError(f"the record of this event is unknown centrally (local {local})")
        return record

    def _apply_custody(
        self,
        session: Session,
        kiosk: Kiosk,
        event: AuditEvent,
        details: dict[str, Any],
        at: Clock,
        created: dict[int, int | None],
    ) -> int | None:
        actor = self._actor(session, event)
        kind = event.kind
        if kind == "custody.deposit_started":
            pupil = session.get(Pupil, event.pupil_id)
            if pupil is None:
                raise LockerError("the pupil is unknown centrally")
            ref = self.ledger.start_deposit(
                session,
                actor,
                at,
                pupil=pupil,
                kiosk=kiosk,
                timeout_s=self.instance.config.kiosk.deposit_timeout_s,
                compartment=details.get("compartment"),
            )
            created[event.custody_id] = ref.id
            return ref.id
        record = self._record(session, event, created)
        if kind == "custody.deposit_confirmed":
            self.ledger.confirm_deposit(session, actor, at, record, how=details.get("how", ""))
        elif kind == "custody.deposit_cancelled":
            self.ledger.cancel_deposit(
                session, actor, at, record, reason=details.get("reason") or "cancelled offline"
            )
        elif kind == "custody.collected":
            self.ledger.collect(session, actor, at, record)
        elif kind == "custody.flagged":
            self.ledger.flag(
                session,
                actor,
                at,
                record,
                flag=details.get("flag", FLAG_CHECK),
                detail=details.get("detail", ""),
            )
        elif kind == "custody.flag_cleared":
            if record.flag is not None:
                self.ledger.clear_flag(
                    session, actor, at, record, note=details.get("note") or "cleared offline"
                )
        else:
            raise LockerError(f"{kind} cannot be replayed")
        return record.id

    def _conflict(
        self,
        session: Session,
        kiosk: Kiosk,
        event: AuditEvent,
        details: dict[str, Any],
        at: Clock,
        created: dict[int, int | None],
        error: LockerError,
        summary: ReplaySummary,
    ) -> tuple[str, int | None]:
        """The centre changed meanwhile, and the centre wins: record what the kiosk saw,
        flag it for the office, and make sure no compartment is handed out twice."""
        conflict = {
            "local_seq": event.seq,
            "kind": event.kind,
            "error": str(error),
            "compartment": details.get("compartment"),
            "at": event.occurred_at.isoformat(),
        }
        summary.conflicts.append(conflict)
        central_id = None
        if event.kind == "custody.deposit_started":
            created[event.custody_id] = None
            cabinets.take_out_of_service(
                session,
                kiosk,
                details.get("compartment"),
                "holds a device deposited while the kiosk was offline that could not be "
                "recorded: check it",
                at,
            )
        elif event.custody_id is not None:
            local = event.custody_id
            central_id = created.get(local, local)
            record = session.get(CustodyRecord, central_id) if central_id else None
            if record is not None:
                what = (
                    "the pupil collected the device while the kiosk was offline"
                    if event.kind == "custody.collected"
                    else f"the kiosk recorded {event.kind} while offline"
                )
                self.ledger.flag(
                    session,
                    self.kiosk_actor,
                    self.clock,
                    record,
                    flag=FLAG_OFFLINE_CONFLICT,
                    detail=f"{what} at {event.occurred_at:%H:%M:%S}, but the record was "
                    f"{record.state.value} centrally; it stays so: check",
                )
        self.audit.record(
            session,
            at,
            self.kiosk_actor,
            "kiosk.offline_conflict",
            pupil_id=event.pupil_id,
            custody_id=central_id,
            details=conflict,
        )
        return "conflict", central_id
