"""install/install-pi.sh and install/uninstall-pi.sh, run for real in a throw-away Debian.

The root is Debian bookworm made with debootstrap (tests/deploy/conftest.py: built once,
cached, unpacked for each session), dressed up as a Raspberry Pi OS: the desktop user
``pi`` in the ``gpio`` group (not ``spi`` and ``i2c``: the script must create them), a
config.txt, an auto-login lightdm.conf. The install script runs with ``--root``, which
runs it inside that system with chroot: its own apt-get (the packages are there already),
its own Python making the virtual environment at its final paths, the application's real
dependencies from PyPI (Pi extras included: lgpio has wheels, spidev builds with the
root's compiler). No systemd runs there, so units are enabled offline, never started.

One scenario, recorded once, checked by the tests below: install, install again (the
whole root compared, file by file), the installed program used as the kiosk's and the web
app's users; an upgrade that cannot reach an index and one that can, on a system whose
services "run" (a stand-in systemctl records what is done to them); uninstall, uninstall
again, edit the configuration, reinstall on a Pi whose raspi-config (a stand-in) has SPI
and I2C off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import (
    INSTALL,
    REPO,
    UNITS,
    VOLATILE,
    clean_env,
    debian_root,
    in_root,
    manifest,
    manifest_diff,
    require_root,
    require_tool,
    run,
)

pytestmark = pytest.mark.slow  # about two minutes (plus two to build the cached root once)

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
echo "$*" >> /var/lib/raspi-config.log
case "$*" in
    "nonint do_spi 0") echo "dtparam=spi=on" >> /boot/firmware/config.txt ;;
    "nonint do_i2c 0") echo "dtparam=i2c_arm=on" >> /boot/firmware/config.txt ;;
esac
"""
#: systemctl on a system whose services run: every call logged with where the application
#: link points at that moment; the locker services are "active".
SYSTEMCTL_STUB = """#!/bin/sh
echo "$* | venv=$(readlink /opt/locker/venv)" >> /var/lib/systemctl.log
exit 0
"""
VENV = "opt/locker/venv"
LOCKER = "/opt/locker/venv/bin/locker"


def fake_pi(root: Path) -> None:
    """Make the Debian root look like a fresh Raspberry Pi OS with a desktop."""
    for args in (
        ["groupadd", "--gid", "1000", "pi"],
        ["groupadd", "--system", "gpio"],
        ["useradd", "--uid", "1000", "--gid", "pi", "--groups", "gpio", "--create-home", "pi"],
    ):
        result = in_root(root, args)
        assert result.returncode == 0, result.stderr
    (root / "etc/lightdm").mkdir(parents=True)
    (root / "etc/lightdm/lightdm.conf").write_text("[Seat:*]\nautologin-user=pi\n", "utf-8")
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT, encoding="utf-8")


SOURCE_PARTS = ("pyproject.toml", "README.md", "hardware", "kiosk", "web", "systemd", "install")


def snapshot(source: Path, target: Path) -> Path:
    """A copy of the source tree, taken once: what is installed cannot change half-way
    through the scenario while someone edits the working tree."""
    target.mkdir()
    for part in SOURCE_PARTS:
        if (source / part).is_dir():
            shutil.copytree(
                source / part, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source / part, target / part)
    return target


def changed_source(source: Path, target: Path) -> Path:
    """``source`` with one change: a new release to upgrade to."""
    snapshot(source, target)
    with (target / "README.md").open("a", encoding="utf-8") as readme:
        readme.write("\nThe next release.\n")
    return target


@dataclass
class Scenario:
    root: Path
    source: Path
    outputs: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    manifests: dict[str, dict] = field(default_factory=dict)
    texts: dict[str, dict[str, str | None]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    checks: dict[str, tuple[int, str]] = field(default_factory=dict)
    systemctl: dict[str, list[str]] = field(default_factory=dict)
    verify_output: str = ""
    verify_code: int = -1
    raspi_config_calls: list[str] = field(default_factory=list)
    release: dict[str, object] = field(default_factory=dict)


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
    require_tool("unshare", "util-linux")
    analyze = require_tool("systemd-analyze", "systemd")
    base = tmp_path_factory.mktemp("deploy")
    root = debian_root(base / "root")
    fake_pi(root)
    source = snapshot(REPO, base / "source")
    script = str(source / "install/install-pi.sh")
    install = ["bash", script, "--root", str(root)]
    uninstall = ["bash", str(source / "install/uninstall-pi.sh"), "--root", str(root)]
    found = Scenario(root, source)

    def step(name: str, args: list[str]) -> None:
        started = time.monotonic()
        result = run(args, env=clean_env(), cwd=base, timeout=900)
        found.seconds[name] = time.monotonic() - started
        found.outputs[name] = result.stdout + result.stderr
        found.codes[name] = result.returncode
        found.manifests[name] = manifest(root, VOLATILE)
        found.texts[name] = {
            rel: (root / rel).read_text(encoding="utf-8") if (root / rel).is_file() else None
            for rel in RECORDED
        }
        link = root / VENV
        found.links[name] = os.readlink(link) if link.is_symlink() else ""

    def check(name: str, args: list[str], **options) -> None:
        result = in_root(root, args, **options)
        found.checks[name] = (result.returncode, result.stdout + result.stderr)

    step("install", install)
    step("install again", install)

    # What the release's virtual environment is made of.
    release = root / "opt/locker" / os.readlink(root / VENV).removesuffix("/venv")
    site = release / "venv/lib/python3.11/site-packages"
    found.release = {
        "shebang": (release / "venv/bin/locker").read_text(encoding="utf-8").splitlines()[0],
        "pyvenv.cfg": (release / "venv/pyvenv.cfg").read_text(encoding="utf-8"),
        "packages": sorted(path.name.lower() for path in site.iterdir()),
        "src": sorted(path.name for path in (release / "src").iterdir()),
    }

    # The units as installed, with the executables the install made.
    names = [path.name for path in UNITS.iterdir() if path.suffix in (".service", ".timer")]
    names = [name.replace("@.service", "@pi.service") for name in names]
    result = run([analyze, "verify", "--man=no", f"--root={root}", *names], env=clean_env())
    found.verify_output, found.verify_code = result.stdout + result.stderr, result.returncode

    # The installed program, inside the root, as each of its users.
    check("version", [LOCKER, "--version"])
    check("wrapper version", ["/usr/local/bin/locker", "--version"])
    check("init", ["/usr/local/bin/locker", "init"])
    check(
        "kiosk user verifies",
        [LOCKER, "--home", "/var/lib/locker", "audit", "verify"],
        user="locker:locker",
    )
    check(
        "web user writes",
        [
            LOCKER,
            "--home",
            "/var/lib/locker",
            "user",
            "add",
            "office",
            "--role",
            "office",
            "--password-stdin",
        ],
        user="locker-web:locker",
        input="lantern quokka harbour\n",
    )
    check(
        "kiosk user reads",
        [LOCKER, "--home", "/var/lib/locker", "audit", "verify"],
        user="locker:locker",
    )
    check("web user ids", ["id", "locker-web"])
    check(
        "web user replaces the secret",
        ["sh", "-c", "echo 00 > /var/lib/locker/secret.key"],
        user="locker-web:locker",
    )
    check(
        "web user removes the secret",
        ["rm", "-f", "/var/lib/locker/secret.key"],
        user="locker-web:locker",
    )
    check("others read the secret", ["cat", "/var/lib/locker/secret.key"], user="nobody:nogroup")

    # Upgrades on a system whose services run (a stand-in systemctl that logs its calls), on
    # a cabinet the school has described (the kiosk is started only then).
    described = root / "etc/locker/config.toml"
    text = described.read_text(encoding="utf-8")
    at = text.index("[hardware]")
    text = text[:at] + text[at:].replace("# compartments = 24", "compartments = 24", 1)
    described.write_text(text, encoding="utf-8")
    running = root / "run/systemd/system"
    running.mkdir(parents=True)
    systemctl = root / "usr/local/sbin/systemctl"
    systemctl.write_text(SYSTEMCTL_STUB, encoding="utf-8")
    systemctl.chmod(0o755)
    next_release = changed_source(source, base / "next-release")
    wheels = base / "no-wheels"  # a "wheelhouse" without a wheel: no index, nothing to find
    wheels.mkdir()
    log = root / "var/lib/systemctl.log"
    found.manifests["before upgrade"] = manifest(root, VOLATILE)
    upgrade = ["bash", script, "--root", str(root), "--source", str(next_release), "--no-packages"]
    for name, args in (
        ("upgrade offline", [*upgrade, "--wheelhouse", str(wheels)]),
        ("upgrade", upgrade),
    ):
        step(name, args)
        found.systemctl[name] = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
    systemctl.unlink()
    shutil.rmtree(root / "run/systemd/system")
    check("upgraded version", [LOCKER, "--version"])
    found.manifests["before uninstall"] = manifest(root, VOLATILE)

    step("uninstall", uninstall)
    step("uninstall again", uninstall)
    config = root / "etc/locker/config.toml"
    edited = config.read_text(encoding="utf-8").replace('# name = "Our School"', EDITED, 1)
    config.write_text(edited, encoding="utf-8")
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT, encoding="utf-8")
    stub = root / "usr/local/bin/raspi-config"
    stub.write_text(RASPI_CONFIG_STUB, encoding="utf-8")
    stub.chmod(0o755)
    step("reinstall", [*install, "--no-packages"])
    found.raspi_config_calls = (root / "var/lib/raspi-config.log").read_text().splitlines()
    check("reinstalled version", [LOCKER, "--version"])
    print("install scenario, seconds per step:", found.seconds)
    return found


def ok(scenario: Scenario, name: str) -> str:
    assert scenario.codes[name] == 0, f"{name} failed:\n{scenario.outputs[name]}"
    return scenario.outputs[name]


def checked(scenario: Scenario, name: str) -> str:
    code, output = scenario.checks[name]
    assert code == 0, f"{name} failed:\n{output}"
    return output


# ------------------------------------------------------------------------------ install


def test_installing_twice_changes_nothing(scenario: Scenario) -> None:
    ok(scenario, "install")
    second = ok(scenario, "install again")
    first, again = scenario.manifests["install"], scenario.manifests["install again"]
    assert len(first) > 10000  # the whole Debian system is in the comparison
    assert manifest_diff(first, again) == []
    assert "is installed already (this source, these extras): nothing to build" in second


def test_the_installed_program_runs_in_the_root(scenario: Scenario) -> None:
    version = checked(scenario, "version")
    assert version.startswith("locker, version ")
    assert checked(scenario, "wrapper version") == version
    init = checked(scenario, "init")  # `locker init` again, as an upgrade runs it
    assert "schema up to date" in init and "created" not in init
    assert checked(scenario, "kiosk user verifies").startswith("audit chain ok")
    files = scenario.manifests["install again"]
    release = scenario.links["install again"].removesuffix("/venv")
    assert release.startswith("releases/0.1.0-")
    assert files[VENV][0] == "link" and files["opt/locker/src"][3] == f"{release}/src"
    python = files[f"opt/locker/{release}/venv/bin/python"]
    assert python[0] == "link"  # to the root's own Python
    facts = scenario.release
    assert facts["shebang"] == f"#!/opt/locker/{release}/venv/bin/python"  # no prefix
    assert "home = /usr/bin\n" in facts["pyvenv.cfg"]
    packages = facts["packages"]
    for package in ("click", "sqlalchemy", "flask", "waitress", "lgpio", "spidev", "mfrc522"):
        assert [name for name in packages if name.startswith(package)], f"{package} missing"
    assert not [name for name in packages if name.startswith("rpi.gpio")]
    assert [name for name in packages if name.startswith("rpi_lgpio")]
    assert {"pyproject.toml", "kiosk", "web", "hardware"} <= set(facts["src"])
    assert "build" not in facts["src"] and not [n for n in facts["src"] if "egg-info" in n]
    for name in ("usr/local/bin/locker", "opt/locker/libexec/locker-backup"):
        assert files[name][1] == "0o755", name


def test_the_users_and_their_groups(scenario: Scenario) -> None:
    ok(scenario, "install")
    user = passwd_entry(scenario, "install", "locker")
    web = passwd_entry(scenario, "install", "locker-web")
    data = passwd_entry(scenario, "install", "locker", "group")
    assert user is not None and web is not None and data is not None
    assert user[5:] == ["/var/lib/locker", "/usr/sbin/nologin"]
    assert web[5:] == ["/var/lib/locker", "/usr/sbin/nologin"]
    assert user[3] == web[3] == data[2]  # both in group locker
    for group in ("gpio", "spi", "i2c"):
        entry = passwd_entry(scenario, "install", group, "group")
        assert entry is not None, f"group {group} missing"
        members = entry[3].split(",")
        assert "locker" in members, f"locker not in {group}"
        assert "locker-web" not in members, f"the web app's user is in {group}"
    assert passwd_entry(scenario, "install", "gpio", "group")[3].split(",") == ["pi", "locker"]
    assert int(user[2]) < 1000 and int(web[2]) < 1000  # system users
    ids = checked(scenario, "web user ids")
    assert "(locker)" in ids and "gpio" not in ids and "spi" not in ids and "i2c" not in ids


def test_state_config_and_secret(scenario: Scenario) -> None:
    ok(scenario, "install again")
    files = scenario.manifests["install again"]
    texts = scenario.texts["install again"]
    user = passwd_entry(scenario, "install again", "locker")
    uid, gid = int(user[2]), int(user[3])
    assert files["var/lib/locker"] == ("dir", "0o3770", uid, gid)
    assert files["var/backups/locker"] == ("dir", "0o700", uid, gid)
    assert files["etc/locker"] == ("dir", "0o750", 0, gid)
    assert files["var/lib/locker/secret.key"][:4] == ("file", "0o640", uid, gid)
    assert files["var/lib/locker/locker.db"][:4] == ("file", "0o660", uid, gid)
    assert files["etc/locker/config.toml"][:4] == ("file", "0o640", 0, gid)
    kind, _, _, target = files["var/lib/locker/config.toml"]
    assert kind == "link"
    assert os.path.normpath(os.path.join("/var/lib/locker", target)) == "/etc/locker/config.toml"
    secret = texts["var/lib/locker/secret.key"].strip()
    assert len(bytes.fromhex(secret)) == 32
    example = in_root(scenario.root, [LOCKER, "config", "example"])
    assert example.returncode == 0
    assert texts["etc/locker/config.toml"] == example.stdout
    assert "exists: kept as it is" in scenario.outputs["install again"]
    screen = texts["etc/locker/screen.env"]
    assert "LOCKER_SCREEN_URL=http://127.0.0.1:8000/kiosk/\n" in screen
    assert "created site secret" in scenario.outputs["install"]
    assert "created site secret" not in scenario.outputs["install again"]
    assert "schema up to date" in scenario.outputs["install again"]


def test_the_web_app_shares_the_data_but_not_the_devices_or_the_secret_file(
    scenario: Scenario,
) -> None:
    """The web app's user writes the database and reads the secret through group locker;
    it cannot change or remove the secret; nobody else can read it; what either user
    writes, the other can use (SQLite's -wal and -shm files included)."""
    added = checked(scenario, "web user writes")
    assert "office" in added
    assert checked(scenario, "kiosk user reads").startswith("audit chain ok")
    for name in ("web user replaces the secret", "web user removes the secret"):
        code, output = scenario.checks[name]
        assert code != 0 and ("Permission denied" in output or "Operation not permitted" in output)
    code, output = scenario.checks["others read the secret"]
    assert code != 0 and "Permission denied" in output
    after = scenario.manifests["before upgrade"]
    assert (
        after["var/lib/locker/secret.key"]
        == scenario.manifests["install"]["var/lib/locker/secret.key"]
    )
    assert after["var/lib/locker/locker.db"][1] == "0o660"
    for name, entry in after.items():
        if name.startswith("var/lib/locker/locker.db-"):  # -wal, -shm
            assert entry[1] == "0o660", (name, entry)


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
    assert [line for line in modules if not line.startswith("#") and line.strip()] == ["i2c-dev"]
    assert "reboot once" in scenario.outputs["install"]
    assert "reboot once" not in scenario.outputs["install again"]


def test_units_installed_and_enabled(scenario: Scenario) -> None:
    ok(scenario, "install again")
    files = scenario.manifests["install again"]
    system = "etc/systemd/system/"
    for unit in (scenario.source / "systemd").iterdir():
        digest = hashlib.sha256(unit.read_bytes()).hexdigest()
        assert files[system + unit.name] == ("file", "0o644", 0, 0, digest), unit.name
    links = {
        name.removeprefix(system): entry[3]
        for name, entry in files.items()
        if name.startswith(system) and ".wants/" in name and "locker-" in name
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
        ["bash", str(INSTALL / "install-pi.sh"), "--root", str(tmp_path), "--source", "/"],
        env=clean_env(),
    )
    assert result.returncode == 1
    assert "is not the phone locker's source tree" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_root_that_is_not_a_debian_system(tmp_path: Path) -> None:
    require_root()
    result = run(["bash", str(INSTALL / "install-pi.sh"), "--root", str(tmp_path)], env=clean_env())
    assert result.returncode == 1
    assert f"--root {tmp_path} is not a Debian system (no /bin/bash)" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ upgrades


def test_an_upgrade_that_cannot_build_leaves_the_running_version_alone(
    scenario: Scenario,
) -> None:
    """Without an index the new release cannot be built: the error says so, nothing was
    stopped or restarted, the installed release is untouched and still works."""
    assert scenario.codes["upgrade offline"] == 1, scenario.outputs["upgrade offline"]
    output = scenario.outputs["upgrade offline"]
    assert "could not build release 0.1.0-" in output
    assert "Nothing that runs was changed: the installed version (if any) keeps running" in output
    assert scenario.systemctl["upgrade offline"] == []  # not stopped, not restarted
    assert scenario.links["upgrade offline"] == scenario.links["install again"]
    before = scenario.manifests["before upgrade"]
    assert manifest_diff(before, scenario.manifests["upgrade offline"]) == []


def test_an_upgrade_builds_first_then_switches_and_restarts(scenario: Scenario) -> None:
    output = ok(scenario, "upgrade")
    old, new = scenario.links["install again"], scenario.links["upgrade"]
    assert new != old and new.startswith("releases/0.1.0-")
    calls = scenario.systemctl["upgrade"]
    assert calls, output
    assert all(call.endswith(f"| venv={new}") for call in calls), calls  # switched first
    commands = [call.split(" |")[0] for call in calls]
    assert not [command for command in commands if command.startswith("stop")]
    assert commands[0] == "daemon-reload"
    restarts = [command for command in commands if command.startswith("restart")]
    assert restarts == [
        "restart locker-web.service",
        "restart locker-kiosk.service",
        "restart locker-screen@pi.service",
    ]
    files = scenario.manifests["before uninstall"]
    assert not [name for name in files if name.startswith(f"opt/locker/{old}")]  # removed
    assert f"removed the previous {old.removesuffix('/venv')}" in output
    assert "schema up to date" in output
    assert checked(scenario, "upgraded version").startswith("locker, version ")


# ------------------------------------------------------------------------------ uninstall


def test_uninstall_removes_the_program_and_keeps_the_data(scenario: Scenario) -> None:
    output = ok(scenario, "uninstall")
    before, after = scenario.manifests["before uninstall"], scenario.manifests["uninstall"]
    for name in DATA:
        assert after[name][0] == "file" and after[name][4] == before[name][4], name
        assert after[name][2:4] == (0, 0), f"{name} should be handed to root"
    assert after["var/lib/locker/config.toml"][3] == before["var/lib/locker/config.toml"][3]
    gone = ("opt/locker", "usr/local/bin/locker", "etc/systemd/system/locker-kiosk.service")
    for name in gone:
        assert name not in after, name
    assert not [name for name in after if "locker" in name and "systemd" in name]
    for name in ("locker", "locker-web"):
        assert passwd_entry(scenario, "uninstall", name) is None
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
    before, after = scenario.manifests["before uninstall"], scenario.manifests["reinstall"]
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
    assert checked(scenario, "reinstalled version").startswith("locker, version ")


def test_raspi_config_is_used_when_there_is_one(scenario: Scenario) -> None:
    ok(scenario, "reinstall")
    assert scenario.raspi_config_calls == ["nonint do_spi 0", "nonint do_i2c 0"]
    text = scenario.texts["reinstall"]["boot/firmware/config.txt"]
    assert text.splitlines().count("dtparam=spi=on") == 1
    assert "switched on with raspi-config" in scenario.outputs["reinstall"]
