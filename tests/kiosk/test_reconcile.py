"""Reconciliation at start, as a service on its own (no controller, no cabinet): given the
doors found open, every pending record is confirmed, flagged or waited for."""

from __future__ import annotations

from sqlalchemy import select

from kiosk import commands
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import Command, CommandStatus, Compartment, CustodyRecord, CustodyState, Role
from kiosk.reconcile import FLAG_UNVERIFIED, Reconciler

from .conftest import add_pupil, deposit, main_kiosk, staff_actor


def test_reconcile_confirms_flags_and_waits(instance: Instance, clock: ManualClock) -> None:
    ledger = instance.ledger
    with instance.database.transaction() as session:
        kiosk = main_kiosk(session)
        shut, opened = add_pupil(session, clock, "R1"), add_pupil(session, clock, "R2")
        held, open_held = add_pupil(session, clock, "R3"), add_pupil(session, clock, "R4")
        behind_shut = deposit(ledger, session, clock, shut, confirm=False)
        behind_open = deposit(ledger, session, clock, opened, confirm=False)
        teacher = staff_actor(session, clock, Role.STAFF)
        unstored = ledger.confiscate(
            session, teacher, clock, pupil=held, reason="in class", kiosk=kiosk
        )
        unstored_open = ledger.confiscate(
            session, teacher, clock, pupil=open_held, reason="in class", kiosk=kiosk
        )
        running = commands.submit(
            session,
            Actor.system("test"),
            clock,
            instance.audit,
            kiosk=kiosk,
            kind="open_compartment",
            payload={"compartment": 5},
        )
        commands.claim_next(session, kiosk.id, clock)
        ids = dict(
            session.execute(
                select(Compartment.number, Compartment.id).where(Compartment.kiosk_id == kiosk.id)
            ).all()
        )
        numbers = {
            record.id: record.compartment.number
            for record in (behind_shut, behind_open, unstored, unstored_open)
        }
        open_doors = {numbers[behind_open.id], numbers[unstored_open.id], 6}
        record_ids = (behind_shut.id, behind_open.id, unstored.id, unstored_open.id)
        kiosk_id = kiosk.id

    reconciler = Reconciler(ledger, instance.policy, Actor.for_kiosk("main"), clock)
    with instance.database.transaction() as session:
        result = reconciler.reconcile(session, kiosk_id, ids, open_doors)

    assert result.summary == {
        "abandoned_commands": 1,
        "confirmed_open": 1,
        "flagged": 2,
        "doors_open": 3,
    }
    assert sorted((w.number, w.purpose, w.record.id) for w in result.waiting) == sorted(
        [
            (numbers[behind_open.id], "deposit", behind_open.id),
            (numbers[unstored_open.id], "confiscation", unstored_open.id),
        ]
    )
    assert result.alarms == [6]
    with instance.database.reader() as session:
        records = {r.id: r for r in session.execute(select(CustodyRecord)).scalars()}
        a, b, c, d = (records[i] for i in record_ids)
        assert a.state is CustodyState.IN_LOCKER and a.flag == FLAG_UNVERIFIED
        assert b.state is CustodyState.PENDING_DEPOSIT and b.flag is None
        assert c.state is CustodyState.CONFISCATED and c.flag == "check"
        assert d.flag is None
        assert session.get(Command, running.id).status is CommandStatus.FAILED
        doors = dict(session.execute(select(Compartment.number, Compartment.door_open)).all())
        assert {n for n, is_open in doors.items() if is_open} == open_doors
        instance.audit.verify(session)
