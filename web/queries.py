"""Read models for pages and the API: lean column queries, one query per view.

The grid is one query (compartments, their kiosk, the active custody record and its pupil);
kiosks' health is a second, tiny one. Nothing here writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from kiosk import custody
from kiosk.models import (
    ACTIVE_STATES,
    Compartment,
    CompartmentKind,
    Contact,
    CustodyKind,
    CustodyRecord,
    CustodyState,
    Kiosk,
    Pupil,
    PupilStatus,
    sql_in,
)

log = logging.getLogger(__name__)

S = CustodyState

# compartment state shown on the grid and in the API
GRID_STATES = ("free", "pending", "in_locker", "confiscated", "held", "out_of_service")
CUSTODY_TO_GRID = {
    S.PENDING_DEPOSIT: "pending",
    S.IN_LOCKER: "in_locker",
    S.CONFISCATED: "confiscated",
    S.SAFEGUARDING_HOLD: "held",
}
#: How the grid names a record's flag (what the kiosk asks the office to look at).
FLAG_LABELS = {
    custody.FLAG_CHECK: "to check",
    custody.FLAG_UNCOLLECTED: "to check: not collected",
    custody.FLAG_UNVERIFIED: "to check: not confirmed",
    custody.FLAG_DOOR_LEFT_OPEN: "to check: door was left open",
    custody.FLAG_OFFLINE_CONFLICT: "to check: offline conflict",
}

GRID_LABELS = {
    "free": "free",
    "pending": "being deposited",
    "in_locker": "in locker",
    "confiscated": "confiscated",
    "held": "held: contact the DSL",
    "out_of_service": "out of service",
}
HELD_NOTICE = "held: contact the DSL"

# "The record is active", written exactly as the partial unique index on compartment_id is:
# with literal states (not bound parameters) SQLite can use that index for the join.
ACTIVE = text(f"custody_records.state IN {sql_in(ACTIVE_STATES)}")


def full_name(forename: str, preferred: str | None, surname: str) -> str:
    return f"{preferred or forename} {surname}".strip()


# ------------------------------------------------------------------------------ kiosks


@dataclass(frozen=True)
class KioskStatus:
    id: int
    name: str
    label: str
    heartbeat_at: datetime | None
    age_s: float | None
    status: str  # ok | fault | stopped | offline | unknown
    faults: list[str]
    mode: str | None
    hardware: str | None
    started_at: str | None
    alarms: list[dict[str, Any]]
    screen: dict[str, Any] | None

    @property
    def status_text(self) -> str:
        return {
            "ok": "online",
            "fault": "fault",
            "stopped": "stopped",
            "offline": "offline",
            "unknown": "never seen",
        }.get(self.status, self.status)


def kiosk_status(
    kiosk_id: int,
    name: str,
    label: str,
    heartbeat_at: datetime | None,
    state: dict[str, Any] | None,
    now: datetime,
    heartbeat_s: float,
) -> KioskStatus:
    """What the controller published, judged against the clock: a kiosk whose heartbeat is
    older than three heartbeat periods is offline; one never heard from is unknown."""
    state = state if isinstance(state, dict) else {}
    age = (now - heartbeat_at).total_seconds() if heartbeat_at is not None else None
    if age is None:
        status = "unknown"
    elif age > 3 * heartbeat_s:
        status = "offline"
    else:
        published = state.get("status")
        status = published if published in ("ok", "fault", "stopped") else "unknown"
    faults = [str(item)[:200] for item in state.get("faults") or [] if item]
    alarms = [item for item in state.get("alarms") or [] if isinstance(item, dict)]
    screen = state.get("screen") if isinstance(state.get("screen"), dict) else None
    return KioskStatus(
        kiosk_id,
        name,
        label,
        heartbeat_at,
        age,
        status,
        faults,
        state.get("mode") if isinstance(state.get("mode"), str) else None,
        state.get("hardware") if isinstance(state.get("hardware"), str) else None,
        state.get("started_at") if isinstance(state.get("started_at"), str) else None,
        alarms,
        screen,
    )


def kiosks(session: Session, now: datetime, heartbeat_s: float) -> list[KioskStatus]:
    rows = session.execute(
        select(Kiosk.id, Kiosk.name, Kiosk.label, Kiosk.heartbeat_at, Kiosk.state).order_by(
            Kiosk.name
        )
    ).all()
    return [kiosk_status(*row, now=now, heartbeat_s=heartbeat_s) for row in rows]


# ------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class Cell:
    """One compartment on the grid."""

    id: int
    kiosk: str
    number: int
    label: str
    kind: str
    state: str
    door: str | None  # open | closed | None (unknown)
    alarm: str | None
    out_of_service: bool
    out_of_service_reason: str | None
    custody_id: int | None
    custody_state: str | None
    custody_kind: str | None
    since: datetime | None
    stored: bool
    admission_number: str | None
    pupil_name: str | None
    form: str | None
    #: Set when the kiosk asks the office to look at the record (``check``, ``unverified``,
    #: ``door_left_open``, ``offline_conflict``), with what it saw.
    flag: str | None = None
    flag_detail: str | None = None

    @property
    def locked(self) -> bool | None:
        """Fail-secure locks: locked whenever the door is shut; unknown with the door."""
        return None if self.door is None else self.door == "closed"


_GRID_COLUMNS = (
    Compartment.id,
    Kiosk.name,
    Compartment.number,
    Compartment.label,
    Compartment.kind,
    Compartment.out_of_service,
    Compartment.out_of_service_reason,
    Compartment.door_open,
    Compartment.alarm,
    CustodyRecord.id,
    CustodyRecord.state,
    CustodyRecord.kind,
    CustodyRecord.started_at,
    CustodyRecord.stored_at,
    CustodyRecord.confiscated_at,
    CustodyRecord.held_at,
    Pupil.admission_number,
    Pupil.forename,
    Pupil.preferred_forename,
    Pupil.surname,
    Pupil.form,
    CustodyRecord.flag,
    CustodyRecord.flag_detail,
)


def grid(session: Session, kiosk: str | None = None) -> list[Cell]:
    """Every compartment (of one kiosk, or all) with its active custody record: one query."""
    query = (
        select(*_GRID_COLUMNS)
        .join(Kiosk, Kiosk.id == Compartment.kiosk_id)
        .outerjoin(
            CustodyRecord,
            and_(CustodyRecord.compartment_id == Compartment.id, ACTIVE),
        )
        .outerjoin(Pupil, Pupil.id == CustodyRecord.pupil_id)
        .order_by(Kiosk.name, Compartment.number)
    )
    if kiosk is not None:
        query = query.where(Kiosk.name == kiosk)
    cells = []
    for row in session.execute(query):
        (
            cid,
            kiosk_name,
            number,
            label,
            kind,
            oos,
            oos_reason,
            door_open,
            alarm,
            custody_id,
            custody_state,
            custody_kind,
            started_at,
            stored_at,
            confiscated_at,
            held_at,
            admission,
            forename,
            preferred,
            surname,
            form,
            flag,
            flag_detail,
        ) = row
        if custody_state is not None:
            state = CUSTODY_TO_GRID[custody_state]
            since = {
                S.PENDING_DEPOSIT: started_at,
                S.IN_LOCKER: stored_at or started_at,
                S.CONFISCATED: confiscated_at or started_at,
                S.SAFEGUARDING_HOLD: held_at or started_at,
            }[custody_state]
        else:
            state = "out_of_service" if oos else "free"
            since = None
        cells.append(
            Cell(
                cid,
                kiosk_name,
                number,
                label,
                kind.value,
                state,
                None if door_open is None else ("open" if door_open else "closed"),
                alarm,
                bool(oos),
                oos_reason,
                custody_id,
                custody_state.value if custody_state is not None else None,
                custody_kind.value if custody_kind is not None else None,
                since,
                stored_at is not None,
                admission,
                full_name(forename, preferred, surname) if forename is not None else None,
                form,
                flag,
                flag_detail,
            )
        )
    return cells


@dataclass
class GridSummary:
    counts: dict[str, int] = field(default_factory=dict)
    doors_open: int = 0
    alarms: int = 0


def summarise(cells: list[Cell]) -> GridSummary:
    summary = GridSummary(counts=dict.fromkeys(GRID_STATES, 0))
    for cell in cells:
        summary.counts[cell.state] += 1
        summary.doors_open += cell.door == "open"
        summary.alarms += cell.alarm is not None
    return summary


# ------------------------------------------------------------------------------ pupils


def pupil_by_admission(session: Session, admission_number: str) -> Pupil | None:
    return session.execute(
        select(Pupil).where(Pupil.admission_number == admission_number.strip())
    ).scalar_one_or_none()


def search_pupils(
    session: Session, text: str = "", form: str | None = None, limit: int = 100
) -> list[Pupil]:
    query = select(Pupil).where(Pupil.status == PupilStatus.ACTIVE)
    text = text.strip()
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                Pupil.admission_number == text,
                Pupil.forename.ilike(pattern, escape="\\"),
                Pupil.preferred_forename.ilike(pattern, escape="\\"),
                Pupil.surname.ilike(pattern, escape="\\"),
                (Pupil.forename + " " + Pupil.surname).ilike(pattern, escape="\\"),
            )
        )
    if form:
        query = query.where(Pupil.form == form)
    return list(
        session.execute(
            query.order_by(Pupil.form, Pupil.surname, Pupil.forename).limit(limit)
        ).scalars()
    )


def forms(session: Session) -> list[str]:
    from kiosk.reports import form_sort_key

    names = session.execute(
        select(Pupil.form).where(Pupil.status == PupilStatus.ACTIVE).distinct()
    ).scalars()
    return sorted(names, key=form_sort_key)


def contacts_of(session: Session, pupil_id: int) -> list[Contact]:
    return list(
        session.execute(
            select(Contact).where(Contact.pupil_id == pupil_id).order_by(Contact.position)
        ).scalars()
    )


# ------------------------------------------------------------------------------ custody


def custody_query(states: set[CustodyState] | None = None) -> Any:
    query = select(CustodyRecord, Pupil, Compartment, Kiosk).join(
        Pupil, Pupil.id == CustodyRecord.pupil_id
    )
    query = query.outerjoin(Compartment, Compartment.id == CustodyRecord.compartment_id)
    query = query.outerjoin(Kiosk, Kiosk.id == CustodyRecord.kiosk_id)
    if states:
        query = query.where(CustodyRecord.state.in_(states))
    return query


@dataclass(frozen=True)
class CustodyItem:
    record: CustodyRecord
    pupil: Pupil
    compartment: Compartment | None
    kiosk: Kiosk | None

    @property
    def location(self) -> str:
        if self.compartment is not None:
            where = f"compartment {self.compartment.number}"
            return f"{where} ({self.kiosk.label})" if self.kiosk is not None else where
        if self.record.kind is CustodyKind.CONFISCATION:
            return "office safe"
        return "unknown"


def custody_items(session: Session, query: Any) -> list[CustodyItem]:
    return [CustodyItem(*row) for row in session.execute(query)]


def awaiting_collection(session: Session) -> list[CustodyItem]:
    """Confiscated devices not yet released (held ones included, marked)."""
    query = custody_query({S.CONFISCATED, S.SAFEGUARDING_HOLD}).order_by(
        CustodyRecord.confiscated_at.is_(None), CustodyRecord.confiscated_at, CustodyRecord.id
    )
    return custody_items(session, query)


def awaiting_count(session: Session) -> int:
    """How many confiscated devices await collection (held ones included): the dashboard's
    "N awaiting collection"."""
    return session.execute(
        select(func.count())
        .select_from(CustodyRecord)
        .where(CustodyRecord.state.in_((S.CONFISCATED, S.SAFEGUARDING_HOLD)))
    ).scalar_one()


def custody_item(session: Session, record_id: int) -> CustodyItem | None:
    rows = custody_items(session, custody_query().where(CustodyRecord.id == record_id))
    return rows[0] if rows else None


def active_for_pupil(session: Session, pupil_id: int) -> list[CustodyItem]:
    query = custody_query(set(ACTIVE_STATES)).where(CustodyRecord.pupil_id == pupil_id)
    return custody_items(session, query.order_by(CustodyRecord.id))


def history_for_pupil(session: Session, pupil_id: int, limit: int = 30) -> list[CustodyItem]:
    query = custody_query().where(CustodyRecord.pupil_id == pupil_id)
    return custody_items(
        session,
        query.order_by(CustodyRecord.started_at.desc(), CustodyRecord.id.desc()).limit(limit),
    )


def ever_held(session: Session, custody_ids: set[int]) -> set[int]:
    """Which of these custody records were ever under safeguarding hold: for those, only
    the DSL and admin see event details (a confiscation reason may carry the concern)."""
    if not custody_ids:
        return set()
    return set(
        session.execute(
            select(CustodyRecord.id).where(
                CustodyRecord.id.in_(custody_ids), CustodyRecord.ever_held.is_(True)
            )
        ).scalars()
    )


def secure_free_by_kiosk(session: Session) -> dict[str, int]:
    """How many secure compartments each kiosk has free (for the confiscation form)."""
    occupied = select(CustodyRecord.compartment_id).where(
        ACTIVE, CustodyRecord.compartment_id.is_not(None)
    )
    rows = session.execute(
        select(Kiosk.name, func.count(Compartment.id))
        .join(Compartment, Compartment.kiosk_id == Kiosk.id)
        .where(
            Compartment.kind == CompartmentKind.SECURE,
            Compartment.out_of_service.is_(False),
            Compartment.id.not_in(occupied),
        )
        .group_by(Kiosk.name)
    ).all()
    return dict(rows)
