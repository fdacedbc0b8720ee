"""The controller and the people around it: what a tap's audit event says, pupils whose device
is with the office, pupils who left, enrolments that overlap staff mode or each other, "open
all" and the devices it exposes, and commands that fail in unexpected ways.

Simulated hardware and a simulated clock, as in test_controller.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from hardware import CabinetSpec, open_cabinet
from kiosk import sim_commands
from kiosk.actors import Actor
from kiosk.controller import Controller
from kiosk.errors import InstanceError
from kiosk.instance import Instance
from kiosk.models import (
    AuditEvent,
    CommandStatus,
    CustodyRecord,
    CustodyState,
    Pupil,
    PupilStatus,
    Role,
)

from .conftest import add_user
from .rig import AFTERNOON, ALEX, KIM, SAM, STRANGER, TEACHER, Rig, rigs
from .test_controller import deposited

NEW_CARD = bytes.fromhex("04A1B2C3D4E5F6")


@pytest.fixture
def make_rig(tmp_path: Path, database_url: str | None) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path, database_url)


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def pupil_id(rig: Rig, admission: str) -> int:
    with rig.instance.database.reader() as session:
        return session.execute(
            select(Pupil.id).where(Pupil.admission_number == admission)
        ).scalar_one()


def with_the_office(rig: Rig, admission: str, *, hold: bool = False) -> int:
    """Staff confiscate the pupil's (other) device at the dashboard (to the office safe);
    with ``hold``, it is then held for the DSL."""
    with rig.instance.database.transaction() as session:
        pupil = session.execute(
            select(Pupil).where(Pupil.admission_number == admission)
        ).scalar_one()
        head = Actor.for_user(add_user(session, rig.clock, f"head{admission}", Role.ADMIN))
        record = rig.instance.ledger.confiscate(
            session, head, rig.clock, pupil=pupil, reason="used in class"
        )
        if hold:
            rig.instance.ledger.hold(session, head, rig.clock, record, reason="urgent referral")
        return record.id


# ------------------------------------------------------------------------------ audit


def test_a_taps_audit_event_says_why_with_a_reason_code_and_no_name(rig: Rig) -> None:
    rig.tap(STRANGER)
    rig.tap(SAM)
    rig.tap(SAM)  # the locker is open already
    rig.tap(TEACHER)
    rig.tap(TEACHER)
    rig.at(AFTERNOON.replace(hour=9))  # 10:00 London: outside both windows
    rig.tap(ALEX)
    outcomes = [event["outcome"] for event in rig.events("tap")]
    assert outcomes == [
        "unknown_card",
        "deposit",
        "already_open",
        "staff_mode",
        "staff_mode_ended",
        "outside_window",
    ]
    text = json.dumps(rig.events("tap"))
    assert "Sam" not in text and "Alex" not in text and "Hello" not in text


def test_no_free_compartment_is_its_own_reason(make_rig) -> None:
    rig = make_rig(
        overrides={"kiosk": {"compartments": 8, "secure_compartments": [2, 3, 4, 5, 6, 7, 8]}}
    )
    rig.tap(SAM)
    rig.tap(ALEX)
    assert rig.events("tap")[-1]["outcome"] == "no_free_compartment"


# ------------------------------------------------------------------------------ the office


def test_a_pupil_whose_device_is_confiscated_deposits_nothing_more(rig: Rig) -> None:
    """In the deposit window too: the device is for a parent or carer to collect from the
    office (neither school policy lets the pupil hand in another device meanwhile)."""
    confiscated = with_the_office(rig, "S1")
    rig.tap(SAM)
    assert rig.record().id == confiscated and rig.record().state is CustodyState.CONFISCATED
    screen = rig.state()["screen"]
    assert screen["tone"] == "refused"
    assert "a parent or carer must collect it from the office" in screen["message"]
    assert rig.events("tap")[-1]["outcome"] == "confiscated"
    assert not rig.sim.energised()


def test_a_held_device_gives_the_same_words_and_a_restricted_tap(rig: Rig) -> None:
    with_the_office(rig, "S2", hold=True)
    rig.tap(ALEX)
    assert "a parent or carer must collect it from the office" in rig.state()["screen"]["message"]
    with rig.instance.database.reader() as session:
        tap = (
            session.execute(
                select(AuditEvent).where(AuditEvent.kind == "tap").order_by(AuditEvent.seq.desc())
            )
            .scalars()
            .first()
        )
    assert json.loads(tap.details)["outcome"] == "held" and tap.restricted


def test_a_pupil_who_left_collects_but_does_not_deposit(rig: Rig) -> None:
    number = deposited(rig)
    with rig.instance.database.transaction() as session:  # as a roster import does
        session.execute(
            update(Pupil)
            .where(Pupil.admission_number.in_(["S1", "S2"]))
            .values(status=PupilStatus.LEFT, left_at=rig.clock.now())
        )
    rig.tap(ALEX)  # left, nothing in a locker
    assert rig.record("S2") is None
    assert rig.state()["screen"]["title"] == "Card not active"
    assert rig.events("tap")[-1]["outcome"] == "card_not_active"
    rig.at(AFTERNOON)
    rig.tap(SAM)  # left since the morning: takes their device home
    assert rig.sim.lock_energised(number)
    rig.open(number)
    assert rig.record().state is CustodyState.COLLECTED
    rig.close(number)


# ------------------------------------------------------------------------------ enrolment


def test_a_second_enrolment_finishes_the_first(rig: Rig) -> None:
    first = rig.submit("enrol_next_card", pupil_id=pupil_id(rig, "S3"))
    rig.pump()
    assert rig.state()["screen"]["message"] == "For Kim T."  # one full stop
    second = rig.submit("enrol_next_card", pupil_id=pupil_id(rig, "S2"))
    rig.pump()
    command = rig.command(first)
    assert command.status is CommandStatus.FAILED and "replaced" in command.error
    rig.tap(NEW_CARD)
    assert rig.command(second).status is CommandStatus.DONE
    screen = rig.state()["screen"]
    assert screen["title"] == "Card enrolled" and screen["message"] == "For Alex T."
    assert rig.events("tap")[-1]["outcome"] == "enrolled"
    rig.tap(NEW_CARD)
    assert rig.record("S2").state is CustodyState.PENDING_DEPOSIT


def test_an_enrolment_waits_for_no_member_of_staff(rig: Rig) -> None:
    rig.tap(TEACHER)
    command = rig.submit("enrol_next_card", pupil_id=pupil_id(rig, "S3"))
    rig.pump()
    assert rig.command(command).status is CommandStatus.FAILED
    assert "staff" in rig.command(command).error
    assert rig.state()["mode"] == "staff"
    rig.tap(ALEX)  # the teacher confiscates, as they meant to
    assert rig.record("S2").state is CustodyState.CONFISCATED


def test_a_staff_card_does_not_take_over_an_enrolment(rig: Rig) -> None:
    command = rig.submit("enrol_next_card", pupil_id=pupil_id(rig, "S3"))
    rig.pump()
    rig.tap(TEACHER)
    assert rig.state()["mode"] == "enrol"
    assert rig.command(command).status is CommandStatus.RUNNING
    rig.tap(NEW_CARD)
    assert rig.command(command).status is CommandStatus.DONE


# ------------------------------------------------------------------------------ open all


def test_open_all_flags_the_devices_it_exposes_and_keeps_a_held_one_locked(rig: Rig) -> None:
    sam = deposited(rig)
    rig.tap(TEACHER)
    rig.tap(ALEX)  # confiscated into a secure compartment
    secure = rig.record("S2").compartment.number
    rig.open(secure)
    rig.close(secure)
    kim = deposited(rig, KIM, "S3")
    with rig.instance.database.transaction() as session:
        dsl = Actor.for_user(add_user(session, rig.clock, "dsl", Role.DSL))
        record = session.execute(
            select(CustodyRecord).join(Pupil).where(Pupil.admission_number == "S3")
        ).scalar_one()
        rig.instance.ledger.hold(session, dsl, rig.clock, record, reason="urgent referral")
    command = rig.submit("open_all")
    rig.pump()
    for _ in range(60):
        rig.advance(1)
    result = rig.command(command).result
    assert result["kept_locked"] == [kim] and kim not in result["opened"] + result["failed"]
    assert rig.record("S1").flag == "check" and "open all" in rig.record("S1").flag_detail
    assert rig.record("S2").flag == "check"
    assert rig.record("S3").flag is None
    (event,) = rig.events("emergency.open_all")
    assert event["kept_locked"] == [kim] and event["flagged"] == 2
    assert sam in result["failed"]  # nobody pulled the doors
    rig.verify()


# ------------------------------------------------------------------------------ commands


def test_a_command_that_fails_unexpectedly_ends_and_the_loop_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_sim, _payload, _compartments):
        raise RuntimeError("something nobody expected")

    monkeypatch.setitem(sim_commands.HANDLERS, "sim.tap", broken)
    failed = rig.submit("sim.tap", uid="A1:00:00:01")
    rig.pump()
    command = rig.command(failed)
    assert command.status is CommandStatus.FAILED and "nobody expected" in command.error
    opened = rig.submit("open_compartment", compartment=3)
    rig.pump()
    rig.open(3)
    assert rig.command(opened).status is CommandStatus.DONE


def test_a_forced_door_can_be_driven_by_command(rig: Rig) -> None:
    command = rig.submit("sim.door", compartment=5, open=True, forced=True)
    rig.pump()
    assert rig.command(command).result == {"compartment": 5, "open": True, "forced": True}
    assert rig.compartment(5).alarm == "forced"


def test_shutting_down_finishes_the_commands_in_flight(rig: Rig) -> None:
    opening = rig.submit("open_compartment", compartment=3)
    enrolling = rig.submit("enrol_next_card", pupil_id=pupil_id(rig, "S3"))
    rig.pump()
    rig.pump()
    rig.controller.shutdown()
    for command_id in (opening, enrolling):
        command = rig.command(command_id)
        assert command.status is CommandStatus.FAILED and "stopped" in command.error


# ------------------------------------------------------------------------------ the secret


def test_a_kiosk_with_another_secret_refuses_to_start(rig: Rig, tmp_path: Path) -> None:
    """A second Pi given its own secret.key on the school's database: it would break the
    audit chain for everyone; it refuses to start, saying why, and writes nothing."""
    url = rig.instance.database.url
    created, _ = Instance.create(tmp_path / "other", env={})
    created.close()
    other = Instance.open(tmp_path / "other", env={}, overrides={"database": {"url": url}})
    cabinet = open_cabinet(CabinetSpec.simulated(8, debounce_s=0.0), "sim", clock=rig.clock)
    try:
        with rig.instance.database.reader() as session:
            before = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        controller = Controller(other, cabinet, rig.clock)
        with pytest.raises(InstanceError, match=r"secret\.key"):
            controller.start(reader_thread=False, listen=False)
        with rig.instance.database.reader() as session:
            after = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        assert after == before
    finally:
        cabinet.close()
        other.close()
