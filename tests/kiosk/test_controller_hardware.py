"""The controller and a cabinet that misbehaves: parts that fail and recover, doors that stand
open, alarms that last until the door is closed, and unlocks nobody was meant to pull.

Simulated hardware and a simulated clock, as in test_controller.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hardware.errors import HardwareError
from kiosk.controller import ALARM_REPEAT_S, LOCK_RETRY_S, Controller
from kiosk.models import Compartment, CustodyState

from .rig import AFTERNOON, ALEX, KIM, SAM, Rig, rigs
from .test_controller import deposited

TWENTY_FOUR = {"kiosk": {"compartments": 24, "secure_compartments": [23, 24]}}


@pytest.fixture
def make_rig(tmp_path: Path, database_url: str | None) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path, database_url)


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


# ------------------------------------------------------------------------------ faults


def test_an_expander_that_answers_again_is_no_longer_a_fault(rig: Rig) -> None:
    """One I2C outage of the expander that carries every compartment: the kiosk refuses
    deposits while it lasts, and works again as soon as the hardware reports it back."""
    rig.sim.expander_fault("mcp0", "raise")
    rig.cabinet.poll_inputs()
    rig.pump()
    state = rig.state()
    assert state["status"] == "fault" and "mcp0" in state["faults"][0]
    rig.tap(SAM)
    assert rig.record() is None
    assert rig.events("tap")[-1]["outcome"] == "fault"

    rig.sim.expander_fault("mcp0", None)
    rig.cabinet.poll_inputs()  # the hardware reports the recovery
    rig.pump()
    assert rig.state()["status"] == "ok" and rig.state()["faults"] == []
    assert rig.events("kiosk.fault_cleared") == [{"fault": "expander mcp0"}]
    rig.tap(SAM)
    assert rig.record().state is CustodyState.PENDING_DEPOSIT


def test_an_expander_fault_takes_only_its_compartments_out_of_use(make_rig) -> None:
    rig = make_rig(overrides=TWENTY_FOUR)  # mcp0: 1-8, mcp1: 9-16, mcp2: 17-24
    rig.sim.expander_fault("mcp0", "raise")
    rig.cabinet.poll_inputs()
    rig.pump()
    (fault,) = rig.events("kiosk.fault")
    assert fault["fault"] == "expander mcp0" and fault["compartments"] == list(range(1, 9))
    assert rig.state()["screen"]["title"] == "Tap your card"  # not "Out of order"
    rig.tap(SAM)
    assert rig.record().compartment.number == 9
    rig.sim.expander_fault("mcp0", None)
    rig.cabinet.poll_inputs()
    rig.pump()
    rig.tap(ALEX)
    assert rig.record("S2").compartment.number == 1


class FailingLine:
    """A lock's output whose writes fail (an I2C write error on its expander)."""

    def __init__(self, line: Any) -> None:
        self.line = line
        self.name = line.name
        self.failing = True

    def on(self) -> None:
        if self.failing:
            raise HardwareError(f"cannot drive {self.name}: [Errno 121] Remote I/O error")
        self.line.on()

    def off(self) -> None:
        self.line.off()

    @property
    def is_active(self) -> bool:
        return self.line.is_active

    def close(self) -> None:
        self.line.close()


def test_a_lock_that_cannot_be_driven_takes_only_its_compartment_out_of_use(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = FailingLine(rig.cabinet.locks[1]._line)
    monkeypatch.setattr(rig.cabinet.locks[1], "_line", failing)
    rig.tap(SAM)  # compartment 1: its lock fails, the deposit is cancelled
    assert rig.record().state is CustodyState.CANCELLED
    assert rig.state()["screen"]["title"] == "The door did not open"
    assert any("compartment 1 lock" in fault for fault in rig.state()["faults"])
    rig.tap(SAM)  # the pupil taps again: another compartment, the kiosk works
    assert rig.record().compartment.number == 2
    assert rig.sim.lock_energised(2)

    failing.failing = False  # mended; after a while compartment 1 is tried again
    rig.advance(LOCK_RETRY_S + 1)
    rig.tap(ALEX)
    assert rig.record("S2").compartment.number == 1
    assert rig.sim.lock_energised(1)
    assert rig.state()["faults"] == []
    assert rig.events("kiosk.fault_cleared") == [{"fault": "compartment 1 lock"}]


# ------------------------------------------------------------------------------ open doors


def test_a_door_standing_open_is_not_given_to_a_deposit_nor_counted_as_a_jam(rig: Rig) -> None:
    rig.sim.force_door(1)
    rig.pump()
    for uid, admission in ((SAM, "S1"), (ALEX, "S2"), (KIM, "S3")):
        rig.tap(uid)
        assert rig.record(admission).compartment.number != 1
        rig.advance(3.1)  # nobody opens it: those deposits are cancelled
    compartment = rig.compartment(1)
    assert compartment.failed_unlocks == 0 and not compartment.out_of_service
    assert rig.compartment(2).failed_unlocks >= 1  # the compartments actually used


def test_a_door_found_open_at_start_is_not_given_to_a_deposit(rig: Rig) -> None:
    rig.controller.shutdown()
    rig.sim.force_door(1)
    rig.pump()
    controller = Controller(rig.instance, rig.cabinet, rig.clock)
    controller.start(reader_thread=False, listen=False)
    after = Rig(rig.instance, rig.clock, rig.cabinet, controller)
    try:
        assert after.compartment(1).alarm == "door_open"
        after.tap(SAM)
        assert after.record().compartment.number == 2
    finally:
        controller.shutdown()


def test_a_device_behind_a_door_forced_open_can_still_be_collected(rig: Rig) -> None:
    number = deposited(rig)
    rig.at(AFTERNOON)
    rig.sim.force_door(number)
    rig.pump()
    assert rig.compartment(number).alarm == "forced"
    rig.tap(SAM)  # the door stands open: nothing to unlock, the pupil takes the device
    assert rig.record().state is CustodyState.COLLECTED
    rig.advance(3.1)
    assert rig.compartment(number).failed_unlocks == 0
    rig.close(number)
    assert rig.compartment(number).alarm is None


# ------------------------------------------------------------------------------ alarms


def record_beeps(rig: Rig) -> list[tuple[float, str]]:
    beeps: list[tuple[float, str]] = []
    indicators = rig.cabinet.indicators
    original = indicators.beep

    def beep(pattern: str) -> None:
        beeps.append((rig.clock.monotonic(), pattern))
        original(pattern)

    indicators.beep = beep  # type: ignore[method-assign]
    return beeps


def test_an_alarm_lasts_until_the_door_is_closed(rig: Rig) -> None:
    beeps = record_beeps(rig)
    rig.tap(SAM)
    left_open = rig.record().compartment.number
    rig.open(left_open)
    rig.advance(61)  # door_open_alarm_s
    indicators = rig.cabinet.indicators
    assert indicators.state == "alarm" and beeps[-1][1] == "alarm"

    rig.tap(ALEX)  # another pupil deposits meanwhile: their beeps, the LED stays on alarm
    assert indicators.state == "alarm"
    other = rig.record("S2").compartment.number
    rig.open(other)
    rig.close(other)
    assert indicators.state == "alarm"
    assert rig.state()["alarms"][0]["compartment"] == left_open
    rig.advance(7)  # the screen goes back to the alarm
    assert rig.state()["screen"]["title"] == "Please close the door"

    first = len(beeps)
    rig.advance(ALARM_REPEAT_S + 1)  # still open: the alarm sounds again, and again
    rig.advance(ALARM_REPEAT_S + 1)
    assert [pattern for _, pattern in beeps[first:]] == ["alarm", "alarm"]
    assert indicators.state == "alarm"

    rig.close(left_open)
    assert indicators.state == "idle"
    assert not rig.sim.pi_pin(12).state  # the buzzer is silent at once
    rig.advance(ALARM_REPEAT_S + 1)
    assert [pattern for _, pattern in beeps[first + 2 :]] == []


def test_closing_one_of_two_alarmed_doors_keeps_the_other_alarm(rig: Rig) -> None:
    rig.sim.force_door(3)
    rig.pump()
    rig.sim.force_door(4)
    rig.pump()
    rig.close(4)
    assert rig.cabinet.indicators.state == "alarm"
    screen = rig.state()["screen"]
    assert screen["tone"] == "alarm" and screen["compartment"] == 3
    rig.close(3)
    assert rig.cabinet.indicators.state == "idle"
    assert rig.state()["screen"]["title"] == "Tap your card"


# ------------------------------------------------------------------------------ unattended


def test_opens_nobody_pulls_do_not_take_compartments_out_of_service(rig: Rig) -> None:
    """Three "open all"s and an office open that nobody pulls: commands say so, but no
    compartment counts a failed unlock (only a pupil or staff unlock does)."""
    for _ in range(3):
        command = rig.submit("open_all")
        rig.pump()
        for _ in range(40):
            rig.advance(1)
        assert sorted(rig.command(command).result["failed"]) == list(range(1, 9))
    office = rig.submit("open_compartment", compartment=2)
    rig.pump()
    rig.advance(3.1)
    assert rig.command(office).error == "compartment 2: the door was not opened"
    with rig.instance.database.reader() as session:
        rows = session.execute(select(Compartment.failed_unlocks, Compartment.out_of_service)).all()
    assert set(rows) == {(0, False)}
    rig.tap(SAM)
    assert rig.record().compartment.number == 1


def test_a_pupils_unlock_that_never_opens_still_counts(rig: Rig) -> None:
    with rig.instance.database.transaction() as session:
        session.execute(update(Compartment).values(failed_unlocks=0))
    rig.tap(SAM)
    rig.advance(3.1)
    assert rig.compartment(1).failed_unlocks == 1


def test_open_all_counts_a_door_standing_open_as_opened(rig: Rig) -> None:
    rig.sim.force_door(2)
    rig.pump()
    command = rig.submit("open_all")
    rig.pump()
    for _ in range(40):
        rig.advance(1)
    result = rig.command(command).result
    assert result["opened"] == [2] and 2 not in result["failed"]
    done = [e for e in rig.events("command.done") if e["command"] == command]
    assert len(done) == 1
    assert rig.compartment(2).failed_unlocks == 0


def test_an_unlock_waits_for_a_resting_solenoid_and_says_so_when_it_gives_up(
    make_rig: Callable[..., Rig],
) -> None:
    """``lock_rest_s``: a solenoid just pulsed rests before its next pulse; the kiosk retries
    until it may."""
    rig = make_rig(lock_rest_s=0.5)
    first = rig.submit("open_compartment", compartment=2)
    rig.pump()
    rig.advance(3.1)  # nobody pulls it: the pulse ends, the rest begins
    assert rig.command(first).error == "compartment 2: the door was not opened"
    second = rig.submit("open_compartment", compartment=2)
    rig.pump()
    assert not rig.controller.unlocks[2].energised  # resting: retried shortly
    rig.advance(0.5)
    assert rig.controller.unlocks[2].energised
    rig.open(2)
    rig.close(2)
    assert rig.command(second).status == "done"


def test_a_rest_longer_than_the_kiosk_waits_fails_the_unlock_with_that_reason(
    make_rig: Callable[..., Rig],
) -> None:
    slow = make_rig(lock_rest_s=60.0)
    slow.submit("open_compartment", compartment=3)
    slow.pump()
    slow.advance(3.1)
    again = slow.submit("open_compartment", compartment=3)
    slow.pump()
    for _ in range(12):
        slow.advance(1)
    assert slow.command(again).status == "failed"
    assert "still resting" in slow.command(again).error
