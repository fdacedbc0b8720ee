"""MCP23017 16-bit I2C I/O expander backend (through an smbus2-like bus object).

Wiring: VDD to 3.3 V (so the I2C lines need no level shifter), VSS to ground, SDA to BCM 2
(header pin 3), SCL to BCM 3 (pin 5), RESET to 3.3 V (through 10 kOhm), A0-A2 to ground or
3.3 V to set the address 0x20-0x27 (up to eight per bus). INTA to a free Pi pin (the
``int_pin`` of ``[hardware.expanders]``): the driver sets IOCON.MIRROR (INTA reports both ports)
and IOCON.ODR (open-drain, active low), so several expanders may share one Pi pin, which the
Pi pulls up. Without ``int_pin`` the inputs are polled every ``expander_poll_s`` seconds.

Outputs are configured latch-first (OLAT, then IODIR), so they start at their off level. The
expander has pull-ups (GPPU, 100 kOhm) but no pull-downs: ``door_pull = "down"`` is refused for
expander pins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from hardware.clock import Clock, TimerHandle
from hardware.errors import ExpanderError, HardwareError
from hardware.faults import FaultReporter, expander_source
from hardware.interfaces import InputLine

logger = logging.getLogger(__name__)

# Register addresses with IOCON.BANK = 0 (the power-on layout): A at even, B at odd addresses.
IODIR = 0x00
IPOL = 0x02
GPINTEN = 0x04
DEFVAL = 0x06
INTCON = 0x08
IOCON = 0x0A
GPPU = 0x0C
INTF = 0x0E
INTCAP = 0x10
GPIO = 0x12
OLAT = 0x14

IOCON_MIRROR = 0x40
IOCON_ODR = 0x04
IOCON_VALUE = IOCON_MIRROR | IOCON_ODR


class SMBusLike(Protocol):
    """The subset of ``smbus2.SMBus`` used here."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...


class MCP23017:
    """One expander. Pins are numbered 0-15: A0-A7 are 0-7, B0-B7 are 8-15.

    Every I2C failure raises :class:`ExpanderError` naming the expander, its bus and address.
    """

    def __init__(self, name: str, bus: SMBusLike, address: int, *, bus_number: int = 1) -> None:
        self.name = name
        self.address = address
        self.bus_number = bus_number
        self._bus = bus
        self._mutex = threading.RLock()
        self._iodir = 0xFFFF
        self._olat = 0x0000
        self._gppu = 0x0000
        self._gpinten = 0x0000
        self._last = 0x0000
        self._inputs: dict[int, ExpanderInputLine] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<MCP23017 {self.name} bus {self.bus_number} address {self.address:#04x}>"

    # ------------------------------------------------------------------ raw access

    def _fail(self, action: str, exc: Exception) -> ExpanderError:
        return ExpanderError(
            f"expander {self.name} (I2C bus {self.bus_number}, address {self.address:#04x}): "
            f"{action} failed ({exc}); check its power, SDA/SCL wiring and address pins "
            f"(i2cdetect -y {self.bus_number})",
            expander=self.name,
        )

    def _write_pair(self, register: int, value: int) -> None:
        try:
            self._bus.write_i2c_block_data(self.address, register, [value & 0xFF, value >> 8])
        except OSError as exc:
            raise self._fail(f"writing register {register:#04x}", exc) from exc

    def _write_port(self, register: int, pin: int, value: int) -> None:
        port = pin // 8
        try:
            self._bus.write_byte_data(self.address, register + port, (value >> (8 * port)) & 0xFF)
        except OSError as exc:
            raise self._fail(f"writing register {register + port:#04x}", exc) from exc

    def read_inputs(self) -> int:
        """Read GPIOA and GPIOB (one I2C transaction) as a 16-bit value; clears interrupts."""
        try:
            low, high = self._bus.read_i2c_block_data(self.address, GPIO, 2)
        except OSError as exc:
            raise self._fail("reading the inputs", exc) from exc
        return low | (high << 8)

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Put the chip in a known state (all inputs, no pull-ups, no interrupts); check it."""
        with self._mutex:
            try:
                self._bus.write_byte_data(self.address, IOCON, IOCON_VALUE)
                iocon = self._bus.read_byte_data(self.address, IOCON)
            except OSError as exc:
                raise self._fail("probing the chip", exc) from exc
            if iocon & 0xFE != IOCON_VALUE:
                raise ExpanderError(
                    f"expander {self.name} (I2C bus {self.bus_number}, address "
                    f"{self.address:#04x}) does not behave like an MCP23017 (IOCON reads "
                    f"{iocon:#04x}); check the address",
                    expander=self.name,
                )
            self._write_pair(OLAT, self._olat)
            self._write_pair(IODIR, self._iodir)
            self._write_pair(IPOL, 0)
            self._write_pair(GPPU, self._gppu)
            self._write_pair(INTCON, 0)
            self._write_pair(DEFVAL, 0)
            self._write_pair(GPINTEN, self._gpinten)
            self._last = self.read_inputs()

    def output_line(self, pin: int, *, active_high: bool, label: str) -> ExpanderOutputLine:
        """Make ``pin`` an output at its inactive level (latch first, then direction)."""
        self._check_pin(pin)
        with self._mutex:
            bit = 1 << pin
            if active_high:
                self._olat &= ~bit
            else:
                self._olat |= bit
            self._write_port(OLAT, pin, self._olat)
            self._iodir &= ~bit
            self._write_port(IODIR, pin, self._iodir)
        return ExpanderOutputLine(self, pin, active_high=active_high, label=label)

    def input_line(self, pin: int, *, pull: str, label: str) -> ExpanderInputLine:
        """Make ``pin`` an input with interrupt-on-change; ``pull`` is ``"up"`` or ``"none"``."""
        self._check_pin(pin)
        if pull == "down":
            raise ExpanderError(
                f'{label}: the MCP23017 has no pull-down resistors; use door_pull = "up" '
                'or "none" with an external resistor',
                expander=self.name,
            )
        with self._mutex:
            bit = 1 << pin
            if pull == "up":
                self._gppu |= bit
            else:
                self._gppu &= ~bit
            self._write_port(GPPU, pin, self._gppu)
            self._iodir |= bit
            self._write_port(IODIR, pin, self._iodir)
            self._gpinten |= bit
            self._write_port(GPINTEN, pin, self._gpinten)
            line = ExpanderInputLine(self, pin, label=label)
            self._inputs[pin] = line
            self._last = self.read_inputs()
        return line

    def _check_pin(self, pin: int) -> None:
        if not 0 <= pin < 16:
            raise ExpanderError(
                f"expander {self.name} has pins 0-15, not {pin}", expander=self.name
            )
        if self._closed:
            raise ExpanderError(f"expander {self.name} is closed", expander=self.name)

    # ------------------------------------------------------------------ pins

    def write_pin(self, pin: int, level: bool) -> None:
        """Drive output ``pin`` high or low (read-modify-write of the latch shadow)."""
        with self._mutex:
            new = self._olat | (1 << pin) if level else self._olat & ~(1 << pin)
            self._write_port(OLAT, pin, new)
            self._olat = new

    def output_level(self, pin: int) -> bool:
        """The level last written to output ``pin``."""
        return bool(self._olat >> pin & 1)

    def read_pin(self, pin: int) -> bool:
        """Read the current level of ``pin``."""
        return bool(self.read_inputs() >> pin & 1)

    def poll(self) -> int:
        """Read the inputs; call the lines whose level changed. Returns the changed bits."""
        with self._mutex:
            if self._closed:
                return 0
            levels = self.read_inputs()
            changed = (levels ^ self._last) & self._gpinten
            self._last = levels
            lines = [
                (self._inputs[pin], bool(levels >> pin & 1))
                for pin in self._inputs
                if changed >> pin & 1
            ]
        for line, level in lines:
            line.notify(level)
        return changed

    def release_pin(self, pin: int) -> None:
        """Return ``pin`` to an input without pull-up or interrupt (its power-on state)."""
        with self._mutex:
            if self._closed:
                return
            bit = 1 << pin
            self._inputs.pop(pin, None)
            try:
                if not self._iodir & bit:
                    self._iodir |= bit
                    self._write_port(IODIR, pin, self._iodir)
                if self._gpinten & bit:
                    self._gpinten &= ~bit
                    self._write_port(GPINTEN, pin, self._gpinten)
            except ExpanderError:
                logger.warning("expander %s: could not release pin %d", self.name, pin)

    def close(self) -> None:
        """Every pin back to input (outputs released, so drivers see their off level)."""
        with self._mutex:
            if self._closed:
                return
            try:
                self._olat = 0
                self._write_pair(GPINTEN, 0)
                self._write_pair(IODIR, 0xFFFF)
            except ExpanderError:
                logger.exception("expander %s: could not release the pins", self.name)
            self._closed = True
            self._inputs.clear()


class ExpanderOutputLine:
    """One expander pin as an output, in logical terms (see :class:`~hardware.OutputLine`)."""

    def __init__(self, chip: MCP23017, pin: int, *, active_high: bool, label: str) -> None:
        self.chip = chip
        self.pin = pin
        self.active_high = active_high
        port = "A" if pin < 8 else "B"
        self.name = f"{label} ({chip.name}:{port}{pin % 8})"
        self._closed = False

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def _set(self, active: bool) -> None:
        if self._closed:
            raise HardwareError(f"{self.name} is closed")
        self.chip.write_pin(self.pin, active == self.active_high)

    @property
    def is_active(self) -> bool:
        return not self._closed and self.chip.output_level(self.pin) == self.active_high

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.off()
        finally:
            self._closed = True
            self.chip.release_pin(self.pin)


class ExpanderInputLine:
    """One expander pin as an input; ``when_changed(level)`` is called by :meth:`MCP23017.poll`."""

    def __init__(self, chip: MCP23017, pin: int, *, label: str) -> None:
        self.chip = chip
        self.pin = pin
        port = "A" if pin < 8 else "B"
        self.name = f"{label} ({chip.name}:{port}{pin % 8})"
        self.when_changed: Callable[[bool], None] | None = None
        self._closed = False

    @property
    def level(self) -> bool:
        return self.chip.read_pin(self.pin)

    def notify(self, level: bool) -> None:
        callback = self.when_changed
        if callback is not None and not self._closed:
            callback(level)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.when_changed = None
        self.chip.release_pin(self.pin)


class InterruptWatcher:
    """Services expanders whose INTA lines are wired (together) to one Pi input.

    On a falling edge it polls each expander (reading GPIO clears its interrupt) and repeats,
    up to :attr:`MAX_ROUNDS` times, while the line is still low, so a change that arrives
    during the service is not lost.

    The line is open-drain and shared: an expander whose read fails keeps its interrupt, holds
    the line low, and no further falling edge can come. So while the line stays low after a
    service, every expander on it is polled again every ``retry_s`` seconds on ``clock`` (a
    catch-up poll) until the line is released: the doors of the other expanders keep working
    meanwhile (with up to ``retry_s`` more latency), and the failed expander's changes are
    delivered as soon as it answers again. Each failing expander is reported once per outage
    to ``faults`` (source ``"expander <name>"``), and its recovery once. A line that stays low
    for :attr:`STUCK_S` seconds although every expander answers (a short, a chip not in the
    configuration) is reported as source ``"interrupt line <name>"``.

    Without a ``clock`` nothing is retried (the line must go high and low again).
    """

    MAX_ROUNDS = 8
    RETRY_S = 0.05
    STUCK_S = 1.0

    def __init__(
        self,
        line: InputLine,
        expanders: Iterable[MCP23017],
        *,
        on_fault: Callable[[HardwareError], None] | None = None,
        faults: FaultReporter | None = None,
        clock: Clock | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.line = line
        self.expanders = list(expanders)
        self.faults = faults if faults is not None else FaultReporter(on_fault)
        self.clock = clock
        self.retry_s = self.RETRY_S if retry_s is None else retry_s
        self.source = f"interrupt line {line.name}"
        self._state = threading.Lock()
        self._running = False
        self._wanted = False
        self._closed = False
        self._retry: TimerHandle | None = None
        self._stuck_since: float | None = None
        line.when_changed = self._edge

    def _edge(self, level: bool) -> None:
        if not level:
            self.service()

    def start(self) -> None:
        """Service the expanders now if the line is already low (an edge before we watched)."""
        if not self.line.level:
            self.service()

    def service(self) -> None:
        """Poll every expander, repeating while the line is low; retry later if it stays low.

        Safe to call from any thread: a call while another thread services makes that thread
        go round once more instead.
        """
        with self._state:
            if self._closed:
                return
            self._wanted = True
            if self._running:
                return
            self._running = True
        still_low = True
        try:
            while True:
                with self._state:
                    if not self._wanted or self._closed:
                        break
                    self._wanted = False
                still_low = self._rounds()
        finally:
            with self._state:
                self._running = False
                if still_low and not self._closed:
                    self._schedule_retry()

    def _rounds(self) -> bool:
        """Up to MAX_ROUNDS polls of every expander; True if the line is still low after."""
        failed = False
        for _ in range(self.MAX_ROUNDS):
            failed = False
            for chip in self.expanders:
                source = expander_source(chip.name)
                try:
                    chip.poll()
                except HardwareError as exc:
                    failed = True
                    self.faults.fault(source, exc)
                else:
                    self.faults.ok(source)
            if self.line.level:
                self._stuck_since = None
                self.faults.ok(self.source)
                return False
            if failed:
                break  # polling again at once would fail again: wait retry_s
        self._check_stuck(failed)
        return True

    def _check_stuck(self, failed: bool) -> None:
        if failed or self.clock is None:
            self._stuck_since = None  # a failing expander explains the low line
            return
        now = self.clock.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
        elif now - self._stuck_since >= self.STUCK_S:
            names = ", ".join(chip.name for chip in self.expanders)
            self.faults.fault(
                self.source,
                ExpanderError(
                    f"the interrupt line {self.line.name} stays low although expanders {names} "
                    "were all read; check for a short to ground or another chip on the line "
                    "(it is polled every "
                    f"{self.retry_s:g} s meanwhile)"
                ),
            )

    def _schedule_retry(self) -> None:
        # Called with self._state held.
        if self.clock is None or self._retry is not None:
            return
        self._retry = self.clock.call_later(self.retry_s, self._retry_due)

    def _retry_due(self) -> None:
        with self._state:
            self._retry = None
        self.service()

    def close(self) -> None:
        with self._state:
            self._closed = True
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
        self.line.close()


class ExpanderPoller:
    """Polls expanders without an interrupt line every ``interval`` seconds, in one thread.

    A failing expander is reported once per outage to ``faults`` (source
    ``"expander <name>"``), and its recovery once; it is polled on as usual meanwhile.
    """

    def __init__(
        self,
        expanders: Iterable[MCP23017],
        interval: float,
        *,
        on_fault: Callable[[HardwareError], None] | None = None,
        faults: FaultReporter | None = None,
    ) -> None:
        self.expanders = list(expanders)
        self.interval = interval
        self.faults = faults if faults is not None else FaultReporter(on_fault)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_all(self) -> None:
        """Poll every expander once, synchronously (what the thread does each interval)."""
        for chip in self.expanders:
            source = expander_source(chip.name)
            try:
                chip.poll()
            except HardwareError as exc:
                self.faults.fault(source, exc)
            else:
                self.faults.ok(source)

    def start(self) -> None:
        if self._thread is not None or not self.expanders:
            return
        self._thread = threading.Thread(target=self._run, name="mcp23017-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_all()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None


__all__ = [
    "MCP23017",
    "ExpanderInputLine",
    "ExpanderOutputLine",
    "ExpanderPoller",
    "InterruptWatcher",
    "SMBusLike",
]
