"""The systemd units in systemd/: `systemd-analyze verify` with no warning at all, and the
settings the issue asks for."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import INSTALL, UNITS, clean_env, require_tool, run

#: Executables the units start, made as stubs in the verification root.
EXECUTABLES = (
    "opt/locker/venv/bin/locker",
    "opt/locker/libexec/locker-backup",
    "opt/locker/libexec/locker-screen",
)


def unit_names() -> list[str]:
    """Every unit to verify; the screen template as an instance for the user pi."""
    names = sorted(path.name for path in UNITS.iterdir() if path.suffix in (".service", ".timer"))
    return [name.replace("@.service", "@pi.service") for name in names]


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as lists of (key, value); keys may repeat (DeviceAllow=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} before any section"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected one value, found {found}"
    return found[0]


def verification_root(tmp_path: Path) -> Path:
    """A root with the distribution's units, ours, and stub executables."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd").mkdir(parents=True)
    shutil.copytree(UNITS, root / "etc/systemd/system")
    for executable in EXECUTABLES:
        path = root / executable
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n", encoding="utf-8")
        path.chmod(0o755)
    return root


def verify(root: Path, names: list[str]):
    analyze = require_tool("systemd-analyze", "systemd")
    return run([analyze, "verify", "--man=no", f"--root={root}", *names], env=clean_env())


def test_every_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    require_tool("systemd-analyze", "systemd")
    if not Path("/usr/lib/systemd/system/multi-user.target").exists():
        pytest.fail("/usr/lib/systemd/system has no multi-user.target: is systemd installed?")
    root = verification_root(tmp_path)
    names = unit_names()
    assert "locker-kiosk.service" in names and "locker-screen@pi.service" in names
    result = verify(root, names)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_verification_notices_a_bad_key_and_a_missing_program(tmp_path: Path) -> None:
    """The check above would catch a misspelt key or a wrong path (it is not a no-op)."""
    require_tool("systemd-analyze", "systemd")
    root = verification_root(tmp_path)
    unit = root / "etc/systemd/system/locker-kiosk.service"
    unit.write_text(
        unit.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchDogSec="), encoding="utf-8"
    )
    result = verify(root, ["locker-kiosk.service"])
    assert "Unknown key 'WatchDogSec'" in result.stdout + result.stderr
    (root / EXECUTABLES[0]).unlink()
    result = verify(root, ["locker-web.service"])
    assert result.returncode != 0
    assert "/opt/locker/venv/bin/locker" in result.stdout + result.stderr


def test_kiosk_unit_settings() -> None:
    unit = parse_unit(UNITS / "locker-kiosk.service")
    service = {
        "Type": "notify",
        "Restart": "always",
        "User": "locker",
        "SupplementaryGroups": "gpio spi i2c",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/locker",
        "Environment": None,
        "ExecStart": "/opt/locker/venv/bin/locker kiosk",
        "ExecStopPost": "-/opt/locker/venv/bin/locker safe-state",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
    }
    for key, expected in service.items():
        if expected is not None:
            assert value(unit, "Service", key) == expected, key
    assert "LOCKER_HOME=/var/lib/locker" in values(unit, "Service", "Environment")
    assert re.fullmatch(r"\d+s", value(unit, "Service", "WatchdogSec"))
    assert int(value(unit, "Service", "WatchdogSec")[:-1]) <= 60
    assert value(unit, "Service", "RestartSec")
    assert value(unit, "Service", "TimeoutStopSec")
    assert value(unit, "Service", "RestartPreventExitStatus") == "78"  # EX_CONFIG
    assert sorted(values(unit, "Service", "DeviceAllow")) == [
        "char-gpiochip rw",
        "char-i2c rw",
        "char-spi rw",
    ]
    assert values(unit, "Service", "PrivateDevices") == []
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


def test_web_unit_settings() -> None:
    """The web app runs as its own user, not the kiosk's: group locker gives it the data,
    and it has no device group and no device node."""
    unit = parse_unit(UNITS / "locker-web.service")
    assert value(unit, "Service", "ExecStart") == "/opt/locker/venv/bin/locker web"
    assert value(unit, "Service", "User") == "locker-web"
    assert value(unit, "Service", "Group") == "locker"
    assert value(unit, "Service", "PrivateDevices") == "yes"
    assert values(unit, "Service", "SupplementaryGroups") == []
    assert values(unit, "Service", "DeviceAllow") == []
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/locker",
        "Restart": "always",
    }.items():
        assert value(unit, "Service", key) == expected, key
    assert "LOCKER_HOME=/var/lib/locker" in values(unit, "Service", "Environment")


def test_screen_unit_runs_as_the_desktop_user() -> None:
    unit = parse_unit(UNITS / "locker-screen@.service")
    assert value(unit, "Service", "User") == "%i"
    assert value(unit, "Service", "ExecStart") == "/opt/locker/libexec/locker-screen"
    assert value(unit, "Service", "EnvironmentFile") == "-/etc/locker/screen.env"
    assert "locker-web.service" in value(unit, "Unit", "After")
    assert value(unit, "Install", "WantedBy") == "graphical.target"


@pytest.mark.parametrize(
    ("timer", "command"),
    [
        ("locker-backup", "/opt/locker/libexec/locker-backup"),
        ("locker-retention", "/opt/locker/venv/bin/locker retention purge"),
        ("locker-sweep", "/opt/locker/venv/bin/locker custody sweep"),
    ],
)
def test_timers_start_their_service(timer: str, command: str) -> None:
    unit = parse_unit(UNITS / f"{timer}.timer")
    assert value(unit, "Timer", "OnCalendar")
    assert value(unit, "Timer", "Persistent") == "true"
    assert value(unit, "Install", "WantedBy") == "timers.target"
    service = parse_unit(UNITS / f"{timer}.service")
    assert value(service, "Service", "Type") == "oneshot"
    assert value(service, "Service", "User") == "locker"
    assert value(service, "Service", "ExecStart") == command
    assert value(service, "Service", "ProtectSystem") == "strict"


def test_backup_unit_writes_only_state_and_backups() -> None:
    unit = parse_unit(UNITS / "locker-backup.service")
    assert value(unit, "Service", "ReadWritePaths") == "/var/lib/locker /var/backups/locker"
    # pg_dump of a shared PostgreSQL database goes over the network
    assert value(unit, "Service", "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert value(unit, "Unit", "RequiresMountsFor") == "/var/backups/locker"
    assert value(unit, "Service", "EnvironmentFile") == "-/etc/locker/backup.env"


def test_uninstall_knows_every_unit() -> None:
    """uninstall-pi.sh removes units by name: a new unit must be added to its list."""
    script = (INSTALL / "uninstall-pi.sh").read_text(encoding="utf-8")
    listed = re.search(r'UNITS="([^"]*)"', script)
    assert listed is not None
    assert set(listed.group(1).split()) == {path.name for path in UNITS.iterdir()}
