"""The helper scripts the units run (the nightly backup with its pruning, the kiosk
screen's search for the display), and the shell scripts' syntax (shellcheck)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiosk import cabinets, migrate
from kiosk.actors import Actor
from kiosk.clock import SystemClock
from kiosk.instance import Instance

from ..conftest import PostgresServer
from .conftest import INSTALL, clean_env, locker_program, require_tool, run

SCRIPTS = sorted(INSTALL.glob("*.sh"))
OLD = [f"locker-2026010{day}-020000" for day in range(1, 6)]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    instance, _ = Instance.create(tmp_path / "instance", env={})
    migrate.upgrade(instance.database)
    with instance.database.transaction() as session:
        cabinets.register(
            session, Actor.system("test"), SystemClock(), instance.audit, instance.config.kiosk
        )
    instance.close()
    return instance.home


def backup(home: Path, backups: Path, tmp_path: Path, **settings: str):
    env = clean_env(
        LOCKER_HOME=str(home),
        LOCKER_BACKUP_DIR=str(backups),
        LOCKER_BIN=str(locker_program(tmp_path)),
        **settings,
    )
    return run(["sh", str(INSTALL / "locker-backup.sh")], env=env, timeout=60)


def test_backup_writes_database_secret_and_config_and_keeps_the_newest(
    home: Path, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    for stem in OLD:
        for suffix in (".db", ".secret.key", ".config.toml"):
            (backups / f"{stem}{suffix}").write_text("old", encoding="utf-8")
    (backups / "README.txt").write_text("not a backup", encoding="utf-8")

    result = backup(home, backups, tmp_path, LOCKER_BACKUP_KEEP="3")

    assert result.returncode == 0, result.stderr
    new = sorted(path.name for path in backups.glob("locker-*.db") if path.stem not in OLD)
    assert len(new) == 1
    stem = new[0].removesuffix(".db")
    assert (backups / f"{stem}.secret.key").read_bytes() == (home / "secret.key").read_bytes()
    assert (backups / f"{stem}.secret.key").stat().st_mode & 0o777 == 0o600
    assert (backups / f"{stem}.config.toml").is_file()
    kept = {path.name for path in backups.iterdir()}
    expected = {"README.txt"} | {
        f"{name}{suffix}"
        for name in (*OLD[-2:], stem)
        for suffix in (".db", ".secret.key", ".config.toml")
    }
    assert kept == expected
    for name in OLD[:3]:
        assert f"removed old backup {backups / name}.db" in result.stdout
    restored = Instance.open(home)  # the copy is a valid database of this instance
    restored.close()


def test_a_backup_restores_onto_a_new_instance_as_the_operations_guide_says(
    home: Path, tmp_path: Path
) -> None:
    """docs/operations.md, Restoring: a new instance (a new SD card) gets the backup's
    database and secret (its own -wal and -shm removed), then `locker init` and
    `locker audit verify`; the pupils and the audit trail are the school's again."""
    import shutil

    from sqlalchemy import func, select

    from kiosk.models import AuditEvent, Pupil

    from ..kiosk.conftest import add_pupil

    school = Instance.open(home, env={})
    with school.database.transaction() as session:
        add_pupil(session, SystemClock(), "R001")
    school.close()
    backups = tmp_path / "backups"
    backups.mkdir()
    assert backup(home, backups, tmp_path).returncode == 0
    (copy,) = backups.glob("locker-*.db")
    stem = copy.with_suffix("")

    fresh = tmp_path / "new-sd-card"
    program = str(locker_program(tmp_path))
    env = clean_env()
    assert run([program, "--home", str(fresh), "init"], env=env).returncode == 0
    for leftover in ("locker.db-wal", "locker.db-shm"):
        (fresh / leftover).unlink(missing_ok=True)
    shutil.copyfile(copy, fresh / "locker.db")
    shutil.copyfile(f"{stem}.secret.key", fresh / "secret.key")
    init = run([program, "--home", str(fresh), "init"], env=env)
    assert init.returncode == 0, init.stderr
    verify = run([program, "--home", str(fresh), "audit", "verify"], env=env)
    assert verify.returncode == 0, verify.stderr
    assert "audit chain ok" in verify.stdout
    restored = Instance.open(fresh, env={})
    try:
        with restored.database.reader() as session:
            assert session.execute(select(Pupil.admission_number)).scalars().all() == ["R001"]
            assert session.execute(select(func.count()).select_from(AuditEvent)).scalar() > 0
    finally:
        restored.close()
    wrong = tmp_path / "wrong-secret"
    assert run([program, "--home", str(wrong), "init"], env=env).returncode == 0
    shutil.copyfile(copy, wrong / "locker.db")
    (wrong / "locker.db-wal").unlink(missing_ok=True)
    (wrong / "locker.db-shm").unlink(missing_ok=True)
    refused = run([program, "--home", str(wrong), "audit", "verify"], env=env)
    assert refused.returncode != 0  # the backup without its secret does not verify


def test_backup_refuses_a_missing_stick(home: Path, tmp_path: Path) -> None:
    backups = tmp_path / "not-mounted"
    backups.mkdir()
    result = backup(home, backups, tmp_path, LOCKER_BACKUP_REQUIRE_MOUNT="yes")
    assert result.returncode == 1
    assert "is not a mount point" in result.stderr
    assert list(backups.iterdir()) == []
    result = backup(home, tmp_path / "nowhere", tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr


@pytest.fixture
def postgres_home(tmp_path: Path, postgres_server: PostgresServer) -> Path:
    """A Pi of a school with a shared PostgreSQL database (migrated, kiosk registered)."""
    home = tmp_path / "pi"
    home.mkdir()
    url = postgres_server.new_database()
    (home / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[kiosk]\nname = "form-7a"\n', encoding="utf-8"
    )
    instance, _ = Instance.create(home, env={})
    with instance.database.transaction() as session:
        cabinets.register(
            session, Actor.system("test"), SystemClock(), instance.audit, instance.config.kiosk
        )
    instance.close()
    return home


def backup_sets(backups: Path) -> dict[str, set[str]]:
    sets: dict[str, set[str]] = {}
    for path in backups.iterdir():
        stem, _, suffix = path.name.partition(".")
        sets.setdefault(stem, set()).add(suffix)
    return sets


def test_backup_on_postgresql_keeps_this_pis_secret_and_config(
    postgres_home: Path, tmp_path: Path
) -> None:
    """Every Pi's nightly backup works on PostgreSQL: it keeps the Pi's own secret.key and
    config.toml; the database is dumped by one designated machine, not by every Pi."""
    backups = tmp_path / "backups"
    backups.mkdir()
    old = [f"locker-2026010{day}-020000" for day in (1, 2)]
    for stem in old:
        for suffix in (".secret.key", ".config.toml"):
            (backups / f"{stem}{suffix}").write_text("old", encoding="utf-8")
    result = backup(postgres_home, backups, tmp_path, LOCKER_BACKUP_KEEP="2")
    assert result.returncode == 0, result.stderr
    assert "it is dumped by the machine with LOCKER_BACKUP_PG_DUMP=yes" in result.stdout
    sets = backup_sets(backups)
    new = [stem for stem in sets if stem not in old]
    assert len(new) == 1 and sets[new[0]] == {"secret.key", "config.toml"}
    assert set(sets) == {old[1], new[0]}  # the oldest set went
    assert f"removed old backup {backups / old[0]}.secret.key, .config.toml" in result.stdout
    secret = backups / f"{new[0]}.secret.key"
    assert secret.read_bytes() == (postgres_home / "secret.key").read_bytes()
    assert secret.stat().st_mode & 0o777 == 0o600
    assert (backups / f"{new[0]}.config.toml").read_text(encoding="utf-8") == (
        postgres_home / "config.toml"
    ).read_text(encoding="utf-8")


def test_backup_on_postgresql_dumps_the_database_on_the_designated_machine(
    postgres_home: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    path = f"{postgres_server.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = backup(postgres_home, backups, tmp_path, LOCKER_BACKUP_PG_DUMP="yes", PATH=path)
    assert result.returncode == 0, result.stderr
    (stem, suffixes), *others = backup_sets(backups).items()
    assert others == [] and suffixes == {"pgdump", "secret.key", "config.toml"}
    dump = backups / f"{stem}.pgdump"
    assert dump.stat().st_mode & 0o777 == 0o600
    listing = run(
        [str(postgres_server.bindir / "pg_restore"), "--list", str(dump)], env=clean_env()
    )
    assert listing.returncode == 0, listing.stderr
    assert "TABLE public audit_events" in listing.stdout
    assert "TABLE DATA public kiosks" in listing.stdout


def test_backup_refuses_a_bad_pg_dump_setting(home: Path, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    result = backup(home, backups, tmp_path, LOCKER_BACKUP_PG_DUMP="maybe")
    assert result.returncode == 1 and "LOCKER_BACKUP_PG_DUMP=maybe" in result.stderr
    # With SQLite the setting does not matter (and does not upset the configuration).
    result = backup(home, backups, tmp_path, LOCKER_BACKUP_PG_DUMP="yes")
    assert result.returncode == 0, result.stderr
    (_stem, suffixes), *others = backup_sets(backups).items()
    assert others == [] and suffixes == {"db", "secret.key", "config.toml"}


@pytest.mark.parametrize("keep", ["0", "many", "-1", "3x"])
def test_backup_refuses_a_bad_keep(home: Path, tmp_path: Path, keep: str) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    result = backup(home, backups, tmp_path, LOCKER_BACKUP_KEEP=keep)
    assert result.returncode == 1 and "LOCKER_BACKUP_KEEP" in result.stderr
    assert list(backups.iterdir()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shell_syntax(script: Path) -> None:
    shell = "bash" if script.read_text(encoding="utf-8").startswith("#!/bin/bash") else "sh"
    result = run([shell, "-n", str(script)], env=clean_env())
    assert result.returncode == 0, result.stderr


def test_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    result = run([shellcheck, "--external-sources", *map(str, SCRIPTS)], env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable() -> None:
    for script in SCRIPTS:
        assert script.stat().st_mode & 0o111, f"chmod +x {script}"
        first = script.read_text(encoding="utf-8").splitlines()[0]
        assert first in ("#!/bin/sh", "#!/bin/bash"), script.name


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def screen(tmp_path: Path, port: int, **settings: str):
    """Run locker-screen with a stand-in browser that records how it was started."""
    record = tmp_path / "browser.txt"
    browser = tmp_path / "chromium"
    browser.write_text(
        "#!/bin/sh\n"
        f'echo "WAYLAND_DISPLAY=${{WAYLAND_DISPLAY:-}} DISPLAY=${{DISPLAY:-}}" > "{record}"\n'
        f'printf "%s\\n" "$@" >> "{record}"\n',
        encoding="utf-8",
    )
    browser.chmod(0o755)
    env = clean_env(
        HOME=str(tmp_path),
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
        LOCKER_SCREEN_URL=f"http://127.0.0.1:{port}/kiosk/form-7a",
        LOCKER_SCREEN_BROWSER=str(browser),
        LOCKER_SCREEN_WAIT_S="0",
        **settings,
    )
    for name in ("WAYLAND_DISPLAY", "DISPLAY", "DBUS_SESSION_BUS_ADDRESS"):
        if name not in settings:
            env.pop(name, None)
    result = run(["sh", str(INSTALL / "locker-screen.sh")], env=env, timeout=30)
    lines = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
    return result, lines


def test_screen_finds_the_wayland_display(tmp_path: Path, web_app: int) -> None:
    require_tool("curl", "curl")
    (tmp_path / "run").mkdir()
    with socket.socket(socket.AF_UNIX) as compositor:
        compositor.bind(str(tmp_path / "run" / "wayland-0"))
        (tmp_path / "run" / "wayland-0.lock").touch()
        result, lines = screen(tmp_path, web_app)
    assert result.returncode == 0, result.stderr
    assert lines[0] == "WAYLAND_DISPLAY=wayland-0 DISPLAY="
    assert "--kiosk" in lines and "--ozone-platform=wayland" in lines
    assert lines[-1] == f"http://127.0.0.1:{web_app}/kiosk/form-7a"
    assert f"--user-data-dir={tmp_path}/run/locker-screen" in lines


def test_screen_uses_a_display_it_is_given(tmp_path: Path, web_app: int) -> None:
    require_tool("curl", "curl")
    (tmp_path / "run").mkdir()
    result, lines = screen(tmp_path, web_app, DISPLAY=":0")
    assert result.returncode == 0, result.stderr
    assert lines[0] == "WAYLAND_DISPLAY= DISPLAY=:0"
    assert "--ozone-platform=x11" in lines


def test_screen_gives_up_without_a_display_or_a_web_app(tmp_path: Path) -> None:
    require_tool("curl", "curl")
    (tmp_path / "run").mkdir()
    if Path("/tmp/.X11-unix/X0").exists():
        pytest.fail("this machine runs an X server on :0; the test expects none")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result, lines = screen(tmp_path, port)
    assert result.returncode == 1 and lines == []
    assert "no display after 0s" in result.stderr
    assert f"no answer from http://127.0.0.1:{port}/healthz" in result.stderr
