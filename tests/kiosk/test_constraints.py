"""The database itself enforces the custody invariants: these tests bypass the ledger and
try to break them with plain SQL on the SQLite file, the way a careless script would."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.custody import RECORDED_FACTS, allowed_edges, initial_states
from kiosk.instance import Instance
from kiosk.migrate import MIGRATIONS
from kiosk.models import ACTIVE_STATES, CustodyState

from .conftest import integrity_errors, make_instance, raw_sql

NOW = "2026-09-07 07:00:00.000000"


INTEGRITY = integrity_errors()


@pytest.fixture
def raw(tmp_path: Path, database_url: str | None) -> Iterator[Any]:
    """Plain SQL, outside the application, on SQLite and on PostgreSQL."""
    instance: Instance = make_instance(tmp_path / "i", database_url=database_url)
    connection = raw_sql(instance)
    instance.close()
    if database_url is None:
        connection.execute("PRAGMA foreign_keys = ON")
    connection.execute(
        "INSERT INTO pupils (id, admission_number, forename, surname, form, status, created_at,"
        " updated_at) VALUES (1, 'A1', 'Sam', 'T', '7A', 'active', ?, ?),"
        " (2, 'A2', 'Alex', 'B', '7A', 'active', ?, ?)",
        (NOW,) * 4,
    )
    yield connection
    connection.close()


def insert(
    raw: Any,
    state: str = "PENDING_DEPOSIT",
    *,
    pupil: int = 1,
    compartment: int | None = 1,
    kind: str = "daily",
    **extra: object,
) -> int:
    columns = {
        "pupil_id": pupil,
        "kind": kind,
        "state": state,
        "compartment_id": compartment,
        "started_at": NOW,
        "started_by": "sql",
        "updated_at": NOW,
        "ever_held": False,
        "id_checked": False,
        "version": 1,
        "pending_until": NOW if state == "PENDING_DEPOSIT" else None,
        **extra,
    }
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    cursor = raw.execute(
        f"INSERT INTO custody_records ({names}) VALUES ({marks}) RETURNING id",
        tuple(columns.values()),
    )
    return cursor.fetchone()[0]


def set_state(raw: Any, record: int, state: str, **extra: object) -> None:
    assignments = ", ".join(f"{name} = ?" for name in ("state", *extra))
    raw.execute(
        f"UPDATE custody_records SET {assignments} WHERE id = ?", (state, *extra.values(), record)
    )


def test_a_compartment_holds_at_most_one_active_record(raw):
    insert(raw, pupil=1, compartment=1)
    with pytest.raises(INTEGRITY, match=r"(?i)unique"):
        insert(raw, pupil=2, compartment=1)


def test_a_finished_record_does_not_occupy_its_compartment(raw):
    first = insert(raw, pupil=1, compartment=1)
    set_state(raw, first, "CANCELLED", ended_at=NOW)
    insert(raw, pupil=2, compartment=1)  # allowed now


def test_a_pupil_has_at_most_one_active_daily_deposit(raw):
    insert(raw, pupil=1, compartment=1)
    with pytest.raises(INTEGRITY, match=r"(?i)unique"):
        insert(raw, pupil=1, compartment=2)


def test_a_confiscation_alongside_a_deposit_is_allowed(raw):
    insert(raw, pupil=1, compartment=1)
    insert(
        raw, "CONFISCATED", pupil=1, compartment=21, kind="confiscation", confiscation_reason="x"
    )


@pytest.mark.parametrize("target", ["COLLECTED", "RELEASED_TO_PARENT"])
def test_a_held_device_never_goes_to_the_pupil_or_a_parent(raw, target):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    set_state(raw, record, "SAFEGUARDING_HOLD", hold_reason="concern", ever_held=True)
    with pytest.raises(INTEGRITY, match="custody guard: transition not allowed"):
        set_state(raw, record, target, ended_at=NOW, collector_name="Jo", id_checked=True)


def test_hold_needs_a_reason_and_the_ever_held_mark(raw):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    with pytest.raises(INTEGRITY, match="hold_recorded"):
        set_state(raw, record, "SAFEGUARDING_HOLD", hold_reason="concern")
    with pytest.raises(INTEGRITY, match="hold_recorded"):
        set_state(raw, record, "SAFEGUARDING_HOLD", ever_held=True)


def test_ever_held_cannot_be_cleared(raw):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    set_state(raw, record, "SAFEGUARDING_HOLD", hold_reason="concern", ever_held=True)
    set_state(raw, record, "CONFISCATED", hold_lifted_note="checked")
    with pytest.raises(INTEGRITY, match="never change back"):
        raw.execute("UPDATE custody_records SET ever_held = ? WHERE id = ?", (False, record))


@pytest.mark.parametrize(
    "terminal", sorted(set(CustodyState) - set(ACTIVE_STATES), key=lambda state: state.value)
)
def test_terminal_states_are_final(raw, terminal):
    record = _record_in(raw, terminal)
    for target in CustodyState:
        if target is not terminal:
            ended = None if target in ACTIVE_STATES else NOW
            with pytest.raises(INTEGRITY, match="custody guard"):
                set_state(raw, record, target.value, ended_at=ended)


def test_every_edge_outside_the_table_is_refused_and_every_edge_in_it_allowed(raw):
    """All 81 (from, to) pairs, against the database alone."""
    edges = allowed_edges()
    for source in CustodyState:
        for target in CustodyState:
            if source is target:
                continue
            raw.execute("BEGIN")
            try:
                record = _record_in(raw, source)
                fields = {
                    "ended_at": None if target in ACTIVE_STATES else NOW,
                    "collector_name": "Jo",
                    "id_checked": True,
                    "police_reference": "P1",
                    "hold_reason": "x",
                    "hold_lifted_note": "n",
                    "ever_held": True,
                    "pending_until": NOW,
                }
                if (source, target) in edges:
                    set_state(raw, record, target.value, **fields)
                else:
                    with pytest.raises(INTEGRITY):
                        set_state(raw, record, target.value, **fields)
            finally:
                raw.execute("ROLLBACK")


def _record_in(raw: Any, state: CustodyState) -> int:
    """A record brought to ``state`` along allowed edges only."""
    path = {
        CustodyState.PENDING_DEPOSIT: [],
        CustodyState.IN_LOCKER: ["IN_LOCKER"],
        CustodyState.CANCELLED: ["CANCELLED"],
        CustodyState.COLLECTED: ["IN_LOCKER", "COLLECTED"],
        CustodyState.CONFISCATED: ["IN_LOCKER", "CONFISCATED"],
        CustodyState.RELEASED_TO_PARENT: ["IN_LOCKER", "CONFISCATED", "RELEASED_TO_PARENT"],
        CustodyState.SAFEGUARDING_HOLD: ["IN_LOCKER", "SAFEGUARDING_HOLD"],
        CustodyState.HANDED_TO_POLICE: ["IN_LOCKER", "SAFEGUARDING_HOLD", "HANDED_TO_POLICE"],
        CustodyState.RETURNED_TO_PUPIL: ["IN_LOCKER", "RETURNED_TO_PUPIL"],
    }[state]
    raw.execute("DELETE FROM custody_records WHERE state IN ('CANCELLED', 'COLLECTED')")
    record = insert(raw, "PENDING_DEPOSIT")
    for step in path:
        terminal = step not in {s.value for s in ACTIVE_STATES}
        set_state(
            raw,
            record,
            step,
            ended_at=NOW if terminal else None,
            collector_name="Jo",
            id_checked=True,
            police_reference="P1",
            hold_reason="x",
            ever_held=True,
        )
    return record


def test_a_hold_is_lifted_only_with_a_note(raw):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    set_state(raw, record, "SAFEGUARDING_HOLD", hold_reason="concern", ever_held=True)
    with pytest.raises(INTEGRITY, match="lifted only with a note"):
        set_state(raw, record, "CONFISCATED")
    set_state(raw, record, "CONFISCATED", hold_lifted_note="spoke to the DSL")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("collector_name", "Someone else"),
        ("collector_relationship", "uncle"),
        ("id_checked", False),
        ("ended_at", "2026-09-08 07:00:00.000000"),
        ("ended_by", "user:mallory"),
        ("confiscation_reason", "edited"),
        ("release_not_before", "2026-09-07 15:00:00.000000"),
    ],
)
def test_the_facts_of_a_finished_record_never_change(raw, column, value):
    record = insert(
        raw, "CONFISCATED", kind="confiscation", compartment=21, confiscation_reason="phone out"
    )
    set_state(
        raw,
        record,
        "RELEASED_TO_PARENT",
        ended_at=NOW,
        collector_name="Jo",
        collector_relationship="mother",
        id_checked=True,
        ended_by="user:office",
    )
    with pytest.raises(INTEGRITY, match="facts of a finished record never change"):
        raw.execute(f"UPDATE custody_records SET {column} = ? WHERE id = ?", (value, record))
    # Its flag may still change: the office can be asked to look at it.
    raw.execute(
        "UPDATE custody_records SET flag = 'check', flag_detail = 'x', flagged_at = ?, "
        "version = version + 1 WHERE id = ?",
        (NOW, record),
    )


def test_a_police_reference_is_final(raw):
    record = _record_in(raw, CustodyState.HANDED_TO_POLICE)
    with pytest.raises(INTEGRITY, match="facts of a finished record never change"):
        raw.execute("UPDATE custody_records SET police_reference = 'NONE' WHERE id = ?", (record,))


def test_new_records_start_only_as_pending_or_confiscated(raw):
    with pytest.raises(INTEGRITY, match="must start as"):
        insert(raw, "IN_LOCKER")
    with pytest.raises(INTEGRITY):
        insert(raw, "COLLECTED", ended_at=NOW)


def test_active_and_once_held_records_are_never_deleted(raw):
    active = insert(raw, "PENDING_DEPOSIT")
    with pytest.raises(INTEGRITY, match="never deleted"):
        raw.execute("DELETE FROM custody_records WHERE id = ?", (active,))
    held = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    set_state(raw, held, "SAFEGUARDING_HOLD", hold_reason="x", ever_held=True)
    set_state(raw, held, "HANDED_TO_POLICE", police_reference="P", ended_at=NOW)
    with pytest.raises(INTEGRITY, match="never deleted"):
        raw.execute("DELETE FROM custody_records WHERE id = ?", (held,))


def test_the_pupil_of_a_record_never_changes(raw):
    record = insert(raw, "PENDING_DEPOSIT")
    with pytest.raises(INTEGRITY, match="never change back"):
        raw.execute("UPDATE custody_records SET pupil_id = 2 WHERE id = ?", (record,))


def test_release_requires_collector_and_id_check(raw):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    with pytest.raises(INTEGRITY, match="release_recorded"):
        set_state(raw, record, "RELEASED_TO_PARENT", ended_at=NOW, collector_name="Jo")


def test_police_handover_requires_a_reference(raw):
    record = insert(raw, "CONFISCATED", kind="confiscation", compartment=21)
    set_state(raw, record, "SAFEGUARDING_HOLD", hold_reason="x", ever_held=True)
    with pytest.raises(INTEGRITY, match="police_reference"):
        set_state(raw, record, "HANDED_TO_POLICE", ended_at=NOW)


def test_terminal_iff_ended(raw):
    record = insert(raw, "PENDING_DEPOSIT")
    with pytest.raises(INTEGRITY, match="ended_iff_terminal"):
        set_state(raw, record, "CANCELLED")  # no ended_at
    with pytest.raises(INTEGRITY, match="ended_iff_terminal"):
        set_state(raw, record, "IN_LOCKER", ended_at=NOW)


def test_confiscation_records_never_take_daily_states(raw):
    with pytest.raises(INTEGRITY, match="confiscation_states"):
        insert(raw, "PENDING_DEPOSIT", kind="confiscation")


def test_unknown_states_are_refused(raw):
    record = insert(raw, "PENDING_DEPOSIT")
    with pytest.raises(INTEGRITY):
        set_state(raw, record, "LOST")


def test_an_active_card_uid_belongs_to_one_person(raw):
    raw.execute(
        "INSERT INTO cards (uid_hash, pupil_id, enrolled_at, enrolled_by) "
        "VALUES ('h1', 1, ?, 'sql')",
        (NOW,),
    )
    with pytest.raises(INTEGRITY, match=r"(?i)unique"):
        raw.execute(
            "INSERT INTO cards (uid_hash, pupil_id, enrolled_at, enrolled_by) "
            "VALUES ('h1', 2, ?, 'sql')",
            (NOW,),
        )
    raw.execute("UPDATE cards SET revoked_at = ? WHERE uid_hash = 'h1'", (NOW,))
    raw.execute(
        "INSERT INTO cards (uid_hash, pupil_id, enrolled_at, enrolled_by) "
        "VALUES ('h1', 2, ?, 'sql')",
        (NOW,),
    )


def test_a_card_has_exactly_one_holder(raw):
    with pytest.raises(INTEGRITY, match="one_holder"):
        raw.execute(
            "INSERT INTO cards (uid_hash, enrolled_at, enrolled_by) VALUES ('h2', ?, 'sql')", (NOW,)
        )


def _migration(number: str = "0001"):
    path = next((MIGRATIONS / "versions").glob(f"{number}_*.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{number}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_migrations_guard_matches_the_transition_table():
    migration = _migration()
    assert {
        (CustodyState(a), CustodyState(b)) for a, b in migration.ALLOWED_TRANSITIONS
    } == allowed_edges()
    assert {CustodyState(s) for s in migration.INITIAL_STATES} == initial_states()
    assert {CustodyState(s) for s in migration.ACTIVE_STATES} == set(ACTIVE_STATES)


def test_the_final_facts_guard_covers_what_the_audit_trail_records():
    """Migration 0004 freezes the facts of a finished record; each of them is one the ledger
    records in its events (so ``audit verify`` would catch an edit the guard let through)."""
    migration = _migration("0004")
    assert set(migration.FINAL_FACTS) <= RECORDED_FACTS
    assert {CustodyState(s) for s in migration.TERMINAL_STATES} == set(CustodyState) - set(
        ACTIVE_STATES
    )
    # Only the office's flag, and links a deletion may clear, are left out.
    assert RECORDED_FACTS - set(migration.FINAL_FACTS) == {
        "pending_until",
        "flag",
        "flag_detail",
        "flagged_at",
    }
