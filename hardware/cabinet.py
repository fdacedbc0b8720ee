"""The bundle the controller receives: :func:`open_cabinet` and :class:`Cabinet`."""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hardware import _platform
from hardware.clock import Clock, SystemClock
from hardware.errors import HardwareConfigError, HardwareError
from hardware.expander import MCP23017, ExpanderPoller, InterruptWatcher
from hardware.faults import FaultReporter, expander_source
from hardware.gpio import (
    EnergiseGuard,
    GpioIndicators,
    LineFactory,
    ReedDoorSwitch,
    SolenoidLock,
)
from hardware.interfaces import DoorEvent, PulseEnd
from hardware.rfid import RC522Reader
from hardware.spec import CabinetSpec, PinRef

logger = logging.getLogger(__name__)

BACKENDS = ("gpio", "sim")


@dataclass
class SelfTestReport:
    """What :meth:`Cabinet.selftest` found. ``ok`` is True when nothing failed."""

    reader: str = ""
    reader_error: str | None = None
    doors_open: dict[int, bool] = field(default_factory=dict)
    locks: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reader_error is None and not self.errors


class Cabinet:
    """A cabinet: reader, locks, doors and indicators, opened by :func:`open_cabinet`.

    Hooks (assign callables). They are handed to the clock's :meth:`~Clock.dispatch`: with a
    :class:`SystemClock` they run one after another on its event thread, in the order the
    events happened, never on the timer thread that switches solenoids off (a slow hook
    delays the hooks after it, not a lock); with a :class:`ManualClock`, at once:

    - ``on_door(DoorEvent)``: every debounced door edge, with ``forced`` set when the door
      opened while its lock was latched;
    - ``on_pulse_end(PulseEnd)``: a lock pulse ended, with whether the door opened meanwhile;
    - ``on_fault(HardwareError)``: a part started failing (an expander that does not answer
      on I2C, a lock that cannot be switched off, an interrupt line stuck low); reported once
      per outage of each part, while the driver retries;
    - ``on_fault_cleared(source)``: that part works again (``source`` is a key of
      :attr:`faults`, e.g. ``"expander mcp1"``, ``"compartment 3 lock"``).

    Reader errors go to the ``on_error``/``on_recover`` given to ``reader.start``.
    """

    def __init__(self, spec: CabinetSpec, backend: str, clock: Clock, *, own_clock: bool) -> None:
        self.spec = spec
        self.backend = backend
        self.clock = clock
        self._own_clock = own_clock
        self.reader: RC522Reader
        self.locks: dict[int, SolenoidLock] = {}
        self.doors: dict[int, ReedDoorSwitch] = {}
        self.indicators: GpioIndicators
        self.sim: Any = None
        self.expanders: dict[str, MCP23017] = {}
        self.on_door: Callable[[DoorEvent], None] | None = None
        self.on_pulse_end: Callable[[PulseEnd], None] | None = None
        self.on_fault: Callable[[HardwareError], None] | None = None
        self.on_fault_cleared: Callable[[str], None] | None = None
        self._faults = FaultReporter(self._fault, self._fault_cleared)
        self._watchers: list[InterruptWatcher] = []
        self._closables: list[Any] = []
        self._poller: ExpanderPoller | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        # A cabinet left open at interpreter exit is closed (every solenoid de-energised).
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ construction

    def _build(
        self,
        *,
        pin_factory: Any,
        smbus_opener: Callable[[int], Any],
        spi_opener: Callable[[], Any],
        chip_class: Callable[[], type],
    ) -> None:
        spec = self.spec
        buses: dict[int, Any] = {}
        for name, exp in spec.expanders.items():
            if exp.bus not in buses:
                buses[exp.bus] = smbus_opener(exp.bus)
                self._closables.append(buses[exp.bus])
            chip = MCP23017(name, buses[exp.bus], exp.address, bus_number=exp.bus)
            chip.setup()
            self.expanders[name] = chip
            self._closables.append(chip)
        lines = LineFactory(pin_factory, self.expanders)

        nets: dict[PinRef, list[MCP23017]] = {}
        polled: list[MCP23017] = []
        for name, exp in spec.expanders.items():
            if exp.int_pin is None:
                polled.append(self.expanders[name])
            else:
                nets.setdefault(exp.int_pin, []).append(self.expanders[name])
        for pin, chips in nets.items():
            names = ", ".join(chip.name for chip in chips)
            line = lines.input(pin, pull="up", label=f"interrupt of {names}")
            watcher = InterruptWatcher(line, chips, faults=self._faults, clock=self.clock)
            self._watchers.append(watcher)
            self._closables.append(watcher)
        if polled:
            self._poller = ExpanderPoller(polled, spec.expander_poll_s, faults=self._faults)
            self._closables.append(self._poller)

        reset = lines.output(
            PinRef(None, spec.reader.reset_pin), active_high=True, label="reader reset"
        )
        self.reader = RC522Reader(
            spec.reader,
            open_spi=spi_opener,
            chip_class=chip_class,
            reset_line=reset,
            clock=self.clock,
        )

        guard = EnergiseGuard(spec.max_concurrent_unlocks)
        self._guard = guard
        for number in sorted(spec.compartments):
            comp = spec.compartments[number]
            line = lines.output(
                comp.lock, active_high=spec.lock_active_high, label=f"compartment {number} lock"
            )
            self.locks[number] = SolenoidLock(
                number,
                line,
                guard=guard,
                clock=self.clock,
                unlock_s=spec.unlock_s,
                max_unlock_s=spec.max_unlock_s,
                rest_s=spec.lock_rest_s,
                on_pulse_end=self._pulse_ended,
                faults=self._faults,
            )
        for number in sorted(spec.compartments):
            comp = spec.compartments[number]
            line = lines.input(comp.door, pull=spec.door_pull, label=f"compartment {number} door")
            door = ReedDoorSwitch(
                number,
                line,
                open_high=spec.door_open_high,
                debounce_s=spec.debounce_s,
                clock=self.clock,
                faults=self._faults,
            )
            door.on_change = self._door_changed
            self.doors[number] = door

        ind = spec.indicators
        led = None
        if ind.led_pins is not None:
            red, green, blue = (
                lines.output(pin, active_high=ind.led_active_high, label=f"status LED {colour}")
                for pin, colour in zip(ind.led_pins, ("red", "green", "blue"), strict=True)
            )
            led = (red, green, blue)
        buzzer = None
        if ind.buzzer_pin is not None:
            buzzer = lines.output(
                ind.buzzer_pin, active_high=ind.buzzer_active_high, label="buzzer"
            )
        self.indicators = GpioIndicators(led, buzzer, clock=self.clock, alarm_s=ind.alarm_s)
        if self._poller is not None:
            self._poller.start()
        for watcher in self._watchers:
            watcher.start()  # an interrupt raised before it was watched

    # ------------------------------------------------------------------ events

    def _door_changed(self, number: int, is_open: bool) -> None:
        # In the thread that saw the edge: whether the door was forced depends on the lock's
        # state now. The hook itself is dispatched.
        lock = self.locks[number]
        now = self.clock.monotonic()
        forced = False
        if is_open:
            lock.note_door_open()
            released = lock.last_released
            recently = released is not None and now - released <= self.spec.forced_grace_s
            forced = not lock.is_energised and not recently
            if forced:
                logger.warning("compartment %d: door opened while locked (forced?)", number)
        self._emit("on_door", DoorEvent(number, is_open, forced, now))

    def _pulse_ended(self, event: PulseEnd) -> None:
        # Already dispatched by the lock: call the hook here, so that it keeps its place in
        # the order of events.
        self._call("on_pulse_end", event)

    def _fault(self, exc: HardwareError) -> None:
        self._emit("on_fault", exc)

    def _fault_cleared(self, source: str) -> None:
        self._emit("on_fault_cleared", source)

    def _emit(self, hook: str, arg: object) -> None:
        self.clock.dispatch(lambda: self._call(hook, arg))

    def _call(self, hook: str, arg: object) -> None:
        callback = getattr(self, hook)
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            logger.exception("%s callback failed", hook)

    # ------------------------------------------------------------------ API

    @property
    def numbers(self) -> list[int]:
        """The compartment numbers, in order."""
        return sorted(self.locks)

    def energised(self) -> tuple[int, ...]:
        """Numbers of the compartments whose lock is energised now (or not yet switched off
        after an output failure)."""
        return self._guard.energised

    @property
    def faults(self) -> dict[str, str]:
        """The parts failing now (source -> the first error of the outage), e.g.
        ``{"expander mcp1": "expander mcp1 (I2C bus 1, address 0x21): ..."}``; empty when
        everything works."""
        return {source: str(exc) for source, exc in self._faults.faults.items()}

    def poll_inputs(self) -> None:
        """Read every expander now (normally done on interrupt or by the poller thread)."""
        for chip in self.expanders.values():
            source = expander_source(chip.name)
            try:
                chip.poll()
            except HardwareError as exc:
                self._faults.fault(source, exc)
            else:
                self._faults.ok(source)

    def lock_all(self) -> None:
        """De-energise every lock now."""
        for lock in self.locks.values():
            lock.lock()

    def selftest(self, pulse_s: float | None = None) -> SelfTestReport:
        """Check the reader, read every door; with ``pulse_s``, pulse each lock in turn.

        Pulsing waits ``pulse_s`` (plus the debounce) per lock on the cabinet clock and
        reports for each lock whether its door opened (doors with kick-out springs do).
        """
        report = SelfTestReport()
        try:
            version = self.reader.check()
            report.reader = f"RC522 VersionReg {version:#04x}"
        except HardwareError as exc:
            report.reader_error = str(exc)
        for number, door in sorted(self.doors.items()):
            report.doors_open[number] = door.is_open
        if pulse_s is None:
            return report
        for number, lock in sorted(self.locks.items()):
            try:
                lock.pulse(pulse_s)
                self.clock.sleep(pulse_s + self.spec.debounce_s + 0.01)
                lock.lock()
                ended = lock.last_pulse
                opened = ended is not None and ended.door_opened
                report.locks[number] = "door opened" if opened else "no door edge"
            except HardwareError as exc:
                report.locks[number] = f"error: {exc}"
                report.errors.append(f"compartment {number}: {exc}")
        return report

    def close(self) -> None:
        """Stop the reader, de-energise every lock, switch everything off, release the pins.

        Safe to call twice; never raises (failures are logged).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._atexit)
        for lock in self.locks.values():
            try:
                lock.close()
            except Exception:
                logger.exception("closing lock %d failed", lock.number)
        reader = getattr(self, "reader", None)
        if reader is not None:
            try:
                reader.close()
            except Exception:
                logger.exception("closing the reader failed")
        indicators = getattr(self, "indicators", None)
        if indicators is not None:
            try:
                indicators.close()
            except Exception:
                logger.exception("closing the indicators failed")
        for door in self.doors.values():
            try:
                door.close()
            except Exception:
                logger.exception("closing door %d failed", door.number)
        for item in reversed(self._closables):
            try:
                item.close()
            except Exception:
                logger.exception("closing %r failed", item)
        if self._own_clock:
            self.clock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Cabinet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Cabinet {self.backend} with {len(self.locks)} compartments>"


def _closer(ref: weakref.ref[Cabinet]) -> Callable[[], None]:
    def close_at_exit() -> None:
        cabinet = ref()
        if cabinet is not None and not cabinet.closed:
            logger.warning("closing the cabinet at exit (the caller did not)")
            cabinet.close()

    return close_at_exit


def open_cabinet(
    spec: CabinetSpec,
    backend: str | None = None,
    *,
    clock: Clock | None = None,
    pin_factory: Any = None,
    smbus_opener: Callable[[int], Any] | None = None,
    spi_opener: Callable[[], Any] | None = None,
    auto_open: bool = False,
    auto_close_s: float | None = None,
    seed: int = 0,
) -> Cabinet:
    """Open the cabinet described by ``spec`` on ``backend`` (default ``spec.backend``).

    ``"gpio"``: a real Pi. gpiozero's default pin factory is used unless ``pin_factory`` is
    given; ``smbus_opener(bus)`` and ``spi_opener()`` replace smbus2 and spidev (tests).
    ``"sim"``: the simulator (``cabinet.sim``); ``auto_open``/``auto_close_s``/``seed`` are
    passed to :class:`~hardware.sim.simulator.Simulator`; ``pin_factory`` may be a
    ``MockFactory``. ``clock`` defaults to a :class:`SystemClock` owned (and closed) by the
    cabinet; pass a :class:`~hardware.clock.ManualClock` to run without real time.

    The pin map is validated first (:class:`PinConfigError`). Any failure while opening
    closes what was opened and raises a :class:`HardwareError`; the reader itself is opened
    lazily, so a missing reader is reported by the reader thread (or ``reader.check()``),
    not here.
    """
    chosen = backend or spec.backend
    if chosen not in BACKENDS:
        raise HardwareConfigError(
            f'unknown hardware backend {chosen!r}: use "gpio" or "sim"', key="backend"
        )
    spec.validate()
    own_clock = clock is None
    the_clock: Clock = clock if clock is not None else SystemClock()
    cabinet = Cabinet(spec, chosen, the_clock, own_clock=own_clock)
    try:
        if chosen == "sim":
            from hardware.sim.simulator import Simulator

            sim = Simulator(
                spec,
                clock=the_clock,
                pin_factory=pin_factory,
                auto_open=auto_open,
                auto_close_s=auto_close_s,
                seed=seed,
            )
            cabinet.sim = sim
            cabinet._build(
                pin_factory=sim.pin_factory,
                smbus_opener=smbus_opener or sim.open_smbus,
                spi_opener=spi_opener or sim.open_spi,
                chip_class=sim.chip_class,
            )
            sim.reader = cabinet.reader
        else:
            reader = spec.reader
            cabinet._build(
                pin_factory=pin_factory,
                smbus_opener=smbus_opener or _platform.open_smbus,
                spi_opener=spi_opener
                or (lambda: _platform.open_spidev(reader.bus, reader.device, reader.spi_hz)),
                chip_class=lambda: _platform.mfrc522_class(simulated=False),
            )
    except BaseException:
        cabinet.close()
        raise
    logger.info("cabinet opened: %s backend, %d compartments", chosen, len(spec.compartments))
    return cabinet


__all__ = ["BACKENDS", "Cabinet", "SelfTestReport", "open_cabinet"]
