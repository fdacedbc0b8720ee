"""What a cabinet is made of: the pin map and the settings of the ``[hardware]`` table.

Pure Python: importing this module imports no hardware library, so the web process can read,
validate and document the configuration without touching GPIO or SPI.

Pins are written as a BCM GPIO number (``17``, ``"GPIO17"``, ``"BCM17"``), a physical header
position (``"BOARD11"``), or a pin of an MCP23017 I2C expander declared under
``[hardware.expanders]`` (``"mcp0:A3"``, ``"mcp0:GPB7"``, ``"mcp0:11"``; A0-A7 are 0-7 and
B0-B7 are 8-15). Example::

    [hardware]
    backend = "gpio"
    lock_active_high = true
    max_unlock_s = 5.0

    [hardware.expanders]
    mcp0 = { bus = 1, address = 0x20, int_pin = 4 }

    [hardware.compartments]
    1 = { lock = 17, door = 5 }
    2 = { lock = "mcp0:A0", door = "mcp0:B0" }

``compartments`` may also be a list of ``{number, lock, door}`` tables, or a plain number N,
which lays out N compartments with :func:`default_layout`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from hardware.errors import HardwareConfigError, PinConfigError

# --------------------------------------------------------------------------- pins

#: The BCM GPIO numbers on the 40-pin header of every Raspberry Pi since the B+ (Pi 5 included).
BCM_PINS = range(28)

#: Physical header position -> BCM GPIO number (40-pin header).
BOARD_TO_BCM: dict[int, int] = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip

#: BCM pins that must never be used for locks, doors or indicators, and why.
RESERVED_BCM: dict[int, str] = {
    0: "ID_SD, the HAT EEPROM I2C bus (I2C0)",
    1: "ID_SC, the HAT EEPROM I2C bus (I2C0)",
    2: "SDA of I2C1 (MCP23017 expanders)",
    3: "SCL of I2C1 (MCP23017 expanders)",
    7: "CE1 of SPI0",
    8: "CE0 of SPI0 (RC522 reader chip select)",
    9: "MISO of SPI0 (RC522 reader)",
    10: "MOSI of SPI0 (RC522 reader)",
    11: "SCLK of SPI0 (RC522 reader)",
}

#: Extra reserved pins when the reader sits on SPI1 (``reader_bus = 1``).
SPI1_BCM: dict[int, str] = {
    16: "CE2 of SPI1",
    17: "CE1 of SPI1",
    18: "CE0 of SPI1",
    19: "MISO of SPI1",
    20: "MOSI of SPI1",
    21: "SCLK of SPI1",
}

EXPANDER_PINS = 16
_EXPANDER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_PI_PIN = re.compile(r"(?:GPIO|BCM)?(\d{1,3})", re.IGNORECASE)
_BOARD_PIN = re.compile(r"BOARD(\d{1,3})", re.IGNORECASE)
_EXP_PIN = re.compile(
    r"([A-Za-z][A-Za-z0-9_]{0,31}):(?:(GP)?([AB])(\d{1,2})|(\d{1,2}))", re.IGNORECASE
)


@dataclass(frozen=True, order=True)
class PinRef:
    """One pin: a BCM GPIO of the Pi (``expander`` is None) or pin 0-15 of an MCP23017."""

    expander: str | None
    number: int

    @property
    def on_pi(self) -> bool:
        """True for a pin of the Pi's own header."""
        return self.expander is None

    def __str__(self) -> str:
        if self.expander is None:
            return f"GPIO{self.number}"
        port = "A" if self.number < 8 else "B"
        return f"{self.expander}:{port}{self.number % 8}"


def parse_pin(value: object, *, key: str = "pin", compartment: int | None = None) -> PinRef:
    """Parse a pin written in the configuration (see the module docstring for the forms).

    Only the syntax is checked here; :meth:`CabinetSpec.validate` checks that the pin exists,
    is free and is not reserved. Raises :class:`PinConfigError` naming ``key``.
    """
    where = f"compartment {compartment}: " if compartment is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PinConfigError(
            f"{where}{key} = {value!r} is not a pin; write a BCM number such as 17, "
            f'"GPIO17", "BOARD11" or an expander pin such as "mcp0:A3"',
            key=key,
            compartment=compartment,
            pin=repr(value),
        )
    if isinstance(value, int):
        if value < 0:
            raise PinConfigError(
                f"{where}{key} = {value} is not a pin number",
                key=key,
                compartment=compartment,
                pin=str(value),
            )
        return PinRef(None, value)
    text = value.strip()
    if match := _PI_PIN.fullmatch(text):
        return PinRef(None, int(match.group(1)))
    if match := _BOARD_PIN.fullmatch(text):
        board = int(match.group(1))
        if board not in BOARD_TO_BCM:
            raise PinConfigError(
                f"{where}{key} = {value!r}: header pin {board} is not a GPIO pin (power, ground, "
                "or not on the 40-pin header)",
                key=key,
                compartment=compartment,
                pin=text,
            )
        return PinRef(None, BOARD_TO_BCM[board])
    if match := _EXP_PIN.fullmatch(text):
        name, _gp, port, bit, index = match.groups()
        number = (0 if port.upper() == "A" else 8) + int(bit) if port else int(index)
        if number >= EXPANDER_PINS or (port and int(bit) > 7):
            raise PinConfigError(
                f"{where}{key} = {value!r}: an MCP23017 has pins 0-15 (A0-A7, B0-B7)",
                key=key,
                compartment=compartment,
                pin=text,
            )
        return PinRef(name, number)
    raise PinConfigError(
        f"{where}{key} = {value!r} is not a pin; write a BCM number such as 17, "
        f'"GPIO17", "BOARD11" or an expander pin such as "mcp0:A3"',
        key=key,
        compartment=compartment,
        pin=text,
    )


# --------------------------------------------------------------------------- value parsers

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise HardwareConfigError(f"{key} = {value!r} is not true or false", key=key)


def _int(value: object, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise HardwareConfigError(f"{key} = {value!r} is not a whole number", key=key)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 0)
        except ValueError:
            raise HardwareConfigError(f"{key} = {value!r} is not a whole number", key=key) from None
    else:
        raise HardwareConfigError(f"{key} = {value!r} is not a whole number", key=key)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise HardwareConfigError(f"{key} = {number} is out of range {lo}..{hi}", key=key)
    return number


def _float(value: object, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise HardwareConfigError(f"{key} = {value!r} is not a number of seconds", key=key)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise HardwareConfigError(f"{key} = {value!r} is not a number", key=key) from None
    if not math.isfinite(number) or number > hi or number < lo or (lo_open and number == lo):
        bound = f"more than {lo}" if lo_open else f"at least {lo}"
        raise HardwareConfigError(f"{key} = {value!r} must be {bound} and at most {hi}", key=key)
    return number


def _choice(value: object, key: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if isinstance(value, str) and value.strip().lower() in options:
        return value.strip().lower()
    raise HardwareConfigError(f"{key} = {value!r}: choose one of {', '.join(options)}", key=key)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class CompartmentSpec:
    """A compartment: its solenoid lock output and its door (reed) switch input."""

    number: int
    lock: PinRef
    door: PinRef


@dataclass(frozen=True)
class ExpanderSpec:
    """An MCP23017 on an I2C bus; ``int_pin`` is the Pi pin wired to its INTA output, if any.

    Without ``int_pin`` the inputs are polled every ``expander_poll_s`` seconds. Several
    expanders may share one ``int_pin`` (INTA is configured open-drain, so the lines can be
    wired together); give that Pi pin no other use.
    """

    name: str
    bus: int = 1
    address: int = 0x20
    int_pin: PinRef | None = None


@dataclass(frozen=True)
class ReaderSpec:
    """The RC522 reader: SPI bus and chip select, reset pin (BCM), polling interval (seconds)."""

    bus: int = 0
    device: int = 0
    reset_pin: int = 25
    poll_s: float = 0.05
    spi_hz: int = 1_000_000
    miss_limit: int = 2
    retry_s: float = 2.0
    health_check_s: float = 1.0


@dataclass(frozen=True)
class IndicatorSpec:
    """Status RGB LED (red, green, blue pins; None: no LED) and active buzzer (None: none)."""

    led_pins: tuple[PinRef, PinRef, PinRef] | None = (
        PinRef(None, 16),
        PinRef(None, 20),
        PinRef(None, 21),
    )
    led_active_high: bool = True
    buzzer_pin: PinRef | None = PinRef(None, 12)
    buzzer_active_high: bool = True
    alarm_s: float = 30.0


class DocumentedKey(NamedTuple):
    """One key of the ``[hardware]`` table: its name, default (as TOML text) and meaning."""

    name: str
    default: str
    doc: str


#: Every key of ``[hardware]``, its default and a one-line description (for the app's docs).
DOCUMENTED_KEYS: tuple[DocumentedKey, ...] = (
    DocumentedKey("backend", '"gpio"', '"gpio" for a real Pi, "sim" for the simulator.'),
    DocumentedKey(
        "compartments",
        "(required)",
        "Table number -> {lock, door} pins, a list of {number, lock, door}, or a count N "
        "(default layout).",
    ),
    DocumentedKey(
        "expanders",
        "{}",
        "Table name -> {bus = 1, address = 0x20, int_pin} of MCP23017 I2C expanders.",
    ),
    DocumentedKey(
        "lock_active_high",
        "true",
        "true: a high output energises the solenoid (MOSFET board); false: low does "
        "(most relay boards).",
    ),
    DocumentedKey(
        "unlock_s", "3.0", "Seconds a lock stays energised when pulsed without a duration."
    ),
    DocumentedKey(
        "max_unlock_s",
        "5.0",
        "Hard limit in seconds on energising one solenoid; longer requests are clamped.",
    ),
    DocumentedKey(
        "max_concurrent_unlocks",
        "2",
        "At most this many solenoids energised at once; more is refused (LockBusy).",
    ),
    DocumentedKey(
        "lock_rest_s",
        "0.1",
        "Seconds a solenoid rests de-energised before its next pulse (duty-cycle guard); "
        "a pulse asked for sooner is refused (LockBusy) and retried.",
    ),
    DocumentedKey(
        "door_pull",
        '"up"',
        '"up", "down" or "none": the internal resistor on door switch inputs.',
    ),
    DocumentedKey(
        "door_open_high",
        "true",
        "true: the door input reads high when the door is open (reed switch to ground).",
    ),
    DocumentedKey(
        "debounce_s", "0.05", "A door input must stay stable this long (s) before it counts."
    ),
    DocumentedKey(
        "forced_grace_s",
        "1.0",
        "A door opening within this many seconds after its lock relocked is not 'forced'.",
    ),
    DocumentedKey(
        "led_pins", "[16, 20, 21]", "Red, green, blue pins of the status LED; [] for none."
    ),
    DocumentedKey("led_active_high", "true", "false for a common-anode RGB LED."),
    DocumentedKey("buzzer_pin", "12", 'Pin of the active buzzer; "" for none.'),
    DocumentedKey("buzzer_active_high", "true", "false if the buzzer sounds on a low output."),
    DocumentedKey("alarm_s", "30.0", "Seconds the alarm pattern sounds unless stopped earlier."),
    DocumentedKey("reader_bus", "0", "SPI bus of the RC522 (0: SPI0)."),
    DocumentedKey("reader_device", "0", "SPI chip select of the RC522 (0: CE0)."),
    DocumentedKey("reader_reset_pin", "25", "BCM pin wired to the RC522 RST (NRSTPD) input."),
    DocumentedKey("reader_poll_s", "0.05", "Seconds between two polls of the reader."),
    DocumentedKey("reader_spi_hz", "1000000", "SPI clock of the reader in Hz."),
    DocumentedKey(
        "reader_miss_limit",
        "2",
        "Polls in a row without a held card before it counts as removed.",
    ),
    DocumentedKey("reader_retry_s", "2.0", "Seconds between attempts to revive a failed reader."),
    DocumentedKey(
        "reader_health_check_s",
        "1.0",
        "Seconds between checks that the reader chip still answers sensibly.",
    ),
    DocumentedKey(
        "expander_poll_s",
        "0.02",
        "Seconds between reads of expander inputs that have no int_pin.",
    ),
)

documented_keys = DOCUMENTED_KEYS

#: The ``[hardware]`` key of :attr:`CabinetSpec.lock_rest_s`.
LOCK_REST_KEY = next(key for key in DOCUMENTED_KEYS if key.name == "lock_rest_s")


@dataclass(frozen=True)
class CabinetSpec:
    """A whole cabinet. Build it with :meth:`from_mapping` (config) or :meth:`simulated`.

    All durations are in seconds. The constructor does not validate; :meth:`from_mapping` and
    :meth:`simulated` do, and :func:`hardware.open_cabinet` validates again.
    """

    compartments: Mapping[int, CompartmentSpec]
    expanders: Mapping[str, ExpanderSpec] = field(default_factory=dict)
    reader: ReaderSpec = field(default_factory=ReaderSpec)
    indicators: IndicatorSpec = field(default_factory=IndicatorSpec)
    backend: str = "gpio"
    lock_active_high: bool = True
    unlock_s: float = 3.0
    max_unlock_s: float = 5.0
    max_concurrent_unlocks: int = 2
    #: Duty-cycle guard: seconds a solenoid rests de-energised before it may be pulsed again.
    lock_rest_s: float = 0.1
    door_pull: str = "up"
    door_open_high: bool = True
    debounce_s: float = 0.05
    forced_grace_s: float = 1.0
    expander_poll_s: float = 0.02

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, where: str = "[hardware]") -> CabinetSpec:
        """Parse and validate the ``[hardware]`` table of config.toml.

        TOML-native values are expected; strings are accepted for numbers and booleans (as
        environment overrides arrive). Raises :class:`HardwareConfigError` or
        :class:`PinConfigError` whose message names the key (prefixed with ``where``) or the
        compartment.
        """
        if not isinstance(mapping, Mapping):
            raise HardwareConfigError(f"{where} must be a table, not {type(mapping).__name__}")
        known = {key.name for key in DOCUMENTED_KEYS}
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise HardwareConfigError(
                f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}",
                key=f"{where}.{unknown[0]}",
            )

        def k(name: str) -> str:
            return f"{where}.{name}"

        def get(name: str, parse: Callable[[object, str], Any], default: Any) -> Any:
            if name not in mapping:
                return default
            return parse(mapping[name], k(name))

        spec_defaults = cls(compartments={})
        reader_defaults = ReaderSpec()
        ind_defaults = IndicatorSpec()

        backend = get("backend", lambda v, key: _choice(v, key, ("gpio", "sim")), "gpio")
        expanders = _parse_expanders(mapping.get("expanders", {}), k("expanders"))
        reader = ReaderSpec(
            bus=get("reader_bus", lambda v, key: _int(v, key, 0, 6), reader_defaults.bus),
            device=get("reader_device", lambda v, key: _int(v, key, 0, 2), reader_defaults.device),
            reset_pin=get("reader_reset_pin", _bcm_pin, reader_defaults.reset_pin),
            poll_s=get(
                "reader_poll_s", lambda v, key: _float(v, key, 0.005, 5.0), reader_defaults.poll_s
            ),
            spi_hz=get(
                "reader_spi_hz",
                lambda v, key: _int(v, key, 10_000, 10_000_000),
                reader_defaults.spi_hz,
            ),
            miss_limit=get(
                "reader_miss_limit", lambda v, key: _int(v, key, 1, 20), reader_defaults.miss_limit
            ),
            retry_s=get(
                "reader_retry_s", lambda v, key: _float(v, key, 0.0, 600.0), reader_defaults.retry_s
            ),
            health_check_s=get(
                "reader_health_check_s",
                lambda v, key: _float(v, key, 0.0, 600.0),
                reader_defaults.health_check_s,
            ),
        )
        indicators = IndicatorSpec(
            led_pins=get("led_pins", _led_pins, ind_defaults.led_pins),
            led_active_high=get("led_active_high", _bool, ind_defaults.led_active_high),
            buzzer_pin=get("buzzer_pin", _optional_pin, ind_defaults.buzzer_pin),
            buzzer_active_high=get("buzzer_active_high", _bool, ind_defaults.buzzer_active_high),
            alarm_s=get(
                "alarm_s", lambda v, key: _float(v, key, 0.0, 3600.0), ind_defaults.alarm_s
            ),
        )
        if "compartments" not in mapping:
            raise HardwareConfigError(
                f"{k('compartments')} is missing: give a table number -> {{lock, door}}, "
                "or a number of compartments for the default layout",
                key=k("compartments"),
            )
        raw = mapping["compartments"]
        if isinstance(raw, int | str) and not isinstance(raw, bool):
            count = _int(raw, k("compartments"), 1, 10_000)
            layout = default_layout(count)
            compartments = layout.compartments
            merged = dict(layout.expanders)
            for name, exp in expanders.items():
                merged[name] = exp
            expanders = merged
        else:
            compartments = _parse_compartments(raw, k("compartments"))

        max_unlock_s = get(
            "max_unlock_s",
            lambda v, key: _float(v, key, 0.0, 30.0, lo_open=True),
            spec_defaults.max_unlock_s,
        )
        unlock_s = get(
            "unlock_s",
            lambda v, key: _float(v, key, 0.0, 30.0, lo_open=True),
            min(spec_defaults.unlock_s, max_unlock_s),
        )
        if unlock_s > max_unlock_s:
            raise HardwareConfigError(
                f"{k('unlock_s')} = {unlock_s} is longer than {k('max_unlock_s')} = "
                f"{max_unlock_s}; lower unlock_s",
                key=k("unlock_s"),
            )
        spec = cls(
            compartments=compartments,
            expanders=expanders,
            reader=reader,
            indicators=indicators,
            backend=backend,
            lock_active_high=get("lock_active_high", _bool, spec_defaults.lock_active_high),
            unlock_s=unlock_s,
            max_unlock_s=max_unlock_s,
            max_concurrent_unlocks=get(
                "max_concurrent_unlocks",
                lambda v, key: _int(v, key, 1, 64),
                spec_defaults.max_concurrent_unlocks,
            ),
            lock_rest_s=get(
                LOCK_REST_KEY.name,
                lambda v, key: _float(v, key, 0.0, 600.0),
                spec_defaults.lock_rest_s,
            ),
            door_pull=get(
                "door_pull",
                lambda v, key: _choice(v, key, ("up", "down", "none")),
                spec_defaults.door_pull,
            ),
            door_open_high=get("door_open_high", _bool, spec_defaults.door_open_high),
            debounce_s=get(
                "debounce_s", lambda v, key: _float(v, key, 0.0, 2.0), spec_defaults.debounce_s
            ),
            forced_grace_s=get(
                "forced_grace_s",
                lambda v, key: _float(v, key, 0.0, 60.0),
                spec_defaults.forced_grace_s,
            ),
            expander_poll_s=get(
                "expander_poll_s",
                lambda v, key: _float(v, key, 0.001, 5.0),
                spec_defaults.expander_poll_s,
            ),
        )
        spec.validate(where=where)
        return spec

    @classmethod
    def simulated(cls, compartments: int = 24, **overrides: Any) -> CabinetSpec:
        """A valid spec for a simulated cabinet of ``compartments`` compartments.

        Six or fewer use the Pi's own pins; more go on simulated MCP23017 expanders (eight
        compartments each, as many as needed: 24-400 compartments work). ``overrides`` replace
        fields of the result (for example ``debounce_s=0``).
        """
        layout = default_layout(compartments)
        spec = replace(layout, backend="sim", **overrides)
        spec.validate()
        return spec

    # ------------------------------------------------------------------ validation

    def validate(self, *, where: str = "[hardware]") -> None:
        """Check the pin map and the limits; raise :class:`PinConfigError` naming the culprit.

        A pin used twice, a pin reserved for SPI or I2C, a pin the board lacks, an expander
        pin of an undeclared expander, and two expanders at one I2C address are refused.
        """
        if not self.compartments:
            raise HardwareConfigError(
                f"{where}.compartments is empty: declare at least one compartment",
                key=f"{where}.compartments",
            )
        if self.max_unlock_s <= 0:
            raise HardwareConfigError(
                f"{where}.max_unlock_s must be positive", key=f"{where}.max_unlock_s"
            )
        if self.max_concurrent_unlocks < 1:
            raise HardwareConfigError(
                f"{where}.max_concurrent_unlocks must be at least 1",
                key=f"{where}.max_concurrent_unlocks",
            )
        if not 0 <= self.lock_rest_s <= 600:
            raise HardwareConfigError(
                f"{where}.{LOCK_REST_KEY.name} must be between 0 and 600 seconds",
                key=f"{where}.{LOCK_REST_KEY.name}",
            )
        reserved = dict(RESERVED_BCM)
        if self.reader.bus == 1:
            reserved.update(SPI1_BCM)
        seen_addr: dict[tuple[int, int], str] = {}
        for name, exp in self.expanders.items():
            if not _EXPANDER_NAME.fullmatch(name) or name.upper().startswith(("GPIO", "BCM")):
                raise HardwareConfigError(
                    f"{where}.expanders: {name!r} is not a usable expander name "
                    "(letters, digits, _; not starting with GPIO/BCM)",
                    key=f"{where}.expanders.{name}",
                )
            if not 0x20 <= exp.address <= 0x27:
                raise HardwareConfigError(
                    f"{where}.expanders.{name}: address {exp.address:#04x} is not an MCP23017 "
                    "address (0x20-0x27, set by pins A0-A2)",
                    key=f"{where}.expanders.{name}.address",
                )
            other = seen_addr.setdefault((exp.bus, exp.address), name)
            if other != name:
                raise HardwareConfigError(
                    f"{where}.expanders.{name}: I2C bus {exp.bus} address {exp.address:#04x} "
                    f"is already used by expander {other}",
                    key=f"{where}.expanders.{name}.address",
                )

        owners: dict[PinRef, tuple[str, int | None]] = {}

        def claim(
            pin: PinRef, label: str, compartment: int | None, key: str, *, shared: bool = False
        ) -> None:
            """Take ``pin`` for ``label`` (set by config ``key``), or PinConfigError."""
            prefix = f"compartment {compartment}: " if compartment is not None else ""
            if pin.on_pi:
                if pin.number not in BCM_PINS:
                    raise PinConfigError(
                        f"{prefix}{label} {pin} does not exist: the Raspberry Pi header has "
                        "BCM GPIO 0-27",
                        key=key,
                        compartment=compartment,
                        pin=str(pin),
                    )
                if pin.number in reserved:
                    raise PinConfigError(
                        f"{prefix}{label} {pin} is reserved: it is {reserved[pin.number]}; "
                        "choose another pin",
                        key=key,
                        compartment=compartment,
                        pin=str(pin),
                    )
            else:
                if pin.expander not in self.expanders:
                    declared = ", ".join(sorted(self.expanders)) or "none"
                    raise PinConfigError(
                        f"{prefix}{label} {pin}: no expander named {pin.expander!r} is declared "
                        f"under {where}.expanders (declared: {declared})",
                        key=key,
                        compartment=compartment,
                        pin=str(pin),
                    )
                if not 0 <= pin.number < EXPANDER_PINS:
                    raise PinConfigError(
                        f"{prefix}{label} {pin}: an MCP23017 has pins A0-A7 and B0-B7",
                        key=key,
                        compartment=compartment,
                        pin=str(pin),
                    )
            if pin in owners:
                other_label, other_comp = owners[pin]
                if shared and other_label.startswith("interrupt pin"):
                    return
                owner = (
                    f"the {other_label} of compartment {other_comp}"
                    if other_comp is not None
                    else f"the {other_label}"
                )
                raise PinConfigError(
                    f"{prefix}{label} {pin} is already used as {owner}; each pin has one use",
                    key=key,
                    compartment=compartment,
                    pin=str(pin),
                )
            owners[pin] = (label, compartment)

        claim(
            PinRef(None, self.reader.reset_pin),
            "reader reset pin",
            None,
            f"{where}.reader_reset_pin",
        )
        for name, exp in sorted(self.expanders.items()):
            if exp.int_pin is not None:
                if not exp.int_pin.on_pi:
                    raise PinConfigError(
                        f"expander {name}: int_pin must be a pin of the Pi, not {exp.int_pin}",
                        pin=str(exp.int_pin),
                    )
                claim(
                    exp.int_pin,
                    f"interrupt pin of expander {name}",
                    None,
                    f"{where}.expanders.{name}.int_pin",
                    shared=True,
                )
        if self.indicators.led_pins is not None:
            for colour, pin in zip(("red", "green", "blue"), self.indicators.led_pins, strict=True):
                claim(pin, f"status LED {colour} pin", None, f"{where}.led_pins")
        if self.indicators.buzzer_pin is not None:
            claim(self.indicators.buzzer_pin, "buzzer pin", None, f"{where}.buzzer_pin")
        for number in sorted(self.compartments):
            comp = self.compartments[number]
            if number != comp.number or number < 1:
                raise HardwareConfigError(
                    f"{where}.compartments: compartment numbers start at 1 ({number})",
                    key=f"{where}.compartments.{number}",
                )
            claim(comp.lock, "lock pin", number, f"{where}.compartments.{number}.lock")
            claim(comp.door, "door pin", number, f"{where}.compartments.{number}.door")
            if self.door_pull == "down" and not comp.door.on_pi:
                raise PinConfigError(
                    f"compartment {number}: door pin {comp.door} is on an MCP23017, which has no "
                    f'pull-down resistors; use door_pull = "up" (or "none" with an external '
                    "resistor)",
                    key=f"{where}.door_pull",
                    compartment=number,
                    pin=str(comp.door),
                )

    # ------------------------------------------------------------------ helpers

    def pins_in_use(self) -> dict[PinRef, str]:
        """Every pin of the map and what it is for (a human label)."""
        result: dict[PinRef, str] = {PinRef(None, self.reader.reset_pin): "reader reset"}
        for name, exp in self.expanders.items():
            if exp.int_pin is not None:
                result[exp.int_pin] = f"expander {name} interrupt"
        if self.indicators.led_pins:
            for colour, pin in zip(("red", "green", "blue"), self.indicators.led_pins, strict=True):
                result[pin] = f"status LED {colour}"
        if self.indicators.buzzer_pin is not None:
            result[self.indicators.buzzer_pin] = "buzzer"
        for number, comp in self.compartments.items():
            result[comp.lock] = f"compartment {number} lock"
            result[comp.door] = f"compartment {number} door"
        return result


def _bcm_pin(value: object, key: str) -> int:
    pin = parse_pin(value, key=key)
    if not pin.on_pi:
        raise PinConfigError(f"{key} = {value!r} must be a pin of the Pi", key=key, pin=str(pin))
    return pin.number


def _optional_pin(value: object, key: str) -> PinRef | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return None
    return parse_pin(value, key=key)


def _led_pins(value: object, key: str) -> tuple[PinRef, PinRef, PinRef] | None:
    if value is None or value == "" or value == [] or value == ():
        return None
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value.strip().strip("[]")) if part]
        value = [int(part) if part.isdigit() else part.strip("\"'") for part in value]
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise HardwareConfigError(
            f"{key} = {value!r}: give three pins [red, green, blue], or [] for no LED", key=key
        )
    red, green, blue = (parse_pin(item, key=key) for item in value)
    return (red, green, blue)


def _parse_expanders(raw: object, key: str) -> dict[str, ExpanderSpec]:
    if not isinstance(raw, Mapping):
        raise HardwareConfigError(
            f"{key} must be a table name -> {{bus, address, int_pin}}", key=key
        )
    result = {}
    for name, body in raw.items():
        sub = f"{key}.{name}"
        if not isinstance(body, Mapping):
            raise HardwareConfigError(
                f"{sub} must be a table such as {{ bus = 1, address = 0x20 }}", key=sub
            )
        extra = set(body) - {"bus", "address", "int_pin"}
        if extra:
            raise HardwareConfigError(
                f"{sub}: unknown key {sorted(extra)[0]!r} (known: bus, address, int_pin)", key=sub
            )
        result[str(name)] = ExpanderSpec(
            name=str(name),
            bus=_int(body.get("bus", 1), f"{sub}.bus", 0, 255),
            address=_int(body.get("address", 0x20), f"{sub}.address", 0, 0x7F),
            int_pin=_optional_pin(body.get("int_pin"), f"{sub}.int_pin"),
        )
    return result


def _parse_compartments(raw: object, key: str) -> dict[int, CompartmentSpec]:
    items: list[tuple[object, object]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = []
        for index, body in enumerate(raw):
            if not isinstance(body, Mapping) or "number" not in body:
                raise HardwareConfigError(
                    f"{key}[{index}] must be a table {{ number, lock, door }}", key=key
                )
            items.append((body["number"], {k: v for k, v in body.items() if k != "number"}))
    else:
        raise HardwareConfigError(
            f"{key} must be a table number -> {{ lock, door }}, a list, or a count", key=key
        )
    result: dict[int, CompartmentSpec] = {}
    for raw_number, body in items:
        number = _int(raw_number, f"{key} (compartment number {raw_number!r})", 1, 10_000)
        sub = f"{key}.{number}"
        if number in result:
            raise HardwareConfigError(f"compartment {number} is declared twice", key=sub)
        if not isinstance(body, Mapping):
            raise HardwareConfigError(
                f"compartment {number}: give a table {{ lock = ..., door = ... }}", key=sub
            )
        missing = [name for name in ("lock", "door") if name not in body]
        if missing:
            raise PinConfigError(
                f"compartment {number}: the {missing[0]} pin is missing",
                key=sub,
                compartment=number,
            )
        extra = set(body) - {"lock", "door"}
        if extra:
            raise HardwareConfigError(
                f"compartment {number}: unknown key {sorted(extra)[0]!r} (known: lock, door)",
                key=sub,
            )
        result[number] = CompartmentSpec(
            number=number,
            lock=parse_pin(body["lock"], key=f"{sub}.lock", compartment=number),
            door=parse_pin(body["door"], key=f"{sub}.door", compartment=number),
        )
    return result


# --------------------------------------------------------------------------- default layouts

#: Lock outputs of small cabinets: pins pulled low at boot, so an active-high driver stays off.
PI_LOCK_PINS = (17, 27, 22, 13, 19, 26)
#: Door inputs of small cabinets.
PI_DOOR_PINS = (5, 6, 23, 24, 18, 4)
#: The Pi pins carrying the INTA outputs of generated expanders: the eight expanders of one
#: I2C bus share one pin, so a door edge is serviced by reading at most eight chips.
DEFAULT_INT_PINS = (4, 5, 6, 13, 19, 26, 27, 22)
DEFAULT_INT_PIN = DEFAULT_INT_PINS[0]
COMPARTMENTS_PER_EXPANDER = 8


def default_layout(count: int) -> CabinetSpec:
    """The pin map of ``count`` compartments with the default indicator and reader pins.

    Up to six compartments use the Pi's pins (locks on BCM 17, 27, 22, 13, 19, 26; doors on
    5, 6, 23, 24, 18, 4). More use MCP23017 expanders ``mcp0``, ``mcp1``, ...: eight
    compartments each, lock of the k-th on A(k), door on B(k); eight expanders per I2C bus
    (addresses 0x20-0x27, buses 1, 2, ...); the INTA outputs of one bus's expanders are
    wired together to one Pi pin (bus 1: BCM 4, bus 2: BCM 5, then 6, 13, 19, 26, 27, 22).
    """
    if count < 1:
        raise HardwareConfigError("a cabinet has at least one compartment", key="compartments")
    if count <= len(PI_LOCK_PINS):
        compartments = {
            n: CompartmentSpec(
                n, PinRef(None, PI_LOCK_PINS[n - 1]), PinRef(None, PI_DOOR_PINS[n - 1])
            )
            for n in range(1, count + 1)
        }
        return CabinetSpec(compartments=compartments)
    n_exp = -(-count // COMPARTMENTS_PER_EXPANDER)
    expanders = {
        f"mcp{i}": ExpanderSpec(
            name=f"mcp{i}",
            bus=1 + i // 8,
            address=0x20 + i % 8,
            int_pin=PinRef(None, DEFAULT_INT_PINS[(i // 8) % len(DEFAULT_INT_PINS)]),
        )
        for i in range(n_exp)
    }
    compartments = {}
    for n in range(1, count + 1):
        exp, slot = divmod(n - 1, COMPARTMENTS_PER_EXPANDER)
        compartments[n] = CompartmentSpec(
            n, PinRef(f"mcp{exp}", slot), PinRef(f"mcp{exp}", 8 + slot)
        )
    return CabinetSpec(compartments=compartments, expanders=expanders)


__all__ = [
    "BCM_PINS",
    "BOARD_TO_BCM",
    "DOCUMENTED_KEYS",
    "LOCK_REST_KEY",
    "RESERVED_BCM",
    "CabinetSpec",
    "CompartmentSpec",
    "DocumentedKey",
    "ExpanderSpec",
    "IndicatorSpec",
    "PinRef",
    "ReaderSpec",
    "default_layout",
    "documented_keys",
    "parse_pin",
]
