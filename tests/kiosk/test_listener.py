"""The kiosk's LISTEN thread on a real PostgreSQL server: the web's NOTIFY wakes the kiosk it
names, and only that one, only once the command is committed, and after the connection is
lost and comes back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select, text

from kiosk import cabinets, commands
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.listener import CommandListener
from kiosk.models import Kiosk

from .conftest import SCHOOL_MORNING, make_instance

WAIT_S = 10.0  # generous: a wake that does not come fails the test, it is not a timing


@pytest.fixture
def instance(tmp_path: Path, postgres_server) -> Iterator[Instance]:
    """An instance on a new PostgreSQL database with two kiosks: ``main`` and ``other``."""
    inst = make_instance(tmp_path / "instance", database_url=postgres_server.new_database())
    with inst.database.transaction() as session:
        cabinets.register(
            session,
            Actor.system("test"),
            ManualClock(SCHOOL_MORNING),
            inst.audit,
            replace(inst.config.kiosk, name="other", label="Other cabinet"),
        )
    yield inst
    inst.close()


def kiosk_id(instance: Instance, name: str) -> int:
    with instance.database.reader() as session:
        return session.execute(select(Kiosk.id).where(Kiosk.name == name)).scalar_one()


def submit(instance: Instance, name: str, *, commit: bool = True) -> None:
    """Queue a command for kiosk ``name`` as the web does; ``commit=False`` rolls it back."""

    class RolledBack(Exception):
        pass

    try:
        with instance.database.transaction() as session:
            kiosk = session.execute(select(Kiosk).where(Kiosk.name == name)).scalar_one()
            commands.submit(
                session,
                Actor.system("test"),
                ManualClock(SCHOOL_MORNING),
                instance.audit,
                kiosk=kiosk,
                kind="open_compartment",
                payload={"compartment": 1},
            )
            if not commit:
                raise RolledBack
    except RolledBack:
        pass


class Wakes:
    """What the listener calls to wake the kiosk's loop: counted, and waitable."""

    def __init__(self) -> None:
        self.count = 0
        self._event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    def wait(self) -> bool:
        return self._event.wait(WAIT_S)

    def clear(self) -> None:
        self.count = 0
        self._event.clear()


@pytest.fixture
def listening(instance: Instance) -> Iterator[tuple[CommandListener, Wakes]]:
    """A listener for kiosk ``main``, connected, its first wake (on connecting) consumed."""
    woken = Wakes()
    listener = CommandListener(instance.config.database.url, kiosk_id(instance, "main"), woken)
    listener.start()
    try:
        assert listener.listening.wait(WAIT_S), "the listener never connected"
        assert woken.wait(), "no wake on connecting (commands queued before it listened)"
        woken.clear()
        yield listener, woken
    finally:
        listener.stop()


def test_a_committed_command_wakes_its_kiosk(instance: Instance, listening) -> None:
    _, woken = listening
    submit(instance, "main")
    assert woken.wait()


def test_other_kiosks_commands_and_rolled_back_ones_do_not(instance: Instance, listening) -> None:
    _, woken = listening
    submit(instance, "other")
    submit(instance, "main", commit=False)
    # A marker after them: PostgreSQL delivers notifications in commit order, so once the
    # marker has woken the kiosk, a wake from either of the two before it would have come.
    submit(instance, "main")
    assert woken.wait()
    assert woken.count == 1
    with instance.database.reader() as session:
        pending = session.execute(
            text("SELECT k.name FROM commands c JOIN kiosks k ON k.id = c.kiosk_id ORDER BY c.id")
        ).scalars()
        assert list(pending) == ["other", "main"]


def test_a_lost_connection_is_opened_again(instance: Instance, postgres_server, listening) -> None:
    listener, woken = listening
    database = instance.config.database.url.rsplit("/", 1)[1]
    postgres_server.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND query LIKE 'LISTEN%'"
    )
    # It reconnects (and wakes the kiosk, in case a command came meanwhile), then hears again.
    assert woken.wait(), "the listener did not come back"
    assert listener.listening.is_set()
    woken.clear()
    submit(instance, "main")
    assert woken.wait()
