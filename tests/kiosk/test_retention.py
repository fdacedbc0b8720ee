"""Retention purge: old data goes, safeguarding records never do, and the audit chain still
verifies through the checkpoint the purge leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from kiosk import retention
from kiosk.actors import Actor
from kiosk.audit import PURGE_KIND
from kiosk.errors import AuditChainBroken
from kiosk.models import AuditEvent, Contact, CustodyRecord, CustodyState, Pupil, PupilStatus, Role

from .conftest import add_pupil, main_kiosk, raw_sql, staff_actor

SYSTEM = Actor.system("retention")


def count(session, model) -> int:
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def build_history(instance, clock):
    """A pupil who left with an ordinary collected deposit, and one whose device went to the
    police, both a long time ago; plus a current pupil with a device in a locker."""
    ledger = instance.ledger
    with instance.database.transaction() as session:
        leaver = add_pupil(session, clock, "OLD1")
        held_pupil = add_pupil(session, clock, "OLD2")
        dsl = staff_actor(session, clock, Role.DSL)
        kiosk = main_kiosk(session)
        record = ledger.start_deposit(
            session, Actor.for_pupil(leaver), clock, pupil=leaver, kiosk=kiosk, timeout_s=30
        )
        ledger.confirm_deposit(session, Actor.for_kiosk("main"), clock, record)
        ledger.collect(session, dsl, clock, record)
        evidence = ledger.confiscate(session, dsl, clock, pupil=held_pupil, reason="concern")
        ledger.hold(session, dsl, clock, evidence, reason="indecent image suspected")
        ledger.hand_to_police(session, dsl, clock, evidence, reference="KENT/2024/9")
        leaver.status, leaver.left_at = PupilStatus.LEFT, clock.now()
        held_pupil.status, held_pupil.left_at = PupilStatus.LEFT, clock.now()
        ids = record.id, evidence.id
    clock.set(datetime(2028, 1, 10, 9, 0, tzinfo=UTC))  # ~16 months later (retention 400 d)
    with instance.database.transaction() as session:
        current = add_pupil(session, clock, "NEW1")
        record = ledger.start_deposit(
            session,
            Actor.for_pupil(current),
            clock,
            pupil=current,
            kiosk=main_kiosk(session),
            timeout_s=30,
        )
    return ids


def purge(instance, clock):
    with instance.database.transaction() as session:
        plan = retention.plan(session, clock, instance.policy)
        retention.apply(session, SYSTEM, clock, instance.audit, plan)
    return plan


def test_purge_deletes_old_records_and_keeps_safeguarding_ones(instance, clock):
    old_record, police_record = build_history(instance, clock)
    plan = purge(instance, clock)
    assert plan.custody_ids == [old_record]
    assert plan.kept_held == 1
    with instance.database.reader() as session:
        assert session.get(CustodyRecord, old_record) is None
        kept = session.get(CustodyRecord, police_record)
        assert kept is not None and kept.state is CustodyState.HANDED_TO_POLICE
        numbers = set(session.execute(select(Pupil.admission_number)).scalars())
        assert numbers == {"OLD2", "NEW1"}  # the leaver went; the police case stays
        assert count(session, Contact) == 2
        old_events = (
            session.execute(select(AuditEvent.kind).where(AuditEvent.custody_id == police_record))
            .scalars()
            .all()
        )
        assert old_events == ["custody.confiscated", "custody.held", "custody.handed_to_police"]
        assert not session.execute(
            select(AuditEvent).where(AuditEvent.custody_id == old_record)
        ).first()
        checkpoint = session.execute(
            select(AuditEvent).where(AuditEvent.kind == PURGE_KIND)
        ).scalar_one()
        details = json.loads(checkpoint.details)
        assert details["counts"]["custody_records"] == 1
        assert details["runs"]
        report = instance.audit.verify(session)
    assert report.purged_runs == len(details["runs"])


def test_the_chain_verifies_after_several_purges(instance, clock):
    build_history(instance, clock)
    purge(instance, clock)
    with instance.database.transaction() as session:
        pending = session.execute(
            select(CustodyRecord).where(CustodyRecord.state == CustodyState.PENDING_DEPOSIT)
        ).scalar_one()
        instance.ledger.cancel_deposit(session, SYSTEM, clock, pending, reason="timed out")
        instance.audit.record(session, clock, SYSTEM, "test.after")
    clock.set(datetime(2029, 6, 1, 9, 0, tzinfo=UTC))
    second = purge(instance, clock)
    assert second.custody_ids == [pending.id]
    assert len(second.events) == 3  # started, cancelled, test.after; never the checkpoint
    with instance.database.reader() as session:
        instance.audit.verify(session)
        assert count(session, AuditEvent) > 0


def test_a_gap_not_covered_by_a_checkpoint_is_still_detected(instance, clock):
    build_history(instance, clock)
    purge(instance, clock)
    connection = raw_sql(instance)
    newest = connection.execute(
        "SELECT MAX(seq) FROM audit_events WHERE kind <> ?", (PURGE_KIND,)
    ).fetchone()[0]
    connection.execute("DELETE FROM audit_events WHERE seq = ?", (newest - 1,))
    connection.close()
    with instance.database.reader() as session, pytest.raises(AuditChainBroken, match="removed"):
        instance.audit.verify(session)


def test_deleting_the_checkpoint_is_detected(instance, clock):
    build_history(instance, clock)
    purge(instance, clock)
    with instance.database.transaction() as session:  # something after the checkpoint
        instance.audit.record(session, clock, SYSTEM, "test.after")
    connection = raw_sql(instance)
    connection.execute("DELETE FROM audit_events WHERE kind = ?", (PURGE_KIND,))
    connection.close()
    with instance.database.reader() as session, pytest.raises(AuditChainBroken):
        instance.audit.verify(session)


def test_nothing_to_purge_writes_no_checkpoint(instance, clock):
    with instance.database.transaction() as session:
        plan = retention.plan(session, clock, instance.policy)
        assert plan.empty
        retention.apply(session, SYSTEM, clock, instance.audit, plan)
        assert not session.execute(select(AuditEvent).where(AuditEvent.kind == PURGE_KIND)).first()


def test_plan_changes_nothing(instance, clock):
    build_history(instance, clock)
    with instance.database.reader() as session:
        before = (count(session, AuditEvent), count(session, CustodyRecord), count(session, Pupil))
    with instance.database.transaction() as session:
        plan = retention.plan(session, clock, instance.policy)
    assert not plan.empty
    with instance.database.reader() as session:
        after = (count(session, AuditEvent), count(session, CustodyRecord), count(session, Pupil))
    assert before == after


@pytest.mark.sqlite_only
def test_purged_text_does_not_linger_in_the_database_file(instance, clock):
    """secure_delete: the name of a purged pupil is gone from the file's bytes too."""
    with instance.database.transaction() as session:
        leaver = add_pupil(session, clock, "GONE1", forename="Quillon", surname="Vexworth")
        leaver.status, leaver.left_at = PupilStatus.LEFT, clock.now()
    clock.set(datetime(2028, 6, 1, 9, 0, tzinfo=UTC))
    purge(instance, clock)
    connection = raw_sql(instance)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    data = instance.sqlite_path.read_bytes()
    wal = instance.sqlite_path.with_name(instance.sqlite_path.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    assert b"Vexworth" not in data and b"Quillon" not in data
