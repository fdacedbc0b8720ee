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
from kiosk.instance import Instance
from kiosk.models import Contact, Kiosk, Pupil, PupilStatus, Role, User
from kiosk.users import hash_password

# Monday 7 September 2026, 07:45 in London (BST, UTC+1): inside the default deposit window.
SCHOOL_MORNING = datetime(2026, 9, 7, 6, 45, tzinfo=UTC)


def make_instance(home: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Instance:
    """A freshly created, migrated instance with its kiosk registered (no environment)."""
    instance, _ = Instance.create(home, env={})
    if overrides:
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
def instance(tmp_path: Path) -> Iterator[Instance]:
    inst = make_instance(tmp_path / "instance")
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
