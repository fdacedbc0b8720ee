from __future__ import annotations

import sys
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.errors import HardwareConfigError, PinConfigError
from hardware.spec import (
    BOARD_TO_BCM,
    DOCUMENTED_KEYS,
    CabinetSpec,
    PinRef,
    default_layout,
    parse_pin,
)

CONFIG = """
backend = "sim"
lock_active_high = false
max_unlock_s = 4.0
unlock_s = 2.5
max_concurrent_unlocks = 3
door_pull = "none"
door_open_high = false
debounce_s = 0.02
led_pins = [16, 20, 21]
buzzer_pin = "GPIO12"
reader_poll_s = 0.1

[expanders]
mcp0 = { bus = 1, address = 0x20, int_pin = 4 }
mcp1 = { bus = 1, address = 0x21 }

[compartments]
1 = { lock = 17, door = 5 }
2 = { lock = "BOARD13", door = "BCM6" }
3 = { lock = "mcp0:A0", door = "mcp0:B0" }
4 = { lock = "mcp1:GPA7", door = "mcp1:15" }
"""


def parse(text: str) -> CabinetSpec:
    return CabinetSpec.from_mapping(tomllib.loads(text))


def test_full_config_is_parsed() -> None:
    spec = parse(CONFIG)
    assert spec.backend == "sim"
    assert spec.lock_active_high is False
    assert (spec.max_unlock_s, spec.unlock_s, spec.max_concurrent_unlocks) == (4.0, 2.5, 3)
    assert (spec.door_pull, spec.door_open_high, spec.debounce_s) == ("none", False, 0.02)
    assert spec.reader.poll_s == 0.1 and spec.reader.reset_pin == 25
    assert spec.indicators.buzzer_pin == PinRef(None, 12)
    assert spec.expanders["mcp0"].int_pin == PinRef(None, 4)
    assert spec.expanders["mcp1"].address == 0x21 and spec.expanders["mcp1"].int_pin is None
    assert {n: (str(c.lock), str(c.door)) for n, c in spec.compartments.items()} == {
        1: ("GPIO17", "GPIO5"),
        2: ("GPIO27", "GPIO6"),
        3: ("mcp0:A0", "mcp0:B0"),
        4: ("mcp1:A7", "mcp1:B7"),
    }


def test_strings_are_accepted_for_numbers_and_booleans() -> None:
    spec = CabinetSpec.from_mapping(
        {
            "compartments": "3",
            "max_unlock_s": "6",
            "unlock_s": "2",
            "lock_active_high": "no",
            "max_concurrent_unlocks": "1",
            "reader_poll_s": "0.2",
            "led_pins": "16, 20, 21",
            "buzzer_pin": "",
        }
    )
    assert (spec.max_unlock_s, spec.unlock_s, spec.lock_active_high) == (6.0, 2.0, False)
    assert spec.max_concurrent_unlocks == 1 and spec.reader.poll_s == 0.2
    assert spec.indicators.buzzer_pin is None
    assert len(spec.compartments) == 3


def test_every_documented_key_is_accepted_with_its_default() -> None:
    lines = [
        f"{key.name} = {key.default}"
        for key in DOCUMENTED_KEYS
        if key.name not in ("compartments", "expanders")
    ]
    mapping = tomllib.loads("\n".join(lines))
    mapping["compartments"] = 2
    spec = CabinetSpec.from_mapping(mapping)
    defaults = CabinetSpec.from_mapping({"compartments": 2})
    assert spec == defaults
    assert all(key.doc and key.default for key in DOCUMENTED_KEYS)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"compartments": 2, "max_unlok_s": 3}, "unknown key 'max_unlok_s'"),
        ({"compartments": 2, "max_unlock_s": 0}, r"\[hardware\].max_unlock_s"),
        ({"compartments": 2, "max_unlock_s": 60}, "max_unlock_s"),
        ({"compartments": 2, "unlock_s": 9}, "unlock_s"),
        ({"compartments": 2, "lock_active_high": "maybe"}, "lock_active_high"),
        ({"compartments": 2, "backend": "arduino"}, "backend"),
        ({}, "compartments is missing"),
        ({"compartments": {}}, "compartments is empty"),
        ({"compartments": {"1": {"lock": 17}}}, "compartment 1: the door pin is missing"),
        ({"compartments": {"x": {"lock": 17, "door": 5}}}, "compartment number"),
    ],
)
def test_config_errors_name_the_key(mapping: dict, message: str) -> None:
    with pytest.raises(HardwareConfigError, match=message):
        CabinetSpec.from_mapping(mapping)


@pytest.mark.parametrize(
    ("compartments", "message", "number"),
    [
        ({"1": {"lock": 17, "door": 5}, "2": {"lock": 17, "door": 6}},
         "compartment 2: lock pin GPIO17 is already used as the lock pin of compartment 1", 2),
        ({"1": {"lock": 17, "door": 17}}, "compartment 1: door pin GPIO17 is already used", 1),
        ({"3": {"lock": 10, "door": 5}}, "compartment 3: lock pin GPIO10 is reserved.*MOSI", 3),
        ({"4": {"lock": 2, "door": 5}}, "compartment 4: lock pin GPIO2 is reserved.*I2C", 4),
        ({"5": {"lock": 40, "door": 5}}, "compartment 5: lock pin GPIO40 does not exist", 5),
        ({"6": {"lock": 25, "door": 5}}, "already used as the reader reset pin", 6),
        ({"7": {"lock": 16, "door": 5}}, "status LED red pin", 7),
        ({"8": {"lock": "mcp9:A0", "door": 5}}, "no expander named 'mcp9'", 8),
        ({"9": {"lock": "BOARD1", "door": 5}}, "header pin 1 is not a GPIO pin", 9),
        ({"9": {"lock": "mcp0:B8", "door": 5}}, "pins 0-15", 9),
        ({"9": {"lock": "banana", "door": 5}}, "is not a pin", 9),
    ],
)  # fmt: skip
def test_pin_errors_name_the_compartment(compartments: dict, message: str, number: int) -> None:
    with pytest.raises(PinConfigError, match=message) as info:
        CabinetSpec.from_mapping(
            {"compartments": compartments, "expanders": {"mcp0": {"address": 0x20}}}
        )
    assert info.value.compartment == number


def test_expander_errors() -> None:
    with pytest.raises(HardwareConfigError, match="address 0x30 is not an MCP23017 address"):
        CabinetSpec.from_mapping({"compartments": 1, "expanders": {"mcp9": {"address": 0x30}}})
    with pytest.raises(HardwareConfigError, match="already used by expander a"):
        CabinetSpec.from_mapping(
            {"compartments": 1, "expanders": {"a": {"address": 0x20}, "b": {"address": "0x20"}}}
        )
    with pytest.raises(HardwareConfigError, match="unknown key 'adress'"):
        CabinetSpec.from_mapping({"compartments": 1, "expanders": {"a": {"adress": 0x20}}})


def test_expanders_may_share_an_interrupt_pin_but_nothing_else_may_use_it() -> None:
    spec = CabinetSpec.simulated(24)
    assert {exp.int_pin for exp in spec.expanders.values()} == {PinRef(None, 4)}
    with pytest.raises(PinConfigError, match="interrupt pin of expander mcp0"):
        CabinetSpec.from_mapping(
            {
                "compartments": {"1": {"lock": 17, "door": 4}},
                "expanders": {"mcp0": {"int_pin": 4}},
            }
        )


def test_list_form_of_compartments() -> None:
    spec = CabinetSpec.from_mapping(
        {
            "compartments": [
                {"number": 2, "lock": 17, "door": 5},
                {"number": 1, "lock": 27, "door": 6},
            ]
        }
    )
    assert sorted(spec.compartments) == [1, 2]


def test_spi1_pins_are_reserved_only_when_the_reader_uses_spi1() -> None:
    ok = CabinetSpec.from_mapping({"compartments": {"1": {"lock": 19, "door": 5}}})
    assert ok.compartments[1].lock == PinRef(None, 19)
    with pytest.raises(PinConfigError, match="MISO of SPI1"):
        CabinetSpec.from_mapping(
            {"compartments": {"1": {"lock": 19, "door": 5}}, "reader_bus": 1, "led_pins": []}
        )


@pytest.mark.parametrize("count", [1, 5, 6, 7, 24, 64, 65, 400])
def test_default_layouts_are_valid(count: int) -> None:
    spec = CabinetSpec.simulated(count)
    assert sorted(spec.compartments) == list(range(1, count + 1))
    assert spec.backend == "sim"
    pins = spec.pins_in_use()
    interrupt_pins = -(-len(spec.expanders) // 8)  # one per bus of eight expanders
    assert len(pins) == 2 * count + 5 + interrupt_pins
    assert len({exp.int_pin for exp in spec.expanders.values()}) == interrupt_pins
    if count <= 6:
        assert not spec.expanders
    else:
        assert len(spec.expanders) == -(-count // 8)


def test_default_layout_rejects_zero() -> None:
    with pytest.raises(HardwareConfigError):
        default_layout(0)


pi_pins = st.integers(0, 27).map(lambda n: PinRef(None, n))
expander_pins = st.builds(
    PinRef, st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.integers(0, 15)
)


@given(st.one_of(pi_pins, expander_pins))
def test_pin_round_trip(pin: PinRef) -> None:
    assert parse_pin(str(pin)) == pin


@given(st.integers(0, 27), st.sampled_from(["{}", "GPIO{}", "gpio{}", "BCM{}", " {} "]))
def test_pi_pin_spellings(number: int, template: str) -> None:
    assert parse_pin(template.format(number)) == PinRef(None, number)
    assert parse_pin(number) == PinRef(None, number)


@given(st.sampled_from(sorted(BOARD_TO_BCM)))
def test_board_numbers(board: int) -> None:
    assert parse_pin(f"BOARD{board}") == PinRef(None, BOARD_TO_BCM[board])


@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_parse_pin_raises_only_pin_config_errors(value: object) -> None:
    try:
        pin = parse_pin(value, key="k")
    except PinConfigError as exc:
        assert "k" in str(exc)
    else:
        assert isinstance(pin, PinRef)


def test_spec_module_imports_no_hardware_library() -> None:
    import subprocess

    code = (
        "import sys, hardware, hardware.spec; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('gpiozero','RPi','spidev','smbus','smbus2','mfrc522','fake_rpi','lgpio')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pull_down_is_refused_for_expander_door_pins() -> None:
    with pytest.raises(PinConfigError, match=r"compartment 1: door pin mcp0:B0 .* no pull-down"):
        CabinetSpec.from_mapping({"compartments": 10, "door_pull": "down"})
    spec = CabinetSpec.from_mapping({"compartments": 3, "door_pull": "down"})
    assert spec.door_pull == "down"


def test_lock_rest_default_and_limits() -> None:
    from dataclasses import replace

    from hardware.spec import LOCK_REST_KEY

    spec = CabinetSpec.from_mapping({"compartments": 2})
    assert spec.lock_rest_s == float(LOCK_REST_KEY.default) > 0
    assert LOCK_REST_KEY.name == "lock_rest_s" and LOCK_REST_KEY.doc
    with pytest.raises(HardwareConfigError, match="lock_rest_s"):
        replace(spec, lock_rest_s=-1.0).validate()
