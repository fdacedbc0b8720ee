"""Everything that touches the cabinet, behind small interfaces, with a simulator.

``import hardware`` loads no hardware library (no gpiozero, RPi.GPIO, spidev, smbus2 or
mfrc522): the web process may import it, and :mod:`hardware.spec`, to read and document the
``[hardware]`` configuration. The drivers load their libraries when a cabinet is opened::

    from hardware import CabinetSpec, open_cabinet

    spec = CabinetSpec.from_mapping(config["hardware"])
    cabinet = open_cabinet(spec)              # spec.backend: "gpio" on a Pi, or "sim"
    cabinet.reader.start(on_tap=queue.put, on_error=queue.put)
    cabinet.on_door = queue.put
    cabinet.locks[7].pulse(3.0)
    ...
    cabinet.close()

This package knows nothing of schools; it never imports ``kiosk`` or ``web``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hardware.clock import Clock, ManualClock, SystemClock
from hardware.errors import (
    BackendUnavailable,
    DeviceClosed,
    ExpanderError,
    HardwareConfigError,
    HardwareError,
    LockBusy,
    LockError,
    PinConfigError,
    ReaderError,
    ReaderUnavailable,
    TooManyUnlocks,
)
from hardware.interfaces import (
    CardReader,
    DoorEvent,
    DoorSwitch,
    Indicators,
    Lock,
    PulseEnd,
    Tap,
)
from hardware.spec import (
    DOCUMENTED_KEYS,
    CabinetSpec,
    CompartmentSpec,
    ExpanderSpec,
    IndicatorSpec,
    PinRef,
    ReaderSpec,
    default_layout,
    parse_pin,
)
from hardware.uid import format_uid, parse_uid

if TYPE_CHECKING:
    from hardware.cabinet import Cabinet, SelfTestReport, open_cabinet
    from hardware.sim.simulator import Simulator

_LAZY = {
    "Cabinet": "hardware.cabinet",
    "SelfTestReport": "hardware.cabinet",
    "open_cabinet": "hardware.cabinet",
    "Simulator": "hardware.sim.simulator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hardware' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DOCUMENTED_KEYS",
    "BackendUnavailable",
    "Cabinet",
    "CabinetSpec",
    "CardReader",
    "Clock",
    "CompartmentSpec",
    "DeviceClosed",
    "DoorEvent",
    "DoorSwitch",
    "ExpanderError",
    "ExpanderSpec",
    "HardwareConfigError",
    "HardwareError",
    "IndicatorSpec",
    "Indicators",
    "Lock",
    "LockBusy",
    "LockError",
    "ManualClock",
    "PinConfigError",
    "PinRef",
    "PulseEnd",
    "ReaderError",
    "ReaderSpec",
    "ReaderUnavailable",
    "SelfTestReport",
    "Simulator",
    "SystemClock",
    "Tap",
    "TooManyUnlocks",
    "default_layout",
    "format_uid",
    "open_cabinet",
    "parse_pin",
    "parse_uid",
]
