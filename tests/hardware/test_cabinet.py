"""The cabinet bundle on the simulator: flows, fault switches, closing, import hygiene."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import threading

import pytest

from hardware import (
    CabinetSpec,
    DoorEvent,
    HardwareError,
    LockBusy,
    LockError,
    PulseEnd,
    ReaderError,
    ReaderUnavailable,
    open_cabinet,
)
from hardware.clock import SystemClock
from hardware.errors import BackendUnavailable, ExpanderError, HardwareConfigError

HARDWARE = pathlib.Path(__file__).resolve().parents[2] / "hardware"
THIRD_PARTY = {"mfrc522", "RPi", "spidev", "smbus2", "smbus", "lgpio", "fake_rpi"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_hardware_never_imports_kiosk_or_web() -> None:
    files = sorted(HARDWARE.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        assert not imported_roots(path) & {"kiosk", "web"}, path


def test_third_party_hardware_libraries_only_in_platform_module() -> None:
    for path in sorted(HARDWARE.rglob("*.py")):
        found = imported_roots(path) & THIRD_PARTY
        strings = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and node.value in THIRD_PARTY
        }
        if path.name == "_platform.py":
            assert found == {"spidev", "smbus2", "fake_rpi"}
            assert "mfrc522" in strings  # imported with importlib, lazily
        else:
            assert not found and "mfrc522" not in strings, path


def test_import_hardware_loads_no_hardware_library() -> None:
    code = (
        "import sys, hardware, hardware.spec, hardware.cabinet, hardware.errors; "
        "hardware.CabinetSpec.from_mapping({'compartments': 30}); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('gpiozero','RPi','spidev','smbus','smbus2','mfrc522','fake_rpi','lgpio')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_deposit_flow_with_auto_open(make_cabinet) -> None:
    cabinet = make_cabinet(24, auto_open=True, auto_close_s=0.5)
    doors: list[DoorEvent] = []
    ends: list[PulseEnd] = []
    taps = []
    cabinet.on_door = doors.append
    cabinet.on_pulse_end = ends.append
    cabinet.reader.start(taps.append, thread=False)
    assert [tap.uid_hex for tap in cabinet.sim.tap("04A1B2C3D4E5F6")] == ["04A1B2C3D4E5F6"]
    assert taps[0].uid_hex == "04A1B2C3D4E5F6"
    assert cabinet.locks[17].pulse(3.0) == 3.0
    assert cabinet.sim.door_is_open(17) and cabinet.doors[17].is_open
    cabinet.locks[17].lock()  # the controller relocks as soon as the door is open
    cabinet.clock.advance(0.5)
    assert not cabinet.doors[17].is_open
    assert [(d.number, d.is_open, d.forced) for d in doors] == [
        (17, True, False),
        (17, False, False),
    ]
    assert [(e.number, e.door_opened, e.reason) for e in ends] == [(17, True, "lock")]
    assert cabinet.sim.energised() == ()


def test_door_opens_only_while_unlocked_unless_forced(make_cabinet) -> None:
    cabinet = make_cabinet(4)
    doors: list[DoorEvent] = []
    cabinet.on_door = doors.append
    assert cabinet.sim.open_door(2) is False
    assert not cabinet.doors[2].is_open
    cabinet.locks[2].pulse(1.0)
    assert cabinet.sim.open_door(2) is True
    cabinet.clock.advance(1.0)
    cabinet.sim.close_door(2)
    cabinet.clock.advance(5.0)
    cabinet.sim.force_door(3)
    assert [(d.number, d.is_open, d.forced) for d in doors] == [
        (2, True, False),
        (2, False, False),
        (3, True, True),
    ]


def test_a_door_opened_just_after_relocking_is_not_forced(make_cabinet) -> None:
    cabinet = make_cabinet(4, debounce_s=0.05)
    doors: list[DoorEvent] = []
    cabinet.on_door = doors.append
    cabinet.locks[1].pulse(1.0)
    cabinet.clock.advance(0.99)
    assert cabinet.sim.open_door(1)
    cabinet.clock.advance(0.1)  # the debounced edge arrives after the pulse ended
    assert [(d.is_open, d.forced) for d in doors] == [(True, False)]


def test_jammed_lock_never_lets_the_door_open(make_cabinet) -> None:
    cabinet = make_cabinet(24, auto_open=True)
    doors: list[DoorEvent] = []
    ends: list[PulseEnd] = []
    cabinet.on_door = doors.append
    cabinet.on_pulse_end = ends.append
    cabinet.sim.jam_lock(5)
    cabinet.locks[5].pulse(2.0)
    assert cabinet.sim.open_door(5) is False
    cabinet.clock.advance(2.0)
    assert doors == []
    assert ends == [PulseEnd(5, 2.0, False, "timer")]
    cabinet.sim.jam_lock(5, False)
    cabinet.locks[5].pulse(2.0)
    assert cabinet.doors[5].is_open


def test_door_switch_stuck_open(make_cabinet) -> None:
    cabinet = make_cabinet(4)
    doors: list[DoorEvent] = []
    cabinet.on_door = doors.append
    cabinet.sim.stick_door_open(4)
    assert cabinet.doors[4].is_open and not cabinet.sim.door_is_open(4)
    cabinet.locks[4].pulse(1.0)
    cabinet.sim.open_door(4)
    cabinet.sim.close_door(4)
    assert cabinet.doors[4].is_open  # the switch no longer follows the door
    cabinet.sim.stick_door_open(4, False)
    assert [(d.is_open, d.forced) for d in doors] == [(True, True), (False, False)]


def test_concurrent_unlock_limit_through_the_cabinet(make_cabinet) -> None:
    cabinet = make_cabinet(24, max_concurrent_unlocks=2)
    cabinet.locks[1].pulse(3)
    cabinet.locks[9].pulse(3)
    with pytest.raises(LockBusy) as info:
        cabinet.locks[20].pulse(3)
    assert info.value.energised == (1, 9)
    assert cabinet.energised() == (1, 9) == cabinet.sim.energised()
    cabinet.clock.advance(3)
    assert cabinet.energised() == () == cabinet.sim.energised()


def test_close_is_idempotent_and_leaves_everything_off(make_cabinet) -> None:
    cabinet = make_cabinet(24, debounce_s=0.05)
    cabinet.reader.start(lambda tap: None, thread=False)
    cabinet.sim.tap("DEADBEEF")
    cabinet.locks[3].pulse(5)
    cabinet.locks[11].pulse(5)
    cabinet.indicators.status("alarm")
    cabinet.indicators.beep("alarm")
    led_pins = [cabinet.sim.pi_pin(n) for n in (16, 20, 21, 12)]
    assert any(pin.state for pin in led_pins)
    cabinet.close()
    cabinet.close()
    assert cabinet.closed
    assert cabinet.sim.energised() == ()
    assert [pin.driving for pin in led_pins] == [None] * 4  # released, driving nothing
    assert [pin.state for pin in led_pins] == [False] * 4
    assert cabinet.sim.pi_pin(25).driving is None  # reader held in reset (pin released)
    assert cabinet.clock.pending == 0
    with pytest.raises(HardwareError):
        cabinet.locks[3].pulse(1)


def test_reader_faults_reach_on_error_and_recover(make_cabinet) -> None:
    cabinet = make_cabinet(4)
    events: list[object] = []
    cabinet.reader.start(events.append, events.append, lambda: events.append("ok"), thread=False)
    for mode, kind in (("raise", ReaderError), ("vanish", ReaderUnavailable)):
        events.clear()
        cabinet.sim.reader_fault(mode)
        for _ in range(3):
            cabinet.reader.step()
        cabinet.sim.reader_fault(None)
        cabinet.sim.tap("DEADBEEF")
        assert len(events) == 3, events
        assert isinstance(events[0], kind) and events[1] == "ok"
        assert events[2].uid_hex == "DEADBEEF"
    events.clear()
    cabinet.sim.reader_fault("garbage")
    for _ in range(3):
        cabinet.clock.advance(1.0)
        cabinet.reader.step()
    assert any(isinstance(event, ReaderError) for event in events)
    assert not any(getattr(event, "uid", None) for event in events)


def test_unplugged_reader(make_cabinet) -> None:
    cabinet = make_cabinet(4)
    cabinet.sim.reader_unplugged()
    with pytest.raises(ReaderUnavailable, match="enable SPI"):
        cabinet.reader.check()
    cabinet.sim.reader_unplugged(False)
    assert cabinet.reader.check() == 0x92


def test_expander_fault(make_cabinet) -> None:
    cabinet = make_cabinet(24)
    faults: list[HardwareError] = []
    cabinet.on_fault = faults.append
    cabinet.sim.expander_fault("mcp1", "raise")
    with pytest.raises(LockError, match="compartment 9: cannot energise"):
        cabinet.locks[9].pulse(1)
    cabinet.poll_inputs()
    assert [type(fault) for fault in faults] == [LockError, ExpanderError]
    assert "cannot de-energise" in str(faults[0])  # the safety switch-off is retried
    assert all("expander mcp1 (I2C bus 1, address 0x21)" in str(fault) for fault in faults)
    cabinet.sim.expander_fault("mcp1", None)
    cabinet.clock.advance(0.05)
    assert cabinet.locks[9].pulse(1) == 1
    cabinet.clock.advance(1)
    assert cabinet.sim.energised() == ()


def test_large_cabinet_in_the_simulator(make_cabinet) -> None:
    cabinet = make_cabinet(400, auto_open=True, auto_close_s=0, max_concurrent_unlocks=1)
    doors: list[DoorEvent] = []
    cabinet.on_door = doors.append
    for number in (1, 200, 400):
        cabinet.locks[number].pulse(1)
        cabinet.locks[number].lock()
    assert [(d.number, d.is_open) for d in doors] == [
        (1, True),
        (1, False),
        (200, True),
        (200, False),
        (400, True),
        (400, False),
    ]
    assert len(cabinet.expanders) == 50


def test_many_full_flows_run_fast_with_no_sleeping(make_cabinet) -> None:
    cabinet = make_cabinet(24, auto_open=True, auto_close_s=0)
    events: list[object] = []
    cabinet.on_door = events.append
    for i in range(500):
        cabinet.locks[1 + i % 24].pulse(3)
        cabinet.locks[1 + i % 24].lock()
    assert len(events) == 1000 and cabinet.clock.pending == 0


def test_selftest(make_cabinet) -> None:
    cabinet = make_cabinet(4, auto_open=True, auto_close_s=0)
    cabinet.sim.jam_lock(3)
    report = cabinet.selftest(pulse_s=0.2)
    assert report.ok and report.reader == "RC522 VersionReg 0x92"
    assert report.doors_open == {1: False, 2: False, 3: False, 4: False}
    assert report.locks == {1: "door opened", 2: "door opened", 3: "no door edge", 4: "door opened"}
    cabinet.sim.reader_fault("vanish")
    assert not cabinet.selftest().ok


def test_gpio_backend_off_a_pi_is_a_hardware_error(clock) -> None:
    spec = CabinetSpec.from_mapping({"compartments": 4})
    with pytest.warns(Warning), pytest.raises(BackendUnavailable, match='backend = "sim"'):
        open_cabinet(spec, clock=clock)
    sys.modules.pop("RPi", None)  # gpiozero's own attempt to load RPi.GPIO


def test_unknown_backend(clock) -> None:
    with pytest.raises(HardwareConfigError, match="unknown hardware backend"):
        open_cabinet(CabinetSpec.simulated(2), "arduino", clock=clock)


def test_config_chooses_the_simulator(clock) -> None:
    spec = CabinetSpec.from_mapping({"backend": "sim", "compartments": 2})
    with open_cabinet(spec, clock=clock) as cabinet:
        assert cabinet.sim is not None and cabinet.backend == "sim"
        assert repr(cabinet) == "<Cabinet sim with 2 compartments>"


def test_threaded_simulator_in_real_time() -> None:
    spec = CabinetSpec.simulated(4, reader=CabinetSpec.simulated(4).reader.__class__(poll_s=0.01))
    cabinet = open_cabinet(spec, "sim", auto_open=True, auto_close_s=0.05)
    try:
        assert isinstance(cabinet.clock, SystemClock)
        got = threading.Event()
        doors: list[DoorEvent] = []
        closed = threading.Event()

        def on_door(event: DoorEvent) -> None:
            doors.append(event)
            if not event.is_open:
                closed.set()

        cabinet.on_door = on_door
        taps = []
        cabinet.reader.start(lambda tap: (taps.append(tap), got.set()))
        cabinet.sim.tap("DEADBEEF")
        assert got.wait(2.0)
        cabinet.locks[taps[0].uid[0] % 4 + 1].pulse(0.2)
        assert closed.wait(2.0)
        assert [d.is_open for d in doors] == [True, False]
    finally:
        cabinet.close()
    assert not cabinet.reader.running


def test_a_cabinet_left_open_is_closed_at_exit(make_cabinet) -> None:
    cabinet = make_cabinet(4)
    cabinet.locks[1].pulse(3)
    cabinet._atexit()  # what atexit runs when the interpreter ends
    assert cabinet.closed and cabinet.sim.energised() == ()


def test_on_lock_change_reports_every_edge_of_the_lock_output(make_cabinet, clock):
    cabinet = make_cabinet(12)  # on simulated expanders
    edges: list[tuple[int, bool]] = []
    cabinet.sim.on_lock_change = lambda number, energised: edges.append((number, energised))
    cabinet.locks[9].pulse(1.0)
    assert edges == [(9, True)]
    clock.advance(1.0)
    assert edges == [(9, True), (9, False)]


def test_the_simulator_keeps_a_bounded_pin_history(make_cabinet):
    """A demo runs all day: the mock pins must not remember every change ever made."""
    from hardware.sim.simulator import SimPin

    cabinet = make_cabinet(12)
    pin = cabinet.sim.pi_pin(4)  # the expanders' interrupt line: it changes on every edge
    for _ in range(SimPin.HISTORY):
        cabinet.locks[9].pulse()
        cabinet.sim.open_door(9)
        cabinet.locks[9].lock()
        cabinet.sim.close_door(9)
    assert len(pin.states) == SimPin.HISTORY
    pin.clear_states()
    assert len(pin.states) == 1 and pin.states.maxlen == SimPin.HISTORY


def test_the_simulated_reader_does_not_load_numpy():
    """fake_rpi's camera stand-in imports numpy (10 MB in the kiosk process); we skip it.

    Run in a fresh interpreter: other tests may have imported numpy already."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hardware import CabinetSpec, open_cabinet\n"
        "from hardware.clock import ManualClock\n"
        "spec = CabinetSpec.simulated(4, debounce_s=0)\n"
        "cabinet = open_cabinet(spec, 'sim', clock=ManualClock())\n"
        "version = cabinet.reader.check()\n"
        "cabinet.close()\n"
        "print('numpy' in sys.modules, version > 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # no numpy; the reader did answer


def test_an_i2c_failure_on_a_shared_interrupt_line_does_not_silence_its_doors(
    make_cabinet,
) -> None:
    cabinet = make_cabinet(40, debounce_s=0.05)  # mcp0-mcp4 share the interrupt line BCM 4
    sim = cabinet.sim
    doors: list[DoorEvent] = []
    faults: list[HardwareError] = []
    cleared: list[str] = []
    cabinet.on_door = doors.append
    cabinet.on_fault = faults.append
    cabinet.on_fault_cleared = cleared.append
    sim.expander_fault("mcp1", "raise")
    sim.force_door(9)  # mcp1 cannot be read: its interrupt holds the shared line low
    cabinet.clock.advance(0.5)
    for number in (2, 17, 33):  # doors of the other expanders on the line still report
        sim.force_door(number)
    cabinet.clock.advance(0.5)
    assert [(d.number, d.is_open) for d in doors] == [(2, True), (17, True), (33, True)]
    assert [type(f) for f in faults] == [ExpanderError]  # once, not once per retry or edge
    assert cabinet.faults.keys() == {"expander mcp1"} and cleared == []
    assert sim.pi_pin(4).state is False
    sim.expander_fault("mcp1", None)
    cabinet.clock.advance(0.5)
    assert [(d.number, d.is_open) for d in doors][3:] == [(9, True)]  # the lost edge
    assert cleared == ["expander mcp1"] and cabinet.faults == {}
    assert sim.pi_pin(4).state is True and cabinet.clock.pending == 0
    cabinet.locks[10].pulse(1)
    sim.open_door(10)
    cabinet.clock.advance(1.0)
    assert [(d.number, d.is_open, d.forced) for d in doors][4:] == [(10, True, False)]
    assert len(faults) == 1


def test_a_door_edge_being_debounced_survives_an_i2c_failure(make_cabinet) -> None:
    cabinet = make_cabinet(16, debounce_s=0.2)
    sim = cabinet.sim
    doors: list[DoorEvent] = []
    faults: list[HardwareError] = []
    cleared: list[str] = []
    cabinet.on_door = doors.append
    cabinet.on_fault = faults.append
    cabinet.on_fault_cleared = cleared.append
    sim.force_door(3)
    cabinet.clock.advance(0.05)  # edge seen, debounce pending
    sim.expander_fault("mcp0", "raise")
    cabinet.clock.advance(0.4)  # the debounced read fails, and is retried
    assert doors == [] and not cabinet.doors[3].is_open
    assert [type(f) for f in faults] == [ExpanderError]
    assert "expander mcp0" in str(faults[0])
    sim.expander_fault("mcp0", None)
    cabinet.clock.advance(0.1)
    assert [(d.number, d.is_open, d.forced) for d in doors] == [(3, True, True)]
    assert cabinet.doors[3].is_open and cleared == ["expander mcp0"]
    assert len(faults) == 1 and cabinet.clock.pending == 0


def test_a_lock_that_cannot_switch_off_keeps_its_slot_of_the_energise_limit(
    make_cabinet,
) -> None:
    cabinet = make_cabinet(24, max_concurrent_unlocks=1)
    sim = cabinet.sim
    faults: list[HardwareError] = []
    cleared: list[str] = []
    cabinet.on_fault = faults.append
    cabinet.on_fault_cleared = cleared.append
    cabinet.locks[9].pulse(2)  # on mcp1
    sim.expander_fault("mcp1", "raise")
    cabinet.clock.advance(2.0)  # the pulse ends; switching off fails, and is retried
    assert sim.energised() == (9,) and cabinet.energised() == (9,)
    assert cabinet.locks[9].is_energised
    with pytest.raises(LockBusy):
        cabinet.locks[1].pulse(2)  # would be a second solenoid on: over the limit
    with pytest.raises(LockError, match="could not be switched off"):
        cabinet.locks[9].pulse(2)
    cabinet.clock.advance(1.0)
    assert sim.energised() == (9,) and [type(f) for f in faults] == [LockError]
    sim.expander_fault("mcp1", None)
    cabinet.clock.advance(0.05)
    assert sim.energised() == () and cabinet.energised() == ()
    assert not cabinet.locks[9].is_energised and cleared == ["compartment 9 lock"]
    assert cabinet.locks[1].pulse(2) == 2
    assert sim.energised() == (1,)


def test_a_solenoid_rests_between_pulses(make_cabinet, clock) -> None:
    cabinet = make_cabinet(4, lock_rest_s=2.0)
    lock = cabinet.locks[1]
    pin = cabinet.sim.pi_pin(17)

    def again(_event: PulseEnd) -> None:
        lock.pulse(60)  # back to back: refused (LockBusy, logged by the cabinet)

    cabinet.on_pulse_end = again
    assert lock.pulse(60) == 5.0  # clamped to max_unlock_s
    clock.advance(5.0)
    with pytest.raises(LockBusy) as busy:
        lock.pulse(1)
    assert busy.value.retry_after == pytest.approx(2.0)
    clock.advance(1.0)
    with pytest.raises(LockBusy) as busy:
        lock.pulse(1)
    assert busy.value.retry_after == pytest.approx(1.0)
    cabinet.on_pulse_end = None
    clock.advance(1.0)
    assert lock.pulse(1) == 1
    clock.advance(60)
    assert [state.state for state in pin.states] == [False, True, False, True, False]
    assert cabinet.sim.energised() == ()


def test_the_default_rest_stops_back_to_back_pulses(clock) -> None:
    cabinet = open_cabinet(CabinetSpec.simulated(4, debounce_s=0), "sim", clock=clock)
    try:
        lock = cabinet.locks[1]
        on_s = 0.0
        since: list[float] = []

        def change(number: int, energised: bool) -> None:
            nonlocal on_s
            if energised:
                since.append(clock.monotonic())
            else:
                on_s += clock.monotonic() - since[-1]

        cabinet.sim.on_lock_change = change
        cabinet.on_pulse_end = lambda _event: lock.pulse(60)
        lock.pulse(60)
        clock.advance(65)
        assert cabinet.spec.lock_rest_s > 0
        assert on_s == pytest.approx(cabinet.spec.max_unlock_s)  # one pulse, not 13
        assert [s.state for s in cabinet.sim.pi_pin(17).states] == [False, True, False]
    finally:
        cabinet.close()


def test_a_slow_hook_never_delays_a_lock_switching_off() -> None:
    spec = CabinetSpec.simulated(4, max_unlock_s=0.2, unlock_s=0.2, debounce_s=0.01)
    cabinet = open_cabinet(spec, "sim")  # a SystemClock: real threads
    released = threading.Event()
    in_hook = threading.Event()
    hook_threads: list[str] = []

    def slow_on_door(_event: DoorEvent) -> None:
        hook_threads.append(threading.current_thread().name)
        in_hook.set()
        released.wait(10.0)  # blocks until the test has seen the lock switch off

    def lock_changed(number: int, energised: bool) -> None:
        if number == 2 and not energised and in_hook.is_set():
            released.set()

    try:
        cabinet.sim.on_lock_change = lock_changed
        cabinet.on_door = slow_on_door
        cabinet.locks[2].pulse()
        assert cabinet.sim.open_door(2)
        assert released.wait(10.0), "the lock waited for the on_door hook"
        assert hook_threads == ["hardware-timer-events"]
        assert cabinet.sim.energised() == ()
    finally:
        released.set()
        cabinet.close()
