"""Writers racing on one database (each test runs on SQLite and on PostgreSQL): two kiosks,
a kiosk and the office, two office workers, each in its own thread and connection. Every
race ends in exactly one winner, the loser gets a clear domain error and writes nothing, and
the database holds no doubled custody.

Write units of work queue on the audit chain's head (BEGIN IMMEDIATE on SQLite, a row lock
on PostgreSQL: kiosk.db), so each decides on everything committed before it; the ledger's
conditional updates and the database's unique indexes are the last word behind that."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from kiosk import cabinets
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.custody import RecordRef
from kiosk.errors import LockerError
from kiosk.instance import Instance
from kiosk.models import (
    ACTIVE_STATES,
    AuditEvent,
    CompartmentKind,
    CustodyRecord,
    CustodyState,
    Pupil,
    Role,
)

from .conftest import add_pupil, add_user, main_kiosk

PUPILS = 12
AFTERNOON = datetime(2026, 9, 7, 14, 30, tzinfo=UTC)  # 15:30 London: collection window


def race(*actions: Callable[[], Any]) -> list[Any]:
    """Run ``actions`` in threads released together; each result is its return value or the
    exception it raised."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = actions[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def pupils(instance: Instance, clock: ManualClock) -> list[int]:
    with instance.database.transaction() as session:
        return [add_pupil(session, clock, f"R{n:03d}").id for n in range(PUPILS)]


def deposit_at(instance: Instance, clock: ManualClock, pupil_id: int, kiosk: str) -> Any:
    with instance.database.transaction() as session:
        pupil = session.get(Pupil, pupil_id)
        ref = instance.ledger.start_deposit(
            session,
            Actor.for_pupil(pupil, kiosk),
            clock,
            pupil=pupil,
            kiosk=cabinets.get_kiosk(session, kiosk),
            timeout_s=30,
        )
        return ref


def test_a_pupil_tapping_at_two_kiosks_at_once_gets_one_deposit(
    instance: Instance, clock: ManualClock
) -> None:
    with instance.database.transaction() as session:
        config = replace(instance.config.kiosk, name="hall", label="Hall")
        cabinets.register(session, Actor.system("test"), clock, instance.audit, config)
    for pupil_id in pupils(instance, clock):
        results = race(
            lambda p=pupil_id: deposit_at(instance, clock, p, "main"),
            lambda p=pupil_id: deposit_at(instance, clock, p, "hall"),
        )
        won = [r for r in results if isinstance(r, RecordRef)]
        lost = [r for r in results if isinstance(r, LockerError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert "already" in str(lost[0])
    with instance.database.reader() as session:
        active = session.execute(
            select(CustodyRecord.pupil_id, func.count())
            .where(CustodyRecord.state.in_(ACTIVE_STATES))
            .group_by(CustodyRecord.pupil_id)
        ).all()
        started = session.execute(
            select(func.count()).where(AuditEvent.kind == "custody.deposit_started")
        ).scalar_one()
    assert sorted(count for _, count in active) == [1] * PUPILS
    assert started == PUPILS  # the loser wrote nothing
    with instance.database.reader() as session:
        instance.audit.verify(session)


def test_a_collection_racing_the_office_ends_in_exactly_one(
    instance: Instance, clock: ManualClock
) -> None:
    """The kiosk records a collection (a conditional update on what it last knew) while the
    office confiscates or the DSL places a hold (a locked read, then the change)."""
    refs = []
    for pupil_id in pupils(instance, clock):
        ref = deposit_at(instance, clock, pupil_id, "main")
        with instance.database.transaction() as session:
            instance.ledger.confirm_deposit(session, Actor.for_kiosk("main"), clock, ref)
        refs.append(ref)
    with instance.database.transaction() as session:
        office = Actor.for_user(add_user(session, clock, "office", Role.OFFICE))
        dsl = Actor.for_user(add_user(session, clock, "dsl", Role.DSL))
    afternoon = ManualClock(AFTERNOON)

    def collect(ref: RecordRef) -> str:
        with instance.database.transaction() as session:
            pupil = session.get(Pupil, ref.pupil_id)
            instance.ledger.collect(session, Actor.for_pupil(pupil, "main"), afternoon, ref)
        return "collected"

    def office_acts(ref: RecordRef, hold: bool) -> str:
        with instance.database.transaction() as session:
            record = instance.ledger.get(session, ref.id)
            if hold:
                instance.ledger.hold(session, dsl, afternoon, record, reason="referral")
                return "held"
            pupil = session.get(Pupil, ref.pupil_id)
            instance.ledger.confiscate(
                session, office, afternoon, pupil=pupil, reason="in a lesson", record=record
            )
            return "confiscated"

    expected_state = {
        "collected": CustodyState.COLLECTED,
        "held": CustodyState.SAFEGUARDING_HOLD,
        "confiscated": CustodyState.CONFISCATED,
    }
    for number, ref in enumerate(refs):
        results = race(lambda r=ref: collect(r), lambda r=ref, h=number % 2: office_acts(r, h))
        won = [r for r in results if isinstance(r, str)]
        assert len(won) == 1 and isinstance(next(r for r in results if r not in won), LockerError)
        with instance.database.reader() as session:
            record = session.get(CustodyRecord, ref.id)
            kinds = session.execute(
                select(AuditEvent.kind).where(AuditEvent.custody_id == ref.id)
            ).scalars()
            changes = [
                k
                for k in kinds
                if k in ("custody.collected", "custody.held", "custody.confiscated")
            ]
        assert record.state is expected_state[won[0]]
        assert changes == [f"custody.{won[0]}"]  # the loser left no trace
    with instance.database.reader() as session:
        instance.audit.verify(session)


def test_two_writers_confiscating_into_one_cabinet_get_different_compartments(
    instance: Instance, clock: ManualClock
) -> None:
    """Two office workers (or the office and the kiosk's staff mode) fill a kiosk's secure
    compartments at the same moment: each device gets its own."""
    with instance.database.transaction() as session:
        office = Actor.for_user(add_user(session, clock, "office", Role.OFFICE))
        secure = len(
            instance.ledger.free_compartments(session, main_kiosk(session), CompartmentKind.SECURE)
        )
    assert secure >= 2
    ids = pupils(instance, clock)

    def confiscate(pupil_id: int) -> int | None:
        with instance.database.transaction() as session:
            record = instance.ledger.confiscate(
                session,
                office,
                clock,
                pupil=session.get(Pupil, pupil_id),
                reason="in a lesson",
                kiosk=main_kiosk(session),
            )
            return record.compartment.number

    taken: list[int] = []
    for first in range(0, secure - 1, 2):
        results = race(lambda p=ids[first]: confiscate(p), lambda p=ids[first + 1]: confiscate(p))
        assert all(isinstance(r, int) for r in results), results
        taken.extend(results)
    assert len(taken) == len(set(taken))
    with instance.database.transaction() as session:  # and when none is left, a clear refusal
        for pupil_id in ids[len(taken) : secure]:
            instance.ledger.confiscate(
                session,
                office,
                clock,
                pupil=session.get(Pupil, pupil_id),
                reason="x",
                kiosk=main_kiosk(session),
            )
    refused = race(lambda: confiscate(ids[secure]), lambda: confiscate(ids[secure + 1]))
    assert all(isinstance(r, LockerError) and "no free secure" in str(r) for r in refused)


def test_two_workers_claiming_commands_never_take_the_same_one(
    instance: Instance, clock: ManualClock
) -> None:
    """Two loops picking up one kiosk's commands at once (a kiosk restarted while its old
    process still runs, say): each command is claimed exactly once, oldest first."""
    from kiosk import commands

    with instance.database.transaction() as session:
        kiosk = main_kiosk(session)
        kiosk_id = kiosk.id
        submitted = [
            commands.submit(
                session,
                Actor.system("test"),
                clock,
                instance.audit,
                kiosk=kiosk,
                kind="open_compartment",
                payload={"compartment": 1 + n % 8},
            ).id
            for n in range(30)
        ]

    def worker() -> list[int]:
        taken: list[int] = []
        while True:
            with instance.database.transaction() as session:
                command = commands.claim_next(session, kiosk_id, clock)
                if command is None:
                    return taken
                taken.append(command.id)

    first, second = race(worker, worker)
    assert isinstance(first, list) and isinstance(second, list), (first, second)
    assert sorted(first + second) == submitted  # every one, none twice
    assert first == sorted(first) and second == sorted(second)  # oldest first
    with instance.database.reader() as session:
        from kiosk.models import Command, CommandStatus

        statuses = session.execute(select(Command.status).distinct()).scalars().all()
    assert statuses == [CommandStatus.RUNNING]
