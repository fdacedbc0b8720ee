"""Fixtures for the kiosk package: a real SQLite file migrated by Alembic, a manual clock,
and small factories for pupils, staff and cards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from kiosk import cabinets, migrate
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.custody import CustodyLedger
from kiosk.instance import Instance
from kiosk.models import Contact, CustodyRecord, Kiosk, Pupil, PupilStatus, Role, User
from kiosk.users import hash_password

# Monday 7 September 2026, 07:45 in London (BST, UTC+1): inside the default deposit window.
SCHOOL_MORNING = datetime(2026, 9, 7, 6, 45, tzinfo=UTC)


def make_instance(
    home: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    database_url: str | None = None,
) -> Instance:
    """A freshly created, migrated instance with its kiosk registered (no environment); on
    ``database_url`` (PostgreSQL) when given, else on its SQLite file."""
    instance, _ = Instance.create(home, env={})
    overrides = dict(overrides or {})
    if database_url:
        overrides["database"] = {**overrides.get("database", {}), "url": database_url}
    if overrides:
        instance.close()
        instance = Instance.open(home, env={}, overrides=overrides)
    migrate.upgrade(instance.database)
    with instance.database.transaction() as session:
        cabinets.register(
            session,
            Actor.system("test"),
            ManualClock(SCHOOL_MORNING),
            instance.audit,
            instance.config.kiosk,
        )
    return instance


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(SCHOOL_MORNING)


@pytest.fixture
def instance(tmp_path: Path, database_url: str | None) -> Iterator[Instance]:
    """An instance on this test's database (each test runs on SQLite and PostgreSQL)."""
    inst = make_instance(tmp_path / "instance", database_url=database_url)
    yield inst
    inst.close()


@pytest.fixture
def session(instance: Instance) -> Iterator[Session]:
    """One unit of work, committed at the end of the test."""
    with instance.database.transaction() as s:
        yield s


def add_pupil(
    session: Session,
    clock: ManualClock,
    admission: str = "1001",
    *,
    form: str = "7A",
    forename: str = "Sam",
    surname: str = "Taylor",
    contacts: tuple[tuple[str, str], ...] = (("Jo Taylor", "Mother"),),
) -> Pupil:
    now = clock.now()
    pupil = Pupil(
        admission_number=admission,
        forename=forename,
        surname=surname,
        form=form,
        year_group="7",
        status=PupilStatus.ACTIVE,
        created_at=now,
        updated_at=now,
    )
    pupil.contacts = [
        Contact(position=i, name=n, relation=r) for i, (n, r) in enumerate(contacts, start=1)
    ]
    session.add(pupil)
    session.flush()
    return pupil


def add_user(session: Session, clock: ManualClock, username: str, role: Role) -> User:
    now = clock.now()
    user = User(
        username=username,
        display_name=username.title(),
        role=role,
        password_hash=hash_password("a-good-long-password"),
        active=True,
        created_at=now,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    return user


def staff_actor(
    session: Session, clock: ManualClock, role: Role, username: str | None = None
) -> Actor:
    return Actor.for_user(add_user(session, clock, username or f"{role.value}1", role))


def main_kiosk(session: Session) -> Kiosk:
    return cabinets.get_kiosk(session, "main")


def deposit(
    ledger: CustodyLedger, session: Session, clock: ManualClock, pupil, *, confirm: bool = True
) -> CustodyRecord:
    """The pupil's card at the main kiosk (PENDING_DEPOSIT) and, with ``confirm``, the door
    shut on the device (IN_LOCKER), as the kiosk records them."""
    record = ledger.start_deposit(
        session,
        Actor.for_pupil(pupil, "main"),
        clock,
        pupil=pupil,
        kiosk=main_kiosk(session),
        timeout_s=30,
    )
    if confirm:
        ledger.confirm_deposit(session, Actor.for_kiosk("main"), clock, record)
    return session.get(CustodyRecord, record.id)


class RawPostgres:
    """A psycopg connection (autocommit) that takes ``?`` placeholders like sqlite3."""

    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.connection = psycopg.connect(
            host=parsed.host,
            port=parsed.port,
            user=parsed.username,
            dbname=parsed.database,
            autocommit=True,
        )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.connection.execute(sql.replace("?", "%s"), params)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RawPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_sql(instance: Instance) -> Any:
    """Plain SQL on the instance's database, outside the application (autocommit, ``?``
    placeholders): how a careless script, or a tamperer, would touch it."""
    import sqlite3

    if instance.database.is_sqlite:
        return sqlite3.connect(instance.sqlite_path, isolation_level=None)
    return RawPostgres(instance.database.url)


def tamper_sql(instance: Instance) -> Any:
    """Like :func:`raw_sql`, for someone set on editing the audit trail: the database's own
    guard against changing an event (migration 0004) is dropped first, as anyone who can
    write the file can. What is left to catch them is ``locker audit verify``."""
    connection = raw_sql(instance)
    if instance.database.is_sqlite:
        connection.execute("DROP TRIGGER IF EXISTS trg_audit_events_append_only")
    else:
        connection.execute("DROP TRIGGER IF EXISTS trg_audit_events_append_only ON audit_events")
    return connection


def integrity_errors() -> tuple[type[BaseException], ...]:
    """What a refused statement raises, on either database."""
    import sqlite3

    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)
