"""Schema upgrades through Alembic: ``locker init`` calls :func:`upgrade` on every start of a
new version, so a Pi in a school upgrades in place and keeps its records.

On a shared PostgreSQL database every Pi's install script runs ``locker init``, often at the
same moment (a technician upgrading a row of cabinets). :func:`upgrade` therefore holds a
PostgreSQL advisory lock around the Alembic upgrade: the first machine upgrades the schema,
the others wait for it (saying who they wait for), then find the schema up to date. A
machine that waits longer than ``lock_timeout_s`` gives up with an error naming the session
that holds the lock; a machine that dies while upgrading loses its session, and with it the
lock (and its transaction is rolled back: PostgreSQL's DDL is transactional).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from kiosk.db import Database
from kiosk.errors import InstanceError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"

#: The advisory lock key of schema upgrades ("locker" and 1), one per database.
MIGRATION_LOCK_KEY = 0x6C6F_636B_6572_0001
#: How long ``locker init`` waits for another machine's schema upgrade.
MIGRATION_LOCK_TIMEOUT_S = 600.0


def alembic_config(url: str | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(
    database: Database,
    revision: str = "head",
    *,
    lock_timeout_s: float = MIGRATION_LOCK_TIMEOUT_S,
    poll_s: float = 0.5,
) -> tuple[str | None, str]:
    """Bring the schema to ``revision``; returns (revision before, revision after).

    On PostgreSQL, under the schema upgrade lock (see the module's docstring): InstanceError
    when another session holds it for longer than ``lock_timeout_s`` seconds.
    """
    with migration_lock(database, timeout_s=lock_timeout_s, poll_s=poll_s):
        before = current_revision(database)
        config = alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        after = current_revision(database)
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "nothing", after)
    return before, after


@contextmanager
def migration_lock(
    database: Database, *, timeout_s: float = MIGRATION_LOCK_TIMEOUT_S, poll_s: float = 0.5
) -> Iterator[None]:
    """Hold the schema upgrade lock of a PostgreSQL database (SQLite: no lock).

    A session-level advisory lock on a connection of its own, in autocommit mode, so that
    waiting for it, or holding it while the upgrade runs on another connection, is never
    "idle in transaction" (which the server ends after a few seconds). It is polled rather
    than waited for, so that the wait has a deadline and says whom it waits for.
    """
    if database.is_sqlite:
        yield
        return
    with database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        name = f"locker init on {socket.gethostname()}"[:63]
        connection.execute(
            text("SELECT set_config('application_name', :name, false)"), {"name": name}
        )
        deadline = time.monotonic() + timeout_s
        waited = False
        while not connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        ).scalar():
            holder = _lock_holder(connection)
            if time.monotonic() >= deadline:
                raise InstanceError(
                    f"the database schema is being upgraded by {holder}, and it has not "
                    f"finished in {timeout_s:g} s: let it finish (its log says how it is "
                    "going), then run `locker init` again. If that machine is gone, end its "
                    "session on the server: SELECT pg_terminate_backend(PID)"
                )
            if not waited:
                log.warning(
                    "waiting for %s, which is upgrading the database schema (up to %g s)",
                    holder,
                    timeout_s,
                )
                waited = True
            time.sleep(poll_s)
        try:
            yield
        finally:
            with suppress(SQLAlchemyError):  # a broken connection has lost the lock anyway
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.execute(text("RESET application_name"))


def _lock_holder(connection: Connection) -> str:
    """Who holds the schema upgrade lock, as far as the server tells us."""
    row = connection.execute(
        text(
            "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = :high AND l.objid = :low"
        ),
        {"high": MIGRATION_LOCK_KEY >> 32, "low": MIGRATION_LOCK_KEY & 0xFFFF_FFFF},
    ).first()
    if row is None:
        return "another session"
    pid, application, address, started = row
    who = application or "another session"
    where = f" from {address}" if address else ""
    since = f", connected since {started:%H:%M:%S}" if started else ""
    return f"{who} (PID {pid}{where}{since})"


def refuse_newer_schema(database: Database) -> None:
    """InstanceError when the database's schema revision is unknown to this software: a
    newer version wrote it, and this one must not touch it (``locker init`` cannot
    "upgrade" it; only the newer software can use it)."""
    current = current_revision(database)
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    try:
        known = script.get_revision(current) is not None
    except Exception:  # alembic: ResolutionError, CommandError for an unknown revision
        known = False
    if not known:
        raise InstanceError(
            f"the database {database.safe_url} was written by a newer version of the phone "
            f"locker software (schema {current}; this version knows up to "
            f"{head_revision()}): upgrade the software to that version or later "
            "(docs/operations.md, Upgrading); this version leaves the database untouched"
        )


def ensure_current(database: Database) -> None:
    """InstanceError (saying to run ``locker init``, or to upgrade the software when a newer
    version wrote the database) unless the schema is at the head."""
    refuse_newer_schema(database)
    current, head = current_revision(database), head_revision()
    if current is None:
        raise InstanceError(f"the database {database.safe_url} has no tables: run `locker init`")
    if current != head:
        raise InstanceError(
            f"the database is at schema {current} but this version needs {head}: "
            "run `locker init` to upgrade it"
        )
