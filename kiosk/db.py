"""Engine and sessions: one session per unit of work.

SQLite (the default) is opened in WAL mode with foreign keys on, ``synchronous=FULL`` (a
committed record survives a power cut) and a busy timeout. Write units of work start with
``BEGIN IMMEDIATE`` so two writers queue up at the start instead of failing half-way (the
audit chain reads its head and appends in one transaction). PostgreSQL needs none of this:
the audit head is locked with ``SELECT ... FOR UPDATE`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from kiosk.errors import ConfigError, InstanceError

log = logging.getLogger(__name__)

_BEGIN_OPTION = "locker_sqlite_begin"
_SERIALIZE_OPTION = "locker_serialize_writers"
_BEFORE_COMMIT = "locker.before_commit"
COMMAND_CHANNEL = "locker_commands"


Executor = Session | Connection
"""Where a statement runs: an ORM session (the web, the CLI) or a plain connection (the
kiosk's hot path, which needs no ORM objects)."""


def connection_of(executor: Executor) -> Connection:
    """The connection behind ``executor``; a session's pending ORM changes are flushed
    first, so what runs next sees them."""
    if isinstance(executor, Session):
        if executor.new or executor.dirty or executor.deleted:
            executor.flush()
        return executor.connection()
    return executor


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    SQLite has no timezone type: values are stored as naive UTC text and come back aware.
    A naive datetime is refused (it would be ambiguous twice a year in Europe/London).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def before_commit(connection: Connection, key: str, callback: Callable[[Connection], None]) -> None:
    """Run ``callback(connection)`` once, inside the current transaction, just before it
    commits (once per ``key``, however often this is called); forgotten on rollback. An
    exception from the callback fails the commit."""
    connection.info.setdefault(_BEFORE_COMMIT, {})[key] = callback


def run_before_commit_now(connection: Connection, key: str) -> None:
    """Run the :func:`before_commit` callback of ``key`` now, if one is waiting (for a
    reader inside the same transaction that must see what it will write)."""
    callback = connection.info.get(_BEFORE_COMMIT, {}).pop(key, None)
    if callback is not None:
        callback(connection)


def _install_commit_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "commit")
    def _on_commit(connection: Connection) -> None:
        callbacks = connection.info.pop(_BEFORE_COMMIT, None)
        if callbacks:
            for callback in callbacks.values():
                callback(connection)

    @event.listens_for(engine, "rollback")
    def _on_rollback(connection: Connection) -> None:
        if connection.invalidated:  # the DBAPI connection, and its info, are gone
            return
        with suppress(InvalidRequestError):  # one that failed mid-transaction: the same
            connection.info.pop(_BEFORE_COMMIT, None)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's own transaction handling defers it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA secure_delete = ON")  # purged data is overwritten
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Every write unit of work appends to the one audit chain, so writers are serialised
        # on its head anyway; taking that lock first (as SQLite's BEGIN IMMEDIATE does) means
        # no writer ever holds a row another one waits for while waiting for the head: no
        # deadlock, and each unit sees everything committed before it.
        if connection.get_execution_options().get(_SERIALIZE_OPTION):
            connection.exec_driver_sql("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")


PG_TIMEOUTS = {
    "connect_timeout": 5,  # s
    "keepalives": 1,
    "keepalives_idle": 10,  # s of silence before the first probe
    "keepalives_interval": 3,  # s between probes
    "keepalives_count": 3,  # unanswered probes: the connection is dead
    "tcp_user_timeout": 10000,  # ms that sent data may stay unacknowledged
}
# Settings of the server's side of each session. Every write unit locks the one audit head
# first, so a unit whose kiosk vanished mid-transaction (a dead switch: no FIN, no RST)
# would hold up every writer in the school until the server noticed, by default after about
# two hours of TCP keepalive. Instead the server ends such a session in seconds, and a writer
# waiting for a lock gives up with an error rather than waiting for ever.
PG_SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": "10s",  # a transaction left waiting on its client
    "lock_timeout": "15s",  # a writer waiting for a lock (the audit head, a record)
    "tcp_keepalives_idle": "10",  # s of silence before the server's first probe
    "tcp_keepalives_interval": "3",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",  # ms: the server's unacknowledged data
}


def pg_timeouts(url: URL) -> dict[str, int | str]:
    """libpq connection parameters: PG_TIMEOUTS, and PG_SESSION_SETTINGS as ``options``,
    less what ``url`` sets itself (its own ``options`` replace ours whole)."""
    parameters: dict[str, int | str] = {
        key: value for key, value in PG_TIMEOUTS.items() if key not in url.query
    }
    if "options" not in url.query:
        parameters["options"] = " ".join(
            f"-c {name}={value}" for name, value in PG_SESSION_SETTINGS.items()
        )
    return parameters


class Database:
    """The connection to the ledger's database, SQLite or PostgreSQL.

    ``transaction()`` is a write unit of work (commits on success, rolls back on any error);
    ``reader()`` is a read-only view for pages and reports.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"[database] url: not a database URL: {url!r}") from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError(
                    "[database] url: an in-memory SQLite database would lose every record; "
                    "give a file path"
                )
            kwargs["connect_args"] = {
                "timeout": busy_timeout_ms / 1000,
                "check_same_thread": False,
            }
        elif self.dialect == "postgresql":
            kwargs["pool_pre_ping"] = True
            # A kiosk must notice a dead network in seconds (then it works offline), not
            # after the kernel's retransmissions (minutes). The URL's own settings win.
            kwargs["connect_args"] = pg_timeouts(parsed)
        else:
            raise ConfigError(
                f"[database] url: {self.dialect!r} is not supported; use sqlite or postgresql"
            )
        try:
            self.engine = create_engine(parsed, **kwargs)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"[database] url: the driver for {self.dialect} is not installed ({exc.name}); "
                "for PostgreSQL install psycopg: pip install 'psycopg[binary]'"
            ) from None
        _install_commit_hooks(self.engine)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, busy_timeout_ms)
            write_engine = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        else:
            _configure_postgresql(self.engine)
            write_engine = self.engine.execution_options(**{_SERIALIZE_OPTION: True})
        self._write_engine = write_engine
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        self._read = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write unit of work: everything in it commits together or not at all."""
        session = self._write()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def writer_connection(self) -> Connection:
        """A connection of one's own for write units (``with connection.begin():``), as a
        long-running process like the kiosk keeps; close it when done."""
        return self._write_engine.connect()

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session. Closing it rolls the connection back (nothing it did is
        kept) but leaves the objects it loaded readable, detached, for the caller."""
        session = self._read()
        try:
            yield session
        finally:
            session.close()

    def check(self) -> None:
        """Connect once; raise InstanceError with the reason when the database is unreachable."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except OperationalError as exc:
            raise InstanceError(f"cannot open the database {self.safe_url}: {exc.orig}") from None

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()
