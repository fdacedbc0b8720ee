"""The MCP23017 emulator (register semantics) and our driver on top of it."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.errors import ExpanderError
from hardware.expander import (
    GPINTEN,
    GPIO,
    INTCAP,
    INTF,
    IOCON,
    IODIR,
    MCP23017,
    ExpanderPoller,
    InterruptWatcher,
)
from hardware.faults import FaultReporter
from hardware.gpio import EnergiseGuard, LineFactory, SolenoidLock
from hardware.sim.mcp23017 import MCP23017Emulator, SimSMBus
from hardware.sim.simulator import SimPin
from hardware.spec import PinRef

ADDR = 0x20


@pytest.fixture
def chip() -> MCP23017Emulator:
    return MCP23017Emulator("mcp0")


@pytest.fixture
def bus(chip) -> SimSMBus:
    return SimSMBus(1, {ADDR: chip})


def test_power_on_state(bus) -> None:
    assert bus.read_i2c_block_data(ADDR, 0x00, 22) == [0xFF, 0xFF] + [0] * 20


def test_missing_device_is_a_remote_io_error(bus) -> None:
    with pytest.raises(OSError) as info:
        bus.read_byte_data(0x21, GPIO)
    assert info.value.errno == errno.EREMOTEIO


def test_outputs_latch_and_inputs_follow_the_world(chip, bus) -> None:
    bus.write_byte_data(ADDR, 0x14, 0b0000_0101)  # OLATA
    bus.write_byte_data(ADDR, IODIR, 0b1111_0000)  # A0-A3 outputs
    chip.set_input(4, True)
    bus.write_byte_data(ADDR, 0x0C, 0b0010_0000)  # GPPUA: pull-up on A5
    assert bus.read_byte_data(ADDR, GPIO) == 0b0011_0101
    bus.write_byte_data(ADDR, 0x02, 0b0001_0000)  # IPOLA inverts A4 (an input)
    assert bus.read_byte_data(ADDR, GPIO) == 0b0010_0101
    bus.write_byte_data(ADDR, GPIO, 0b0000_0010)  # writing GPIO writes OLAT
    assert bus.read_byte_data(ADDR, 0x14) == 0b0000_0010
    assert [chip.driven(pin) for pin in range(5)] == [False, True, False, False, None]


def test_sequential_and_byte_modes(chip, bus) -> None:
    chip.set_input(0, True)
    chip.set_input(9, True)
    assert bus.read_i2c_block_data(ADDR, GPIO, 2) == [0x01, 0x02]  # GPIOA then GPIOB
    bus.write_byte_data(ADDR, IOCON, 0x20)  # SEQOP: byte mode toggles A/B
    assert bus.read_i2c_block_data(ADDR, GPIO, 3) == [0x01, 0x02, 0x01]


def test_bank_1_layout(chip, bus) -> None:
    bus.write_byte_data(ADDR, IOCON, 0x80)  # BANK = 1: port A at 0x00-0x0A, B at 0x10-0x1A
    chip.set_input(8, True)
    assert bus.read_byte_data(ADDR, 0x19) == 0x01  # GPIOB in bank 1
    assert bus.read_byte_data(ADDR, 0x05) == 0x80  # IOCON in bank 1
    bus.write_byte_data(ADDR, 0x05, 0x00)
    assert bus.read_byte_data(ADDR, IOCON) == 0x00


def test_interrupt_on_change_is_captured_and_cleared_by_reading(chip, bus) -> None:
    seen: list[tuple[int, bool]] = []
    chip.on_interrupt = lambda port, asserted: seen.append((port, asserted))
    bus.write_byte_data(ADDR, IOCON, 0x44)  # MIRROR | ODR
    bus.write_byte_data(ADDR, GPINTEN + 1, 0b0000_0100)  # B2
    chip.set_input(10, True)
    assert seen == [(0, True), (1, True)]  # mirrored on INTA and INTB
    assert chip.int_level(0) is False  # open-drain, asserted low
    assert bus.read_byte_data(ADDR, INTF + 1) == 0b0000_0100
    chip.set_input(10, False)  # a second change before service: INTCAP keeps the first
    assert bus.read_byte_data(ADDR, INTCAP + 1) == 0b0000_0100
    assert seen[-2:] == [(0, False), (1, False)]
    assert chip.int_level(0) is None
    assert bus.read_byte_data(ADDR, INTF + 1) == 0


def test_defval_comparison_keeps_the_interrupt_while_the_condition_holds(chip, bus) -> None:
    bus.write_byte_data(ADDR, 0x08, 0x01)  # INTCONA: compare A0 with DEFVAL
    bus.write_byte_data(ADDR, GPINTEN, 0x01)
    chip.set_input(0, True)
    assert bus.read_byte_data(ADDR, INTF) == 0x01
    bus.read_byte_data(ADDR, GPIO)
    assert bus.read_byte_data(ADDR, INTF) == 0x01  # still differs from DEFVAL: asserted again
    chip.set_input(0, False)
    bus.read_byte_data(ADDR, GPIO)
    assert bus.read_byte_data(ADDR, INTF) == 0


@given(st.lists(st.tuples(st.integers(0, 15), st.booleans()), max_size=40))
def test_driver_output_levels_match_the_chip(writes) -> None:
    emulator = MCP23017Emulator()
    driver = MCP23017("mcp0", SimSMBus(1, {ADDR: emulator}), ADDR)
    driver.setup()
    lines = {pin: driver.output_line(pin, active_high=True, label=f"p{pin}") for pin in range(16)}
    expected = [False] * 16
    for pin, level in writes:
        (lines[pin].on if level else lines[pin].off)()
        expected[pin] = level
    assert [emulator.driven(pin) for pin in range(16)] == expected
    assert [lines[pin].is_active for pin in range(16)] == expected


def test_outputs_are_configured_latch_first_so_they_never_glitch(chip, bus) -> None:
    driver = MCP23017("mcp0", bus, ADDR)
    driver.setup()
    history: list[tuple[int, bool | None]] = []
    chip.on_output = lambda pin, level: history.append((pin, level))
    low = driver.output_line(3, active_high=False, label="relay")  # active low: off = high
    high = driver.output_line(12, active_high=True, label="mosfet")
    assert history == [(3, True), (12, False)]
    low.on()
    high.on()
    low.close()
    high.close()
    assert history == [
        (3, True),
        (12, False),
        (3, False),
        (12, True),
        (3, True),
        (3, None),
        (12, False),
        (12, None),
    ]


def test_lock_on_an_expander_pin_has_a_whole_history(chip, bus, clock) -> None:
    driver = MCP23017("mcp0", bus, ADDR)
    driver.setup()
    history: list[tuple[int, bool | None]] = []
    chip.on_output = lambda pin, level: history.append((pin, level))
    lines = LineFactory(None, {"mcp0": driver})
    lock = SolenoidLock(
        1,
        lines.output(PinRef("mcp0", 0), active_high=True, label="lock"),
        guard=EnergiseGuard(1),
        clock=clock,
        unlock_s=3,
        max_unlock_s=5,
    )
    lock.pulse(9)
    clock.advance(5)
    assert history == [(0, False), (0, True), (0, False)]


def test_driver_errors_name_the_expander(chip, bus) -> None:
    driver = MCP23017("mcp7", bus, ADDR, bus_number=3)
    driver.setup()
    line = driver.output_line(0, active_high=True, label="lock")
    chip.set_fault("raise")
    with pytest.raises(ExpanderError, match=r"expander mcp7 \(I2C bus 3, address 0x20\)"):
        line.on()
    missing = MCP23017("mcp8", bus, 0x27)
    with pytest.raises(ExpanderError, match="probing the chip failed"):
        missing.setup()
    with pytest.raises(ExpanderError, match="no pull-down"):
        driver.input_line(5, pull="down", label="door")


def test_interrupt_watcher_services_a_shared_line(mock_factory) -> None:
    chips = [MCP23017Emulator(f"mcp{i}") for i in range(2)]
    bus = SimSMBus(1, {0x20: chips[0], 0x21: chips[1]})
    int_pin = mock_factory.pin("GPIO4", pin_class=SimPin)

    def net(_port: int, _asserted: bool) -> None:
        low = any(chip.int_level(0) is False for chip in chips)
        int_pin.set_external(False if low else None)

    drivers = []
    for i, emulator in enumerate(chips):
        emulator.on_interrupt = net
        driver = MCP23017(f"mcp{i}", bus, 0x20 + i)
        driver.setup()
        drivers.append(driver)
    lines = LineFactory(mock_factory)
    watcher = InterruptWatcher(lines.input(PinRef(None, 4), pull="up", label="int"), drivers)
    seen: list[tuple[str, bool]] = []
    inputs = []
    for i, driver in enumerate(drivers):
        line = driver.input_line(9, pull="up", label=f"door{i}")
        line.when_changed = lambda level, i=i: seen.append((f"mcp{i}", level))
        inputs.append(line)
    chips[1].set_input(9, False)
    chips[0].set_input(9, False)
    chips[1].set_input(9, None)  # released: the pull-up makes it high
    assert seen == [("mcp1", False), ("mcp0", False), ("mcp1", True)]
    assert int_pin.state is True  # every interrupt serviced
    watcher.close()


def test_poller_reports_a_failing_expander_once(chip, bus) -> None:
    driver = MCP23017("mcp0", bus, ADDR)
    driver.setup()
    seen: list[bool] = []
    line = driver.input_line(0, pull="up", label="door")
    line.when_changed = seen.append
    faults: list[Exception] = []
    poller = ExpanderPoller([driver], 0.02, on_fault=faults.append)
    chip.set_input(0, False)
    poller.poll_all()
    chip.set_fault("raise")
    poller.poll_all()
    poller.poll_all()
    chip.set_fault(None)
    chip.set_input(0, True)
    poller.poll_all()
    assert seen == [False, True]
    assert len(faults) == 1 and isinstance(faults[0], ExpanderError)
    poller.close()


@given(
    iodir=st.integers(0, 255),
    olat=st.integers(0, 255),
    gppu=st.integers(0, 255),
    external=st.lists(st.sampled_from([None, True, False]), min_size=8, max_size=8),
    port=st.sampled_from([0, 1]),
)
def test_emulator_port_levels_equal_the_per_pin_levels(iodir, olat, gppu, external, port):
    """The emulator computes a port's levels bitwise; it must agree with level() pin by pin."""
    from hardware.sim.mcp23017 import R_GPPU, R_IODIR, R_OLAT, MCP23017Emulator

    chip = MCP23017Emulator("probe")
    chip.regs[R_IODIR][port], chip.regs[R_OLAT][port], chip.regs[R_GPPU][port] = iodir, olat, gppu
    for bit, level in enumerate(external):
        chip.set_input(port * 8 + bit, level)
    expected = sum(int(chip.level(port * 8 + bit)) << bit for bit in range(8))
    assert chip._port_levels(port) == expected


def shared_line(mock_factory, count: int = 2):
    """``count`` emulated expanders with their INTA lines wired together to GPIO4."""
    chips = [MCP23017Emulator(f"mcp{i}") for i in range(count)]
    bus = SimSMBus(1, {0x20 + i: chip for i, chip in enumerate(chips)})
    int_pin = mock_factory.pin("GPIO4", pin_class=SimPin)

    def net(_port: int, _asserted: bool) -> None:
        low = any(chip.int_level(0) is False for chip in chips)
        int_pin.set_external(False if low else None)

    drivers = []
    for i, emulator in enumerate(chips):
        emulator.on_interrupt = net
        driver = MCP23017(f"mcp{i}", bus, 0x20 + i)
        driver.setup()
        drivers.append(driver)
    return chips, drivers, int_pin


def test_interrupt_watcher_keeps_servicing_a_line_held_low_by_a_failed_expander(
    mock_factory, clock
) -> None:
    chips, drivers, int_pin = shared_line(mock_factory)
    faults: list[Exception] = []
    cleared: list[str] = []
    reporter = FaultReporter(faults.append, cleared.append)
    line = LineFactory(mock_factory).input(PinRef(None, 4), pull="up", label="int")
    watcher = InterruptWatcher(line, drivers, faults=reporter, clock=clock)
    seen: list[tuple[str, bool]] = []
    for i, driver in enumerate(drivers):
        door = driver.input_line(9, pull="up", label=f"door{i}")
        door.when_changed = lambda level, i=i: seen.append((f"mcp{i}", level))
    chips[1].set_fault("raise")
    chips[1].set_input(9, False)  # mcp1 cannot be read: its interrupt holds the line low
    for _ in range(3):
        clock.advance(InterruptWatcher.RETRY_S)
    assert int_pin.state is False and seen == []
    chips[0].set_input(9, False)  # no falling edge (the line is low): the retries find it
    clock.advance(InterruptWatcher.RETRY_S)
    assert seen == [("mcp0", False)]
    clock.advance(1.0)
    assert len(faults) == 1 and isinstance(faults[0], ExpanderError)  # once per outage
    assert faults[0].expander == "mcp1" and cleared == []
    chips[1].set_fault(None)
    clock.advance(InterruptWatcher.RETRY_S)
    assert seen == [("mcp0", False), ("mcp1", False)]
    assert int_pin.state is True and cleared == ["expander mcp1"]
    assert clock.pending == 0  # the line is high again: no more catch-up polls
    chips[1].set_input(9, None)  # and edges work as before
    assert seen[-1] == ("mcp1", True)
    watcher.close()


def test_interrupt_watcher_reports_a_line_stuck_low(mock_factory, clock) -> None:
    _chips, drivers, int_pin = shared_line(mock_factory, 1)
    faults: list[Exception] = []
    cleared: list[str] = []
    line = LineFactory(mock_factory).input(PinRef(None, 4), pull="up", label="int")
    watcher = InterruptWatcher(
        line, drivers, faults=FaultReporter(faults.append, cleared.append), clock=clock
    )
    int_pin.set_external(False)  # something else holds the line low
    clock.advance(InterruptWatcher.STUCK_S + 0.5)
    assert len(faults) == 1 and "stays low" in str(faults[0])
    int_pin.set_external(None)
    clock.advance(InterruptWatcher.RETRY_S)
    assert cleared == ["interrupt line int (GPIO4)"] and clock.pending == 0
    watcher.close()


def test_interrupt_watcher_services_a_line_already_low_at_start(mock_factory, clock) -> None:
    chips, drivers, int_pin = shared_line(mock_factory, 1)
    seen: list[bool] = []
    door = drivers[0].input_line(9, pull="up", label="door")
    door.when_changed = seen.append
    chips[0].set_input(9, False)  # before anyone watches the line
    line = LineFactory(mock_factory).input(PinRef(None, 4), pull="up", label="int")
    watcher = InterruptWatcher(line, drivers, clock=clock)
    assert int_pin.state is False
    watcher.start()
    assert seen == [False] and int_pin.state is True
    watcher.close()


def test_fault_reporter_reports_each_outage_and_recovery_once() -> None:
    faults: list[Exception] = []
    cleared: list[str] = []
    reporter = FaultReporter(faults.append, cleared.append)
    error = ExpanderError("gone", expander="mcp0")
    assert reporter.ok("expander mcp0") is False
    assert [reporter.fault("expander mcp0", error) for _ in range(3)] == [True, False, False]
    assert reporter.faults == {"expander mcp0": error} and reporter.failing("expander mcp0")
    assert [reporter.ok("expander mcp0") for _ in range(2)] == [True, False]
    assert reporter.fault("expander mcp0", error) is True  # a new outage
    assert faults == [error, error] and cleared == ["expander mcp0"]
