"""docs/hardware.md, install.md and operations.md say what the product does: the worked
[hardware] examples are valid configurations, every [hardware] key is explained, and every
`locker` command and systemd unit they name exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import click
import pytest

from hardware.spec import DOCUMENTED_KEYS, PinRef, default_layout
from kiosk import config as config_module
from kiosk.cli import cli
from kiosk.daemon import cabinet_spec

from .conftest import REPO, UNITS

DOCS = {name: REPO / "docs" / f"{name}.md" for name in ("hardware", "install", "operations")}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMAND = re.compile(
    r"(?:^|[\s|(])(?:sudo )?locker (?:--home \S+ )?([a-z][a-z-]*)(?: ([a-z][a-z-]*))?"
)


def text(name: str) -> str:
    return DOCS[name].read_text(encoding="utf-8")


def toml_examples() -> list[str]:
    return [body for lang, body in FENCE.findall(text("hardware")) if lang == "toml"]


def code(name: str) -> list[str]:
    """The fenced blocks and inline code spans of a document."""
    body = text(name)
    blocks = [block for _lang, block in FENCE.findall(body)]
    inline = re.findall(r"`([^`\n]+)`", FENCE.sub("", body))
    return blocks + inline


def load_example(tmp_path: Path, example: str):
    (tmp_path / "config.toml").write_text(example, encoding="utf-8")
    config = config_module.load(tmp_path, env={})
    return config, cabinet_spec(config)


def test_the_readme_links_the_three_documents() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, path in DOCS.items():
        assert path.is_file(), path
        assert f"(docs/{name}.md)" in readme


def test_there_are_two_worked_examples() -> None:
    examples = toml_examples()
    assert len(examples) == 2
    assert [tomllib.loads(example)["kiosk"]["compartments"] for example in examples] == [12, 6]


@pytest.mark.parametrize("index", [0, 1], ids=["12-on-expanders", "6-on-the-pi"])
def test_the_examples_are_valid_configurations(tmp_path: Path, index: int) -> None:
    config, spec = load_example(tmp_path, toml_examples()[index])
    assert spec.backend == "gpio"
    assert len(spec.compartments) == config.kiosk.compartments
    assert set(config.kiosk.secure_compartments) <= set(spec.compartments)


def test_the_twelve_compartment_example(tmp_path: Path) -> None:
    _config, spec = load_example(tmp_path, toml_examples()[0])
    assert {name: (exp.bus, exp.address, exp.int_pin) for name, exp in spec.expanders.items()} == {
        "mcp0": (1, 0x20, PinRef(None, 4)),
        "mcp1": (1, 0x21, PinRef(None, 4)),
    }
    for number, compartment in spec.compartments.items():
        chip, slot = ("mcp0", number - 1) if number <= 6 else ("mcp1", number - 7)
        assert compartment.lock == PinRef(chip, slot)  # A0-A5
        assert compartment.door == PinRef(chip, 8 + slot)  # B0-B5
        # GPA7/GPB7 are output-only on current MCP23017 silicon: never a door input
        assert compartment.door.number not in (7, 15)


def test_the_six_compartment_example_is_the_default_layout(tmp_path: Path) -> None:
    _config, spec = load_example(tmp_path, toml_examples()[1])
    assert dict(spec.compartments) == dict(default_layout(6).compartments)
    assert spec.expanders == {}
    table = re.findall(r"^\| (\d) \| GPIO(\d+) \(pin (\d+)\) \| GPIO(\d+) \(pin (\d+)\) \|$",
                       text("hardware"), re.MULTILINE)  # fmt: skip
    assert [(int(n), int(lock), int(door)) for n, lock, _, door, _ in table] == [
        (n, c.lock.number, c.door.number) for n, c in sorted(spec.compartments.items())
    ]


def test_every_hardware_key_is_explained() -> None:
    body = text("hardware")
    missing = [key.name for key in DOCUMENTED_KEYS if f"`{key.name}`" not in body]
    assert missing == []


def cli_commands() -> dict[str, set[str] | None]:
    """Top-level command -> its subcommands (None for a plain command)."""
    return {
        name: set(command.commands) if isinstance(command, click.Group) else None
        for name, command in cli.commands.items()
    }


def test_every_locker_command_named_in_the_docs_exists() -> None:
    known = cli_commands()
    unknown = set()
    for name in DOCS:
        for snippet in code(name):
            for command, sub in COMMAND.findall(snippet):
                if command not in known:
                    unknown.add(f"{name}.md: locker {command}")
                elif known[command] is not None and sub and sub not in known[command]:
                    unknown.add(f"{name}.md: locker {command} {sub}")
    assert sorted(unknown) == []


def test_the_units_named_in_the_docs_exist_and_all_are_documented() -> None:
    units = {path.name for path in UNITS.iterdir()}
    install = text("install")
    for unit in units:
        assert unit.replace("@.service", "@USER.service") in install or unit in install, unit
    named = set()
    for name in DOCS:
        named |= set(re.findall(r"locker-[a-z]+(?:@[A-Z]*)?\.(?:service|timer)", text(name)))
    named = {unit.replace("@USER.", "@.") for unit in named}
    assert named <= units, named - units
