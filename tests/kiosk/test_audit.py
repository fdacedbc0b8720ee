"""The hash-chained audit trail: any edit, removal or reordering is found and named."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.errors import AuditChainBroken, InstanceError
from kiosk.models import AuditEvent, AuditHead

from .conftest import integrity_errors, make_instance, raw_sql, tamper_sql

ACTOR = Actor.system("test")


def write_events(instance, clock, count: int = 6) -> None:
    with instance.database.transaction() as session:
        for number in range(count):
            clock.advance(1)
            instance.audit.record(
                session,
                clock,
                ACTOR,
                "test.event",
                kiosk="main",
                custody_id=number % 3 or None,
                pupil_id=7,
                details={"n": number, "name": "Zoë"},
            )


def raw(instance):
    return tamper_sql(instance)


def verify(instance):
    with instance.database.reader() as session:
        return instance.audit.verify(session)


def test_an_untouched_chain_verifies(instance, clock):
    write_events(instance, clock)
    report = verify(instance)
    assert report.events == report.head_seq >= 6


def test_events_are_chained_in_seq_order(instance, clock):
    write_events(instance, clock)
    with instance.database.reader() as session:
        events = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("details", '{"n":99,"name":"Zoë"}'),
        ("kind", "test.other"),
        ("actor", "user:mallory"),
        ("kiosk", "other"),
        ("custody_id", 42),
        ("pupil_id", 8),
        ("restricted", True),
        ("occurred_at", "2020-01-01 00:00:00.000000"),
        ("hash", "f" * 64),
    ],
)
def test_editing_any_column_is_detected_and_named(instance, clock, column, value):
    write_events(instance, clock)
    with raw(instance) as connection:
        connection.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = 4", (value,))
    with pytest.raises(AuditChainBroken, match=r"seq (4|5)"):
        verify(instance)


def test_removing_an_event_is_detected(instance, clock):
    write_events(instance, clock)
    with raw(instance) as connection:
        connection.execute("DELETE FROM audit_events WHERE seq = 3")
    with pytest.raises(AuditChainBroken, match=r"seq 4 .* events 3\.\.3 were removed"):
        verify(instance)


def test_removing_the_newest_events_is_detected(instance, clock):
    write_events(instance, clock)
    with raw(instance) as connection:
        head = connection.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
        connection.execute("DELETE FROM audit_events WHERE seq >= ?", (head - 1,))
    with pytest.raises(AuditChainBroken, match="most recent events were removed"):
        verify(instance)


def test_moving_the_head_back_over_removed_events_is_detected(instance, clock):
    """The newest event removed and the head pointed at the one before, as it was then:
    without the site secret the head's seal cannot be made to match."""
    write_events(instance, clock)
    with raw(instance) as connection:
        head = connection.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
        connection.execute("DELETE FROM audit_events WHERE seq = ?", (head,))
        connection.execute(
            "UPDATE audit_head SET seq = ?, hash = (SELECT hash FROM audit_events WHERE seq = ?)",
            (head - 1, head - 1),
        )
    with pytest.raises(AuditChainBroken, match=rf"head \(seq {head - 1}\) is not sealed"):
        verify(instance)


def test_emptying_the_trail_is_detected(instance, clock):
    write_events(instance, clock)
    with raw(instance) as connection:
        connection.execute("DELETE FROM audit_events")
        connection.execute("UPDATE audit_head SET seq = 0, hash = ?, seal = NULL", ("0" * 64,))
    with pytest.raises(AuditChainBroken, match=r"head \(seq 0\) is not sealed"):
        verify(instance)


def test_the_head_is_sealed_at_every_commit_that_appends(instance, clock):
    for count in (1, 3):
        write_events(instance, clock, count)
        with instance.database.reader() as session:
            head = session.get(AuditHead, 1)
            assert head.seal == instance.audit.seal_of(head.seq, head.hash)
    with instance.database.transaction() as session:  # nothing appended: nothing rewritten
        instance.audit.record(session, clock, ACTOR, "test.rolled_back")
        session.rollback()
    verify(instance)


def test_the_database_refuses_to_change_an_event(instance, clock):
    write_events(instance, clock)
    with raw_sql(instance) as connection, pytest.raises(integrity_errors(), match="never changed"):
        connection.execute("UPDATE audit_events SET details = '{}' WHERE seq = 2")
    verify(instance)


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        ("occurred_at", "garbage", "seq 3 was edited"),
        ("details", b"\x00\xff", "seq 3 .* was edited"),
        ("seq", "x", "events 3..3 were removed"),
    ],
)
def test_a_field_that_no_longer_parses_is_named_not_a_crash(tmp_path, column, value, named):
    """SQLite keeps any value in any column: an edit can leave one the application cannot
    even read (PostgreSQL's column types refuse such values themselves)."""
    from kiosk.clock import ManualClock

    from .conftest import SCHOOL_MORNING

    instance = make_instance(tmp_path / "instance")
    write_events(instance, ManualClock(SCHOOL_MORNING))
    with raw(instance) as connection:
        connection.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = 3", (value,))
    with pytest.raises(AuditChainBroken, match=named):
        verify(instance)
    instance.close()


def test_reordering_events_is_detected(instance, clock):
    write_events(instance, clock)
    with raw(instance) as connection:
        connection.execute("UPDATE audit_events SET seq = -1 WHERE seq = 2")
        connection.execute("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        connection.execute("UPDATE audit_events SET seq = 3 WHERE seq = -1")
    with pytest.raises(AuditChainBroken, match="seq 2"):
        verify(instance)


def test_a_forged_tail_without_the_secret_is_detected(instance, clock):
    """Someone who can write the database but not read the site secret appends an event
    hashed with a key of their own and moves the head to it."""
    write_events(instance, clock)
    forger = AuditTrail(b"not-the-site-secret-at-all")
    with instance.database.transaction() as session:
        forger.record(session, clock, Actor.system("forger"), "custody.collected")
    with pytest.raises(AuditChainBroken, match="was edited"):
        verify(instance)


def test_a_different_site_secret_cannot_verify(instance, clock, tmp_path):
    write_events(instance, clock)
    other = make_instance(tmp_path / "other")
    with instance.database.reader() as session, pytest.raises(AuditChainBroken):
        other.audit.verify(session)
    other.close()


@given(
    target=st.integers(min_value=1, max_value=8),
    column=st.sampled_from(["details", "kind", "actor", "occurred_at"]),
)
def test_any_single_edit_breaks_verification(tmp_path_factory, target, column):
    from kiosk.clock import ManualClock

    from .conftest import SCHOOL_MORNING

    instance = make_instance(tmp_path_factory.mktemp("audit"))
    clock = ManualClock(SCHOOL_MORNING)
    write_events(instance, clock, 8)
    verify(instance)
    replacement = {
        "details": '{"edited":true}',
        "kind": "x.y",
        "actor": "user:x",
        "occurred_at": "2030-01-01 00:00:00.000000",
    }[column]
    with raw(instance) as connection:
        connection.execute(
            f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (replacement, target)
        )
    with pytest.raises(AuditChainBroken, match=f"seq {target}"):
        verify(instance)
    instance.close()


def test_concurrent_writers_never_fork_the_chain(instance, clock):
    """Two threads append through their own units of work; SQLite's BEGIN IMMEDIATE (and
    FOR UPDATE on PostgreSQL) serialise them on the head row."""
    import threading

    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for number in range(40):
                with instance.database.transaction() as session:
                    instance.audit.record(
                        session, clock, Actor.system(name), "test.race", details={"n": number}
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = verify(instance)
    assert report.events >= 120


def test_event_time_round_trips_exactly(instance, clock):
    clock.advance(seconds=0.123456)
    with instance.database.transaction() as session:
        event = instance.audit.record(session, clock, ACTOR, "test.time")
        written = event.occurred_at
    with instance.database.reader() as session:
        stored = session.execute(select(AuditEvent).where(AuditEvent.kind == "test.time"))
        assert stored.scalar_one().occurred_at == written
    assert written.microsecond == 123456
    verify(instance)


def test_restricted_flag_is_recorded(instance, clock):
    with instance.database.transaction() as session:
        event = instance.audit.record(
            session, clock, ACTOR, "custody.held", details={"reason": "x"}, restricted=True
        )
        assert event.restricted
    verify(instance)
    assert timedelta(0) <= clock.now() - event.occurred_at


@pytest.mark.parametrize("outcome", ["rolled back", "released"])
def test_events_around_a_savepoint_keep_the_chain_whole(instance, clock, outcome):
    """The head is cached per transaction; an event written in a savepoint that is rolled
    back must not become the parent of the next event."""
    with instance.database.transaction() as session:
        instance.audit.record(session, clock, ACTOR, "test.before")
        savepoint = session.begin_nested()
        instance.audit.record(session, clock, ACTOR, "test.inside")
        instance.audit.record(session, clock, ACTOR, "test.inside")
        if outcome == "rolled back":
            savepoint.rollback()
        else:
            savepoint.commit()
        instance.audit.record(session, clock, ACTOR, "test.after")
        instance.audit.record(session, clock, ACTOR, "test.after")
    with instance.database.reader() as session:
        kinds = session.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars()
        kinds = [kind for kind in kinds if kind.startswith("test.")]
    inside = ["test.inside"] * 2 if outcome == "released" else []
    assert kinds == ["test.before", *inside, "test.after", "test.after"]
    verify(instance)


def test_the_head_follows_every_inserted_event_even_from_raw_sql(instance, clock):
    """Migration 0002's trigger: the head names the last event written, whoever wrote it."""
    write_events(instance, clock, 2)
    with raw(instance) as connection:
        connection.execute(
            "INSERT INTO audit_events (seq, occurred_at, kind, actor, restricted, details,"
            " prev_hash, hash) VALUES (999, '2026-09-07 07:00:00.000000', 'x', 'y', ?, '{}',"
            " 'p', 'h999')",
            (False,),
        )
        head = connection.execute("SELECT seq, hash FROM audit_head").fetchone()
    assert head == (999, "h999")
    with pytest.raises(AuditChainBroken):  # and verification still refuses the forgery
        verify(instance)


def test_a_machine_with_another_secret_is_told_to_copy_the_right_one(instance, clock, tmp_path):
    write_events(instance, clock)
    with instance.database.reader() as session:
        instance.audit.check_key(session)  # its own secret: fine
    other = make_instance(tmp_path / "other")
    with instance.database.reader() as session, pytest.raises(InstanceError, match=r"secret\.key"):
        other.audit.check_key(session)
    other.close()


def test_an_empty_database_belongs_to_anybody(tmp_path):
    instance = make_instance(tmp_path / "i")
    with raw(instance) as connection:
        connection.execute("DELETE FROM audit_events")
    with instance.database.reader() as session:
        instance.audit.check_key(session)
    instance.close()
