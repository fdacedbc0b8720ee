"""install/install-pi.sh and install/uninstall-pi.sh, run for real into a throw-away root.

The root is a fake Raspberry Pi OS: /etc/passwd and friends with the desktop user ``pi`` and
the ``gpio`` group (not ``spi`` and ``i2c``: the script must create them), a config.txt, an
auto-login lightdm.conf. The scripts run with ``--root`` (every path prefixed; no apt-get,
no running systemd: units are enabled with ``systemctl --root``), ``--no-packages``, and the
application built from this source tree into a virtual environment under the root.

To stay fast and off the network, pip finds the application's dependencies where this test
runs (``PYTHONPATH`` = this interpreter's site-packages, so they count as installed) and
``--extras ""`` leaves out the Pi-only ones (lgpio, rpi-lgpio, spidev: they build only on a
Pi). The application itself is built and installed by the script's own pip commands.

One scenario, recorded once, checked by the tests below: install, install again, uninstall,
uninstall again, edit the configuration, reinstall on a Pi whose raspi-config (a stub) has
SPI and I2C off.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import (
    INSTALL,
    UNITS,
    clean_env,
    manifest,
    manifest_diff,
    require_root,
    require_tool,
    run,
)

CONFIG_TXT = "# Raspberry Pi OS config.txt (test stub)\ndtparam=audio=on\n\n[pi4]\narm_boost=1\n"
ENABLED = {
    "multi-user.target.wants/locker-kiosk.service",
    "multi-user.target.wants/locker-web.service",
    "timers.target.wants/locker-backup.timer",
    "timers.target.wants/locker-retention.timer",
    "graphical.target.wants/locker-screen@pi.service",
}
#: Small files whose text is recorded after each step.
RECORDED = (
    "etc/passwd",
    "etc/group",
    "etc/modules",
    "boot/firmware/config.txt",
    "etc/locker/config.toml",
    "etc/locker/screen.env",
    "var/lib/locker/secret.key",
)
DATA = (
    "var/lib/locker/secret.key",
    "var/lib/locker/locker.db",
    "etc/locker/config.toml",
    "etc/locker/backup.env",
    "etc/locker/screen.env",
)
EDITED = 'name = "Test School"'
RASPI_CONFIG_STUB = """#!/bin/sh
# raspi-config as far as the install script uses it: log the call, do what it would do.
echo "$*" >> "{log}"
case "$*" in
    "nonint do_spi 0") echo "dtparam=spi=on" >> "{config_txt}" ;;
    "nonint do_i2c 0") echo "dtparam=i2c_arm=on" >> "{config_txt}" ;;
esac
"""


def fake_pi_root(root: Path) -> None:
    (root / "etc/lightdm").mkdir(parents=True)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n",
        "etc/group": "root:x:0:\ngpio:x:997:pi\npi:x:1000:\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n",
        "etc/gshadow": "root:*::\ngpio:!::pi\npi:!::\n",
        "etc/lightdm/lightdm.conf": "[Seat:*]\nautologin-user=pi\n",
        "boot/firmware/config.txt": CONFIG_TXT,
        "usr/sbin/nologin": "#!/bin/sh\nexit 1\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/gshadow").chmod(0o640)
    (root / "usr/sbin/nologin").chmod(0o755)
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", root / "etc/login.defs")


def pip_args() -> str:
    """Build offline when this interpreter has a setuptools that can (>= 77 reads the SPDX
    licence and builds wheels itself); otherwise pip fetches setuptools into an isolated build
    environment."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return ""
    major, minor = (int(part) for part in version.split(".")[:2])
    return "--no-index --no-build-isolation" if (major, minor) >= (77, 0) else ""


@dataclass
class Scenario:
    root: Path
    outputs: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, dict] = field(default_factory=dict)
    texts: dict[str, dict[str, str | None]] = field(default_factory=dict)
    verify_output: str = ""
    verify_code: int = -1
    raspi_config_calls: list[str] = field(default_factory=list)


def passwd_entry(scenario: Scenario, step: str, name: str, table: str = "passwd"):
    """The fields of ``name`` in /etc/passwd (or /etc/group) after ``step``, or None."""
    for line in (scenario.texts[step][f"etc/{table}"] or "").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    require_root()
    for tool, package in (("useradd", "passwd"), ("systemctl", "systemd")):
        require_tool(tool, package)
    analyze = require_tool("systemd-analyze", "systemd")
    base = tmp_path_factory.mktemp("deploy")
    root = base / "root"
    fake_pi_root(root)
    env = clean_env(PYTHONPATH=sysconfig.get_paths()["purelib"], PIP_NO_INPUT="1")
    install = [
        "bash",
        str(INSTALL / "install-pi.sh"),
        "--root",
        str(root),
        "--no-packages",
        "--python",
        sys.executable,
        "--extras",
        "",
        "--pip-args",
        pip_args(),
    ]
    uninstall = ["bash", str(INSTALL / "uninstall-pi.sh"), "--root", str(root)]
    found = Scenario(root)

    def step(name: str, args: list[str], step_env: dict[str, str] = env) -> None:
        result = run(args, env=step_env, cwd=base)
        found.outputs[name] = result.stdout + result.stderr
        found.codes[name] = result.returncode
        found.manifests[name] = manifest(root)
        found.texts[name] = {
            rel: (root / rel).read_text(encoding="utf-8") if (root / rel).is_file() else None
            for rel in RECORDED
        }

    step("install", install)
    step("install again", install)
    # The units as installed, with the executables the install made: verify them there.
    systemd_units = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", systemd_units, symlinks=True)
    names = [path.name for path in UNITS.iterdir() if path.suffix in (".service", ".timer")]
    names = [name.replace("@.service", "@pi.service") for name in names]
    result = run([analyze, "verify", "--man=no", f"--root={root}", *names], env=clean_env())
    found.verify_output, found.verify_code = result.stdout + result.stderr, result.returncode
    shutil.rmtree(root / "usr/lib/systemd")

    step("uninstall", uninstall)
    step("uninstall again", uninstall)
    config = root / "etc/locker/config.toml"
    edited = config.read_text(encoding="utf-8").replace('# name = "Our School"', EDITED, 1)
    config.write_text(edited, encoding="utf-8")
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT, encoding="utf-8")
    log = base / "raspi-config.log"
    stub = base / "raspi-config"
    stub.write_text(
        RASPI_CONFIG_STUB.format(log=log, config_txt=root / "boot/firmware/config.txt"),
        encoding="utf-8",
    )
    stub.chmod(0o755)
    step("reinstall", install, {**env, "RASPI_CONFIG": str(stub)})
    found.raspi_config_calls = log.read_text(encoding="utf-8").splitlines()
    return found


def ok(scenario: Scenario, name: str) -> str:
    assert scenario.codes[name] == 0, f"{name} failed:\n{scenario.outputs[name]}"
    return scenario.outputs[name]


# ------------------------------------------------------------------------------ install


def test_installing_twice_changes_nothing(scenario: Scenario) -> None:
    ok(scenario, "install")
    ok(scenario, "install again")
    first, second = scenario.manifests["install"], scenario.manifests["install again"]
    assert len(first) > 100  # the virtual environment is in the comparison
    assert manifest_diff(first, second) == []


def test_the_locker_user_and_its_groups(scenario: Scenario) -> None:
    ok(scenario, "install")
    user = passwd_entry(scenario, "install", "locker")
    assert user is not None
    assert user[5:] == ["/var/lib/locker", "/usr/sbin/nologin"]
    for group in ("gpio", "spi", "i2c"):
        entry = passwd_entry(scenario, "install", group, "group")
        assert entry is not None, f"group {group} missing"
        assert "locker" in entry[3].split(","), f"locker not in {group}"
    assert passwd_entry(scenario, "install", "gpio", "group")[3].split(",") == ["pi", "locker"]
    assert int(user[2]) < 1000  # a system user


def test_state_config_and_secret(scenario: Scenario) -> None:
    ok(scenario, "install again")
    files = scenario.manifests["install again"]
    texts = scenario.texts["install again"]
    user = passwd_entry(scenario, "install again", "locker")
    uid, gid = int(user[2]), int(user[3])
    assert files["var/lib/locker"] == ("dir", "0o750", uid, gid)
    assert files["var/backups/locker"] == ("dir", "0o750", uid, gid)
    assert files["etc/locker"] == ("dir", "0o750", 0, gid)
    assert files["var/lib/locker/secret.key"][:4] == ("file", "0o600", uid, gid)
    assert files["var/lib/locker/locker.db"][2:4] == (uid, gid)
    assert files["etc/locker/config.toml"][:4] == ("file", "0o640", 0, gid)
    kind, _, _, target = files["var/lib/locker/config.toml"]
    assert kind == "link"
    assert os.path.normpath(os.path.join("/var/lib/locker", target)) == "/etc/locker/config.toml"
    secret = texts["var/lib/locker/secret.key"].strip()
    assert len(bytes.fromhex(secret)) == 32
    example = run(
        [sys.executable, "-m", "kiosk", "config", "example"], env=clean_env(), cwd=scenario.root
    )
    assert example.returncode == 0
    assert texts["etc/locker/config.toml"] == example.stdout
    assert "exists: kept as it is" in scenario.outputs["install again"]
    screen = texts["etc/locker/screen.env"]
    assert "LOCKER_SCREEN_URL=http://127.0.0.1:8000/kiosk/main\n" in screen


def test_the_application_runs_from_its_virtual_environment(scenario: Scenario) -> None:
    ok(scenario, "install again")
    root = scenario.root
    program = root / "opt/locker/venv/bin/locker"
    env = clean_env(PYTHONPATH=sysconfig.get_paths()["purelib"])
    result = run([str(program), "--home", str(root / "var/lib/locker"), "audit", "verify"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit chain ok")
    assert "created site secret" in scenario.outputs["install"]
    assert "created site secret" not in scenario.outputs["install again"]
    assert "schema up to date" in scenario.outputs["install again"]
    installed = root / "opt/locker/src"
    assert (installed / "pyproject.toml").is_file() and (installed / "kiosk/cli.py").is_file()
    assert not (installed / "build").exists() and not list(installed.glob("*.egg-info"))
    for name in ("usr/local/bin/locker", "opt/locker/libexec/locker-backup"):
        assert scenario.manifests["install"][name][1] == "0o755", name


def test_spi_and_i2c_switched_on_once(scenario: Scenario) -> None:
    ok(scenario, "install again")
    text = scenario.texts["install again"]["boot/firmware/config.txt"]
    assert text.startswith(CONFIG_TXT)
    lines = text.splitlines()
    assert lines.count("dtparam=spi=on") == 1 and lines.count("dtparam=i2c_arm=on") == 1
    # after the [pi4] section of the stub, the lines must be under [all] again
    added = lines[len(CONFIG_TXT.splitlines()) :]
    assert added[: added.index("dtparam=spi=on")].count("[all]") == 1
    modules = scenario.texts["install again"]["etc/modules"].splitlines()
    assert modules == ["i2c-dev"]
    assert "reboot once" in scenario.outputs["install"]
    assert "reboot once" not in scenario.outputs["install again"]


def test_units_installed_and_enabled(scenario: Scenario) -> None:
    ok(scenario, "install again")
    files = scenario.manifests["install again"]
    system = "etc/systemd/system/"
    for unit in UNITS.iterdir():
        digest = hashlib.sha256(unit.read_bytes()).hexdigest()
        assert files[system + unit.name] == ("file", "0o644", 0, 0, digest), unit.name
    links = {
        name.removeprefix(system): entry[3]
        for name, entry in files.items()
        if name.startswith(system) and ".wants/" in name and entry[0] == "link"
    }
    assert set(links) == ENABLED
    assert links["graphical.target.wants/locker-screen@pi.service"] == (
        "/etc/systemd/system/locker-screen@.service"
    )


def test_installed_units_verify_against_the_installed_files(scenario: Scenario) -> None:
    assert scenario.verify_code == 0 and not scenario.verify_output.strip(), scenario.verify_output


def test_refuses_a_directory_that_is_not_the_source_tree(tmp_path: Path) -> None:
    require_root()
    result = run(
        ["bash", str(INSTALL / "install-pi.sh"), "--root", str(tmp_path / "r"), "--source", "/"],
        env=clean_env(),
    )
    assert result.returncode == 1
    assert "is not the phone locker's source tree" in result.stderr
    assert not (tmp_path / "r" / "opt").exists()


# ------------------------------------------------------------------------------ uninstall


def test_uninstall_removes_the_program_and_keeps_the_data(scenario: Scenario) -> None:
    output = ok(scenario, "uninstall")
    before, after = scenario.manifests["install again"], scenario.manifests["uninstall"]
    for name in DATA:
        assert after[name][0] == "file" and after[name][4] == before[name][4], name
        assert after[name][2:4] == (0, 0), f"{name} should be handed to root"
    assert after["var/lib/locker/secret.key"][1] == "0o600"
    assert after["var/lib/locker/config.toml"] == before["var/lib/locker/config.toml"]
    gone = ("opt/locker", "usr/local/bin/locker", "etc/systemd/system/locker-kiosk.service")
    for name in gone:
        assert name not in after, name
    assert not [name for name in after if "locker" in name and "systemd" in name]
    assert passwd_entry(scenario, "uninstall", "locker") is None
    assert passwd_entry(scenario, "uninstall", "locker", "group") is None
    assert passwd_entry(scenario, "uninstall", "spi", "group") is not None  # groups stay
    assert "KEPT" in output and "/var/lib/locker" in output and "secret.key" in output


def test_uninstalling_twice_is_harmless(scenario: Scenario) -> None:
    ok(scenario, "uninstall again")
    assert (
        manifest_diff(scenario.manifests["uninstall"], scenario.manifests["uninstall again"]) == []
    )


def test_reinstall_keeps_the_secret_the_database_and_the_edited_config(
    scenario: Scenario,
) -> None:
    output = ok(scenario, "reinstall")
    before, after = scenario.manifests["install again"], scenario.manifests["reinstall"]
    assert after["var/lib/locker/secret.key"][4] == before["var/lib/locker/secret.key"][4]
    assert "created site secret" not in output
    assert "schema up to date" in output
    config = scenario.texts["reinstall"]["etc/locker/config.toml"]
    assert f"[site]\n# School name shown on pages and printed notices.\n{EDITED}\n" in config
    user = passwd_entry(scenario, "reinstall", "locker")
    uid, gid = int(user[2]), int(user[3])
    for name in ("var/lib/locker/secret.key", "var/lib/locker/locker.db", "var/lib/locker"):
        assert after[name][2:4] == (uid, gid), name
    assert after["etc/locker/config.toml"][3] == gid


def test_raspi_config_is_used_when_there_is_one(scenario: Scenario) -> None:
    ok(scenario, "reinstall")
    assert scenario.raspi_config_calls == ["nonint do_spi 0", "nonint do_i2c 0"]
    text = scenario.texts["reinstall"]["boot/firmware/config.txt"]
    assert text.splitlines().count("dtparam=spi=on") == 1
    assert "switched on with raspi-config" in scenario.outputs["reinstall"]
