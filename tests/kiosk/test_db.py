"""The database layer: SQLite pragmas, aware UTC times, migrations equal to the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from kiosk import migrate
from kiosk.db import PG_TIMEOUTS, Database
from kiosk.errors import ConfigError
from kiosk.models import Base, Kiosk, Pupil, PupilStatus

from .conftest import make_instance


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
    with instance.database.reader() as session:
        instance.audit.verify(session)
    instance.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused(url):
    with pytest.raises(ConfigError, match="in-memory"):
        Database(url)


@pytest.mark.parametrize("url", ["mysql://x/y", "not a url", "oracle://a"])
def test_unsupported_or_malformed_urls_are_refused(url):
    with pytest.raises(ConfigError, match=r"\[database\] url"):
        Database(url)
