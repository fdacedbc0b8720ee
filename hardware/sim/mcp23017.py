"""An emulator of the Microchip MCP23017 I/O expander at the I2C (smbus) level.

Registers for both ports (IODIR, IPOL, GPINTEN, DEFVAL, INTCON, IOCON, GPPU, INTF, INTCAP,
GPIO, OLAT) in either bank layout (IOCON.BANK), sequential or byte mode (IOCON.SEQOP),
interrupt-on-change against the previous value or DEFVAL, INTCAP capture, INTA/INTB with
MIRROR, ODR and INTPOL, and inputs whose level comes from the outside world
(:meth:`set_input`), from the pull-up (GPPU), or reads low when left floating.

:class:`SimSMBus` is an ``smbus2.SMBus`` look-alike that routes transfers to emulators by
address and answers "Remote I/O error" (EREMOTEIO) where no device answers, as Linux does.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

# Register indices (the address is derived from the bank layout).
R_IODIR, R_IPOL, R_GPINTEN, R_DEFVAL, R_INTCON, R_IOCON = 0, 1, 2, 3, 4, 5
R_GPPU, R_INTF, R_INTCAP, R_GPIO, R_OLAT = 6, 7, 8, 9, 10
N_REGS = 11

IOCON_BANK = 0x80
IOCON_MIRROR = 0x40
IOCON_SEQOP = 0x20
IOCON_ODR = 0x04
IOCON_INTPOL = 0x02


class MCP23017Emulator:
    """One MCP23017. Pins 0-15 are A0-A7 and B0-B7.

    ``on_output(pin, level)`` is called when the level an output pin drives changes (``level``
    None: the pin stopped driving, it is an input again). ``on_interrupt(port, asserted)`` when
    INTA (port 0) or INTB (port 1) changes between asserted and released.
    """

    def __init__(self, name: str = "mcp") -> None:
        self.name = name
        self.on_output: Callable[[int, bool | None], None] | None = None
        self.on_interrupt: Callable[[int, bool], None] | None = None
        self.fault: str | None = None
        self.transfers = 0
        self._external: list[bool | None] = [None] * 16
        # The same, per port, as bitmasks: pins driven high, and pins nobody drives.
        self._external_high = [0, 0]
        self._external_floating = [0xFF, 0xFF]
        self._lock = threading.RLock()
        self._depth = 0
        self._pending: list[tuple[Callable[..., None], tuple]] = []
        self.power_on_reset()

    def _enter(self) -> None:
        self._lock.acquire()
        self._depth += 1

    def _leave(self) -> None:
        # Callbacks run after the lock is released, so a callback that reaches the driver
        # (which may be waiting on another thread for this chip) cannot deadlock.
        self._depth -= 1
        pending: list[tuple[Callable[..., None], tuple]] = []
        if self._depth == 0:
            pending, self._pending = self._pending, []
        self._lock.release()
        for callback, args in pending:
            callback(*args)

    def _notify(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is not None:
            self._pending.append((callback, args))

    # ------------------------------------------------------------------ state

    def power_on_reset(self) -> None:
        """The state after power-on (or a low RESET): all inputs, nothing enabled."""
        with self._lock:
            self.regs = [[0, 0] for _ in range(N_REGS)]
            self.regs[R_IODIR] = [0xFF, 0xFF]
            self.iocon = 0
            self.pointer = 0
            self._driven: list[bool | None] = [None] * 16
            self._int_state = [False, False]
            self._previous = [self._port_levels(0), self._port_levels(1)]

    def set_fault(self, mode: str | None) -> None:
        """``"raise"``: every transfer fails with EREMOTEIO (unplugged); None: healthy."""
        if mode not in (None, "raise"):
            raise ValueError(f"unknown expander fault {mode!r}: use 'raise' or None")
        self.fault = mode

    def set_input(self, pin: int, level: bool | None) -> None:
        """What the outside world drives on ``pin`` (None: nothing, the pin floats)."""
        self._enter()
        try:
            self._external[pin] = level
            port, bit = divmod(pin, 8)
            mask = 1 << bit
            self._external_high[port] = (
                self._external_high[port] | mask if level else self._external_high[port] & ~mask
            )
            self._external_floating[port] = (
                self._external_floating[port] | mask
                if level is None
                else self._external_floating[port] & ~mask
            )
            self._inputs_changed()
        finally:
            self._leave()

    def level(self, pin: int) -> bool:
        """The electrical level of ``pin`` as the chip sees it."""
        port, bit = divmod(pin, 8)
        if not self.regs[R_IODIR][port] >> bit & 1:
            return bool(self.regs[R_OLAT][port] >> bit & 1)
        external = self._external[pin]
        if external is not None:
            return external
        return bool(self.regs[R_GPPU][port] >> bit & 1)

    def driven(self, pin: int) -> bool | None:
        """The level an output pin drives, or None when the pin is an input."""
        port, bit = divmod(pin, 8)
        if self.regs[R_IODIR][port] >> bit & 1:
            return None
        return bool(self.regs[R_OLAT][port] >> bit & 1)

    def _port_levels(self, port: int) -> int:
        """The eight levels of a port as one byte (bitwise: this runs on every edge)."""
        inputs = self.regs[R_IODIR][port]
        pulled = self.regs[R_GPPU][port] & self._external_floating[port]
        outside = self._external_high[port] | pulled
        return (self.regs[R_OLAT][port] & ~inputs & 0xFF) | (outside & inputs)

    def _gpio_value(self, port: int) -> int:
        levels = self._port_levels(port)
        inputs = self.regs[R_IODIR][port]
        return levels ^ (self.regs[R_IPOL][port] & inputs)

    # ------------------------------------------------------------------ interrupts and outputs

    def _inputs_changed(self) -> None:
        for port in (0, 1):
            levels = self._port_levels(port)
            previous, self._previous[port] = self._previous[port], levels
            self._check_interrupt(port, previous, levels)
        self._outputs_changed()

    def _check_interrupt(self, port: int, previous: int, levels: int) -> None:
        enabled = self.regs[R_GPINTEN][port] & self.regs[R_IODIR][port]
        intcon = self.regs[R_INTCON][port]
        against_defval = (levels ^ self.regs[R_DEFVAL][port]) & intcon
        against_previous = (levels ^ previous) & ~intcon
        flagged = (against_defval | against_previous) & enabled & 0xFF
        if flagged and not self.regs[R_INTF][port]:
            self.regs[R_INTF][port] = flagged & -flagged  # the first pin (lowest bit)
            self.regs[R_INTCAP][port] = self._gpio_value(port)
        self._update_int_pins()

    def _clear_interrupt(self, port: int) -> None:
        self.regs[R_INTF][port] = 0
        levels = self._port_levels(port)
        # With INTCON (compare with DEFVAL) the interrupt comes back while the condition holds.
        self._check_interrupt(port, levels, levels)

    def _update_int_pins(self) -> None:
        flags = [bool(self.regs[R_INTF][0]), bool(self.regs[R_INTF][1])]
        if self.iocon & IOCON_MIRROR:
            flags = [flags[0] or flags[1]] * 2
        for port in (0, 1):
            if flags[port] != self._int_state[port]:
                self._int_state[port] = flags[port]
                self._notify(self.on_interrupt, port, flags[port])

    def int_level(self, port: int = 0) -> bool | None:
        """Electrical level of INTA/INTB: None when released open-drain (the pull-up decides)."""
        asserted = self._int_state[port]
        if self.iocon & IOCON_ODR:
            return False if asserted else None
        active_high = bool(self.iocon & IOCON_INTPOL)
        return active_high if asserted else not active_high

    def _outputs_changed(self) -> None:
        for pin in range(16):
            now = self.driven(pin)
            if now != self._driven[pin]:
                self._driven[pin] = now
                self._notify(self.on_output, pin, now)

    # ------------------------------------------------------------------ register map

    def _decode(self, address: int) -> tuple[int, int] | None:
        if self.iocon & IOCON_BANK:
            port, register = divmod(address, 0x10)
            if port > 1 or register >= N_REGS:
                return None
            return register, port
        if address >= 2 * N_REGS:
            return None
        register, port = divmod(address, 2)
        return register, port

    def _next(self, address: int) -> int:
        if self.iocon & IOCON_SEQOP:
            return address if self.iocon & IOCON_BANK else address ^ 1
        if self.iocon & IOCON_BANK:
            address += 1
            if address & 0x0F >= N_REGS:
                address = 0x10 if address < 0x10 else 0x00
            return address
        return (address + 1) % (2 * N_REGS)

    def read_register(self, address: int) -> int:
        decoded = self._decode(address)
        if decoded is None:
            return 0
        register, port = decoded
        if register == R_IOCON:
            return self.iocon & 0xFE
        if register == R_GPIO:
            value = self._gpio_value(port)
            self._clear_interrupt(port)
            return value
        if register == R_INTCAP:
            value = self.regs[R_INTCAP][port]
            self._clear_interrupt(port)
            return value
        return self.regs[register][port]

    def write_register(self, address: int, value: int) -> None:
        decoded = self._decode(address)
        if decoded is None:
            return
        register, port = decoded
        value &= 0xFF
        if register == R_IOCON:
            self.iocon = value & 0xFE
            self._update_int_pins()
            return
        if register in (R_INTF, R_INTCAP):
            return  # read-only
        if register == R_GPIO:
            register = R_OLAT
        self.regs[register][port] = value
        if register in (R_IODIR, R_GPPU, R_IPOL, R_OLAT):
            self._inputs_changed()
        elif register in (R_GPINTEN, R_DEFVAL, R_INTCON):
            self._check_interrupt(port, self._previous[port], self._previous[port])

    # ------------------------------------------------------------------ I2C

    def _check_fault(self) -> None:
        self.transfers += 1
        if self.fault == "raise":
            raise OSError(errno.EREMOTEIO, "Remote I/O error")

    def i2c_write(self, data: list[int]) -> None:
        """A write transaction: register pointer, then data bytes (auto-increment)."""
        self._enter()
        try:
            self._check_fault()
            if not data:
                return
            self.pointer = data[0]
            for value in data[1:]:
                self.write_register(self.pointer, value)
                self.pointer = self._next(self.pointer)
        finally:
            self._leave()

    def i2c_read(self, length: int) -> list[int]:
        """A read transaction of ``length`` bytes from the register pointer."""
        self._enter()
        try:
            self._check_fault()
            out = []
            for _ in range(length):
                out.append(self.read_register(self.pointer))
                self.pointer = self._next(self.pointer)
            return out
        finally:
            self._leave()

    def transaction(self, register: int, length: int) -> list[int]:
        """Set the register pointer and read ``length`` bytes as one locked transaction."""
        self._enter()
        try:
            self.i2c_write([register])
            return self.i2c_read(length)
        finally:
            self._leave()


class SimSMBus:
    """An ``smbus2.SMBus`` look-alike for one bus; ``devices`` maps addresses to emulators."""

    def __init__(self, bus: int, devices: dict[int, MCP23017Emulator]) -> None:
        self.bus = bus
        self.devices = devices
        self.closed = False

    def _device(self, address: int) -> MCP23017Emulator:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        device = self.devices.get(address)
        if device is None:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return device

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._device(i2c_addr).i2c_write([register, value])

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        return self._device(i2c_addr).transaction(register, 1)[0]

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None:
        self._device(i2c_addr).i2c_write([register, *data])

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        return self._device(i2c_addr).transaction(register, length)

    def write_byte(self, i2c_addr: int, value: int) -> None:
        self._device(i2c_addr).i2c_write([value])

    def read_byte(self, i2c_addr: int) -> int:
        return self._device(i2c_addr).i2c_read(1)[0]

    def close(self) -> None:
        self.closed = True


__all__ = ["MCP23017Emulator", "SimSMBus"]
