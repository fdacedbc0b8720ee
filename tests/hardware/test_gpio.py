"""Locks, door switches and indicators on gpiozero's MockFactory, timed by a ManualClock.

Pin histories are compared whole (gpiozero's assert_states only compares a prefix).
"""

from __future__ import annotations

import pytest

from hardware.errors import DeviceClosed, ExpanderError, HardwareError, LockBusy, LockError
from hardware.faults import FaultReporter
from hardware.gpio import (
    EnergiseGuard,
    GpioIndicators,
    LineFactory,
    ReedDoorSwitch,
    SolenoidLock,
)
from hardware.interfaces import PulseEnd
from hardware.spec import PinRef
from tests.hardware.conftest import states


def make_lock(mock_factory, clock, number=1, pin=17, *, active_high=True, guard=None, ends=None):
    lines = LineFactory(mock_factory)
    line = lines.output(PinRef(None, pin), active_high=active_high, label=f"lock {number}")
    return SolenoidLock(
        number,
        line,
        guard=guard or EnergiseGuard(2),
        clock=clock,
        unlock_s=3.0,
        max_unlock_s=5.0,
        on_pulse_end=None if ends is None else ends.append,
    )


def test_lock_starts_locked_and_a_pulse_ends_by_itself(mock_factory, clock) -> None:
    ends: list[PulseEnd] = []
    lock = make_lock(mock_factory, clock, ends=ends)
    pin = mock_factory.pin("GPIO17")
    assert states(pin) == [False] and not lock.is_energised
    assert lock.pulse() == 3.0
    assert lock.is_energised and states(pin) == [False, True]
    clock.advance(3.0 - 1e-6)
    assert states(pin) == [False, True]
    clock.advance(2e-6)
    assert states(pin) == [False, True, False]
    assert not lock.is_energised
    assert ends == [PulseEnd(1, 3.0, False, "timer")]


def test_pulse_is_clamped_to_max_unlock_s(mock_factory, clock) -> None:
    lock = make_lock(mock_factory, clock)
    pin = mock_factory.pin("GPIO17")
    assert lock.pulse(60) == 5.0
    clock.advance(5.0 - 1e-6)
    assert lock.is_energised
    clock.advance(2e-6)
    assert not lock.is_energised
    assert states(pin) == [False, True, False]


def test_a_new_pulse_extends_but_never_past_max_unlock_s(mock_factory, clock) -> None:
    lock = make_lock(mock_factory, clock)
    pin = mock_factory.pin("GPIO17")
    lock.pulse(2.0)
    clock.advance(1.5)
    assert lock.pulse(3.0) == 3.0  # ends at 4.5 s after energising
    clock.advance(2.0)
    assert lock.pulse(3.0) == pytest.approx(1.5)  # ends at 5.0 s: the hard limit
    clock.advance(1.5 - 1e-6)
    assert lock.is_energised
    clock.advance(2e-6)
    assert not lock.is_energised
    assert states(pin) == [False, True, False]  # never switched off and on in between


def test_active_low_lock(mock_factory, clock) -> None:
    lock = make_lock(mock_factory, clock, active_high=False)
    pin = mock_factory.pin("GPIO17")
    assert states(pin) == [False, True]  # input (floating low) -> driven high = off at once
    lock.pulse(1.0)
    clock.advance(1.0)
    assert states(pin) == [False, True, False, True]


def test_lock_now_and_close(mock_factory, clock) -> None:
    ends: list[PulseEnd] = []
    lock = make_lock(mock_factory, clock, ends=ends)
    pin = mock_factory.pin("GPIO17")
    lock.pulse(3.0)
    clock.advance(1.0)
    lock.lock()
    lock.lock()  # harmless when already locked
    assert ends == [PulseEnd(1, 1.0, False, "lock")]
    clock.advance(10)
    assert states(pin) == [False, True, False]
    lock.pulse(3.0)
    lock.close()
    lock.close()
    assert ends[-1].reason == "close"
    assert states(pin) == [False, True, False, True, False]
    with pytest.raises(DeviceClosed):
        lock.pulse(1.0)
    assert clock.pending == 0


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_pulse_rejects_non_positive_durations(mock_factory, clock, seconds) -> None:
    lock = make_lock(mock_factory, clock)
    with pytest.raises(ValueError):
        lock.pulse(seconds)
    assert not lock.is_energised


def test_too_many_energised_locks_are_refused_not_queued(mock_factory, clock) -> None:
    guard = EnergiseGuard(2)
    locks = [
        make_lock(mock_factory, clock, n, pin, guard=guard)
        for n, pin in ((1, 17), (2, 27), (3, 22))
    ]
    locks[0].pulse(3.0)
    clock.advance(1.0)
    locks[1].pulse(3.0)
    with pytest.raises(LockBusy) as info:
        locks[2].pulse(3.0)
    assert info.value.energised == (1, 2) and not info.value.resting
    assert info.value.retry_after == pytest.approx(2.0)
    assert isinstance(info.value, LockError) and info.value.number == 3
    assert "retry" in str(info.value)
    assert states(mock_factory.pin("GPIO22")) == [False]
    locks[0].pulse(1.0)  # an energised lock may be pulsed again
    clock.advance(2.0)
    assert guard.energised == (2,)
    assert locks[2].pulse(3.0) == 3.0
    assert guard.energised == (2, 3)


class FailingLine:
    name = "failing"

    def __init__(self) -> None:
        self.fail_on = True
        self.fail_off = False
        self.active = False

    def on(self) -> None:
        if self.fail_on:
            raise HardwareError("I2C error")
        self.active = True

    def off(self) -> None:
        if self.fail_off:
            raise HardwareError("I2C error")
        self.active = False

    is_active = property(lambda self: self.active)

    def close(self) -> None:
        self.active = False


def test_output_failures(clock) -> None:
    line = FailingLine()
    faults: list[HardwareError] = []
    guard = EnergiseGuard(1)
    lock = SolenoidLock(
        4, line, guard=guard, clock=clock, unlock_s=3, max_unlock_s=5, on_fault=faults.append
    )
    with pytest.raises(LockError, match="compartment 4: cannot energise"):
        lock.pulse()
    assert not lock.is_energised and guard.energised == ()
    line.fail_on = False
    lock.pulse()
    line.fail_off = True
    clock.advance(5.0)
    assert len(faults) == 1 and "cannot de-energise" in str(faults[0])
    assert line.active  # still on: retried every 50 ms
    line.fail_off = False
    clock.advance(0.05)
    assert not line.active


def test_a_lock_counts_as_energised_until_its_switch_off_succeeds(clock) -> None:
    line = FailingLine()
    line.fail_on = False
    faults: list[HardwareError] = []
    cleared: list[str] = []
    ends: list[PulseEnd] = []
    guard = EnergiseGuard(1)
    reporter = FaultReporter(faults.append, cleared.append)
    lock = SolenoidLock(
        4, line, guard=guard, clock=clock, unlock_s=3, max_unlock_s=5, faults=reporter
    )
    lock.on_pulse_end = ends.append
    other_line = FailingLine()
    other_line.fail_on = False
    other = SolenoidLock(5, other_line, guard=guard, clock=clock, unlock_s=3, max_unlock_s=5)
    lock.pulse(1.0)
    line.fail_off = True
    clock.advance(1.0)
    assert ends == [PulseEnd(4, 1.0, False, "timer")]  # the pulse is over...
    assert line.active and lock.is_energised and guard.energised == (4,)  # ...the solenoid not
    assert lock.last_released is None
    with pytest.raises(LockBusy) as busy:
        other.pulse(1.0)  # the limit still counts lock 4
    assert busy.value.energised == (4,) and 0 < busy.value.retry_after <= lock.RETRY_OFF_S
    with pytest.raises(LockError, match="could not be switched off"):
        lock.pulse(1.0)
    clock.advance(1.0)  # twenty retries: still one report
    assert len(faults) == 1 and cleared == []
    line.fail_off = False
    clock.advance(lock.RETRY_OFF_S)
    assert not line.active and not lock.is_energised and guard.energised == ()
    assert lock.last_released == pytest.approx(clock.monotonic())
    assert cleared == ["compartment 4 lock"]
    assert other.pulse(1.0) == 1.0
    assert len(faults) == 1 and clock.pending == 1  # only the other lock's pulse timer


def test_rest_between_pulses_of_one_solenoid(mock_factory, clock) -> None:
    lines = LineFactory(mock_factory)
    line = lines.output(PinRef(None, 17), active_high=True, label="lock 1")
    lock = SolenoidLock(
        1, line, guard=EnergiseGuard(2), clock=clock, unlock_s=3, max_unlock_s=5, rest_s=2.0
    )
    pin = mock_factory.pin("GPIO17")
    lock.pulse(1.0)
    assert lock.pulse(9.0) == 5.0  # extending a running pulse is not a new pulse
    clock.advance(5.0)
    with pytest.raises(LockBusy, match="rests 2 s between pulses") as busy:
        lock.pulse()
    assert busy.value.retry_after == pytest.approx(2.0) and busy.value.number == 1
    assert busy.value.resting
    clock.advance(2.0 - 1e-3)
    with pytest.raises(LockBusy):
        lock.pulse()
    clock.advance(1e-3)
    assert lock.pulse(1.0) == 1.0
    clock.advance(1.0)
    assert states(pin) == [False, True, False, True, False]


def test_a_failed_energise_needs_no_rest(clock) -> None:
    line = FailingLine()
    lock = SolenoidLock(
        4, line, guard=EnergiseGuard(1), clock=clock, unlock_s=3, max_unlock_s=5, rest_s=5.0
    )
    with pytest.raises(LockError):
        lock.pulse()
    line.fail_on = False
    assert lock.pulse(1.0) == 1.0  # it never was on: no rest owed


def make_door(mock_factory, clock, *, debounce_s=0.05, pull="up", open_high=True, pin=5):
    lines = LineFactory(mock_factory)
    line = lines.input(PinRef(None, pin), pull=pull, label="door")
    door = ReedDoorSwitch(1, line, open_high=open_high, debounce_s=debounce_s, clock=clock)
    events: list[object] = []
    door.when_opened = lambda: events.append("opened")
    door.when_closed = lambda: events.append("closed")
    door.on_change = lambda number, is_open: events.append((number, is_open))
    return door, mock_factory.pin(f"GPIO{pin}"), events


def test_door_switch_reads_the_pull_up_as_open(mock_factory, clock) -> None:
    door, pin, events = make_door(mock_factory, clock)
    assert door.is_open  # nothing pulls the pin low: door open (magnet away)
    pin.drive_low()
    clock.advance(0.05)
    assert not door.is_open
    assert events == ["closed", (1, False)]


def test_door_debounce_waits_for_a_stable_level(mock_factory, clock) -> None:
    door, pin, events = make_door(mock_factory, clock)
    pin.drive_low()
    clock.advance(0.05)
    events.clear()
    for _ in range(5):  # contact bounce: 10 ms pulses
        pin.drive_high()
        clock.advance(0.01)
        pin.drive_low()
        clock.advance(0.01)
    clock.advance(0.1)
    assert events == [] and not door.is_open
    pin.drive_high()
    clock.advance(0.05 - 1e-6)
    assert events == [] and not door.is_open
    clock.advance(2e-6)
    assert events == ["opened", (1, True)] and door.is_open


def test_door_without_debounce_reports_at_once(mock_factory, clock) -> None:
    door, pin, events = make_door(mock_factory, clock, debounce_s=0, pull="none", open_high=False)
    pin.drive_high()
    pin.drive_low()
    assert events == ["closed", (1, False), "opened", (1, True)]
    door.close()
    door.close()
    pin_events = len(events)
    pin.drive_high()  # released: no more callbacks
    assert len(events) == pin_events


def test_door_callback_errors_do_not_break_the_switch(mock_factory, clock) -> None:
    door, pin, events = make_door(mock_factory, clock, debounce_s=0)
    door.when_closed = lambda: 1 / 0
    pin.drive_low()
    assert events == [(1, False)] and not door.is_open


def make_indicators(mock_factory, clock, *, alarm_s=30.0, active_high=True):
    lines = LineFactory(mock_factory)
    led = tuple(
        lines.output(PinRef(None, pin), active_high=active_high, label=name)
        for pin, name in ((16, "red"), (20, "green"), (21, "blue"))
    )
    buzzer = lines.output(PinRef(None, 12), active_high=True, label="buzzer")
    ind = GpioIndicators(led, buzzer, clock=clock, alarm_s=alarm_s)
    pins = [mock_factory.pin(f"GPIO{n}") for n in (16, 20, 21, 12)]
    return ind, pins


def test_status_colours(mock_factory, clock) -> None:
    ind, (red, green, blue, _buzzer) = make_indicators(mock_factory, clock)
    ind.status("idle")
    ind.status("busy")
    ind.status("ok")
    ind.status("off")
    assert states(red) == [False, True, False]
    assert states(green) == [False, True, False]
    assert states(blue) == [False, True, False]
    with pytest.raises(ValueError, match="unknown status"):
        ind.status("purple")


def test_beep_patterns(mock_factory, clock) -> None:
    ind, (*_led, buzzer) = make_indicators(mock_factory, clock)
    eps = 1e-6
    ind.beep("ok")
    clock.advance(0.08 - eps)
    assert states(buzzer) == [False, True]
    clock.advance(2 * eps)
    assert states(buzzer) == [False, True, False]
    ind.beep("refused")
    clock.advance(0.15 + eps)
    assert states(buzzer)[-1] is False
    clock.advance(0.1)
    assert states(buzzer)[-1] is True
    clock.advance(0.15)
    assert states(buzzer) == [False, True, False, True, False, True, False]
    assert clock.pending == 0
    with pytest.raises(ValueError, match="unknown beep pattern"):
        ind.beep("fanfare")


def test_alarm_repeats_until_alarm_s_or_off(mock_factory, clock) -> None:
    ind, (red, _g, _b, buzzer) = make_indicators(mock_factory, clock, alarm_s=3.0)
    ind.beep("alarm")
    ind.status("alarm")
    clock.advance(10.0)
    assert states(buzzer) == [False] + [True, False] * 3
    assert clock.pending == 0
    assert states(red)[-1] is True  # steady red after the alarm time
    ind.beep("alarm")
    clock.advance(0.7)  # on 0.5 s, off, on again at 1.0 s: now off
    ind.beep("alarm")  # restarts: on
    ind.off()
    assert states(buzzer) == [False] + [True, False] * 5
    assert clock.pending == 0


def test_indicators_close_twice_and_refuse_afterwards(mock_factory, clock) -> None:
    ind, pins = make_indicators(mock_factory, clock, active_high=False)
    ind.status("white")
    ind.beep("alarm")
    ind.close()
    ind.close()
    with pytest.raises(DeviceClosed):
        ind.status("ok")
    assert clock.pending == 0
    assert [pin.function for pin in pins] == ["input"] * 4


def test_indicators_without_hardware_are_no_ops(clock) -> None:
    ind = GpioIndicators(None, None, clock=clock)
    ind.status("ok")
    ind.beep("alarm")
    ind.off()
    assert ind.state == "off" and clock.pending == 0


class FlakyInput:
    """An input line whose reads can be made to fail, like an expander pin on a broken bus."""

    name = "flaky door"

    def __init__(self) -> None:
        self.high = False
        self.fail = False
        self.when_changed = None

    @property
    def level(self) -> bool:
        if self.fail:
            raise ExpanderError("I2C error", expander="mcp0")
        return self.high

    def set(self, high: bool) -> None:
        self.high = high
        self.when_changed(high)

    def close(self) -> None:
        self.when_changed = None


def test_a_door_read_that_fails_is_retried_and_the_edge_delivered(clock) -> None:
    line = FlakyInput()
    faults: list[HardwareError] = []
    cleared: list[str] = []
    door = ReedDoorSwitch(
        7,
        line,
        open_high=True,
        debounce_s=0.05,
        clock=clock,
        faults=FaultReporter(faults.append, cleared.append),
    )
    events: list[object] = []
    door.on_change = lambda number, is_open: events.append((number, is_open))
    line.set(True)
    clock.advance(0.01)
    line.fail = True
    clock.advance(1.0)  # the read at the end of the debounce fails, then every retry
    assert events == [] and not door.is_open
    assert len(faults) == 1 and cleared == []
    line.fail = False
    clock.advance(door.RETRY_S)
    assert events == [(7, True)] and door.is_open
    assert cleared == ["expander mcp0"] and clock.pending == 0
    door.close()
