"""The database layer: SQLite pragmas, aware UTC times, migrations equal to the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from kiosk import migrate
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.db import PG_SESSION_SETTINGS, PG_TIMEOUTS, Database
from kiosk.errors import AuditChainBroken, ConfigError
from kiosk.models import Base, Kiosk, Pupil, PupilStatus

from .conftest import SCHOOL_MORNING, make_instance


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_with_full_sync_foreign_keys_and_a_busy_timeout(instance):
    with instance.database.engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in (
                "journal_mode",
                "synchronous",
                "foreign_keys",
                "busy_timeout",
                "secure_delete",
            )
        }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "secure_delete": 1,
    }


@pytest.mark.sqlite_only
def test_write_units_of_work_begin_immediate(instance):
    """A second writer waits at BEGIN instead of failing half-way through (busy timeout)."""
    statements: list[str] = []
    from sqlalchemy import event

    @event.listens_for(instance.database.engine, "before_cursor_execute")
    def spy(conn, cursor, statement, *args):
        statements.append(statement)

    with instance.database.transaction() as session:
        session.execute(select(Kiosk)).all()
    with instance.database.reader() as session:
        session.execute(select(Kiosk)).all()
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE", "BEGIN"]


@pytest.mark.usefixtures("postgres_server")
def test_postgresql_connections_notice_a_dead_network_in_seconds(postgres_server):
    """Timeouts and TCP keepalives on every connection (a kiosk then goes offline quickly);
    what the URL sets itself wins."""
    url = postgres_server.url("postgres") + "?keepalives_idle=30"
    database = Database(url)
    try:
        with database.engine.connect() as connection:
            params = connection.connection.dbapi_connection.info.get_parameters()
    finally:
        database.dispose()
    assert {key: params.get(key) for key in PG_TIMEOUTS} == {
        "connect_timeout": "5",
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }


@pytest.mark.usefixtures("postgres_server")
def test_postgresql_ends_a_session_whose_client_vanished_mid_transaction(postgres_server):
    """The server's side of every session: a transaction idle on its client is ended, a
    writer waiting for a lock gives up, and the server probes a silent client itself."""
    database = Database(postgres_server.url("postgres"))
    try:
        with database.engine.connect() as connection:
            shown = {
                name: connection.exec_driver_sql(f"SHOW {name}").scalar()
                for name in PG_SESSION_SETTINGS
            }
    finally:
        database.dispose()
    assert shown == {
        "idle_in_transaction_session_timeout": "10s",
        "lock_timeout": "15s",
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "3",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }


def test_a_writer_gone_silent_mid_transaction_does_not_stop_the_others(tmp_path, postgres_server):
    """A kiosk takes the audit head's lock and its network dies (it never speaks again):
    the server ends that session after its idle timeout, and the next writer goes on."""
    import psycopg
    from sqlalchemy.engine import make_url

    from kiosk.db import pg_timeouts

    instance = make_instance(tmp_path / "i", database_url=postgres_server.new_database())
    url = make_url(instance.database.url)
    silent = psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, **pg_timeouts(url)
    )
    try:
        silent.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")  # and then nothing
        with instance.database.transaction() as session:  # waits for the lock, then gets it
            instance.audit.record(session, ManualClock(SCHOOL_MORNING), Actor.system("t"), "t.x")
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            silent.execute("SELECT 1")  # its session was ended by the server
    finally:
        silent.close()
    with instance.database.reader() as session:
        assert instance.audit.verify(session).events >= 1
    instance.close()


def test_times_come_back_aware_utc_and_naive_times_are_refused(instance, clock):
    bst = timezone(timedelta(hours=1))
    written = datetime(2026, 9, 7, 8, 15, 30, 123456, tzinfo=bst)
    with instance.database.transaction() as session:
        session.add(
            Pupil(
                admission_number="T1",
                forename="a",
                surname="b",
                form="7A",
                status=PupilStatus.ACTIVE,
                created_at=written,
                updated_at=written,
            )
        )
    with instance.database.reader() as session:
        pupil = session.execute(select(Pupil)).scalar_one()
    assert pupil.created_at == written and pupil.created_at.tzinfo is UTC
    with (
        pytest.raises(Exception, match="naive datetime"),
        instance.database.transaction() as session,
    ):
        naive = datetime(2026, 9, 7, 8, 0)
        session.add(
            Pupil(
                admission_number="T2",
                forename="a",
                surname="b",
                form="7A",
                status=PupilStatus.ACTIVE,
                created_at=naive,
                updated_at=naive,
            )
        )


def test_the_migrations_build_exactly_the_models(instance):
    with instance.database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrade_is_idempotent_and_reports_revisions(instance):
    head = migrate.head_revision()
    assert migrate.current_revision(instance.database) == head
    assert migrate.upgrade(instance.database) == (head, head)


def test_downgrade_then_upgrade_round_trips(tmp_path, database_url):
    instance = make_instance(tmp_path / "i", database_url=database_url)
    from alembic import command

    config = migrate.alembic_config()
    with instance.database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    tables = set(inspect(instance.database.engine).get_table_names())
    assert tables <= {"alembic_version"}
    migrate.upgrade(instance.database)
    # A head nobody has sealed yet is not taken on trust; the first event seals it.
    with instance.database.reader() as session, pytest.raises(AuditChainBroken, match="sealed"):
        instance.audit.verify(session)
    with instance.database.transaction() as session:
        instance.audit.record(session, ManualClock(SCHOOL_MORNING), Actor.system("t"), "t.x")
    with instance.database.reader() as session:
        assert instance.audit.verify(session).events == 1
    instance.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused(url):
    with pytest.raises(ConfigError, match="in-memory"):
        Database(url)


@pytest.mark.parametrize("url", ["mysql://x/y", "not a url", "oracle://a"])
def test_unsupported_or_malformed_urls_are_refused(url):
    with pytest.raises(ConfigError, match=r"\[database\] url"):
        Database(url)
