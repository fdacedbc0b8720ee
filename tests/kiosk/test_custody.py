"""The custody ledger: every operation, the policy checks, allocation, and the audit event
written in the same transaction."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk import exemptions
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.custody import TRANSITIONS, Operation
from kiosk.errors import (
    AuditChainBroken,
    ConflictError,
    PermissionDenied,
    PolicyError,
    TransitionError,
    ValidationError,
)
from kiosk.instance import Instance
from kiosk.models import (
    AuditEvent,
    Compartment,
    CompartmentKind,
    CustodyKind,
    CustodyRecord,
    CustodyState,
    ExemptionKind,
    Role,
)

from .conftest import add_pupil, deposit, main_kiosk, make_instance, raw_sql, staff_actor

KIOSK = Actor.for_kiosk("main")


def events(session: Session, custody_id: int) -> list[AuditEvent]:
    return list(
        session.execute(
            select(AuditEvent).where(AuditEvent.custody_id == custody_id).order_by(AuditEvent.seq)
        ).scalars()
    )


def afternoon(clock: ManualClock) -> None:
    """15:30 London on the same day (in the collection window, after the release time)."""
    clock.set(datetime(2026, 9, 7, 14, 30, tzinfo=UTC))


# ---------------------------------------------------------------------------- deposits


def test_deposit_writes_pending_before_anything_then_confirms(instance: Instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil, confirm=False)
    assert record.state is CustodyState.PENDING_DEPOSIT
    assert record.pending_until == clock.now() + timedelta(seconds=30)
    assert record.compartment.kind is CompartmentKind.PUPIL
    clock.advance(5)
    instance.ledger.confirm_deposit(session, KIOSK, clock, record)
    assert record.state is CustodyState.IN_LOCKER
    assert record.stored_at == clock.now()
    kinds = [event.kind for event in events(session, record.id)]
    assert kinds == ["custody.deposit_started", "custody.deposit_confirmed"]
    details = json.loads(events(session, record.id)[0].details)
    assert details["compartment"] == record.compartment.number
    assert details["to"] == "PENDING_DEPOSIT"


def test_deposit_outside_window_is_refused_and_writes_nothing(instance, session, clock):
    pupil = add_pupil(session, clock)
    clock.set(datetime(2026, 9, 7, 11, 0, tzinfo=UTC))  # 12:00 in London
    with pytest.raises(PolicyError, match="07:30-09:15"):
        deposit(instance.ledger, session, clock, pupil)
    assert session.execute(select(func.count()).select_from(CustodyRecord)).scalar_one() == 0


def test_second_deposit_same_pupil_is_a_conflict(instance, session, clock):
    pupil = add_pupil(session, clock)
    first = deposit(instance.ledger, session, clock, pupil)
    with pytest.raises(ConflictError, match=f"locker {first.compartment.number}"):
        deposit(instance.ledger, session, clock, pupil)


def test_pupil_who_left_cannot_deposit(instance, session, clock):
    from kiosk.models import PupilStatus

    pupil = add_pupil(session, clock)
    pupil.status, pupil.left_at = PupilStatus.LEFT, clock.now()
    with pytest.raises(PolicyError, match="no longer on roll"):
        deposit(instance.ledger, session, clock, pupil)


def test_a_pupil_cannot_deposit_for_another(instance, session, clock):
    sam, alex = add_pupil(session, clock, "1"), add_pupil(session, clock, "2")
    with pytest.raises(PermissionDenied):
        instance.ledger.start_deposit(
            session,
            Actor.for_pupil(sam),
            clock,
            pupil=alex,
            kiosk=main_kiosk(session),
            timeout_s=30,
        )


def test_staff_cannot_start_a_pupils_deposit(instance, session, clock):
    pupil = add_pupil(session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    with pytest.raises(PermissionDenied, match="office role may not start a deposit"):
        instance.ledger.start_deposit(
            session, office, clock, pupil=pupil, kiosk=main_kiosk(session), timeout_s=30
        )


def test_cancel_frees_the_compartment(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil, confirm=False)
    instance.ledger.cancel_deposit(session, KIOSK, clock, record, reason="door never opened")
    assert record.state is CustodyState.CANCELLED and record.ended_at == clock.now()
    again = deposit(instance.ledger, session, clock, pupil, confirm=False)
    assert again.compartment_id == record.compartment_id  # prefers the last one, now free


def test_expired_pending_lists_only_late_records(instance, session, clock):
    a, b = add_pupil(session, clock, "1"), add_pupil(session, clock, "2")
    first = deposit(instance.ledger, session, clock, a, confirm=False)
    clock.advance(20)
    deposit(instance.ledger, session, clock, b, confirm=False)
    clock.advance(15)  # first is 35 s old (timeout 30), second 15 s
    assert instance.ledger.expired_pending(session, clock) == [first]


def test_allocation_prefers_the_compartment_used_last(instance, session, clock):
    sam, alex = add_pupil(session, clock, "1"), add_pupil(session, clock, "2")
    first = deposit(instance.ledger, session, clock, sam)
    afternoon(clock)
    instance.ledger.collect(session, Actor.for_pupil(sam), clock, first)
    clock.set(datetime(2026, 9, 8, 6, 45, tzinfo=UTC))  # next morning
    alex_record = deposit(instance.ledger, session, clock, alex)
    assert alex_record.compartment_id == first.compartment_id  # lowest free
    sam_record = deposit(instance.ledger, session, clock, sam)
    assert sam_record.compartment_id != first.compartment_id  # his is taken now
    afternoon(clock)
    clock.advance(days=1)
    for pupil, record in ((alex, alex_record), (sam, sam_record)):
        instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)
    clock.set(datetime(2026, 9, 9, 6, 45, tzinfo=UTC))
    assert deposit(instance.ledger, session, clock, sam).compartment_id == sam_record.compartment_id


def test_no_free_compartment(tmp_path, clock):
    instance = make_instance(
        tmp_path / "small", {"kiosk": {"compartments": 3, "secure_compartments": [3]}}
    )
    with instance.database.transaction() as session:
        pupils = [add_pupil(session, clock, str(n)) for n in range(3)]
        deposit(instance.ledger, session, clock, pupils[0])
        deposit(instance.ledger, session, clock, pupils[1])
        with pytest.raises(ConflictError, match="no free compartment"):
            deposit(instance.ledger, session, clock, pupils[2])
    instance.close()


def test_out_of_service_compartments_are_skipped(instance, session, clock):
    pupil = add_pupil(session, clock)
    first = session.execute(select(Compartment).where(Compartment.number == 1)).scalar_one()
    first.out_of_service = True
    assert deposit(instance.ledger, session, clock, pupil).compartment.number == 2


# ---------------------------------------------------------------------------- collection


def test_collect_in_window(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    afternoon(clock)
    instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)
    assert record.state is CustodyState.COLLECTED
    assert record.ended_by == f"pupil:{pupil.admission_number}"


def test_collect_outside_window_refused_unless_exempt(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    clock.advance(hours=3)  # 10:45
    with pytest.raises(PolicyError, match="15:00-17:30"):
        instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)
    admin = staff_actor(session, clock, Role.ADMIN)
    exemptions.grant(
        session,
        admin,
        clock,
        instance.audit,
        pupil=pupil,
        kind=ExemptionKind.MEDICAL,
        starts_on=date(2026, 9, 1),
        ends_on=None,
        review_on=date(2026, 12, 1),
        agreement_reference="MED-1",
    )
    instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)
    assert record.state is CustodyState.COLLECTED


def test_office_may_record_a_collection_outside_the_window(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    office = staff_actor(session, clock, Role.OFFICE)
    instance.ledger.collect(session, office, clock, record)
    assert record.state is CustodyState.COLLECTED


def test_a_pupil_cannot_collect_another_pupils_device(instance, session, clock):
    sam, alex = add_pupil(session, clock, "1"), add_pupil(session, clock, "2")
    record = deposit(instance.ledger, session, clock, sam)
    afternoon(clock)
    with pytest.raises(PermissionDenied, match="their own"):
        instance.ledger.collect(session, Actor.for_pupil(alex), clock, record)


def test_confiscated_device_cannot_be_collected_by_the_pupil(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    teacher = staff_actor(session, clock, Role.STAFF)
    instance.ledger.confiscate(
        session, teacher, clock, pupil=pupil, reason="used in class", record=record
    )
    afternoon(clock)
    with pytest.raises(TransitionError, match="confiscated"):
        instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)


# ---------------------------------------------------------------------------- confiscation


def test_confiscation_goes_to_a_secure_compartment_and_waits_for_the_door(instance, session, clock):
    pupil = add_pupil(session, clock)
    teacher = staff_actor(session, clock, Role.STAFF)
    record = instance.ledger.confiscate(
        session,
        teacher,
        clock,
        pupil=pupil,
        reason="filming in the corridor",
        kiosk=main_kiosk(session),
        device="black iPhone",
    )
    assert record.kind is CustodyKind.CONFISCATION and record.state is CustodyState.CONFISCATED
    assert record.compartment.kind is CompartmentKind.SECURE
    assert record.compartment.number in instance.config.kiosk.secure_compartments
    assert record.stored_at is None
    instance.ledger.mark_stored(session, KIOSK, clock, record)
    assert record.stored_at == clock.now()
    assert [e.kind for e in events(session, record.id)] == ["custody.confiscated", "custody.stored"]


def test_confiscation_to_the_office_safe(instance, session, clock):
    pupil = add_pupil(session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    record = instance.ledger.confiscate(session, office, clock, pupil=pupil, reason="rude")
    assert record.compartment is None and record.stored_at == clock.now()
    details = json.loads(events(session, record.id)[0].details)
    assert details["location"] == "office safe"


def test_confiscation_needs_a_reason_and_staff(instance, session, clock):
    pupil = add_pupil(session, clock)
    teacher = staff_actor(session, clock, Role.STAFF)
    with pytest.raises(ValidationError, match="reason"):
        instance.ledger.confiscate(session, teacher, clock, pupil=pupil, reason="   ")
    with pytest.raises(PermissionDenied):
        instance.ledger.confiscate(session, Actor.for_pupil(pupil), clock, pupil=pupil, reason="x")


def test_secure_compartments_run_out(tmp_path, clock):
    instance = make_instance(
        tmp_path / "i", {"kiosk": {"compartments": 4, "secure_compartments": [4]}}
    )
    with instance.database.transaction() as session:
        pupil = add_pupil(session, clock)
        teacher = staff_actor(session, clock, Role.STAFF)
        kiosk = main_kiosk(session)
        instance.ledger.confiscate(session, teacher, clock, pupil=pupil, reason="a", kiosk=kiosk)
        with pytest.raises(ConflictError, match="no free secure compartment"):
            instance.ledger.confiscate(
                session, teacher, clock, pupil=pupil, reason="b", kiosk=kiosk
            )
    instance.close()


# ---------------------------------------------------------------------------- release


def confiscated(instance, session, clock, pupil=None):
    pupil = pupil or add_pupil(session, clock)
    teacher = staff_actor(session, clock, Role.STAFF, "teacher")
    record = instance.ledger.confiscate(session, teacher, clock, pupil=pupil, reason="in class")
    return pupil, record


def test_release_to_an_authorised_contact(instance, session, clock):
    pupil, record = confiscated(instance, session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    afternoon(clock)
    instance.ledger.release_to_parent(
        session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
    )
    assert record.state is CustodyState.RELEASED_TO_PARENT
    assert (record.collector_name, record.collector_relationship) == ("Jo Taylor", "Mother")
    assert record.collector_contact_id == pupil.contacts[0].id
    assert record.ended_by == office.label
    last = events(session, record.id)[-1]
    assert json.loads(last.details)["authorised_contact"] is True
    assert last.actor == office.label


def test_release_to_another_adult_records_name_and_relationship(instance, session, clock):
    _, record = confiscated(instance, session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    afternoon(clock)
    with pytest.raises(ValidationError, match="relationship"):
        instance.ledger.release_to_parent(
            session,
            office,
            clock,
            record,
            id_checked=True,
            collector_name="Pat Lee",
            relationship="",
        )
    instance.ledger.release_to_parent(
        session,
        office,
        clock,
        record,
        id_checked=True,
        collector_name="Pat Lee",
        relationship="Grandfather",
    )
    assert json.loads(events(session, record.id)[-1].details)["authorised_contact"] is False


def test_release_needs_id_checked(instance, session, clock):
    pupil, record = confiscated(instance, session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    afternoon(clock)
    with pytest.raises(ValidationError, match="ID"):
        instance.ledger.release_to_parent(
            session, office, clock, record, id_checked=False, contact=pupil.contacts[0]
        )
    assert record.state is CustodyState.CONFISCATED


def test_release_not_before_the_policy_time(instance, session, clock):
    pupil, record = confiscated(instance, session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    with pytest.raises(PolicyError, match="15:15"):
        instance.ledger.release_to_parent(
            session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
        )
    clock.set(datetime(2026, 9, 7, 14, 15, tzinfo=UTC))  # exactly 15:15 London
    instance.ledger.release_to_parent(
        session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
    )


def test_confiscated_after_the_release_time_may_go_at_once(instance, session, clock):
    clock.set(datetime(2026, 9, 7, 15, 0, tzinfo=UTC))  # 16:00 London
    _, record = confiscated(instance, session, clock)
    assert record.release_not_before == clock.now()


def test_release_roles_follow_the_policy(tmp_path, clock):
    instance = make_instance(tmp_path / "i", {"policy": {"release_roles": ["dsl", "admin"]}})
    with instance.database.transaction() as session:
        pupil, record = confiscated(instance, session, clock)
        afternoon(clock)
        office = staff_actor(session, clock, Role.OFFICE)
        with pytest.raises(PermissionDenied, match="dsl, admin"):
            instance.ledger.release_to_parent(
                session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
            )
        dsl = staff_actor(session, clock, Role.DSL)
        instance.ledger.release_to_parent(
            session, dsl, clock, record, id_checked=True, contact=pupil.contacts[0]
        )
    instance.close()


def test_contact_of_another_pupil_is_refused(instance, session, clock):
    _, record = confiscated(instance, session, clock)
    other = add_pupil(session, clock, "2", contacts=(("Someone Else", "Father"),))
    office = staff_actor(session, clock, Role.OFFICE)
    afternoon(clock)
    with pytest.raises(ValidationError, match="not one of this pupil"):
        instance.ledger.release_to_parent(
            session, office, clock, record, id_checked=True, contact=other.contacts[0]
        )


# ---------------------------------------------------------------------------- safeguarding


def test_hold_blocks_release_and_collection(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    teacher = staff_actor(session, clock, Role.STAFF)
    instance.ledger.hold(session, teacher, clock, record, reason="possible indecent image")
    assert record.state is CustodyState.SAFEGUARDING_HOLD and record.ever_held
    held_event = events(session, record.id)[-1]
    assert held_event.restricted and held_event.kind == "custody.held"
    afternoon(clock)
    office = staff_actor(session, clock, Role.OFFICE)
    with pytest.raises(TransitionError, match="safeguarding hold"):
        instance.ledger.release_to_parent(
            session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
        )
    with pytest.raises(TransitionError, match="safeguarding hold"):
        instance.ledger.collect(session, Actor.for_pupil(pupil), clock, record)
    with pytest.raises(PermissionDenied):
        instance.ledger.lift_hold(session, office, clock, record, note="fine")


def test_lift_hold_then_release(instance, session, clock):
    pupil, record = confiscated(instance, session, clock)
    dsl = staff_actor(session, clock, Role.DSL)
    instance.ledger.hold(session, dsl, clock, record, reason="concern")
    with pytest.raises(ValidationError, match="note"):
        instance.ledger.lift_hold(session, dsl, clock, record, note="")
    instance.ledger.lift_hold(session, dsl, clock, record, note="reviewed with police: no action")
    assert record.state is CustodyState.CONFISCATED and record.ever_held
    afternoon(clock)
    instance.ledger.release_to_parent(
        session, dsl, clock, record, id_checked=True, contact=pupil.contacts[0]
    )


def test_hold_straight_from_a_locker_then_lifted_gets_a_release_time(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    admin = staff_actor(session, clock, Role.ADMIN)
    instance.ledger.hold(session, admin, clock, record, reason="concern")
    instance.ledger.lift_hold(session, admin, clock, record, note="no concern")
    assert record.confiscated_at == clock.now()
    assert record.release_not_before == datetime(2026, 9, 7, 14, 15, tzinfo=UTC)


def test_hand_to_police_needs_a_reference_and_is_final(instance, session, clock):
    _, record = confiscated(instance, session, clock)
    dsl = staff_actor(session, clock, Role.DSL)
    instance.ledger.hold(session, dsl, clock, record, reason="evidence")
    with pytest.raises(ValidationError, match="police reference"):
        instance.ledger.hand_to_police(session, dsl, clock, record, reference=" ")
    instance.ledger.hand_to_police(session, dsl, clock, record, reference="KENT/2026/1234")
    assert record.state is CustodyState.HANDED_TO_POLICE
    with pytest.raises(TransitionError, match="handed to the police"):
        instance.ledger.lift_hold(session, dsl, clock, record, note="x")


def test_return_to_pupil_is_admin_only_with_a_reason(instance, session, clock):
    _, record = confiscated(instance, session, clock)
    office = staff_actor(session, clock, Role.OFFICE)
    with pytest.raises(PermissionDenied):
        instance.ledger.return_to_pupil(session, office, clock, record, reason="exemption")
    admin = staff_actor(session, clock, Role.ADMIN)
    with pytest.raises(ValidationError):
        instance.ledger.return_to_pupil(session, admin, clock, record, reason="")
    instance.ledger.return_to_pupil(
        session, admin, clock, record, reason="medical exemption granted at noon"
    )
    assert record.state is CustodyState.RETURNED_TO_PUPIL
    assert record.end_reason == "medical exemption granted at noon"


# ---------------------------------------------------------------------------- flags


def test_uncollected_devices_are_flagged_after_the_cut_off(instance, session, clock):
    pupil = add_pupil(session, clock)
    record = deposit(instance.ledger, session, clock, pupil)
    system = Actor.system("timer")
    clock.set(datetime(2026, 9, 7, 16, 59, tzinfo=UTC))  # 17:59 London
    assert instance.ledger.flag_uncollected(session, system, clock) == 0
    clock.advance(minutes=1)
    assert instance.ledger.flag_uncollected(session, system, clock) == 1
    assert record.flag == "uncollected" and "18:00" in record.flag_detail
    assert instance.ledger.flag_uncollected(session, system, clock) == 0  # once only
    office = staff_actor(session, clock, Role.OFFICE)
    instance.ledger.clear_flag(session, office, clock, record, note="pupil off sick; kept")
    assert record.flag is None


# ---------------------------------------------------------------------------- atomicity


def test_a_transition_and_its_event_commit_or_roll_back_together(instance, clock):
    with instance.database.transaction() as session:
        pupil = add_pupil(session, clock)
        record_id = deposit(instance.ledger, session, clock, pupil).id
    with pytest.raises(RuntimeError), instance.database.transaction() as session:
        record = instance.ledger.get(session, record_id)
        afternoon(clock)
        instance.ledger.collect(session, Actor.for_pupil(record.pupil), clock, record)
        raise RuntimeError("power cut before commit")
    with instance.database.reader() as session:
        record = session.get(CustodyRecord, record_id)
        assert record.state is CustodyState.IN_LOCKER
        assert [e.kind for e in events(session, record_id)][-1] == "custody.deposit_confirmed"
        instance.audit.verify(session)


def test_every_operation_names_an_audit_event_kind():
    assert {t.event for t in TRANSITIONS.values()} == {
        f"custody.{name}"
        for name in (
            "deposit_started",
            "deposit_confirmed",
            "deposit_cancelled",
            "collected",
            "confiscated",
            "held",
            "hold_lifted",
            "released_to_parent",
            "handed_to_police",
            "returned_to_pupil",
        )
    }
    assert set(TRANSITIONS) == set(Operation)


# ------------------------------------------------------------ records against their trail


def history(instance: Instance, clock: ManualClock) -> dict[str, int]:
    """A day's records through the ledger: one in a locker, one held, one released to a
    parent, one flagged and cleared. Returns their ids by name."""
    ids = {}
    with instance.database.transaction() as session:
        ledger = instance.ledger
        in_locker = deposit(ledger, session, clock, add_pupil(session, clock, "1001"))
        held = deposit(ledger, session, clock, add_pupil(session, clock, "1002"))
        released = deposit(ledger, session, clock, add_pupil(session, clock, "1003"))
        teacher = staff_actor(session, clock, Role.STAFF)
        dsl = staff_actor(session, clock, Role.DSL)
        ledger.hold(session, teacher, clock, held, reason="urgent referral")
        ledger.confiscate(
            session, teacher, clock, pupil=released.pupil, record=released, reason="phone out"
        )
        ledger.flag(session, KIOSK, clock, in_locker, flag="check", detail="door left open")
        ledger.clear_flag(session, dsl, clock, in_locker, note="shut it")
        afternoon(clock)
        ledger.release_to_parent(
            session,
            dsl,
            clock,
            released,
            id_checked=True,
            collector_name="Jo T",
            relationship="mother",
        )
        ids.update(in_locker=in_locker.id, held=held.id, released=released.id)
    return ids


def verify(instance: Instance):
    with instance.database.reader() as session:
        return instance.audit.verify(session)


def test_every_record_agrees_with_its_trail(instance, clock):
    history(instance, clock)
    assert verify(instance).records == 3


def test_a_cleared_flag_records_the_flag_it_cleared(instance, clock):
    ids = history(instance, clock)
    with instance.database.reader() as session:
        cleared = [e for e in events(session, ids["in_locker"]) if e.kind == "custody.flag_cleared"]
    assert json.loads(cleared[0].details)["flag"] == "check"


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        # Allowed by every database guard, but written behind the ledger's back.
        ("held", "UPDATE custody_records SET state = 'CONFISCATED', hold_lifted_note = 'x'"),
        ("in_locker", "UPDATE custody_records SET device = 'someone else''s phone'"),
        ("in_locker", "UPDATE custody_records SET flag = 'uncollected'"),
        ("held", "UPDATE custody_records SET hold_reason = 'nothing to see'"),
        ("in_locker", "UPDATE custody_records SET stored_at = NULL"),
    ],
)
def test_a_record_changed_outside_the_ledger_is_named(instance, clock, name, sql):
    ids = history(instance, clock)
    with raw_sql(instance) as connection:
        connection.execute(f"{sql} WHERE id = ?", (ids[name],))
    with pytest.raises(AuditChainBroken, match=rf"custody record {ids[name]}: its \w+ is not"):
        verify(instance)


def test_a_finished_record_edited_with_the_guards_dropped_is_named(instance, clock):
    ids = history(instance, clock)
    with raw_sql(instance) as connection:
        if instance.database.is_sqlite:
            connection.execute("DROP TRIGGER trg_custody_final_guard")
        else:
            connection.execute("DROP TRIGGER trg_custody_final_guard ON custody_records")
        connection.execute(
            "UPDATE custody_records SET collector_name = 'A Stranger' WHERE id = ?",
            (ids["released"],),
        )
    with pytest.raises(AuditChainBroken, match=rf"record {ids['released']}: its collector_name"):
        verify(instance)


def test_a_record_written_outside_the_ledger_is_named(instance, clock):
    history(instance, clock)
    with raw_sql(instance) as connection:
        connection.execute(
            "INSERT INTO custody_records (pupil_id, kind, state, started_at, started_by, "
            "updated_at, ever_held, id_checked, version, confiscation_reason) "
            "VALUES (1, 'confiscation', 'CONFISCATED', ?, 'sql', ?, ?, ?, 1, 'x')",
            ("2026-09-07 12:00:00.000000", "2026-09-07 12:00:00.000000", False, False),
        )
    with pytest.raises(AuditChainBroken, match="has no audit events"):
        verify(instance)
