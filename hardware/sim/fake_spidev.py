"""A stand-in for the ``spidev`` extension module, wired to emulated chips.

:func:`make_spidev_module` returns a fresh module object with a ``SpiDev`` class, as the real
``spidev`` has; ``SpiDev().open(bus, device)`` connects to the emulator registered for that bus
and chip select, or raises FileNotFoundError like a missing ``/dev/spidevB.D``.
"""

from __future__ import annotations

import errno
import types
from typing import Any, Protocol


class SpiSlave(Protocol):
    """What sits on the other end of a fake SPI device."""

    def xfer2(self, data: list[int]) -> list[int]: ...


def make_spidev_module(devices: dict[tuple[int, int], SpiSlave]) -> types.ModuleType:
    """A module named ``spidev`` whose ``SpiDev`` talks to ``devices[(bus, device)]``.

    ``devices`` is kept by reference: register or remove emulators at any time.
    """
    module = types.ModuleType("spidev", "Fake spidev backed by emulated chips (hardware.sim).")

    class SpiDev:
        """The subset of spidev.SpiDev used by the mfrc522 library and our driver."""

        def __init__(self, bus: int | None = None, device: int | None = None) -> None:
            self.max_speed_hz = 500_000
            self.mode = 0
            self.bits_per_word = 8
            self.lsbfirst = False
            self.cshigh = False
            self._slave: SpiSlave | None = None
            self.bus: int | None = None
            self.device: int | None = None
            if bus is not None and device is not None:
                self.open(bus, device)

        def open(self, bus: int, device: int) -> None:
            slave = devices.get((bus, device))
            if slave is None:
                raise FileNotFoundError(
                    errno.ENOENT, "No such file or directory", f"/dev/spidev{bus}.{device}"
                )
            self._slave = slave
            self.bus, self.device = bus, device

        def close(self) -> None:
            self._slave = None

        def _require(self) -> SpiSlave:
            if self._slave is None:
                raise OSError(errno.EBADF, "Bad file descriptor")
            return self._slave

        def xfer2(self, data: list[int], *_args: Any) -> list[int]:
            return self._require().xfer2(list(data))

        def xfer(self, data: list[int], *_args: Any) -> list[int]:
            # spidev's xfer toggles chip select between bytes; for a register chip that only
            # matters for bursts, which the callers here do not send through xfer.
            return self._require().xfer2(list(data))

        def writebytes(self, data: list[int]) -> None:
            self._require().xfer2(list(data))

        def readbytes(self, length: int) -> list[int]:
            return self._require().xfer2([0] * length)

    module.SpiDev = SpiDev  # type: ignore[attr-defined]
    module.__dict__["__version__"] = "3.8-sim"
    return module


__all__ = ["SpiSlave", "make_spidev_module"]
