"""The one module that imports third-party hardware libraries, always lazily.

``mfrc522``, ``RPi.GPIO``, ``spidev``, ``smbus2`` and ``fake_rpi`` are imported here and
nowhere else, inside functions, so that ``import hardware`` (and the web process, and the tests
of other packages) never loads them by accident. gpiozero is pure Python and is imported by
the driver modules themselves.

Stand-ins (fake_rpi's ``RPi.GPIO`` and our fake ``spidev``) are only ever put into
``sys.modules`` for the simulator, inside :func:`stand_in_modules`, which puts the previous
entries back on exit.

Raspberry Pi 5: the real RPi.GPIO cannot drive a Pi 5 ("Cannot determine SOC peripheral base
address"); its drop-in replacement is ``rpi-lgpio``, which installs the same ``RPi`` package.
``mfrc522`` depends on RPi.GPIO, so installing it after rpi-lgpio silently brings the old
module back. Install in this order::

    sudo apt install python3-lgpio swig liblgpio-dev   # or: pip install lgpio
    pip install rpi-lgpio spidev smbus2 gpiozero
    pip install --no-deps mfrc522==0.0.7

and check with ``python -c "import RPi.GPIO as G; print(G.__file__)"`` that the module comes
from rpi-lgpio (its path ends in ``RPi/GPIO/__init__.py``, not a compiled ``_GPIO`` module).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from hardware.errors import ExpanderError, ReaderUnavailable

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_mfrc522_classes: dict[str, type] = {}

#: Modules that the stand-ins replace while they are installed.
_STAND_IN_NAMES = ("RPi", "RPi.GPIO", "spidev", "smbus")
_LIBRARY_PREFIX = "mfrc522"

PI5_INSTALL_HINT = (
    "on a Raspberry Pi 5 install rpi-lgpio and then mfrc522 without its dependencies: "
    "pip install rpi-lgpio spidev && pip install --no-deps mfrc522==0.0.7"
)


def _fake_rpi() -> Any:
    """Import fake_rpi quietly (it prints a banner) and switch off its per-call printing.

    Its package imports a picamera stand-in that pulls in numpy (over 10 MB in the kiosk
    process); a locker has no camera, so an empty module takes that one's place."""
    camera = "fake_rpi.picamera"
    if camera not in sys.modules:
        sys.modules[camera] = ModuleType(camera, "placeholder: the locker uses no camera")
    with contextlib.redirect_stdout(io.StringIO()):
        import fake_rpi
        import fake_rpi.RPi
        import fake_rpi.smbus

    fake_rpi.toggle_print(False)
    return fake_rpi


@contextlib.contextmanager
def stand_in_modules(spidev_module: ModuleType) -> Iterator[None]:
    """Install fake ``RPi.GPIO`` (fake_rpi), ``spidev_module`` and, if missing, ``smbus``.

    Also hides any already-imported ``mfrc522`` so that importing it inside the block binds
    it to the stand-ins. Everything in ``sys.modules`` is put back as it was on exit. Only the
    simulator and the benchmark use this; never the ``gpio`` backend.
    """
    with _lock:
        fake = _fake_rpi()
        saved = {name: sys.modules.get(name) for name in _STAND_IN_NAMES}
        saved_lib = {
            name: module
            for name, module in sys.modules.items()
            if name == _LIBRARY_PREFIX or name.startswith(_LIBRARY_PREFIX + ".")
        }
        for name in saved_lib:
            del sys.modules[name]
        sys.modules["RPi"] = fake.RPi
        sys.modules["RPi.GPIO"] = fake.RPi.GPIO
        sys.modules["spidev"] = spidev_module
        if saved["smbus"] is None and importlib.util.find_spec("smbus") is None:
            sys.modules["smbus"] = fake.smbus
        try:
            yield
        finally:
            for name in [n for n in sys.modules if n.split(".")[0] == _LIBRARY_PREFIX]:
                del sys.modules[name]
            sys.modules.update(saved_lib)
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module


def import_mfrc522_with_stand_ins(spidev_module: ModuleType) -> ModuleType:
    """Import a private copy of the ``mfrc522`` package bound to the stand-ins.

    The returned module keeps using the fake ``spidev`` and fake ``RPi.GPIO`` after
    ``sys.modules`` is restored, which is what the simulator and the benchmark want.
    """
    with stand_in_modules(spidev_module):
        return importlib.import_module(_LIBRARY_PREFIX)


def mfrc522_class(*, simulated: bool, spidev_module: ModuleType | None = None) -> type:
    """The ``mfrc522.MFRC522`` class, whose register access our RC522 driver uses.

    On the ``gpio`` backend it is imported normally (the real RPi.GPIO, or rpi-lgpio on a
    Pi 5, must import); on the simulator it is imported with stand-ins. Raises
    :class:`ReaderUnavailable` with install instructions when that is impossible.
    """
    key = "sim" if simulated else "gpio"
    with _lock:
        if key in _mfrc522_classes:
            return _mfrc522_classes[key]
        if simulated:
            if spidev_module is None:
                raise ValueError("the simulator must pass its fake spidev module")
            try:
                module = import_mfrc522_with_stand_ins(spidev_module)
            except ImportError as exc:
                raise ReaderUnavailable(
                    f"the simulator needs the mfrc522 and fake-rpi packages ({exc}); "
                    "install the 'sim' extra: pip install -e '.[sim]'"
                ) from exc
        else:
            try:
                module = importlib.import_module(_LIBRARY_PREFIX)
            except ImportError as exc:
                raise ReaderUnavailable(
                    f"cannot import mfrc522 ({exc}): pip install --no-deps mfrc522==0.0.7 "
                    f"spidev; {PI5_INSTALL_HINT}"
                ) from exc
            except RuntimeError as exc:  # RPi.GPIO raises this off a Pi, or on a Pi 5
                raise ReaderUnavailable(
                    f"RPi.GPIO cannot run on this machine ({exc}); {PI5_INSTALL_HINT}; "
                    'off a Pi use backend = "sim"'
                ) from exc
        cls = module.MFRC522
        _mfrc522_classes[key] = cls
        return cls


def register_access(cls: type, spi: Any) -> Any:
    """An ``MFRC522`` object that only does register access over ``spi``.

    The library's ``__init__`` is not run: it would open the SPI device itself, take the
    reset pin through RPi.GPIO (BCM 15 instead of 25 when the mode is BCM), and add a log
    handler each time. Its ``Read_MFRC522``/``Write_MFRC522``/``SetBitMask``/``ClearBitMask``
    only need ``spi`` and ``logger``. Never call its ``Close_MFRC522`` (GPIO.cleanup()).
    """
    chip = cls.__new__(cls)
    chip.spi = spi
    chip.logger = logging.getLogger("hardware.rfid.mfrc522")
    return chip


def open_spidev(bus: int, device: int, speed_hz: int) -> Any:
    """Open ``/dev/spidevBUS.DEVICE`` (mode 0, ``speed_hz``); ReaderUnavailable if impossible."""
    path = f"/dev/spidev{bus}.{device}"
    try:
        import spidev
    except ImportError as exc:
        raise ReaderUnavailable(
            f"the spidev package is missing ({exc}): pip install spidev"
        ) from exc
    spi = spidev.SpiDev()
    try:
        spi.open(bus, device)
    except FileNotFoundError as exc:
        raise ReaderUnavailable(
            f"{path} does not exist: enable SPI (raspi-config > Interface Options > SPI, or "
            "dtparam=spi=on in /boot/firmware/config.txt) and reboot"
        ) from exc
    except PermissionError as exc:
        raise ReaderUnavailable(
            f"no permission to open {path}: add the kiosk's user to the 'spi' group"
        ) from exc
    except OSError as exc:
        raise ReaderUnavailable(f"cannot open {path}: {exc}") from exc
    spi.max_speed_hz = speed_hz
    spi.mode = 0
    return spi


def open_smbus(bus: int) -> Any:
    """Open I2C bus ``bus`` with smbus2; :class:`ExpanderError` if impossible."""
    try:
        import smbus2
    except ImportError as exc:
        raise ExpanderError(f"the smbus2 package is missing ({exc}): pip install smbus2") from exc
    try:
        return smbus2.SMBus(bus)
    except FileNotFoundError as exc:
        raise ExpanderError(
            f"/dev/i2c-{bus} does not exist: enable I2C (raspi-config > Interface Options > "
            "I2C, or dtparam=i2c_arm=on in /boot/firmware/config.txt) and reboot"
        ) from exc
    except OSError as exc:
        raise ExpanderError(f"cannot open I2C bus {bus}: {exc}") from exc


__all__ = [
    "PI5_INSTALL_HINT",
    "import_mfrc522_with_stand_ins",
    "mfrc522_class",
    "open_smbus",
    "open_spidev",
    "register_access",
    "stand_in_modules",
]
