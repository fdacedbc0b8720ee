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
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kiosk import exemptions
from kiosk.actors import STAFF_ROLES, Actor, ActorRole
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.errors import (
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
    Compartment,
    CompartmentKind,
    Contact,
    CustodyKind,
    CustodyRecord,
    CustodyState,
    Kiosk,
    Pupil,
    PupilStatus,
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


class CustodyLedger:
    """The custody operations. Stateless apart from the policy and the audit trail: every
    call names its session, actor and clock, and writes nothing outside that session."""

    def __init__(self, policy: Policy, audit: AuditTrail) -> None:
        self.policy = policy
        self.audit = audit

    # ---------------------------------------------------------------- queries

    def active_daily(self, session: Session, pupil_id: int) -> CustodyRecord | None:
        return session.execute(
            select(CustodyRecord).where(
                CustodyRecord.pupil_id == pupil_id,
                CustodyRecord.kind == CustodyKind.DAILY,
                CustodyRecord.state.in_(DAILY_ACTIVE_STATES),
            )
        ).scalar_one_or_none()

    def active_records(self, session: Session, pupil_id: int) -> list[CustodyRecord]:
        return list(
            session.execute(
                select(CustodyRecord)
                .where(CustodyRecord.pupil_id == pupil_id, CustodyRecord.state.in_(ACTIVE_STATES))
                .order_by(CustodyRecord.id)
            ).scalars()
        )

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
        occupied = select(CustodyRecord.compartment_id).where(
            CustodyRecord.state.in_(ACTIVE_STATES), CustodyRecord.compartment_id.is_not(None)
        )
        return list(
            session.execute(
                select(Compartment)
                .where(
                    Compartment.kiosk_id == kiosk.id,
                    Compartment.kind == kind,
                    Compartment.out_of_service.is_(False),
                    Compartment.id.not_in(occupied),
                )
                .order_by(Compartment.number)
            ).scalars()
        )

    def allocate(
        self, session: Session, kiosk: Kiosk, kind: CompartmentKind, pupil_id: int | None = None
    ) -> Compartment:
        """A free compartment of ``kind`` in ``kiosk``: the one the pupil used last when it is
        free, else the lowest-numbered. ConflictError when none is free."""
        free = self.free_compartments(session, kiosk, kind)
        if not free:
            what = "secure compartment" if kind is CompartmentKind.SECURE else "compartment"
            raise ConflictError(f"no free {what} in {kiosk.label}")
        if pupil_id is not None:
            last = session.execute(
                select(CustodyRecord.compartment_id)
                .join(Compartment, Compartment.id == CustodyRecord.compartment_id)
                .where(
                    CustodyRecord.pupil_id == pupil_id,
                    Compartment.kiosk_id == kiosk.id,
                    Compartment.kind == kind,
                )
                .order_by(CustodyRecord.started_at.desc(), CustodyRecord.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            for compartment in free:
                if compartment.id == last:
                    return compartment
        return free[0]

    # ---------------------------------------------------------------- mechanics

    def _authorise(
        self, operation: Operation, actor: Actor, record: CustodyRecord | None
    ) -> Transition:
        transition = TRANSITIONS[operation]
        if actor.role not in transition.roles:
            allowed = ", ".join(sorted(role.value for role in transition.roles))
            raise PermissionDenied(
                f"the {actor.role.value} role may not {transition.describe} (allowed: {allowed})"
            )
        source = record.state if record is not None else None
        if source not in transition.sources:
            if source is S.SAFEGUARDING_HOLD:
                raise TransitionError(
                    f"custody record {record.id} is under safeguarding hold: only the DSL can "
                    "act on it (contact the DSL)"
                )
            if record is None:
                raise TransitionError(f"cannot {transition.describe} without a custody record")
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

    def _move(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        record: CustodyRecord,
        operation: Operation,
        details: dict[str, Any] | None = None,
        *,
        restricted: bool = False,
    ) -> CustodyRecord:
        transition = self._authorise(operation, actor, record)
        source = record.state
        now = clock.now()
        record.state = transition.target
        record.updated_at = now
        if transition.target not in ACTIVE_STATES:
            record.ended_at, record.ended_by = now, actor.label
        self._flush(session)
        self._event(
            session, actor, clock, record, transition.event, source, details, restricted=restricted
        )
        return record

    def _event(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        record: CustodyRecord,
        kind: str,
        source: CustodyState | None,
        details: dict[str, Any] | None = None,
        *,
        restricted: bool = False,
    ) -> None:
        payload: dict[str, Any] = {
            "from": source.value if source else None,
            "to": record.state.value,
            "kind": record.kind.value,
        }
        if record.compartment is not None:
            payload["compartment"] = record.compartment.number
        payload.update(details or {})
        self.audit.record(
            session,
            clock,
            actor,
            kind,
            custody_id=record.id,
            pupil_id=record.pupil_id,
            kiosk=record.kiosk.name if record.kiosk else actor.kiosk,
            details=payload,
            restricted=restricted,
        )

    @staticmethod
    def _flush(session: Session) -> None:
        try:
            session.flush()
        except IntegrityError as exc:
            message = str(exc.orig)
            if "uq_custody_active_daily_pupil" in message or "pupil_id" in message:
                raise ConflictError("this pupil already has a device in a locker") from None
            if "compartment" in message:
                raise ConflictError("that compartment is already in use") from None
            raise ConflictError(f"the database refused the change: {message}") from None

    # ---------------------------------------------------------------- daily deposits

    def start_deposit(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        *,
        pupil: Pupil,
        kiosk: Kiosk,
        timeout_s: float,
        device: str | None = None,
    ) -> CustodyRecord:
        """A pupil's card at the kiosk, in the deposit window: allocate a compartment and
        write PENDING_DEPOSIT. Written **before** the lock opens."""
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
        existing = self.active_daily(session, pupil.id)
        if existing is not None:
            where = existing.compartment.number if existing.compartment else "?"
            raise ConflictError(f"your device is already in locker {where}")
        compartment = self.allocate(session, kiosk, CompartmentKind.PUPIL, pupil.id)
        record = CustodyRecord(
            pupil_id=pupil.id,
            kind=CustodyKind.DAILY,
            state=S.PENDING_DEPOSIT,
            compartment=compartment,
            kiosk=kiosk,
            device=device,
            started_at=now,
            started_by=actor.label,
            updated_at=now,
            pending_until=now + timedelta(seconds=timeout_s),
        )
        session.add(record)
        self._flush(session)
        self._event(
            session,
            actor,
            clock,
            record,
            TRANSITIONS[Operation.START_DEPOSIT].event,
            None,
            {"pending_until": record.pending_until.isoformat()},
        )
        return record

    def confirm_deposit(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        record: CustodyRecord,
        *,
        how: str = "door closed",
    ) -> CustodyRecord:
        """PENDING_DEPOSIT -> IN_LOCKER once the door was seen open and then closed."""
        record.stored_at = clock.now()
        return self._move(session, actor, clock, record, Operation.CONFIRM_DEPOSIT, {"how": how})

    def cancel_deposit(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, reason: str
    ) -> CustodyRecord:
        reason = clean_text(reason, "the reason", max_length=500)
        record.end_reason = reason
        return self._move(
            session, actor, clock, record, Operation.CANCEL_DEPOSIT, {"reason": reason}
        )

    def may_collect_now(self, session: Session, pupil_id: int, when: datetime) -> bool:
        """In the collection window, or exempt today."""
        return self.policy.in_collection_window(when) or exemptions.is_exempt(
            session, pupil_id, self.policy.school_day(when)
        )

    def check_collect(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord
    ) -> None:
        """Raise why ``actor`` may not collect ``record`` now (nothing is written)."""
        self._authorise(Operation.COLLECT, actor, record)
        if actor.role is ActorRole.PUPIL and not self.may_collect_now(
            session, record.pupil_id, clock.now()
        ):
            raise PolicyError(
                f"devices are collected between {self.policy.config.collection_window}"
            )

    def collect(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord
    ) -> CustodyRecord:
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
        pupil: Pupil,
        reason: str,
        device: str | None = None,
        kiosk: Kiosk | None = None,
        record: CustodyRecord | None = None,
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
        if record is not None:
            if record.pupil_id != pupil.id:
                raise ValidationError("that custody record belongs to another pupil")
            self._authorise(Operation.CONFISCATE, actor, record)
            self._set_confiscated(record, actor, now, reason)
            record.device = device or record.device
            return self._move(
                session, actor, clock, record, Operation.CONFISCATE, {"reason": reason}
            )
        self._authorise(Operation.CONFISCATE, actor, None)
        compartment = (
            self.allocate(session, kiosk, CompartmentKind.SECURE) if kiosk is not None else None
        )
        new = CustodyRecord(
            pupil_id=pupil.id,
            kind=CustodyKind.CONFISCATION,
            state=S.CONFISCATED,
            compartment=compartment,
            kiosk=kiosk,
            device=device,
            started_at=now,
            started_by=actor.label,
            updated_at=now,
            stored_at=None if compartment is not None else now,
        )
        self._set_confiscated(new, actor, now, reason)
        session.add(new)
        self._flush(session)
        self._event(
            session,
            actor,
            clock,
            new,
            TRANSITIONS[Operation.CONFISCATE].event,
            None,
            {
                "reason": reason,
                "location": f"compartment {compartment.number}" if compartment else "office safe",
            },
        )
        return new

    def _set_confiscated(
        self, record: CustodyRecord, actor: Actor, now: datetime, reason: str
    ) -> None:
        record.confiscated_at, record.confiscated_by = now, actor.label
        record.confiscation_reason = reason
        record.release_not_before = self.policy.release_not_before(now)

    def mark_stored(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord
    ) -> CustodyRecord:
        """The door of the compartment holding a confiscated device closed: it is secured."""
        if record.state not in (S.CONFISCATED, S.SAFEGUARDING_HOLD):
            raise TransitionError(f"custody record {record.id} is {STATE_LABELS[record.state]}")
        if record.stored_at is None:
            record.stored_at = record.updated_at = clock.now()
            self._event(session, actor, clock, record, "custody.stored", record.state)
        return record

    # ---------------------------------------------------------------- safeguarding

    def hold(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, reason: str
    ) -> CustodyRecord:
        """An urgent referral to the DSL: nobody looks at the device, nobody releases it."""
        reason = clean_text(reason, "the reason for the referral", max_length=1000)
        self._authorise(Operation.HOLD, actor, record)
        now = clock.now()
        record.ever_held, record.held_at, record.held_by = True, now, actor.label
        record.hold_reason = reason
        return self._move(
            session, actor, clock, record, Operation.HOLD, {"reason": reason}, restricted=True
        )

    def lift_hold(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, note: str
    ) -> CustodyRecord:
        note = clean_text(note, "a note on why the hold is lifted", max_length=1000)
        self._authorise(Operation.LIFT_HOLD, actor, record)
        now = clock.now()
        record.hold_lifted_note = note
        if record.confiscated_at is None:  # it went straight from a locker to the hold
            self._set_confiscated(record, actor, now, "held for the DSL; hold lifted")
        record.release_not_before = max(
            record.release_not_before or now, self.policy.release_not_before(now)
        )
        return self._move(
            session, actor, clock, record, Operation.LIFT_HOLD, {"note": note}, restricted=True
        )

    def hand_to_police(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, reference: str
    ) -> CustodyRecord:
        reference = clean_text(reference, "the police reference", max_length=80)
        self._authorise(Operation.HAND_TO_POLICE, actor, record)
        record.police_reference = reference
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.HAND_TO_POLICE,
            {"police_reference": reference},
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
        self._authorise(Operation.RELEASE_TO_PARENT, actor, record)
        if not self.policy.may_release(actor.role):
            roles = ", ".join(self.policy.config.release_roles)
            raise PermissionDenied(f"only {roles} may release a confiscated device")
        now = clock.now()
        if record.release_not_before is not None and now < record.release_not_before:
            local = self.policy.local(record.release_not_before)
            raise PolicyError(f"this device may not be released before {local:%H:%M on %d %b}")
        if not id_checked:
            raise ValidationError("confirm that the collector's ID was checked")
        if contact is not None:
            if contact.pupil_id != record.pupil_id:
                raise ValidationError("that contact is not one of this pupil's contacts")
            name, relation = contact.name, contact.relation or "contact"
            record.collector_contact_id = contact.id
        else:
            name = clean_text(collector_name, "the collector's name", max_length=120)
            relation = clean_text(
                relationship, "the collector's relationship to the pupil", max_length=60
            )
        record.collector_name, record.collector_relationship = name, relation
        record.id_checked = True
        return self._move(
            session,
            actor,
            clock,
            record,
            Operation.RELEASE_TO_PARENT,
            {
                "collector": name,
                "relationship": relation,
                "authorised_contact": contact is not None,
                "id_checked": True,
            },
        )

    def return_to_pupil(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, reason: str
    ) -> CustodyRecord:
        """An admin hands the device back (e.g. an exemption granted mid-day)."""
        reason = clean_text(reason, "the reason", max_length=500)
        self._authorise(Operation.RETURN_TO_PUPIL, actor, record)
        record.end_reason = reason
        return self._move(
            session, actor, clock, record, Operation.RETURN_TO_PUPIL, {"reason": reason}
        )

    # ---------------------------------------------------------------- flags and sweeps

    def flag(
        self,
        session: Session,
        actor: Actor,
        clock: Clock,
        record: CustodyRecord,
        *,
        flag: str,
        detail: str,
    ) -> CustodyRecord:
        """Mark a record for the office to check (uncollected, a door found open, ...)."""
        record.flag, record.flag_detail = flag, detail[:500]
        record.flagged_at = record.updated_at = clock.now()
        self._event(
            session,
            actor,
            clock,
            record,
            "custody.flagged",
            record.state,
            {"flag": flag, "detail": detail[:500]},
        )
        return record

    def clear_flag(
        self, session: Session, actor: Actor, clock: Clock, record: CustodyRecord, *, note: str
    ) -> CustodyRecord:
        note = clean_text(note, "a note", max_length=500)
        if record.flag is None:
            raise ValidationError(f"custody record {record.id} is not flagged")
        flag, record.flag, record.flag_detail, record.flagged_at = record.flag, None, None, None
        record.updated_at = clock.now()
        self._event(
            session,
            actor,
            clock,
            record,
            "custody.flag_cleared",
            record.state,
            {"flag": flag, "note": note},
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
                    flag="uncollected",
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
