"""Drivers for locks, door switches, the status LED and the buzzer, on gpiozero.

Devices never call a GPIO library: they get *lines* from a :class:`LineFactory`, which asks
gpiozero (with an injectable pin factory: the real one on a Pi, ``MockFactory`` in the
simulator and the tests) for Pi pins, and an :class:`~hardware.expander.MCP23017` for
expander pins such as ``mcp0:A3``.

Wiring
------
Locks: each solenoid is switched by a relay or a logic-level MOSFET board. ``lock_active_high
= true`` suits MOSFET boards and relay boards whose input turns the relay on when high; most
cheap opto-isolated relay modules turn on when their input is *low*: set
``lock_active_high = false``. Put a flyback diode across each solenoid (most boards have
one). The Pi's pins are inputs until the kiosk starts: choose lock pins whose boot-time pull
keeps the driver off (BCM 9-27 are pulled low at boot, BCM 0-8 high), or fit a 10 kOhm
resistor to the off level on the board input. Expander outputs are written latch-first
(OLAT, then IODIR), so they start at the off level with no glitch.

Door switches: a normally-open reed switch between the pin and ground, magnet on the door;
the internal pull-up (``door_pull = "up"``) keeps the pin high while the door is open
(magnet away) and the closed switch pulls it low when the door is shut
(``door_open_high = true``). For long cable runs add an external 4.7 kOhm pull-up and a
100 nF capacitor to ground.

Status LED: an RGB LED with a resistor (about 330 Ohm) per colour; common cathode to ground is
``led_active_high = true``, common anode to 3.3 V is ``false``. Buzzer: an *active* buzzer
module (it sounds on a steady level), through a transistor if it draws more than 10 mA.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from hardware.clock import Clock, TimerHandle
from hardware.errors import (
    BackendUnavailable,
    DeviceClosed,
    HardwareError,
    LockBusy,
    LockError,
)
from hardware.faults import FaultReporter, source_of
from hardware.interfaces import DoorSwitch, Indicators, InputLine, Lock, OutputLine, PulseEnd
from hardware.spec import PinRef

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- lines


class GpioOutputLine:
    """A Pi pin as an output, through a gpiozero ``DigitalOutputDevice`` (off at creation)."""

    def __init__(self, pin: PinRef, *, active_high: bool, pin_factory: Any, label: str) -> None:
        from gpiozero import DigitalOutputDevice

        self.name = f"{label} ({pin})"
        try:
            self._device = DigitalOutputDevice(
                f"GPIO{pin.number}",
                active_high=active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        except Exception as exc:
            raise _gpio_error(exc, self.name) from exc
        self._closed = False

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def _set(self, value: bool) -> None:
        if self._closed:
            raise DeviceClosed(f"{self.name} is closed")
        try:
            self._device.value = value
        except Exception as exc:
            raise HardwareError(f"cannot drive {self.name}: {exc}") from exc

    @property
    def is_active(self) -> bool:
        return not self._closed and bool(self._device.value)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._device.off()
        finally:
            self._device.close()


class GpioInputLine:
    """A Pi pin as an input, through a gpiozero ``DigitalInputDevice`` (no gpiozero debounce:
    debouncing is done by the door switch on the cabinet's clock)."""

    def __init__(self, pin: PinRef, *, pull: str, pin_factory: Any, label: str) -> None:
        from gpiozero import DigitalInputDevice

        self.name = f"{label} ({pin})"
        self.when_changed: Callable[[bool], None] | None = None
        pull_up = {"up": True, "down": False, "none": None}[pull]
        try:
            self._device = DigitalInputDevice(
                f"GPIO{pin.number}",
                pull_up=pull_up,
                active_state=True if pull_up is None else None,
                pin_factory=pin_factory,
            )
        except Exception as exc:
            raise _gpio_error(exc, self.name) from exc
        # is_active is True at the level that is not the pull's: map it back to a level.
        self._active_level = pull_up is not True
        self._device.when_activated = lambda: self._changed(self._active_level)
        self._device.when_deactivated = lambda: self._changed(not self._active_level)
        self._closed = False

    def _changed(self, level: bool) -> None:
        callback = self.when_changed
        if callback is not None:
            callback(level)

    @property
    def level(self) -> bool:
        return bool(self._device.pin.state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.when_changed = None
        self._device.close()


def _gpio_error(exc: Exception, name: str) -> HardwareError:
    kind = type(exc).__name__
    if kind in ("BadPinFactory", "PinFactoryFallback", "PinUnknownPi"):
        return BackendUnavailable(
            f"no GPIO library can drive the pins here ({kind}: {exc}); on a Raspberry Pi "
            'install lgpio (Pi 5: python3-lgpio), elsewhere use backend = "sim"'
        )
    if kind == "GPIOPinInUse":
        return HardwareError(f"{name}: the pin is already in use ({exc})")
    return HardwareError(f"{name}: cannot set up the pin ({kind}: {exc})")


class LineFactory:
    """Makes output and input lines for pins of the Pi or of MCP23017 expanders.

    ``pin_factory`` is a gpiozero pin factory (None: gpiozero's default); ``expanders`` maps
    names to :class:`~hardware.expander.MCP23017` drivers.
    """

    def __init__(self, pin_factory: Any = None, expanders: Mapping[str, Any] | None = None) -> None:
        self.pin_factory = pin_factory
        self.expanders = dict(expanders or {})

    def output(self, pin: PinRef, *, active_high: bool, label: str) -> OutputLine:
        """An output line, off (inactive) from the start."""
        if pin.on_pi:
            return GpioOutputLine(
                pin, active_high=active_high, pin_factory=self.pin_factory, label=label
            )
        return self._expander(pin, label).output_line(
            pin.number, active_high=active_high, label=label
        )

    def input(self, pin: PinRef, *, pull: str, label: str) -> InputLine:
        """An input line with the given pull (``"up"``, ``"down"`` or ``"none"``)."""
        if pin.on_pi:
            return GpioInputLine(pin, pull=pull, pin_factory=self.pin_factory, label=label)
        return self._expander(pin, label).input_line(pin.number, pull=pull, label=label)

    def _expander(self, pin: PinRef, label: str) -> Any:
        try:
            return self.expanders[pin.expander or ""]
        except KeyError:
            raise HardwareError(f"{label}: expander {pin.expander!r} is not set up") from None


# --------------------------------------------------------------------------- locks

#: Clock times are floats: a rest short by less than this still counts as done (seconds).
_EPSILON_S = 1e-6


class EnergiseGuard:
    """Counts energised solenoids and refuses more than ``limit`` at once (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._energised: dict[int, float] = {}  # number -> time its pulse ends

    def acquire(self, number: int, until: float, now: float) -> None:
        with self._lock:
            if number in self._energised:
                self._energised[number] = until
                return
            if len(self._energised) >= self.limit:
                numbers = tuple(sorted(self._energised))
                retry_after = max(0.0, min(self._energised.values()) - now)
                raise LockBusy(
                    f"compartment {number}: {len(numbers)} lock(s) already energised "
                    f"(compartments {', '.join(map(str, numbers))}); the power supply allows "
                    f"{self.limit} at once, retry in {retry_after:.1f} s",
                    number=number,
                    energised=numbers,
                    retry_after=retry_after,
                )
            self._energised[number] = until

    def hold(self, number: int, until: float) -> None:
        """Move the expected end of ``number``'s slot (a switch-off being retried)."""
        with self._lock:
            if number in self._energised:
                self._energised[number] = until

    def release(self, number: int) -> None:
        with self._lock:
            self._energised.pop(number, None)

    @property
    def energised(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._energised))


class SolenoidLock(Lock):
    """A fail-secure solenoid lock: energised only during a pulse, on a timer it owns.

    The pulse ends by itself after at most ``max_unlock_s`` seconds from the moment the
    solenoid was energised, whatever the caller does; a new pulse while energised extends the
    pulse but never past that limit. The timer runs on the clock's timer thread, where no
    user callback runs: ``on_pulse_end`` is handed to :meth:`Clock.dispatch`.

    If switching off fails (I2C error on an expander), the solenoid still counts as energised
    until a switch-off succeeds: :attr:`is_energised` stays True, its slot of the
    :class:`EnergiseGuard` stays taken (so no other lock goes over the limit meanwhile), and
    :meth:`pulse` raises :class:`LockError`. The switch-off is retried every
    :attr:`RETRY_OFF_S` seconds; the failure is reported once to ``faults`` (source
    ``"compartment N lock"``), and so is the recovery.

    Duty cycle: after a pulse the solenoid rests at least ``rest_s`` seconds before it may be
    energised again; :meth:`pulse` raises :class:`LockBusy` (with ``retry_after``) sooner.
    """

    RETRY_OFF_S = 0.05

    def __init__(
        self,
        number: int,
        line: OutputLine,
        *,
        guard: EnergiseGuard,
        clock: Clock,
        unlock_s: float,
        max_unlock_s: float,
        rest_s: float = 0.0,
        on_pulse_end: Callable[[PulseEnd], None] | None = None,
        on_fault: Callable[[HardwareError], None] | None = None,
        faults: FaultReporter | None = None,
    ) -> None:
        self.number = number
        self._line = line
        self._guard = guard
        self._clock = clock
        self.unlock_s = unlock_s
        self.max_unlock_s = max_unlock_s
        self.rest_s = rest_s
        self.on_pulse_end = on_pulse_end
        self.faults = faults if faults is not None else FaultReporter(on_fault)
        self.source = f"compartment {number} lock"
        self._mutex = threading.RLock()
        self._timer: TimerHandle | None = None
        self._retry: TimerHandle | None = None
        self._energised_at: float | None = None
        self._released_at: float | None = None
        self._last_pulse: PulseEnd | None = None
        self._door_opened = False
        self._off_pending = False
        self._off_energised = False  # the solenoid whose switch-off is pending had been on
        self._closed = False

    @property
    def is_energised(self) -> bool:
        """True during a pulse, and after it until the switch-off has succeeded."""
        return self._energised_at is not None or self._off_pending

    @property
    def last_released(self) -> float | None:
        """Clock time at which the solenoid was last de-energised (None: never energised)."""
        return self._released_at

    @property
    def last_pulse(self) -> PulseEnd | None:
        """The end of the last pulse (None: no pulse ended yet)."""
        return self._last_pulse

    def note_door_open(self) -> None:
        """Called by the cabinet when the door is seen open (recorded in :class:`PulseEnd`)."""
        with self._mutex:
            if self._energised_at is not None:
                self._door_opened = True

    def pulse(self, seconds: float | None = None) -> float:
        duration = self.unlock_s if seconds is None else float(seconds)
        if not duration > 0:
            raise ValueError(f"a pulse lasts a positive number of seconds, not {seconds!r}")
        with self._mutex:
            if self._closed:
                raise DeviceClosed(f"compartment {self.number}: the lock is closed")
            if self._off_pending:
                raise LockError(
                    f"compartment {self.number}: the lock could not be switched off after its "
                    f"last pulse (output failure); retrying every {self.RETRY_OFF_S:g} s, no "
                    "new pulse until it is off",
                    number=self.number,
                )
            now = self._clock.monotonic()
            if self._energised_at is None and self._released_at is not None and self.rest_s > 0:
                wait = self._released_at + self.rest_s - now
                if wait > _EPSILON_S:
                    raise LockBusy(
                        f"compartment {self.number}: the solenoid rests {self.rest_s:g} s "
                        f"between pulses (lock_rest_s); retry in {wait:.2f} s",
                        number=self.number,
                        energised=self._guard.energised,
                        retry_after=wait,
                        resting=True,
                    )
            start = self._energised_at if self._energised_at is not None else now
            end = min(now + duration, start + self.max_unlock_s)
            granted = max(0.0, end - now)
            if granted <= 0:
                return 0.0  # already at the limit: the running timer ends it now
            self._guard.acquire(self.number, end, now)
            if self._energised_at is None:
                # Marked energised before the output switches: a door that springs open at
                # once (its edge may arrive synchronously) must not look forced.
                self._energised_at = now
                self._door_opened = False
                try:
                    self._line.on()
                except HardwareError as exc:
                    self._energised_at = None
                    # The write may or may not have reached the driver: switch off, and keep
                    # the guard's slot until that succeeds.
                    self._switch_off(energised=False)
                    raise LockError(
                        f"compartment {self.number}: cannot energise the lock ({exc})",
                        number=self.number,
                    ) from exc
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._clock.call_later(granted, self._expire)
            if granted < duration:
                logger.info(
                    "compartment %d: pulse of %.2f s clamped to %.2f s (max_unlock_s %.1f)",
                    self.number,
                    duration,
                    granted,
                    self.max_unlock_s,
                )
            return granted

    def lock(self) -> None:
        self._release("lock")

    def _expire(self) -> None:
        self._release("timer")

    def _release(self, reason: str) -> None:
        with self._mutex:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._energised_at is None:
                return
            start = self._energised_at
            self._energised_at = None
            event = PulseEnd(
                self.number, self._clock.monotonic() - start, self._door_opened, reason
            )
            self._last_pulse = event
            self._switch_off(energised=True)
        callback = self.on_pulse_end
        if callback is not None:
            self._clock.dispatch(lambda: callback(event))

    def _switch_off(self, *, energised: bool) -> None:
        """Drive the output off; on failure keep the slot and retry. Call with the mutex held.

        ``energised``: the solenoid was on (its rest starts when it goes off); False after an
        on-write that failed.
        """
        energised = energised or self._off_energised
        try:
            self._line.off()
        except HardwareError as exc:
            first = not self._off_pending
            self._off_pending = True
            self._off_energised = energised
            if first:
                logger.critical(
                    "compartment %d: cannot de-energise the lock (%s); retrying every %.2f s",
                    self.number,
                    exc,
                    self.RETRY_OFF_S,
                )
                self.faults.fault(
                    self.source,
                    LockError(
                        f"compartment {self.number}: cannot de-energise the lock ({exc}); "
                        "check the expander and its I2C wiring",
                        number=self.number,
                    ),
                )
            if not self._closed and self._retry is None:
                self._retry = self._clock.call_later(self.RETRY_OFF_S, self._retry_off)
                self._guard.hold(self.number, self._clock.monotonic() + self.RETRY_OFF_S)
            return
        was_pending, self._off_pending, self._off_energised = self._off_pending, False, False
        if energised:
            self._released_at = self._clock.monotonic()
        self._guard.release(self.number)
        if was_pending:
            logger.warning("compartment %d: the lock is de-energised again", self.number)
            self.faults.ok(self.source)

    def _retry_off(self) -> None:
        with self._mutex:
            self._retry = None
            if self._off_pending and not self._closed:
                self._switch_off(energised=False)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._release("close")
            self._closed = True
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            try:
                self._line.close()
            except Exception:
                logger.exception("compartment %d: closing the lock output failed", self.number)
            if self._off_pending:
                logger.critical(
                    "compartment %d: closed while the lock could not be de-energised",
                    self.number,
                )
                self._off_pending = False
            self._guard.release(self.number)


# --------------------------------------------------------------------------- doors


class ReedDoorSwitch(DoorSwitch):
    """A door switch debounced on the cabinet clock: a level must hold ``debounce_s``.

    ``on_change(number, is_open)`` is called from whatever thread noticed the edge
    (gpiozero's, the expander's, or the timer) and must be quick (the cabinet's own hook);
    ``when_opened`` / ``when_closed`` (no arguments) are handed to :meth:`Clock.dispatch`.

    If reading the line fails when the level is due (I2C error on an expander), the read is
    retried every :attr:`RETRY_S` seconds until it succeeds, and the edge is delivered then;
    the failure is reported once to ``faults`` (source ``"expander <name>"``, or
    ``"compartment N door"``), and so is the recovery.
    """

    RETRY_S = 0.05

    def __init__(
        self,
        number: int,
        line: InputLine,
        *,
        open_high: bool,
        debounce_s: float,
        clock: Clock,
        faults: FaultReporter | None = None,
    ) -> None:
        self.number = number
        self._line = line
        self._open_high = open_high
        self.debounce_s = debounce_s
        self._clock = clock
        self.faults = faults if faults is not None else FaultReporter()
        self.when_opened: Callable[[], None] | None = None
        self.when_closed: Callable[[], None] | None = None
        self.on_change: Callable[[int, bool], None] | None = None
        self._mutex = threading.RLock()
        self._pending: TimerHandle | None = None
        self._failing: str | None = None  # the fault source while reads fail
        self._is_open = line.level == open_high
        self._closed = False
        line.when_changed = self._raw_edge

    @property
    def is_open(self) -> bool:
        return self._is_open

    def _raw_edge(self, _level: bool) -> None:
        if self._closed:
            return
        if self.debounce_s <= 0:
            self._settle()
            return
        with self._mutex:
            if self._pending is not None:
                self._pending.cancel()
            self._pending = self._clock.call_later(self.debounce_s, self._settle)

    def _settle(self) -> None:
        failure: tuple[str, HardwareError] | None = None
        recovered: str | None = None
        changed = False
        with self._mutex:
            self._pending = None
            if self._closed:
                return
            try:
                level = self._line.level
            except HardwareError as exc:
                failure = (source_of(exc, f"compartment {self.number} door"), exc)
                self._failing = failure[0]
                self._pending = self._clock.call_later(self.RETRY_S, self._settle)
            else:
                recovered, self._failing = self._failing, None
                is_open = level == self._open_high
                changed = is_open != self._is_open
                self._is_open = is_open
        if failure is not None:
            self.faults.fault(*failure)
            return
        if recovered is not None:
            self.faults.ok(recovered)
        if not changed:
            return
        callback = self.when_opened if is_open else self.when_closed
        if callback is not None:
            self._clock.dispatch(callback)
        if self.on_change is not None:
            try:
                self.on_change(self.number, is_open)
            except Exception:
                logger.exception("door %d callback failed", self.number)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None
        self._line.close()


# --------------------------------------------------------------------------- indicators

#: Status names and colours -> (red, green, blue).
COLOURS: dict[str, tuple[bool, bool, bool]] = {
    "off": (False, False, False),
    "red": (True, False, False),
    "green": (False, True, False),
    "blue": (False, False, True),
    "amber": (True, True, False),
    "yellow": (True, True, False),
    "cyan": (False, True, True),
    "magenta": (True, False, True),
    "white": (True, True, True),
}
STATUS_COLOURS: dict[str, str] = {
    "idle": "blue",
    "ok": "green",
    "busy": "amber",
    "refused": "red",
    "error": "red",
    "alarm": "red",
    "off": "off",
}
#: Buzzer patterns: (on seconds, off seconds) steps, and whether the pattern repeats.
PATTERNS: dict[str, tuple[tuple[tuple[float, float], ...], bool]] = {
    "ok": (((0.08, 0.0),), False),
    "refused": (((0.15, 0.1), (0.15, 0.0)), False),
    "alarm": (((0.5, 0.5),), True),
}
ALARM_BLINK_S = 0.25


class GpioIndicators(Indicators):
    """The status RGB LED and the active buzzer, timed on the cabinet clock.

    ``alarm`` blinks the LED red and repeats the alarm beep until another state or ``off()``,
    for at most ``alarm_s`` seconds. Either part may be absent (None lines): calls are no-ops.
    """

    def __init__(
        self,
        led: tuple[OutputLine, OutputLine, OutputLine] | None,
        buzzer: OutputLine | None,
        *,
        clock: Clock,
        alarm_s: float = 30.0,
    ) -> None:
        self._led = led
        self._buzzer = buzzer
        self._clock = clock
        self.alarm_s = alarm_s
        self._mutex = threading.RLock()
        self._led_timer: TimerHandle | None = None
        self._buzz_timer: TimerHandle | None = None
        self._led_generation = 0
        self._buzz_generation = 0
        self.state = "off"
        self._closed = False

    def status(self, state: str) -> None:
        name = state.strip().lower()
        colour = STATUS_COLOURS.get(name, name)
        if colour not in COLOURS:
            known = sorted(set(STATUS_COLOURS) | set(COLOURS))
            raise ValueError(f"unknown status {state!r}; use one of {', '.join(known)}")
        with self._mutex:
            if self._closed:
                raise DeviceClosed("the indicators are closed")
            self._led_generation += 1
            if self._led_timer is not None:
                self._led_timer.cancel()
                self._led_timer = None
            self.state = name
            self._show(COLOURS[colour])
            if name == "alarm":
                deadline = self._clock.monotonic() + self.alarm_s
                self._blink(self._led_generation, False, deadline)

    def _blink(self, generation: int, lit: bool, deadline: float) -> None:
        with self._mutex:
            if generation != self._led_generation or self._closed:
                return
            if self._clock.monotonic() >= deadline:
                self._show(COLOURS["red"])
                return
            self._show(COLOURS["red"] if lit else COLOURS["off"])
            self._led_timer = self._clock.call_later(
                ALARM_BLINK_S, lambda: self._blink(generation, not lit, deadline)
            )

    def _show(self, rgb: tuple[bool, bool, bool]) -> None:
        if self._led is None:
            return
        for line, value in zip(self._led, rgb, strict=True):
            if value:
                line.on()
            else:
                line.off()

    def beep(self, pattern: str) -> None:
        name = pattern.strip().lower()
        if name not in PATTERNS:
            raise ValueError(f"unknown beep pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
        with self._mutex:
            if self._closed:
                raise DeviceClosed("the indicators are closed")
            self._buzz_generation += 1
            if self._buzz_timer is not None:
                self._buzz_timer.cancel()
                self._buzz_timer = None
            if self._buzzer is None:
                return
            steps, repeat = PATTERNS[name]
            segments = tuple(
                segment
                for on_s, off_s in steps
                for segment in ((True, on_s), (False, off_s))
                if segment[1] > 0 or not segment[0]
            )
            deadline = self._clock.monotonic() + self.alarm_s
            self._buzz_run(self._buzz_generation, segments, 0, repeat, deadline)

    def _buzz_run(
        self,
        generation: int,
        segments: tuple[tuple[bool, float], ...],
        index: int,
        repeat: bool,
        deadline: float,
    ) -> None:
        with self._mutex:
            if generation != self._buzz_generation or self._closed or self._buzzer is None:
                return
            if index >= len(segments):
                if repeat and self._clock.monotonic() < deadline:
                    index = 0
                else:
                    self._buzzer.off()
                    self._buzz_timer = None
                    return
            level, seconds = segments[index]
            if level:
                self._buzzer.on()
            else:
                self._buzzer.off()
            if seconds <= 0:
                self._buzz_run(generation, segments, index + 1, repeat, deadline)
                return
            self._buzz_timer = self._clock.call_later(
                seconds, lambda: self._buzz_run(generation, segments, index + 1, repeat, deadline)
            )

    def off(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._led_generation += 1
            self._buzz_generation += 1
            for timer in (self._led_timer, self._buzz_timer):
                if timer is not None:
                    timer.cancel()
            self._led_timer = self._buzz_timer = None
            self.state = "off"
            self._show(COLOURS["off"])
            if self._buzzer is not None:
                self._buzzer.off()

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            try:
                self.off()
            except HardwareError:
                logger.exception("switching the indicators off failed")
            self._closed = True
            for line in (*(self._led or ()), self._buzzer):
                if line is not None:
                    try:
                        line.close()
                    except Exception:
                        logger.exception("closing %s failed", getattr(line, "name", line))


__all__ = [
    "COLOURS",
    "PATTERNS",
    "STATUS_COLOURS",
    "EnergiseGuard",
    "GpioIndicators",
    "GpioInputLine",
    "GpioOutputLine",
    "LineFactory",
    "ReedDoorSwitch",
    "SolenoidLock",
]
