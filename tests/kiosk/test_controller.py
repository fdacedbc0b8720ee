"""The kiosk controller on simulated hardware: the unmodified mfrc522 library reads cards
from the chip emulator, gpiozero's mock pins carry the locks and doors, and time is simulated
(no sleeping). Every flow of the issue: deposit, collect, refusals, staff mode, enrolment,
door alarms, jammed locks, commands, open-all, faults, reconciliation after a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kiosk import cards
from kiosk.actors import Actor
from kiosk.controller import (
    FLAG_UNVERIFIED,
    OBSERVATION_DELAY_S,
    Controller,
)
from kiosk.models import (
    AuditEvent,
    CommandStatus,
    CustodyState,
    Kiosk,
    Pupil,
    Role,
)

from .conftest import add_user, make_instance
from .rig import AFTERNOON, ALEX, KIM, SAM, STRANGER, TEACHER, Rig, build


@pytest.fixture
def make_rig(tmp_path: Path, database_url: str | None) -> Iterator:
    """``make_rig(**options)``: a rig closed at the end of the test whatever happens, on
    this test's database (SQLite and PostgreSQL)."""
    built: list[Rig] = []

    def make(**options) -> Rig:
        rig = build(tmp_path / f"rig{len(built)}", database_url, **options)
        built.append(rig)
        return rig

    yield make
    for rig in built:
        rig.controller.shutdown()
        rig.cabinet.close()
        rig.instance.close()


@pytest.fixture
def rig(make_rig) -> Rig:
    return make_rig()


# ------------------------------------------------------------------------------ deposit


def test_deposit_flow_writes_intent_first_then_confirms_when_the_door_closes(rig):
    rig.tap(SAM)
    record = rig.record()
    assert record.state is CustodyState.PENDING_DEPOSIT
    number = record.compartment.number
    assert rig.sim.lock_energised(number)
    assert rig.state()["screen"]["title"] == "Your locker is open"
    assert rig.state()["screen"]["compartment"] == number
    assert rig.state()["screen"]["name"] == "Sam T."
    assert rig.open(number)
    assert not rig.sim.lock_energised(number)  # released once the door opened
    rig.advance(OBSERVATION_DELAY_S)  # the opening is written within this
    assert rig.compartment(number).door_open is True
    rig.close(number)
    assert rig.record().state is CustodyState.IN_LOCKER
    assert rig.compartment(number).door_open is False
    assert rig.state()["screen"]["title"] == "Locked away"
    kinds = [e["outcome"] for e in rig.events("tap")]
    assert kinds == ["deposit"]
    assert [e["expected"] for e in rig.events("door.opened")] == [True]
    rig.verify()


def test_a_door_never_opened_cancels_the_deposit_and_counts_a_failure(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.advance(3.1)  # the pulse ends (unlock_s = 3) with the door still shut
    assert not rig.sim.lock_energised(number)
    record = rig.record()
    assert record.state is CustodyState.CANCELLED
    assert "not opened" in record.end_reason
    assert rig.compartment(number).failed_unlocks == 1
    assert rig.state()["screen"]["title"] == "The door did not open"


def test_a_jammed_lock_takes_the_compartment_out_of_service(rig):
    rig.sim.jam_lock(1)
    for _ in range(3):
        rig.tap(SAM)
        assert rig.record().compartment.number == 1
        assert not rig.open(1)  # the latch does not release
        rig.advance(3.1)
    compartment = rig.compartment(1)
    assert compartment.out_of_service and "jammed" in compartment.out_of_service_reason
    assert rig.events("compartment.out_of_service")[0]["compartment"] == 1
    rig.tap(SAM)
    assert rig.record().compartment.number == 2


def test_the_solenoid_is_never_energised_longer_than_max_unlock(make_rig):
    rig = make_rig(unlock_s=5.0, max_unlock_s=2.0)
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.advance(1.9)
    assert rig.sim.lock_energised(number)
    rig.advance(0.2)
    assert not rig.sim.lock_energised(number)


def test_second_tap_while_the_door_is_open_does_not_unlock_again(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.open(number)
    rig.tap(SAM)
    assert not rig.sim.lock_energised(number)
    assert rig.record().state is CustodyState.PENDING_DEPOSIT
    rig.close(number)
    assert rig.record().state is CustodyState.IN_LOCKER


def test_outside_the_deposit_window_is_refused(rig):
    rig.at(datetime(2026, 9, 7, 10, 0, tzinfo=UTC))  # 11:00
    rig.tap(SAM)
    assert rig.record() is None
    screen = rig.state()["screen"]
    assert screen["tone"] == "refused" and "07:30-09:15" in screen["message"]
    (tap,) = rig.events("tap")
    assert tap["outcome"] == "outside_window"  # a reason code, not the screen's greeting
    assert "Sam" not in json.dumps(tap)


def test_unknown_card_is_refused_and_audited_without_the_uid(rig):
    rig.tap(STRANGER)
    assert rig.state()["screen"]["title"] == "Card not recognised"
    event = rig.events("tap")[0]
    assert event["card"] == "unknown"
    assert "DEADBEEF" not in json.dumps(event).upper()


def test_no_free_compartment(make_rig):
    rig = make_rig(
        overrides={"kiosk": {"compartments": 8, "secure_compartments": [3, 4, 5, 6, 7, 8]}},
    )
    rig.tap(SAM)
    rig.open(rig.record("S1").compartment.number)
    rig.tap(ALEX)
    rig.tap(KIM)
    assert rig.record("S3") is None
    assert "no free compartment" in rig.state()["screen"]["message"].lower()


# ------------------------------------------------------------------------------ collect


def deposited(rig: Rig, uid: bytes = SAM, admission: str = "S1") -> int:
    rig.tap(uid)
    number = rig.record(admission).compartment.number
    rig.open(number)
    rig.close(number)
    assert rig.record(admission).state is CustodyState.IN_LOCKER
    return number


def test_collect_flow_marks_collected_once_the_door_is_seen_open(rig):
    number = deposited(rig)
    rig.at(AFTERNOON)
    rig.tap(SAM)
    assert rig.sim.lock_energised(number)
    assert rig.record().state is CustodyState.IN_LOCKER  # not until the door opens
    rig.open(number)
    assert rig.record().state is CustodyState.COLLECTED
    rig.close(number)
    assert rig.state()["screen"]["title"] == "Thank you"


def test_collect_outside_the_window_is_refused(rig):
    deposited(rig)
    rig.advance(3600)
    rig.tap(SAM)
    assert rig.record().state is CustodyState.IN_LOCKER
    assert "15:00-17:30" in rig.state()["screen"]["message"]


def test_a_confiscated_device_is_for_a_parent_to_collect(rig):
    with rig.instance.database.transaction() as session:
        pupil = session.execute(select(Pupil).where(Pupil.admission_number == "S1")).scalar_one()
        teacher = Actor.for_user(add_user(session, rig.clock, "head", Role.ADMIN))
        rig.instance.ledger.confiscate(session, teacher, rig.clock, pupil=pupil, reason="class")
    rig.at(AFTERNOON)
    rig.tap(SAM)
    assert "parent or carer" in rig.state()["screen"]["message"]


# ------------------------------------------------------------------------------ staff


def test_staff_mode_confiscation_goes_to_a_secure_compartment(rig):
    rig.tap(TEACHER)
    assert rig.state()["mode"] == "staff"
    rig.tap(ALEX)
    record = rig.record("S2")
    assert record.state is CustodyState.CONFISCATED
    assert record.compartment.number in (7, 8) and record.stored_at is None
    assert record.confiscated_by == "user:teacher"
    number = record.compartment.number
    assert rig.sim.lock_energised(number)
    rig.open(number)
    rig.close(number)
    assert rig.record("S2").stored_at is not None
    assert rig.state()["mode"] == "pupil"


def test_staff_mode_ends_by_itself(rig):
    rig.tap(TEACHER)
    rig.advance(31)
    assert rig.state()["mode"] == "pupil"
    rig.tap(ALEX)
    assert rig.record("S2").state is CustodyState.PENDING_DEPOSIT  # an ordinary deposit


def test_a_secure_compartment_that_does_not_open_sends_the_device_to_the_office(rig):
    rig.tap(TEACHER)
    rig.tap(ALEX)
    rig.advance(3.1)
    record = rig.record("S2")
    assert record.state is CustodyState.CONFISCATED
    assert record.compartment_id is None and record.flag == "check"


# ------------------------------------------------------------------------------ commands


def test_enrol_the_next_unknown_card(rig):
    with rig.instance.database.reader() as session:
        pupil_id = session.execute(select(Pupil.id).where(Pupil.admission_number == "S3"))
        pupil_id = pupil_id.scalar_one()
    command_id = rig.submit("enrol_next_card", pupil_id=pupil_id)
    rig.pump()
    assert rig.state()["mode"] == "enrol"
    new_card = bytes.fromhex("04A1B2C3D4E5F6")
    rig.tap(new_card)
    command = rig.command(command_id)
    assert command.status is CommandStatus.DONE
    with rig.instance.database.reader() as session:
        card = cards.find_active(session, rig.instance.card_key, new_card)
        assert card.pupil_id == pupil_id
    rig.tap(new_card)
    assert rig.record("S3").state is CustodyState.PENDING_DEPOSIT


def test_enrol_times_out_with_a_result(rig):
    command_id = rig.submit("enrol_next_card", pupil_id=1)
    rig.pump()
    rig.advance(61)
    command = rig.command(command_id)
    assert command.status is CommandStatus.FAILED and "in time" in command.error
    assert rig.state()["mode"] == "pupil"


def test_open_compartment_command_reports_whether_the_door_opened(rig):
    opened = rig.submit("open_compartment", compartment=3)
    rig.pump()
    assert rig.command(opened).status is CommandStatus.RUNNING
    rig.open(3)
    assert rig.command(opened).status is CommandStatus.DONE
    assert rig.command(opened).result == {"compartment": 3, "opened": True}
    rig.close(3)
    missed = rig.submit("open_compartment", compartment=4)
    rig.pump()
    rig.advance(3.1)
    assert rig.command(missed).status is CommandStatus.FAILED


def test_a_compartment_opening_for_the_office_is_not_given_to_a_deposit(rig):
    """Compartment 1 opens by command (a device released to a parent is still inside), and
    Alex taps meanwhile: Alex gets another compartment; both finish."""
    opened = rig.submit("open_compartment", compartment=1, purpose="release")
    rig.pump()
    assert rig.sim.energised() == (1,)
    rig.tap(ALEX)
    assert rig.record("S2").compartment.number == 2
    assert set(rig.sim.energised()) == {1, 2}
    rig.open(1)  # the parent's device is taken out
    rig.open(2)
    rig.close(2)
    rig.close(1)
    assert rig.command(opened).status is CommandStatus.DONE
    assert rig.record("S2").state is CustodyState.IN_LOCKER
    rig.tap(KIM)  # and once closed, compartment 1 is free again
    assert rig.record("S3").compartment.number == 1


def test_open_all_is_staggered_and_audited(make_rig):
    rig = make_rig(max_concurrent_unlocks=2)
    command_id = rig.submit("open_all")
    rig.pump()
    most, opened = 0, []
    for _ in range(100):
        energised = rig.sim.energised()
        most = max(most, len(energised))
        for number in energised:  # someone pulls each door as it unlocks
            rig.open(number)
            rig.close(number)
            opened.append(number)
        if rig.command(command_id).status is CommandStatus.DONE:
            break
        rig.advance(0.05)
    assert most == 2
    assert opened == list(range(1, 9))
    command = rig.command(command_id)
    assert command.status is CommandStatus.DONE
    assert command.result == {"opened": list(range(1, 9)), "failed": [], "kept_locked": []}
    assert rig.events("emergency.open_all")[0]["compartments"] == 8


def test_lock_busy_waits_for_a_free_slot(make_rig):
    rig = make_rig(max_concurrent_unlocks=1)
    rig.tap(SAM)
    rig.tap(ALEX)
    first = rig.record("S1").compartment.number
    second = rig.record("S2").compartment.number
    assert rig.sim.energised() == (first,)
    rig.open(first)
    rig.advance(0.3)
    assert rig.sim.energised() == (second,)


def test_sim_commands_drive_the_simulator(rig):
    tap = rig.submit("sim.tap", uid="A1:00:00:01")
    rig.pump()
    rig.pump()
    record = rig.record()
    assert record.state is CustodyState.PENDING_DEPOSIT
    done = rig.command(tap)
    assert done.status.value == "done" and done.result == {"tapped": True}
    assert "A1" not in json.dumps(done.payload)  # a UID is never kept in clear
    rig.submit("sim.door", compartment=record.compartment.number, open=True)
    rig.pump()
    rig.submit("sim.door", compartment=record.compartment.number, open=False)
    rig.pump()
    assert rig.record().state is CustodyState.IN_LOCKER


# ------------------------------------------------------------------------------ doors


def test_a_door_left_open_raises_an_alarm_until_closed(rig):
    number = deposited(rig)
    rig.at(AFTERNOON)
    rig.tap(SAM)
    rig.open(number)
    rig.advance(61)
    assert rig.compartment(number).alarm == "door_open"
    assert rig.state()["alarms"][0]["kind"] == "door_open"
    assert rig.events("door.left_open") == [{"compartment": number}]
    rig.close(number)
    assert rig.compartment(number).alarm is None
    assert rig.state()["alarms"] == []
    assert rig.events("door.alarm_cleared")[0]["alarm"] == "door_open"


def test_a_deposit_door_left_open_keeps_the_device_and_flags_it(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.open(number)
    rig.advance(61)
    record = rig.record()
    assert record.state is CustodyState.IN_LOCKER and record.flag == "door_left_open"


def test_a_forced_door_raises_the_forced_alarm(rig):
    rig.sim.force_door(5)
    rig.pump()
    assert rig.compartment(5).alarm == "forced"
    assert rig.events("door.forced") == [{"compartment": 5}]
    assert rig.state()["screen"]["title"] == "Door forced open"


def test_a_door_switch_stuck_open_reads_as_forced_and_stays_alarmed(rig):
    rig.sim.stick_door_open(2)
    rig.pump()
    assert rig.compartment(2).alarm == "forced"
    rig.advance(61)
    assert rig.compartment(2).alarm == "forced"
    assert rig.compartment(2).door_open is True


# ------------------------------------------------------------------------------ faults


def test_reader_fault_is_reported_once_and_cleared(rig):
    rig.sim.reader_fault("raise")
    for _ in range(3):
        rig.cabinet.reader.step()
        rig.pump()
    state = rig.state()
    assert state["status"] == "fault" and state["screen"]["title"] == "Out of order"
    assert len(rig.events("kiosk.fault")) == 1
    rig.sim.reader_fault(None)
    for _ in range(60):
        rig.clock.advance(0.1)
        rig.cabinet.reader.step()
        rig.pump()
    assert rig.state()["status"] == "ok"
    assert rig.events("kiosk.fault_cleared") == [{"fault": "reader"}]
    rig.tap(SAM)
    assert rig.record().state is CustodyState.PENDING_DEPOSIT


# ------------------------------------------------------------------------------ housekeeping


def test_heartbeat_and_state_are_published(rig):
    with rig.instance.database.reader() as session:
        first = session.execute(select(Kiosk.heartbeat_at)).scalar_one()
    rig.advance(10.5)
    with rig.instance.database.reader() as session:
        second = session.execute(select(Kiosk.heartbeat_at)).scalar_one()
    assert second > first
    state = rig.state()
    assert state["hardware"] == "sim" and state["status"] == "ok"
    assert state["screen"]["title"] == "Tap your card"


def test_uncollected_devices_are_flagged_at_the_end_of_the_day(rig):
    deposited(rig)
    rig.at(datetime(2026, 9, 7, 17, 0, 30, tzinfo=UTC))  # 18:00:30 London
    rig.advance(10.5)
    assert rig.record().flag == "uncollected"


def test_shutdown_leaves_every_lock_safe(rig):
    rig.tap(SAM)
    assert rig.sim.energised()
    rig.controller.shutdown()
    assert rig.sim.energised() == ()
    assert rig.state()["status"] == "stopped"


def test_every_tap_is_one_audit_event(rig):
    for uid in (SAM, STRANGER, TEACHER, TEACHER, ALEX):
        rig.tap(uid)
    assert len(rig.events("tap")) == 5


# ------------------------------------------------------------------------------ restart


def restart(rig: Rig) -> Rig:
    """A new controller on the same database and cabinet, as after a crash (no shutdown;
    the crashed process's threads are gone with it). The new one is not shut down either:
    it polls for commands (pump) rather than listening, so nothing of it outlives the test."""
    rig.cabinet.reader.stop()
    if rig.controller._listener is not None:
        rig.controller._listener.stop()
    controller = Controller(rig.instance, rig.cabinet, rig.clock)
    controller.start(reader_thread=False, listen=False)
    return Rig(rig.instance, rig.clock, rig.cabinet, controller)


def test_restart_with_a_pending_deposit_behind_a_closed_door_flags_it(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    after = restart(rig)
    record = after.record()
    assert record.state is CustodyState.IN_LOCKER and record.flag == FLAG_UNVERIFIED
    after.tap(SAM)  # the pupil, still holding the phone, taps again in the deposit window
    assert after.sim.lock_energised(number)
    after.open(number)
    after.close(number)
    assert after.record().flag is None


def test_restart_with_a_door_open_waits_for_it_to_close(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.sim.open_door(number)  # the door opened, but the old controller never saw it
    after = restart(rig)
    assert after.record().state is CustodyState.PENDING_DEPOSIT
    after.close(number)
    assert after.record().state is CustodyState.IN_LOCKER


def test_restart_fails_running_commands_and_alarms_on_open_doors(rig):
    command_id = rig.submit("open_compartment", compartment=4)
    rig.pump()
    rig.sim.open_door(4)
    rig.sim.force_door(6)
    after = restart(rig)
    assert after.command(command_id).status is CommandStatus.FAILED
    assert after.compartment(6).alarm == "door_open"
    after.verify()
    with after.instance.database.reader() as session:
        started = session.execute(
            select(func.count()).where(AuditEvent.kind == "kiosk.started")
        ).scalar_one()
    assert started == 2


def test_a_smaller_cabinet_ignores_compartments_no_longer_configured(tmp_path, database_url):
    """The kiosk was registered with 24 compartments, then the config says 8."""
    make_instance(tmp_path / "rig0" / "instance", database_url=database_url)  # 24 of them
    rig = build(tmp_path / "rig0", database_url)
    try:
        assert rig.state()["status"] == "ok"
        assert sorted(rig.controller.compartment_ids) == list(range(1, 9))
        rig.tap(SAM)
        assert rig.record().state is CustodyState.PENDING_DEPOSIT
    finally:
        rig.controller.shutdown()
        rig.cabinet.close()
        rig.instance.close()


def test_a_door_opening_is_group_committed_with_its_own_time(rig):
    """A deposit's door opening is an observation: it shares the next commit (or is written
    within OBSERVATION_DELAY_S), in order, stamped with the moment it happened."""
    rig.tap(SAM)
    number = rig.record().compartment.number
    opened_at = rig.clock.now()
    rig.open(number)
    assert rig.events("door.opened") == []  # not written yet...
    rig.clock.advance(0.02)
    rig.close(number)  # ...the close's unit of work writes it first
    with rig.instance.database.reader() as session:
        rows = session.execute(
            select(AuditEvent.kind, AuditEvent.occurred_at)
            .where(AuditEvent.kind.like("door.%"))
            .order_by(AuditEvent.seq)
        ).all()
    assert [kind for kind, _ in rows] == ["door.opened", "door.closed"]
    assert rows[0][1] == opened_at and rows[1][1] > opened_at
    rig.verify()


def test_a_lone_door_opening_is_written_within_the_delay(rig):
    rig.tap(SAM)
    number = rig.record().compartment.number
    rig.open(number)
    rig.advance(OBSERVATION_DELAY_S)
    assert rig.events("door.opened") == [{"compartment": number, "expected": True}]
    assert rig.compartment(number).door_open is True
