"""Fixtures for the hardware tests: a manual clock, mock pins, simulated cabinets.

Every test is checked for leaks: stand-in modules left in ``sys.modules`` or a changed
``gpiozero.Device.pin_factory`` fail the test (and are put back).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from hardware.clock import ManualClock

WATCHED_MODULES = ("RPi", "RPi.GPIO", "spidev", "smbus", "mfrc522", "mfrc522.MFRC522")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    from gpiozero import Device

    modules = {name: sys.modules.get(name) for name in WATCHED_MODULES}
    factory = Device.pin_factory
    yield
    leaked = {name for name, module in modules.items() if sys.modules.get(name) is not module}
    changed_factory = Device.pin_factory is not factory
    for name, module in modules.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    Device.pin_factory = factory
    assert not leaked, f"sys.modules changed for {sorted(leaked)}"
    assert not changed_factory, "Device.pin_factory was changed"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def mock_factory():
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
def make_cabinet(clock: ManualClock) -> Iterator[Callable[..., object]]:
    """``make_cabinet(n=4, auto_open=False, auto_close_s=None, **spec_overrides)``.

    Door debounce and the solenoids' rest between pulses are off unless overridden, so that
    flows run without moving the clock.
    """
    from hardware import CabinetSpec, open_cabinet

    opened = []

    def make(n: int = 4, *, auto_open: bool = False, auto_close_s=None, **overrides):
        overrides.setdefault("debounce_s", 0.0)
        overrides.setdefault("lock_rest_s", 0.0)
        spec = CabinetSpec.simulated(n, **overrides)
        cabinet = open_cabinet(
            spec, "sim", clock=clock, auto_open=auto_open, auto_close_s=auto_close_s
        )
        opened.append(cabinet)
        return cabinet

    yield make
    for cabinet in opened:
        cabinet.close()


def states(pin) -> list:
    """The whole history of a mock pin's states (not a prefix)."""
    return [state.state for state in pin.states]
