"""Custody: the state machine of a device's stay with the school, and the ledger that runs it.

The transition table below is the one place where the rules of DESIGN.md live: which
operation moves a record from which states to which, and which roles may do it. The ledger's
operations take a session, an actor and a clock, check the policy (windows, roles, holds,
exemptions), change the record and write the audit event in the same transaction, or raise
a :class:`~kiosk.errors.LockerError` that says why not. The database enforces the same
invariants again (partial unique indexes, check constraints, the custody guard triggers).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, exists, func, insert, literal, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from kiosk import exemptions
from kiosk.actors import STAFF_ROLES, Actor, ActorRole
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.db import Executor, connection_of
from kiosk.errors import (
    AuditChainBroken,
    ConflictError,
    NotFound,
    PermissionDenied,
    PolicyError,
    TransitionError,
    ValidationError,
)
from kiosk.models import (
    ACTIVE_STATES,
    DAILY_ACTIVE_STATES,
    AuditEvent,
    Compartment,
    CompartmentKind,
    Contact,
    CustodyKind,
    CustodyRecord,
    CustodyState,
    Kiosk,
    PupilStatus,
    sql_in,
)
from kiosk.policy import Policy
from kiosk.text import clean_text

log = logging.getLogger(__name__)

S = CustodyState
OFFICE_AND_UP = frozenset({ActorRole.OFFICE, ActorRole.DSL, ActorRole.ADMIN})
DSL_OR_ADMIN = frozenset({ActorRole.DSL, ActorRole.ADMIN})


class Operation(enum.StrEnum):
    START_DEPOSIT = "start_deposit"
    CONFIRM_DEPOSIT = "confirm_deposit"
    CANCEL_DEPOSIT = "cancel_deposit"
    COLLECT = "collect"
    CONFISCATE = "confiscate"
    HOLD = "hold"
    LIFT_HOLD = "lift_hold"
    RELEASE_TO_PARENT = "release_to_parent"
    HAND_TO_POLICE = "hand_to_police"
    RETURN_TO_PUPIL = "return_to_pupil"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[CustodyState | None]  # None: a new record
    target: CustodyState
    roles: frozenset[ActorRole]
    event: str
    describe: str


TRANSITIONS: dict[Operation, Transition] = {
    Operation.START_DEPOSIT: Transition(
        frozenset({None}),
        S.PENDING_DEPOSIT,
        frozenset({ActorRole.PUPIL}),
        "custody.deposit_started",
        "start a deposit",
    ),
    Operation.CONFIRM_DEPOSIT: Transition(
        frozenset({S.PENDING_DEPOSIT}),
        S.IN_LOCKER,
        frozenset({ActorRole.KIOSK, ActorRole.SYSTEM}) | OFFICE_AND_UP,
        "custody.deposit_confirmed",
        "confirm a deposit",
    ),
    Operation.CANCEL_DEPOSIT: Transition(
        frozenset({S.PENDING_DEPOSIT}),
        S.CANCELLED,
        frozenset({ActorRole.KIOSK, ActorRole.SYSTEM}) | OFFICE_AND_UP,
        "custody.deposit_cancelled",
        "cancel a deposit",
    ),
    Operation.COLLECT: Transition(
        frozenset({S.IN_LOCKER}),
        S.COLLECTED,
        frozenset({ActorRole.PUPIL}) | OFFICE_AND_UP,
        "custody.collected",
        "collect a device",
    ),
    Operation.CONFISCATE: Transition(
        frozenset({None, S.IN_LOCKER}),
        S.CONFISCATED,
        STAFF_ROLES,
        "custody.confiscated",
        "confiscate a device",
    ),
    Operation.HOLD: Transition(
        frozenset({S.IN_LOCKER, S.CONFISCATED}),
        S.SAFEGUARDING_HOLD,
        STAFF_ROLES,
        "custody.held",
        "place a safeguarding hold",
    ),
    Operation.LIFT_HOLD: Transition(
        frozenset({S.SAFEGUARDING_HOLD}),
        S.CONFISCATED,
        DSL_OR_ADMIN,
        "custody.hold_lifted",
        "lift a safeguarding hold",
    ),
    # Who may release is narrowed further by [policy] release_roles.
    Operation.RELEASE_TO_PARENT: Transition(
        frozenset({S.CONFISCATED}),
        S.RELEASED_TO_PARENT,
        STAFF_ROLES,
        "custody.released_to_parent",
        "release a device to a parent or carer",
    ),
    Operation.HAND_TO_POLICE: Transition(
        frozenset({S.SAFEGUARDING_HOLD}),
        S.HANDED_TO_POLICE,
        DSL_OR_ADMIN,
        "custody.handed_to_police",
        "hand a device to the police",
    ),
    Operation.RETURN_TO_PUPIL: Transition(
        frozenset({S.IN_LOCKER, S.CONFISCATED}),
        S.RETURNED_TO_PUPIL,
        frozenset({ActorRole.ADMIN}),
        "custody.returned_to_pupil",
        "return a device to a pupil",
    ),
}


def allowed_edges() -> set[tuple[CustodyState, CustodyState]]:
    """Every (from, to) pair of the table, for the database guard and its test."""
    return {
        (source, transition.target)
        for transition in TRANSITIONS.values()
        for source in transition.sources
        if source is not None
    }


def initial_states() -> set[CustodyState]:
    return {t.target for t in TRANSITIONS.values() if None in t.sources}


STATE_LABELS: dict[CustodyState, str] = {
    S.PENDING_DEPOSIT: "being deposited",
    S.IN_LOCKER: "in a locker",
    S.CANCELLED: "deposit cancelled",
    S.COLLECTED: "collected",
    S.CONFISCATED: "confiscated",
    S.RELEASED_TO_PARENT: "released to a parent or carer",
    S.SAFEGUARDING_HOLD: "under safeguarding hold",
    S.HANDED_TO_POLICE: "handed to the police",
    S.RETURNED_TO_PUPIL: "returned to the pupil",
}


# Pre-built statements for the tap-to-unlock path: building a statement costs more than
# running it, and constant enum filters are plain SQL rather than bound, type-processed values.
_RECORDS = CustodyRecord.__table__
_COMPARTMENTS = Compartment.__table__
_IS_ACTIVE = f"custody_records.state IN {sql_in(ACTIVE_STATES)}"
_IS_ACTIVE_DAILY = (
    f"custody_records.kind = 'daily' AND custody_records.state IN {sql_in(DAILY_ACTIVE_STATES)}"
)
_ACTIVE_DAILY = select(CustodyRecord).where(
    CustodyRecord.pupil_id == bindparam("pupil_id"), text(_IS_ACTIVE_DAILY)
)
_ACTIVE_OF_PUPIL = (
    select(CustodyRecord)
    .where(CustodyRecord.pupil_id == bindparam("pupil_id"), text(_IS_ACTIVE))
    .order_by(CustodyRecord.id)
)
_KIOSKS = Kiosk.__table__
_DAILY_REF = (
    select(
        _RECORDS.c.id,
        _RECORDS.c.state,
        _RECORDS.c.kind,
        _RECORDS.c.pupil_id,
        _COMPARTMENTS.c.number,
        _KIOSKS.c.name,
        _RECORDS.c.stored_at,
        _RECORDS.c.flag,
        _RECORDS.c.pending_until,
    )
    .select_from(
        _RECORDS.join(_COMPARTMENTS, _COMPARTMENTS.c.id == _RECORDS.c.compartment_id).join(
            _KIOSKS, _KIOSKS.c.id == _COMPARTMENTS.c.kiosk_id
        )
    )
    .where(_RECORDS.c.pupil_id == bindparam("pupil_id"), text(_IS_ACTIVE_DAILY))
)
_OCCUPIED = (
    select(_RECORDS.c.id)
    .where(_RECORDS.c.compartment_id == bindparam("compartment_id"), text(_IS_ACTIVE))
    .limit(1)
)


def _in_service(kind: CompartmentKind) -> Any:
    return text(f"compartments.kind = '{kind.value}' AND NOT compartments.out_of_service")


_FREE = {
    kind: select(_COMPARTMENTS.c.id, _COMPARTMENTS.c.number)
    .where(
        _COMPARTMENTS.c.kiosk_id == bindparam("kiosk_id"),
        _in_service(kind),
        ~exists(
            select(literal(1))
            .select_from(_RECORDS)
            .where(_RECORDS.c.compartment_id == _COMPARTMENTS.c.id, text(_IS_ACTIVE))
        ),
    )
    .order_by(_COMPARTMENTS.c.number)
    for kind in CompartmentKind
}
_FIRST_FREE = {kind: query.limit(1) for kind, query in _FREE.items()}
_PUPIL_COMPARTMENT = select(_COMPARTMENTS.c.id, _COMPARTMENTS.c.number).where(
    _COMPARTMENTS.c.kiosk_id == bindparam("kiosk_id"),
    _COMPARTMENTS.c.number == bindparam("number"),
    text("compartments.kind = 'pupil'"),
)
_ACTIVE_IN = _RECORDS.alias("active_in")
# Whether the compartment a pupil used last is occupied now: asked in the same statement.
_LAST_USED_OCCUPIED = exists(
    select(literal(1))
    .select_from(_ACTIVE_IN)
    .where(
        _ACTIVE_IN.c.compartment_id == _RECORDS.c.compartment_id,
        text(f"active_in.state IN {sql_in(ACTIVE_STATES)}"),
    )
)
_LAST_USED = {
    kind: select(
        _RECORDS.c.compartment_id,
        _COMPARTMENTS.c.number,
        _LAST_USED_OCCUPIED,
    )
    .join(_COMPARTMENTS, _COMPARTMENTS.c.id == _RECORDS.c.compartment_id)
    .where(
        _RECORDS.c.pupil_id == bindparam("pupil_id"),
        _COMPARTMENTS.c.kiosk_id == bindparam("kiosk_id"),
        _in_service(kind),
    )
    .order_by(_RECORDS.c.started_at.desc(), _RECORDS.c.id.desc())
    .limit(1)
    for kind in CompartmentKind
}


@dataclass
class RecordRef:
    """What an operation needs to know of a record without loading it.

    The kiosk keeps one for each compartment it opens; ``state`` is the state it expects the
    record to be in, and the change is made only if the record still is (one conditional
    UPDATE), so nothing written meanwhile by another process is overwritten.
    """

    id: int
    state: CustodyState
    kind: CustodyKind
    pupil_id: int
    compartment: int | None = None  # the compartment's number
    kiosk: str | None = None  # the kiosk's name
    stored_at: datetime | None = None
    flag: str | None = None
    pending_until: datetime | None = None

    @classmethod
    def of(cls, record: CustodyRecord) -> RecordRef:
        return cls(
            record.id,
            record.state,
            record.kind,
            record.pupil_id,
            record.compartment.number if record.compartment is not None else None,
            record.kiosk.name if record.kiosk is not None else None,
            record.stored_at,
            record.flag,
            record.pending_until,
        )


Record = CustodyRecord | RecordRef


def _ref(record: Record) -> RecordRef:
    return record if isinstance(record, RecordRef) else RecordRef.of(record)


# Why a record is flagged for the office to look at (``CustodyRecord.flag``): every flag the
# product sets is one of these.
FLAG_CHECK = "check"  # the office should look at the record (the device, the door)
FLAG_UNCOLLECTED = "uncollected"  # still in a locker after the end-of-day cut-off
FLAG_UNVERIFIED = "unverified"  # a deposit the kiosk could not see confirmed (a restart)
FLAG_DOOR_LEFT_OPEN = "door_left_open"  # the door stood open until the alarm
FLAG_OFFLINE_CONFLICT = "offline_conflict"  # an offline kiosk's change lost to a central one

# What a record says happened, as its audit events record it under ``set``: every change
# the ledger makes to one of these columns is in the event written with it, so
# :func:`verify_records` can tell a record changed behind the ledger's back. (Not the links
# that deleting a compartment, a kiosk or a contact sets to NULL.)
RECORDED_FACTS = frozenset(
    {
        "state",
        "pupil_id",
        "kind",
        "device",
        "started_at",
        "started_by",
        "ended_at",
        "ended_by",
        "end_reason",
        "pending_until",
        "stored_at",
        "confiscated_at",
        "confiscated_by",
        "confiscation_reason",
        "release_not_before",
        "ever_held",
        "held_at",
        "held_by",
        "hold_reason",
        "hold_lifted_note",
        "collector_name",
        "collector_relationship",
        "id_checked",
        "police_reference",
        "flag",
        "flag_detail",
        "flagged_at",
    }
)


def _fact(value: Any) -> Any:
    """A column's value as an audit event holds it (JSON: times in UTC ISO form)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def verify_records(session: Session) -> int:
    """Check every custody record against its audit events; return how many were checked.

    Folding a record's events in order gives its state (``to``) and the facts each change
    wrote (``set``); the record must hold exactly those. A record with no events at all is
    accepted only if it started before the oldest event left (a retention purge removed its
    history). Raises AuditChainBroken naming the first record that disagrees (without its
    contents: some are safeguarding details)."""
    expected: dict[int, dict[str, Any]] = {}
    last_event: dict[int, int] = {}
    events = session.execute(
        select(AuditEvent.seq, AuditEvent.custody_id, AuditEvent.details)
        .where(AuditEvent.custody_id.is_not(None), AuditEvent.kind.like("custody.%"))
        .order_by(AuditEvent.seq)
    )
    for seq, custody_id, details in events:
        try:
            payload = json.loads(details)
        except (TypeError, ValueError):
            continue  # an edited event: the chain check names it
        if not isinstance(payload, dict) or "to" not in payload:
            continue
        facts = expected.setdefault(custody_id, {})
        facts["state"] = payload["to"]
        if isinstance(payload.get("set"), dict):
            facts.update(payload["set"])
        last_event[custody_id] = seq
    oldest = session.execute(
        select(AuditEvent.occurred_at).order_by(AuditEvent.seq).limit(1)
    ).scalar()
    checked = 0
    for record in session.execute(select(_RECORDS).order_by(_RECORDS.c.id)).mappings():
        facts = expected.get(record["id"])
        if facts is None:
            if oldest is not None and record["started_at"] >= oldest:
                raise AuditChainBroken(
                    f"custody record {record['id']} has no audit events: it was written "
                    "outside the application"
                )
            continue
        for name, value in facts.items():
            if name in RECORDED_FACTS and _fact(record[name]) != value:
                raise AuditChainBroken(
                    f"custody record {record['id']}: its {name} is not what its audit trail "
                    f"says (last event seq {last_event[record['id']]}): the record was "
                    "changed outside the application"
                )
        checked += 1
    return checked


_INSERT_RECORD = insert(_RECORDS).returning(_RECORDS.c.id)
_STATE_OF = select(_RECORDS.c.state).where(_RECORDS.c.id == bindparam("record_id"))
_UPDATES: dict[tuple[tuple[str, ...], bool], Any] = {}


def _update_statement(columns: tuple[str, ...], conditional: bool) -> Any:
    """``UPDATE custody_records SET <columns>, version = version + 1 WHERE id = :id [AND
    state = :expected]``, built once per shape (statement building costs more than running)."""
    key = (columns, conditional)
    statement = _UPDATES.get(key)
    if statement is None:
        where = [_RECORDS.c.id == bindparam("record_id")]
        if conditional:
            where.append(_RECORDS.c.state == bindparam("expected_state"))
        statement = (
            update(_RECORDS)
            .where(*where)
            .values(
                {
                    **{name: bindparam(f"new_{name}") for name in columns},
                    "version": _RECORDS.c.version + 1,
                }
            )
        )
        _UPDATES[key] = statement
    return statement


class PupilLike(Protocol):
    """What the ledger needs of a pupil (a :class:`Pupil`, or the kiosk's card holder)."""

    id: int
    admission_number: str
    status: PupilStatus


class CustodyLedger:
    """The custody operations. Stateless apart from the policy and the audit trail: every
    call names its session, actor and clock, and writes nothing outside that session.

    Operations accept an ORM :class:`CustodyRecord` (the web, the CLI) or a
    :class:`RecordRef` (the kiosk, which knows what it opened). Every change is one
    conditional UPDATE of the record and its audit event, in the caller's transaction.
    """

    def __init__(self, policy: Policy, audit: AuditTrail) -> None:
        self.policy = policy
        self.audit = audit

    # ---------------------------------------------------------------- queries

    def active_daily(self, session: Session, pupil_id: int) -> CustodyRecord | None:
        """The pupil's deposit that is pending or in a locker, if any."""
        return session.execute(_ACTIVE_DAILY, {"pupil_id": pupil_id}).scalar_one_or_none()

    def daily_ref(self, session: Executor, pupil_id: int) -> RecordRef | None:
        """The pupil's active deposit as a :class:`RecordRef` (compartment number and kiosk
        name included), in one query; None when there is none."""
        row = connection_of(session).execute(_DAILY_REF, {"pupil_id": pupil_id}).first()
        return RecordRef(*row) if row is not None else None

    def active_records(self, session: Session, pupil_id: int) -> list[CustodyRecord]:
        """Every active record of the pupil (deposits, confiscations, holds), oldest first."""
        return list(session.execute(_ACTIVE_OF_PUPIL, {"pupil_id": pupil_id}).scalars())

    def get(self, session: Session, record_id: int, *, lock: bool = True) -> CustodyRecord:
        """The record ``record_id`` (row-locked on PostgreSQL), or NotFound."""
        query = select(CustodyRecord).where(CustodyRecord.id == record_id)
        if lock:
            query = query.with_for_update()
        record = session.execute(query).scalar_one_or_none()
        if record is None:
            raise NotFound(f"no custody record {record_id}")
        return record

    def free_compartments(
        self, session: Session, kiosk: Kiosk, kind: CompartmentKind
    ) -> list[Compartment]:
        """Free, in-service compartments of ``kind`` in ``kiosk``, lowest number first."""
        ids = list(session.execute(_FREE[kind], {"kiosk_id": kiosk.id}).scalars())
        if not ids:
            return []
        found = session.execute(select(Compartment).where(Compartment.id.in_(ids))).scalars()
        return sorted(found, key=lambda compartment: compartment.number)

    def allocate(
        self,
        session: Executor,
        kiosk: Kiosk,
        kind: CompartmentKind,
        pupil_id: int | None = None,
        *,
        busy: Collection[int] = (),
    ) -> tuple[int, int]:
        """A free compartment of ``kind`` in ``kiosk`` as (id, number): the one the pupil used
        last when it is free, else the lowest-numbered. ConflictError when none is free.

        ``busy``: numbers the kiosk is opening or has open right now (a device just released
        may still be inside): not free, whatever the records say. The database's unique
        index is the last word if two writers pick the same one."""
        connection = connection_of(session)
        chosen = None
        if pupil_id is not None:
            last = connection.execute(
                _LAST_USED[kind], {"pupil_id": pupil_id, "kiosk_id": kiosk.id}
            ).first()
            if last is not None and last[1] not in busy and not last[2]:
                chosen = last
        if chosen is None and not busy:
            chosen = connection.execute(_FIRST_FREE[kind], {"kiosk_id": kiosk.id}).first()
        elif chosen is None:
            free = connection.execute(_FREE[kind], {"kiosk_id": kiosk.id})
            chosen = next((row for row in free if row[1] not in busy), None)
        if chosen is None:
            what = "secure compartment" if kind is CompartmentKind.SECURE else "compartment"
            raise ConflictError(f"no free {what} in {kiosk.label}")
        return chosen[0], chosen[1]

    def _take(self, session: Executor, kiosk: Kiosk, number: int) -> tuple[int, int]:
        """Compartment ``number`` of ``kiosk`` as (id, number) if it is a free pupil
        compartment; ConflictError otherwise."""
        connection = connection_of(session)
        row = connection.execute(
            _PUPIL_COMPARTMENT, {"kiosk_id": kiosk.id, "number": number}
        ).first()
        if row is None:
            raise ConflictError(f"{kiosk.label} has no pupil compartment {number}")
        if connection.execute(_OCCUPIED, {"compartment_id": row[0]}).first() is not None:
            raise ConflictError(f"compartment {number} of {kiosk.label} is already in use")
        return row[0], row[1]

    # ---------------------------------------------------------------- mechanics

    def _authorise(
        self, operation: Operation, actor: Actor, record: RecordRef | None
    ) -> Transition:
        transition = TRANSITIONS[operation]
        if actor.role not in transition.roles:
            allowed = ", ".join(sorted(role.value for role in transition.roles))
            raise PermissionDenied(
                f"the {actor.role.value} role may not {transition.describe} (allowed: {allowed})"
            )
        source = record.state if record is not None else None
        if source not in transition.sources:
            if record is None:
                raise TransitionError(f"cannot {transition.describe} without a custody record")
            if source is S.SAFEGUARDING_HOLD:
                raise TransitionError(
                    f"custody record {record.id} is under safeguarding hold: only the DSL can "
                    "act on it (contact the DSL)"
                )
            raise TransitionError(
                f"cannot {transition.describe}: custody record {record.id} is "
                f"{STATE_LABELS[record.state]}"
            )
        if (
            actor.role is ActorRole.PUPIL
            and record is not None
            and (actor.pupil_id != record.pupil_id)
        ):
            raise PermissionDenied("a pupil may only act on their own device")
        return transition

    def _write(
        self,
        session: Executor,
        record: Record,
        changes: dict[str, Any],
        *,
        expected: CustodyState | None,
    ) -> None:
        """One UPDATE of ``record``; with ``expected``, only if it is still in that state
        (TransitionError otherwise: someone else changed it meanwhile)."""
        ref = _ref(record)
        if isinstance(record, CustodyRecord):
            session.flush()  # changes made to the object by the caller go first
        columns = tuple(sorted(changes))
        params = {f"new_{name}": changes[name] for name in columns}
        params["record_id"] = ref.id
        if expected is not None:
            params["expected_state"] = expected
        statement = _update_statement(columns, expected is not None)
        try:
            result = connection_of(session).execute(statement, params)
        except IntegrityError as exc:
            raise self._conflict(exc) from None
        if result.rowcount != 1:
            now = session.execute(_STATE_OF, {"record_id": ref.id}).scalar()
            if now is None:
                raise NotFound(f"no custody record {ref.id}")
            raise TransitionError(
                f"custody record {ref.id} is now {STATE_LABELS[CustodyState(now)]}: it changed "
                "while this was being done; look at it again"
            )
        if isinstance(record, CustodyRecord):
            # What the database now holds, without marking the object dirty or reloading it.
            version = record.version
            for name, value in changes.items():
                set_committed_value(record, name, value)
            set_committed_value(record, "version", version + 1)
        else:
            for name in ("state", "stored_at", "flag"):
                if name in changes:
                    setattr(record, name, changes[name])

    @staticmethod
    def _state_now(session: Executor, ref: RecordRef) -> CustodyState:
        """The record's state as this transaction sees it (after an unconditional write,
        which ``ref`` may know an older state for); ``ref`` is brought up to date."""
        ref.state = CustodyState(session.execute(_STATE_OF, {"record_id": ref.id}).scalar_one())
        return ref.state

    @staticmethod
    def _conflict(exc: IntegrityError) -> ConflictError:
        message = str(exc.orig)
        if "uq_custody_active_daily_pupil" in message or "custody_records.pupil_id" in message:
            return ConflictError("this pupil already has a device in a locker")
        if "uq_custody_active_compartment" in message or "compartment_id" in message:
            return ConflictError("that compartment is already in use")
        return ConflictError(f"the database refused the change: {message.splitlines()[0]}")

    def _move(
        self,
        session: Executor,
        actor: Actor,
        clock: Clock,
        record: Record,
        operation: Operation,
        *,
        values: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        restricted: bool = False,
    ) -> Record:
        ref = _ref(record)
        transition = self._authorise(operation, actor, ref)
        source = ref.state
        now = clock.now()
        changes = {"state": transition.target, "updated_at": now, **(values or {})}
        if transition.target not in ACTIVE_STATES:
            changes["ended_at"], changes["ended_by"] = now, actor.label
        self._write(session, record, changes, expected=source)
        self._event(
            session,
            actor,
            clock,
            ref,
            transition.event,
            source,
            transition.target,
            details,
            written=changes,
            restricted=restricted,
        )
        if isinstance(record, RecordRef):
            record.state = transition.target
        return record

    def _event(
        self,
        session: Executor,
        actor: Actor,
        clock: Clock,
        ref: RecordRef,
        kind: str,
        source: CustodyState | None,
        target: CustodyState,
        details: dict[str, Any] | None = None,
        *,
        written: Mapping[str, Any],
        restricted: bool = False,
    ) -> None:
        """The audit event of a change to a record: ``from`` and ``to`` states, and under
        ``set`` the recorded facts the change wrote (see :func:`verify_records`)."""
        payload: dict[str, Any] = {
            "from": source.value if source else None,
            "to": target.value,
            "kind": ref.kind.value,
        }
        if ref.compartment is not None:
            payload["compartment"] = ref.compartment
        payload.update(details or {})
        payload["set"] = {
            name: _fact(value) for name, value in written.items() if name in RECORDED_FACTS
        }
        self.audit.record(
            session,
            clock,
            actor,
            kind,
            custody_id=ref.id,
            pupil_id=ref.pupil_id,
            kiosk=ref.kiosk or actor.kiosk,
            details=payload,
            restricted=restricted,
        )

    def _insert(self, session: Executor, values: dict[str, Any]) -> int:
        defaults = {"ever_held": False, "id_checked": False, "version": 1}
        try:
            return (
                connection_of(session).execute(_INSERT_RECORD, {**defaults, **values}).scalar_one()
            )
        except IntegrityError as exc:
            raise self._conflict(exc) from None

    # ---------------------------------------------------------------- daily deposits

    def start_deposit(
        self,
        session: Executor,
        actor: Actor,
        clock: Clock,
        *,
        pupil: PupilLike,
        kiosk: Kiosk,
        timeout_s: float,
        device: str | None = None,
        compartment: int | None = None,
        busy: Collection[int] = (),
        has_no_deposit: bool = False,
    ) -> RecordRef:
        """A pupil's card at the kiosk, in the deposit window: allocate a compartment and
        write PENDING_DEPOSIT. Written **before** the lock opens. Returns a reference to the
        new record (``session.get(CustodyRecord, ref.id)`` loads it).

        ``compartment`` (a number) asks for that one, when it must be that one (replaying
        what a kiosk did offline); ConflictError if it is not a free pupil compartment.
        ``busy``: compartments the kiosk has open or opening (see :meth:`allocate`).
        ``has_no_deposit``: the caller has just read, in this transaction, that the pupil has
        no active deposit (the kiosk's tap does): not asked again. The database's unique
        index stays the last word."""
        self._authorise(Operation.START_DEPOSIT, actor, None)
        if actor.pupil_id != pupil.id:
            raise PermissionDenied("a pupil may only deposit their own device")
        if pupil.status is not PupilStatus.ACTIVE:
            raise PolicyError(f"{pupil.admission_number} is no longer on roll")
        now = clock.now()
        if not self.policy.in_deposit_window(now):
            raise PolicyError(
                f"devices are locked away between {self.policy.config.deposit_window}"
            )
        existing = None if has_no_deposit else self.daily_ref(session, pupil.id)
        if existing is not None:
            raise ConflictError(f"your device is already in locker {existing.compartment}")
        if compartment is None:
            compartment_id, number = self.allocate(
                session, kiosk, CompartmentKind.PUPIL, pupil.id, busy=busy
            )
        else:
            compartment_id, number = self._take(session, kiosk, compartment)
        pending_until = now + timedelta(seconds=timeout_s)
        values = {
            "pupil_id": pupil.id,
            "kind": CustodyKind.DAILY,
            "state": S.PENDING_DEPOSIT,
            "compartment_id": compartment_id,
            "kiosk_id": kiosk.id,
            "device": device,
            "started_at": now,
            "started_by": actor.label,
            "updated_at": now,
            "pending_until": pending_until,
        }
        record_id = self._insert(session, values)
        ref = RecordRef(
            record_id,
            S.PENDING_DEPOSIT,
            CustodyKind.DAILY,
            pupil.id,
            number,
            kiosk.name,
            pending_until=pending_until,
        )
        self._event(
            session,
            actor,
            clock,
            ref,
            TRANSITIONS[Operation.START_DEPOSIT].event,
            None,
            S.PENDING_DEPOSIT,
            {"pending_until": pending_until.isoformat()},
            written=values,
        )
        return ref

    def confirm_deposit(
        self,
        session: Executor,
        actor: Actor,
        clock: Clock,
        record: Record,
        *,
        how: str = "door closed",
    ) -> Record:
        """PENDING_DEPOSIT -> IN_LOCKER once the door was seen open and then closed."""
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.CONFIRM_DEPOSIT,
            values={"stored_at": clock.now()},
            details={"how": how},
        )

    def cancel_deposit(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, reason: str
    ) -> Record:
        reason = clean_text(reason, "the reason", max_length=500)
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.CANCEL_DEPOSIT,
            values={"end_reason": reason},
            details={"reason": reason},
        )

    def may_collect_now(self, session: Executor, pupil_id: int, when: datetime) -> bool:
        """In the collection window, or exempt today."""
        return self.policy.in_collection_window(when) or exemptions.is_exempt(
            session, pupil_id, self.policy.school_day(when)
        )

    def check_collect(self, session: Executor, actor: Actor, clock: Clock, record: Record) -> None:
        """Raise why ``actor`` may not collect ``record`` now (nothing is written)."""
        ref = _ref(record)
        self._authorise(Operation.COLLECT, actor, ref)
        if actor.role is ActorRole.PUPIL and not self.may_collect_now(
            session, ref.pupil_id, clock.now()
        ):
            raise PolicyError(
                f"devices are collected between {self.policy.config.collection_window}"
            )

    def collect(self, session: Executor, actor: Actor, clock: Clock, record: Record) -> Record:
        """IN_LOCKER -> COLLECTED (the kiosk calls it once the door is seen open)."""
        self.check_collect(session, actor, clock, record)
        return self._move(session, actor, clock, record, Operation.COLLECT)

    # ---------------------------------------------------------------- confiscation

    def confiscate(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        *,
        pupil: PupilLike,
        reason: str,
        device: str | None = None,
        kiosk: Kiosk | None = None,
        record: CustodyRecord | None = None,
        busy: Collection[int] = (),
    ) -> CustodyRecord:
        """Staff confiscate a device.

        With ``record`` (the pupil's device already IN_LOCKER) the record becomes CONFISCATED
        where it is. Otherwise a new record goes to a free secure compartment of ``kiosk``
        (its door must then close: :meth:`mark_stored`), or to the office safe when
        ``kiosk`` is None.
        """
        reason = clean_text(reason, "the reason for confiscating", max_length=500)
        device = clean_text(device, "the device", max_length=120, required=False) or None
        now = clock.now()
        confiscated = {
            "confiscated_at": now,
            "confiscated_by": actor.label,
            "confiscation_reason": reason,
            "release_not_before": self.policy.release_not_before(now),
        }
        if record is not None:
            if record.pupil_id != pupil.id:
                raise ValidationError("that custody record belongs to another pupil")
            if device:
                confiscated["device"] = device
            self._move(
                session,
                actor,
                clock,
                record,
                Operation.CONFISCATE,
                values=confiscated,
                details={"reason": reason},
            )
            return record
        self._authorise(Operation.CONFISCATE, actor, None)
        compartment_id, number = (
            self.allocate(session, kiosk, CompartmentKind.SECURE, busy=busy)
            if kiosk is not None
            else (None, None)
        )
        values = {
            "pupil_id": pupil.id,
            "kind": CustodyKind.CONFISCATION,
            "state": S.CONFISCATED,
            "compartment_id": compartment_id,
            "kiosk_id": kiosk.id if kiosk is not None else None,
            "device": device,
            "started_at": now,
            "started_by": actor.label,
            "updated_at": now,
            "stored_at": None if compartment_id is not None else now,
            **confiscated,
        }
        record_id = self._insert(session, values)
        ref = RecordRef(
            record_id,
            S.CONFISCATED,
            CustodyKind.CONFISCATION,
            pupil.id,
            number,
            kiosk.name if kiosk is not None else None,
        )
        self._event(
            session,
            actor,
            clock,
            ref,
            TRANSITIONS[Operation.CONFISCATE].event,
            None,
            S.CONFISCATED,
            {
                "reason": reason,
                "location": f"compartment {number}" if number is not None else "office safe",
            },
            written=values,
        )
        new = session.get(CustodyRecord, record_id)
        assert new is not None
        return new

    def mark_stored(self, session: Executor, actor: Actor, clock: Clock, record: Record) -> Record:
        """The door of the compartment holding a confiscated device closed: it is secured.
        Harmless when it already was."""
        ref = _ref(record)
        if ref.state not in (S.CONFISCATED, S.SAFEGUARDING_HOLD):
            raise TransitionError(f"custody record {ref.id} is {STATE_LABELS[ref.state]}")
        if ref.stored_at is None:
            now = clock.now()
            changes = {"stored_at": now, "updated_at": now}
            self._write(session, record, changes, expected=ref.state)
            self._event(
                session, actor, clock, ref, "custody.stored", ref.state, ref.state, written=changes
            )
        return record

    def to_office_safe(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, detail: str
    ) -> Record:
        """A confiscated device whose secure compartment never opened is still in a member
        of staff's hand: the record leaves the compartment (free again) for the office safe,
        flagged for the office to check that it got there."""
        ref = _ref(record)
        if ref.state not in (S.CONFISCATED, S.SAFEGUARDING_HOLD) or ref.stored_at is not None:
            raise TransitionError(f"custody record {ref.id} is not waiting to be stored")
        now = clock.now()
        changes = {
            "compartment_id": None,
            "flag": FLAG_CHECK,
            "flag_detail": detail[:500],
            "flagged_at": now,
            "updated_at": now,
        }
        self._write(session, record, changes, expected=ref.state)
        self._event(
            session,
            actor,
            clock,
            ref,
            "custody.flagged",
            ref.state,
            ref.state,
            {"flag": FLAG_CHECK, "detail": detail[:500], "location": "office safe"},
            written=changes,
        )
        ref.compartment = None
        return record

    # ---------------------------------------------------------------- safeguarding

    def hold(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, reason: str
    ) -> Record:
        """An urgent referral to the DSL: nobody looks at the device, nobody releases it."""
        reason = clean_text(reason, "the reason for the referral", max_length=1000)
        now = clock.now()
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.HOLD,
            values={
                "ever_held": True,
                "held_at": now,
                "held_by": actor.label,
                "hold_reason": reason,
            },
            details={"reason": reason},
            restricted=True,
        )

    def lift_hold(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, note: str
    ) -> CustodyRecord:
        note = clean_text(note, "a note on why the hold is lifted", max_length=1000)
        now = clock.now()
        values: dict[str, Any] = {"hold_lifted_note": note}
        if record.confiscated_at is None:  # it went straight from a locker to the hold
            values.update(
                confiscated_at=now,
                confiscated_by=actor.label,
                confiscation_reason="held for the DSL; hold lifted",
            )
        values["release_not_before"] = max(
            record.release_not_before or now, self.policy.release_not_before(now)
        )
        self._move(
            session,
            actor,
            clock,
            record,
            Operation.LIFT_HOLD,
            values=values,
            details={"note": note},
            restricted=True,
        )
        return record

    def hand_to_police(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, reference: str
    ) -> Record:
        reference = clean_text(reference, "the police reference", max_length=80)
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.HAND_TO_POLICE,
            values={"police_reference": reference},
            details={"police_reference": reference},
            restricted=True,
        )

    # ---------------------------------------------------------------- release and return

    def release_to_parent(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        record: CustodyRecord,
        *,
        id_checked: bool,
        contact: Contact | None = None,
        collector_name: str | None = None,
        relationship: str | None = None,
    ) -> CustodyRecord:
        """Hand a confiscated device to a parent or carer whose ID was checked: one of the
        pupil's authorised contacts (``contact``) or another adult named here."""
        self._authorise(Operation.RELEASE_TO_PARENT, actor, _ref(record))
        if not self.policy.may_release(actor.role):
            roles = ", ".join(self.policy.config.release_roles)
            raise PermissionDenied(f"only {roles} may release a confiscated device")
        now = clock.now()
        if record.release_not_before is not None and now < record.release_not_before:
            local = self.policy.local(record.release_not_before)
            raise PolicyError(f"this device may not be released before {local:%H:%M on %d %b}")
        if not id_checked:
            raise ValidationError("confirm that the collector's ID was checked")
        values: dict[str, Any] = {"id_checked": True}
        if contact is not None:
            if contact.pupil_id != record.pupil_id:
                raise ValidationError("that contact is not one of this pupil's contacts")
            name, relation = contact.name, contact.relation or "contact"
            values["collector_contact_id"] = contact.id
        else:
            name = clean_text(collector_name, "the collector's name", max_length=120)
            relation = clean_text(
                relationship, "the collector's relationship to the pupil", max_length=60
            )
        values.update(collector_name=name, collector_relationship=relation)
        self._move(
            session,
            actor,
            clock,
            record,
            Operation.RELEASE_TO_PARENT,
            values=values,
            details={
                "collector": name,
                "relationship": relation,
                "authorised_contact": contact is not None,
                "id_checked": True,
            },
        )
        return record

    def return_to_pupil(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, reason: str
    ) -> Record:
        """An admin hands the device back (e.g. an exemption granted mid-day)."""
        reason = clean_text(reason, "the reason", max_length=500)
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.RETURN_TO_PUPIL,
            values={"end_reason": reason},
            details={"reason": reason},
        )

    # ---------------------------------------------------------------- flags and sweeps

    def flag(
        self,
        session: Executor,
        actor: Actor,
        clock: Clock,
        record: Record,
        *,
        flag: str,
        detail: str,
    ) -> Record:
        """Mark a record for the office to check (uncollected, a door found open, ...)."""
        ref = _ref(record)
        now = clock.now()
        changes = {"flag": flag, "flag_detail": detail[:500], "flagged_at": now, "updated_at": now}
        self._write(session, record, changes, expected=None)
        state = self._state_now(session, ref)
        self._event(
            session,
            actor,
            clock,
            ref,
            "custody.flagged",
            state,
            state,
            {"flag": flag, "detail": detail[:500]},
            written=changes,
        )
        return record

    def clear_flag(
        self, session: Executor, actor: Actor, clock: Clock, record: Record, *, note: str
    ) -> Record:
        note = clean_text(note, "a note", max_length=500)
        ref = _ref(record)
        cleared = ref.flag
        if cleared is None:
            raise ValidationError(f"custody record {ref.id} is not flagged")
        changes = {"flag": None, "flag_detail": None, "flagged_at": None, "updated_at": clock.now()}
        self._write(session, record, changes, expected=None)
        state = self._state_now(session, ref)
        self._event(
            session,
            actor,
            clock,
            ref,
            "custody.flag_cleared",
            state,
            state,
            {"flag": cleared, "note": note},
            written=changes,
        )
        return record

    def flag_uncollected(self, session: Session, actor: Actor, clock: Clock) -> int:
        """Flag IN_LOCKER records still open after the end-of-day cut-off of the day they
        were deposited. Returns how many were newly flagged."""
        now = clock.now()
        count = 0
        records = (
            session.execute(
                select(CustodyRecord).where(
                    CustodyRecord.state == S.IN_LOCKER, CustodyRecord.flag.is_(None)
                )
            )
            .scalars()
            .all()
        )
        for record in records:
            cutoff = self.policy.end_of_day(self.policy.school_day(record.started_at))
            if now >= cutoff:
                self.flag(
                    session,
                    actor,
                    clock,
                    record,
                    flag=FLAG_UNCOLLECTED,
                    detail=f"still in the locker after the cut-off of "
                    f"{self.policy.local(cutoff):%H:%M on %d %b}",
                )
                count += 1
        return count

    def expired_pending(
        self, session: Session, clock: Clock, kiosk: Kiosk | None = None
    ) -> list[CustodyRecord]:
        """PENDING_DEPOSIT records whose door was not opened in time."""
        query = select(CustodyRecord).where(
            CustodyRecord.state == S.PENDING_DEPOSIT, CustodyRecord.pending_until < clock.now()
        )
        if kiosk is not None:
            query = query.where(CustodyRecord.kiosk_id == kiosk.id)
        return list(session.execute(query.order_by(CustodyRecord.id)).scalars())

    def counts_by_state(self, session: Session) -> dict[CustodyState, int]:
        rows = session.execute(
            select(CustodyRecord.state, func.count()).group_by(CustodyRecord.state)
        ).all()
        return dict(rows)
