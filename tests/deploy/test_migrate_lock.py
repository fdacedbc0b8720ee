"""`locker init` on many Pis at once against one PostgreSQL database: the schema upgrade runs
under an advisory lock (kiosk.migrate.migration_lock), so the first machine upgrades, the
others wait and then find the schema up to date, and a lock held too long ends the wait
with a message that names who holds it."""

from __future__ import annotations

import logging
import secrets
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from kiosk import migrate
from kiosk.db import Database
from kiosk.errors import InstanceError

from ..conftest import PostgresServer
from .conftest import clean_env, run


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> str:
    """A PostgreSQL database with no tables at all (cloned from template0)."""
    return postgres_server.new_database(template="template0")


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def hold_lock(url: str, application: str = "the test") -> psycopg.Connection:
    """Another session that holds the schema upgrade lock until it is closed."""
    connection = psycopg.connect(libpq(url), autocommit=True, application_name=application)
    connection.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK_KEY,))
    return connection


def test_concurrent_upgrades_take_turns(empty_database: str) -> None:
    machines = 4
    barrier = threading.Barrier(machines)

    def one_machine(_: int) -> tuple[str | None, str]:
        database = Database(empty_database)
        try:
            barrier.wait()
            return migrate.upgrade(database, poll_s=0.05)
        finally:
            database.dispose()

    with ThreadPoolExecutor(machines) as pool:
        results = list(pool.map(one_machine, range(machines)))
    head = migrate.head_revision()
    assert all(after == head for _, after in results)
    assert sorted(results, key=lambda result: result[0] or "") == [
        (None, head),
        *[(head, head)] * (machines - 1),
    ]


def test_a_waiting_machine_says_whom_it_waits_for_then_upgrades(
    empty_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = hold_lock(empty_database, "locker init on cabinet-7a")
    threading.Timer(0.6, holder.close).start()
    database = Database(empty_database)
    try:
        with caplog.at_level(logging.WARNING, logger="kiosk.migrate"):
            before, after = migrate.upgrade(database, lock_timeout_s=30, poll_s=0.05)
    finally:
        database.dispose()
    assert (before, after) == (None, migrate.head_revision())
    waiting = [record.getMessage() for record in caplog.records]
    assert len(waiting) == 1
    assert waiting[0].startswith("waiting for locker init on cabinet-7a (PID ")
    assert "which is upgrading the database schema" in waiting[0]


def test_a_lock_held_too_long_ends_the_wait_with_a_clear_message(empty_database: str) -> None:
    holder = hold_lock(empty_database, "locker init on cabinet-9c")
    database = Database(empty_database)
    try:
        with pytest.raises(InstanceError) as raised:
            migrate.upgrade(database, lock_timeout_s=0.3, poll_s=0.05)
        message = str(raised.value)
        assert "being upgraded by locker init on cabinet-9c (PID " in message
        assert "not finished in 0.3 s" in message and "pg_terminate_backend" in message
        assert migrate.current_revision(database) is None  # nothing was done
        holder.close()  # the machine that held it went away: its lock went with it
        assert migrate.upgrade(database, lock_timeout_s=5)[1] == migrate.head_revision()
    finally:
        holder.close()
        database.dispose()


def test_the_lock_is_released_when_the_upgrade_fails(empty_database: str) -> None:
    database = Database(empty_database)
    try:
        with pytest.raises(Exception, match=r"no such revision|Can.t locate revision"):
            migrate.upgrade(database, "ffffffffffff")
        # Another machine gets the lock at once.
        other = Database(empty_database)
        try:
            assert migrate.upgrade(other, lock_timeout_s=0.5)[1] == migrate.head_revision()
        finally:
            other.dispose()
    finally:
        database.dispose()


def test_sqlite_needs_no_lock(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'locker.db'}")
    try:
        with migrate.migration_lock(database, timeout_s=0):
            pass
        assert migrate.upgrade(database)[1] == migrate.head_revision()
    finally:
        database.dispose()


def test_locker_init_on_several_pis_at_once(tmp_path: Path, empty_database: str) -> None:
    """What the install script does on a row of new cabinets installed together: `locker
    init` in several processes at once on an empty database, each Pi with its own instance
    directory (its own kiosk name) and the school's one secret."""
    secret = secrets.token_hex(32) + "\n"
    homes = []
    for number in range(3):
        home = tmp_path / f"pi{number}"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[database]\nurl = "{empty_database}"\n[kiosk]\nname = "form-{number}"\n',
            encoding="utf-8",
        )
        (home / "secret.key").write_text(secret, encoding="ascii")
        (home / "secret.key").chmod(0o600)
        homes.append(home)

    def init(home: Path):
        return run([sys.executable, "-m", "kiosk", "--home", str(home), "init"], env=clean_env())

    with ThreadPoolExecutor(len(homes)) as pool:
        results = list(pool.map(init, homes))
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
    outputs = [result.stdout for result in results]
    assert sum("schema new -> " in output for output in outputs) == 1, outputs
    assert sum("schema up to date" in output for output in outputs) == 2, outputs
    again = init(homes[1])  # the next upgrade of one of them
    assert again.returncode == 0 and "schema up to date" in again.stdout
    verify = run(
        [sys.executable, "-m", "kiosk", "--home", str(homes[2]), "audit", "verify"],
        env=clean_env(),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("audit chain ok")
