"""The simulated cabinet: emulated chips at the transport boundary, plus a physical world.

``open_cabinet(spec, "sim")`` builds the same drivers as on a Pi, but gives them

- a gpiozero ``MockFactory`` whose pins are :class:`SimPin` (an output tells the simulator when
  it changes, an input follows the switch wired to it), never touching ``Device.pin_factory``;
- an :class:`~hardware.sim.rc522.RC522Emulator` behind a fake ``spidev`` module;
- :class:`~hardware.sim.mcp23017.MCP23017Emulator` chips behind :class:`SimSMBus` buses, their
  INTA outputs wired (open-drain, wired-OR) to the Pi pin named by ``int_pin``.

The :class:`Simulator` is the world around them: cards on the reader, doors that a person
pulls (a door opens only while its lock is energised, unless forced), and fault switches.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from hardware import _platform
from hardware.clock import Clock
from hardware.errors import HardwareError
from hardware.interfaces import Tap
from hardware.sim.fake_spidev import make_spidev_module
from hardware.sim.mcp23017 import MCP23017Emulator, SimSMBus
from hardware.sim.rc522 import RC522Emulator, SimCard
from hardware.spec import CabinetSpec, PinRef
from hardware.uid import parse_uid

logger = logging.getLogger(__name__)


class SimPin(MockPin):
    """A mock pin wired to something: outputs report their changes to ``listeners``; an input
    reads ``external`` when something drives it (a closed switch), else its pull."""

    #: Changes of state remembered (gpiozero keeps them all; a simulator that runs all day
    #: keeps the last ones only, plenty for a test to compare a whole history).
    HISTORY = 4096

    def __init__(self, factory: Any, info: Any) -> None:
        self.external: bool | None = None
        self.listeners: list[Callable[[SimPin], None]] = []
        super().__init__(factory, info)
        self.states = deque(self.states, maxlen=self.HISTORY)

    def clear_states(self) -> None:
        super().clear_states()
        self.states = deque(self.states, maxlen=self.HISTORY)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        if changed and self._function == "output":
            self._notify()
        return changed

    def _set_function(self, value: str) -> None:
        before = self._function
        super()._set_function(value)
        if before != value:
            self._notify()

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self._apply()

    def _apply(self) -> None:
        if self._function != "input":
            return
        if self.external is not None:
            level = self.external
        elif self._pull in ("up", "down"):
            level = self._pull == "up"
        else:
            return
        if level:
            self.drive_high()
        else:
            self.drive_low()

    def set_external(self, level: bool | None) -> None:
        """Drive the pin from outside (True/False), or leave it to its pull (None)."""
        self.external = level
        self._apply()

    @property
    def driving(self) -> bool | None:
        """The level this pin drives as an output, or None when it is an input."""
        return bool(self._state) if self._function == "output" else None


@dataclass
class SimDoor:
    """The physical state of one compartment door."""

    is_open: bool = False
    stuck_open: bool = False
    jammed: bool = False


class Simulator:
    """The world around a simulated cabinet; ``cabinet.sim`` of ``open_cabinet(spec, "sim")``.

    ``auto_open``: a simulated pupil opens a door as soon as its latch releases (lock
    energised). ``auto_close_s``: that door is closed again this many seconds later on the
    cabinet clock (0: at once; None: left open). With a :class:`~hardware.clock.ManualClock`
    and ``debounce_s = 0`` everything happens synchronously, with no sleeping.
    """

    def __init__(
        self,
        spec: CabinetSpec,
        *,
        clock: Clock,
        pin_factory: MockFactory | None = None,
        auto_open: bool = False,
        auto_close_s: float | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.auto_open = auto_open
        self.auto_close_s = auto_close_s
        self.pin_factory = pin_factory or MockFactory(pin_class=SimPin)
        self._pins: dict[int, SimPin] = {}
        self.reader: Any = None  # set by the cabinet
        #: Called as ``on_lock_change(number, energised)`` the moment a lock's output pin
        #: changes (in the thread that drove it): for benchmarks and test probes.
        self.on_lock_change: Callable[[int, bool], None] | None = None
        self._mutex = threading.RLock()
        reset_pin = self.pi_pin(spec.reader.reset_pin)
        self.chip = RC522Emulator(
            clock=clock.monotonic, seed=seed, reset_level=lambda: reset_pin.driving is True
        )
        self.spi_devices: dict[tuple[int, int], Any] = {
            (spec.reader.bus, spec.reader.device): self.chip
        }
        self.spidev = make_spidev_module(self.spi_devices)
        self.expanders: dict[str, MCP23017Emulator] = {}
        self.i2c: dict[int, dict[int, MCP23017Emulator]] = {}
        nets: dict[PinRef, list[MCP23017Emulator]] = {}
        for name, exp in spec.expanders.items():
            emulator = MCP23017Emulator(name)
            self.expanders[name] = emulator
            self.i2c.setdefault(exp.bus, {})[exp.address] = emulator
            emulator.on_output = self._expander_output(name)
            if exp.int_pin is not None:
                nets.setdefault(exp.int_pin, []).append(emulator)
        for pin, members in nets.items():
            for emulator in members:
                emulator.on_interrupt = self._int_net(pin, members)
        self.doors: dict[int, SimDoor] = {number: SimDoor() for number in spec.compartments}
        self._lock_pins: dict[PinRef, int] = {}
        for number, comp in spec.compartments.items():
            self._lock_pins[comp.lock] = number
            if comp.lock.on_pi:
                self.pi_pin(comp.lock.number).listeners.append(self._pi_output)
            self._update_reed(number)

    # ------------------------------------------------------------------ wiring

    def pi_pin(self, bcm: int) -> SimPin:
        """The mock pin of BCM ``bcm`` (created on first use, then kept: looking a pin up by
        name in gpiozero's factory walks the whole board)."""
        pin = self._pins.get(bcm)
        if pin is None:
            pin = self._pins[bcm] = self.pin_factory.pin(f"GPIO{bcm}", pin_class=SimPin)
        return pin

    def open_spi(self) -> Any:
        """Open the reader's fake SPI device (what ``spidev.SpiDev().open`` gives on a Pi)."""
        spi = self.spidev.SpiDev()
        spi.open(self.spec.reader.bus, self.spec.reader.device)
        return spi

    def open_smbus(self, bus: int) -> SimSMBus:
        """A fake ``smbus2.SMBus`` for I2C bus ``bus``."""
        return SimSMBus(bus, self.i2c.setdefault(bus, {}))

    def chip_class(self) -> type:
        """``mfrc522.MFRC522`` imported against the stand-ins (its register access is used)."""
        return _platform.mfrc522_class(simulated=True, spidev_module=self.spidev)

    def _int_net(self, pin: PinRef, members: list[MCP23017Emulator]) -> Callable[[int, bool], None]:
        def changed(_port: int, _asserted: bool) -> None:
            low = any(member.int_level(0) is False for member in members)
            self.pi_pin(pin.number).set_external(False if low else None)

        return changed

    def _expander_output(self, name: str) -> Callable[[int, bool | None], None]:
        def changed(pin: int, _level: bool | None) -> None:
            number = self._lock_pins.get(PinRef(name, pin))
            if number is not None:
                self._lock_changed(number)

        return changed

    def _pi_output(self, pin: SimPin) -> None:
        number = self._lock_pins.get(PinRef(None, int(pin.info.name.removeprefix("GPIO"))))
        if number is not None:
            self._lock_changed(number)

    def _output_level(self, pin: PinRef) -> bool | None:
        if pin.on_pi:
            return self.pi_pin(pin.number).driving
        return self.expanders[pin.expander or ""].driven(pin.number)

    def _set_input(self, pin: PinRef, level: bool | None) -> None:
        if pin.on_pi:
            self.pi_pin(pin.number).set_external(level)
        else:
            self.expanders[pin.expander or ""].set_input(pin.number, level)

    # ------------------------------------------------------------------ locks and doors

    def lock_energised(self, number: int) -> bool:
        """True while the lock's output drives its active level (the latch is released)."""
        level = self._output_level(self.spec.compartments[number].lock)
        return level is not None and level == self.spec.lock_active_high

    def energised(self) -> tuple[int, ...]:
        """Numbers of the compartments whose solenoid is energised now."""
        return tuple(n for n in sorted(self.spec.compartments) if self.lock_energised(n))

    def _lock_changed(self, number: int) -> None:
        energised = self.lock_energised(number)
        hook = self.on_lock_change
        if hook is not None:
            hook(number, energised)
        if self.auto_open and energised:
            door = self.doors[number]
            if not door.is_open and self.open_door(number) and self.auto_close_s is not None:
                if self.auto_close_s <= 0:
                    self.close_door(number)
                else:
                    self.clock.call_later(self.auto_close_s, lambda: self.close_door(number))

    def _update_reed(self, number: int) -> None:
        door = self.doors[number]
        reads_open = door.is_open or door.stuck_open
        level = self.spec.door_open_high if reads_open else not self.spec.door_open_high
        self._set_input(self.spec.compartments[number].door, level)

    def open_door(self, number: int) -> bool:
        """A person pulls door ``number``: it opens only while its latch is released.

        Returns True if the door is open afterwards.
        """
        with self._mutex:
            door = self.doors[number]
            if door.is_open:
                return True
            if door.jammed or not self.lock_energised(number):
                return False
            door.is_open = True
        self._update_reed(number)
        return True

    def close_door(self, number: int) -> None:
        """Push door ``number`` shut (its latch clicks in; a closed door always closes)."""
        with self._mutex:
            door = self.doors[number]
            if not door.is_open:
                return
            door.is_open = False
        self._update_reed(number)

    def force_door(self, number: int) -> None:
        """Door ``number`` is forced open (pried), whatever its lock."""
        with self._mutex:
            door = self.doors[number]
            if door.is_open:
                return
            door.is_open = True
        self._update_reed(number)

    def door_is_open(self, number: int) -> bool:
        """Whether door ``number`` is physically open (not what its switch says)."""
        return self.doors[number].is_open

    # ------------------------------------------------------------------ fault switches

    def jam_lock(self, number: int, jammed: bool = True) -> None:
        """A jammed latch: energising the lock no longer lets the door open."""
        self.doors[number].jammed = jammed

    def stick_door_open(self, number: int, stuck: bool = True) -> None:
        """The door switch reads open whatever the door does (magnet fallen off)."""
        self.doors[number].stuck_open = stuck
        self._update_reed(number)

    def reader_fault(self, mode: str | None) -> None:
        """``"raise"`` (SPI errors), ``"garbage"`` (random bytes), ``"vanish"`` (no chip;
        it comes back power-cycled when cleared) or None."""
        self.chip.set_fault(mode)

    def reader_unplugged(self, unplugged: bool = True) -> None:
        """The SPI device node disappears (SPI disabled): opening it fails."""
        key = (self.spec.reader.bus, self.spec.reader.device)
        if unplugged:
            self.spi_devices.pop(key, None)
        else:
            self.spi_devices[key] = self.chip

    def expander_fault(self, name: str, mode: str | None) -> None:
        """``"raise"``: expander ``name`` stops answering on I2C; None: back."""
        self.expanders[name].set_fault(mode)

    # ------------------------------------------------------------------ cards

    @property
    def cards(self) -> tuple[bytes, ...]:
        """UIDs of the cards on the reader now."""
        return tuple(card.uid for card in self.chip.cards)

    def present_card(self, uid: bytes | str, *, sak: int = 0x08) -> None:
        """Put a card on the reader and leave it there."""
        uid_bytes = parse_uid(uid)
        if uid_bytes not in self.cards:
            self.chip.add_card(SimCard(uid_bytes, sak=sak))

    def remove_card(self, uid: bytes | str | None = None) -> None:
        """Take a card (or every card) off the reader."""
        self.chip.remove_card(None if uid is None else parse_uid(uid))

    def tap(self, uid: bytes | str, *, polls: int = 2, hold_s: float | None = None) -> list[Tap]:
        """A card arrives, stays, and leaves.

        If the reader thread runs, the card stays ``hold_s`` seconds (default 0.3 s, or three
        poll intervals if longer: about a person's tap) on the cabinet clock, and this returns
        at once (with ``[]``). Otherwise the reader is stepped synchronously: ``polls`` polls
        with the card, then enough without it for the reader to see it leave; the taps
        delivered are returned.
        """
        uid_bytes = parse_uid(uid)
        reader = self.reader
        if reader is not None and getattr(reader, "running", False):
            self.present_card(uid_bytes)
            hold = hold_s if hold_s is not None else max(0.3, 3 * self.spec.reader.poll_s)
            self.clock.call_later(hold, lambda: self.remove_card(uid_bytes))
            return []
        if reader is None:
            raise HardwareError("the simulator has no reader attached")
        self.present_card(uid_bytes)
        taps = [tap for tap in (reader.step() for _ in range(max(1, polls))) if tap]
        self.remove_card(uid_bytes)
        for _ in range(self.spec.reader.miss_limit):
            tap = reader.step()
            if tap:
                taps.append(tap)
        return taps


__all__ = ["SimDoor", "SimPin", "Simulator"]
