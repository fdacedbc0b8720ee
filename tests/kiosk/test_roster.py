"""Roster import (kiosk.roster): MIS column names, encodings, quoting, unicode names, every
bad line by its physical line number, all-or-nothing, upsert, leavers and the mass-leave
guard, against a real SQLite file."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from kiosk import roster
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.errors import ImportRejected
from kiosk.instance import Instance
from kiosk.models import (
    AuditEvent,
    Contact,
    CustodyRecord,
    CustodyState,
    Pupil,
    PupilStatus,
    Role,
)

from .conftest import deposit, make_instance, raw_sql, staff_actor

ACTOR = Actor.system("test")
HEADER = ["admission_number", "forename", "surname", "form", "year"]


# ------------------------------------------------------------------------------ helpers


def make_csv(
    header: list[str],
    rows: list[list[str]],
    *,
    newline: str = "\n",
    bom: bool = False,
    quoting: int = csv.QUOTE_MINIMAL,
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    data = out.getvalue().encode("utf-8")
    return codecs.BOM_UTF8 + data if bom else data


def physical(lines: list[str], newline: str = "\n") -> bytes:
    """A file made of exactly these physical lines."""
    return (newline.join(lines) + newline).encode("utf-8")


def run_import(
    instance: Instance, clock: ManualClock, data: bytes, **options: Any
) -> roster.ImportSummary:
    """Parse and import in one unit of work, as `locker roster import` does."""
    parsed = roster.parse_roster(data)
    with instance.database.transaction() as session:
        return roster.import_roster(session, ACTOR, clock, instance.audit, parsed, **options)


def rejection(data: bytes) -> ImportRejected:
    with pytest.raises(ImportRejected) as caught:
        roster.parse_roster(data)
    return caught.value


def bad_lines(exc: ImportRejected) -> list[int]:
    """The line numbers the rejection names, in order."""
    lines = []
    for problem in exc.problems:
        match = re.match(r"line (\d+): ", problem)
        assert match, f"problem without a line number: {problem!r}"
        lines.append(int(match[1]))
    return lines


def raw_tables(instance: Instance) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the roster tables and the audit trail, read with plain SQL."""
    connection = raw_sql(instance)
    try:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("pupils", "contacts", "audit_events", "audit_head")
        }
    finally:
        connection.close()


def pupils_in_db(instance: Instance) -> dict[str, dict[str, Any]]:
    with instance.database.reader() as session:
        return {
            pupil.admission_number: {
                "id": pupil.id,
                "forename": pupil.forename,
                "preferred_forename": pupil.preferred_forename,
                "surname": pupil.surname,
                "year": pupil.year_group,
                "form": pupil.form,
                "status": pupil.status,
                "left_at": pupil.left_at,
                "contacts": [(c.position, c.name, c.relation) for c in pupil.contacts],
            }
            for pupil in session.execute(select(Pupil)).scalars()
        }


def database_bytes(instance: Instance) -> bytes:
    path = instance.sqlite_path
    assert path is not None
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def school(count: int, form: str = "7A") -> list[list[str]]:
    return [[f"A{n:04d}", f"Forename{n}", f"Surname{n}", form, "7"] for n in range(count)]


# ------------------------------------------------------------------------------ headers


def test_sims_export_headers(instance: Instance, clock: ManualClock) -> None:
    data = make_csv(
        ["Adno", "Legal Forename", "Preferred Forename", "Legal Surname", "Reg Group", "Year"],
        [
            ["004512", "Zoë", "Zo", "Okafor", "7A", "Year 7"],
            ["004513", "Siobhán", "", "O'Brien", "10B", "Year 10"],
        ],
    )
    summary = run_import(instance, clock, data)
    assert (summary.rows, summary.added) == (2, 2)
    pupils = pupils_in_db(instance)
    assert pupils["004512"]["forename"] == "Zoë"
    assert pupils["004512"]["preferred_forename"] == "Zo"
    assert pupils["004512"]["surname"] == "Okafor"
    assert (pupils["004512"]["form"], pupils["004512"]["year"]) == ("7A", "7")
    assert pupils["004513"]["preferred_forename"] is None
    assert (pupils["004513"]["form"], pupils["004513"]["year"]) == ("10B", "10")


def test_arbor_export_headers_and_contacts(instance: Instance, clock: ManualClock) -> None:
    header = [
        "Admission No",
        "First Name",
        "Last Name",
        "Registration Form",
        "Year Group",
        "Primary Contact Name",
        "Primary Contact Relationship",
        "Secondary Contact Name",
        "Secondary Contact Relationship",
    ]
    rows = [
        ["AR100", "Łukasz", "Nowak", "8C", "8", "Anna Nowak", "Mother", "Piotr Nowak", "Father"],
        ["AR101", "Aisha", "Khan", "8C", "Y8", "Samira Khan", "Aunt", "", ""],
    ]
    run_import(instance, clock, make_csv(header, rows))
    pupils = pupils_in_db(instance)
    assert pupils["AR100"]["forename"] == "Łukasz"
    assert pupils["AR100"]["form"] == "8C"
    assert pupils["AR100"]["contacts"] == [
        (1, "Anna Nowak", "Mother"),
        (2, "Piotr Nowak", "Father"),
    ]
    assert pupils["AR101"]["contacts"] == [(1, "Samira Khan", "Aunt")]
    assert pupils["AR101"]["year"] == pupils["AR100"]["year"] == "8"


def test_canonical_headers_match_whatever_the_case_and_spacing(
    instance: Instance, clock: ManualClock
) -> None:
    header = [" ADMISSION_NUMBER", "Forename", "preferred_forename", "SURNAME ", "Year", "Form"]
    header += ["Contact1_Name", "contact1_relationship", "CONTACT2_NAME", "contact2_relationship"]
    row = ["C1", "Mohammed", "Mo", "Ali", "9", "9X", "Fatima Ali", "Mother", "Omar Ali", "Uncle"]
    summary = run_import(instance, clock, make_csv(header, [row]))
    assert summary.ignored_columns == []
    pupil = pupils_in_db(instance)["C1"]
    assert (pupil["forename"], pupil["preferred_forename"], pupil["surname"]) == (
        "Mohammed",
        "Mo",
        "Ali",
    )
    assert pupil["contacts"] == [(1, "Fatima Ali", "Mother"), (2, "Omar Ali", "Uncle")]


def test_header_without_a_required_column_is_refused() -> None:
    exc = rejection(make_csv(["Adno", "Forename", "Reg Group"], [["1", "Amy", "7A"]]))
    assert bad_lines(exc) == [1]
    assert "surname" in " ".join(exc.problems)


def test_two_columns_for_the_same_field_are_refused() -> None:
    exc = rejection(make_csv(["Adno", "Admission No", "Forename", "Surname", "Form"], []))
    assert bad_lines(exc) == [1]
    assert "Adno" in exc.problems[0] and "Admission No" in exc.problems[0]


YEARS = [
    ("7", "7"),
    ("07", "7"),
    ("Year 7", "7"),
    ("Y7", "7"),
    ("yr 11", "11"),
    ("R", "R"),
    ("Reception", "R"),
    ("", None),
    ("Nursery", "Nursery"),  # not a number we know: kept as written
    ("²", "²"),
    ("٧", "7"),  # Arabic-Indic digit seven
]


def test_year_groups_are_normalised(instance: Instance, clock: ManualClock) -> None:
    rows = [[f"Y{i}", "Amy", "Ng", "7A", text] for i, (text, _) in enumerate(YEARS)]
    run_import(instance, clock, make_csv(HEADER, rows))
    pupils = pupils_in_db(instance)
    assert [pupils[f"Y{i}"]["year"] for i in range(len(YEARS))] == [year for _, year in YEARS]


# ------------------------------------------------------------------------------ encodings


@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_utf8_with_or_without_bom_and_any_line_ending(
    instance: Instance, clock: ManualClock, bom: bool, newline: str
) -> None:
    rows = [["E1", "Chloé", "Dubois", "7B", "7"], ["E2", "Ffion", "Ap Rhys", "7B", "7"]]
    data = make_csv(["Adno", *HEADER[1:]], rows, newline=newline, bom=bom)
    assert data.startswith(codecs.BOM_UTF8) == bom
    summary = run_import(instance, clock, data)
    assert summary.added == 2
    pupils = pupils_in_db(instance)
    # The BOM is not part of the first column's name, and no \r is left on the last field.
    assert set(pupils) == {"E1", "E2"}
    assert {p["year"] for p in pupils.values()} == {"7"}
    assert pupils["E1"]["forename"] == "Chloé"


def test_quoted_fields_with_commas_quotes_and_newlines(
    instance: Instance, clock: ManualClock
) -> None:
    header = ["Adno", "Forename", "Surname", "Form", "Address", "contact1_name"]
    rows = [
        ["Q1", "Mary, Jane", 'O"Neill', "7A", "1 High St\nLeeds\nLS1 1AA", "Mr & Mrs Smith, Jr"],
        ["Q2", 'Say "Hi"', "Doe", "7A", "2 Low Rd", ""],
    ]
    data = make_csv(header, rows, newline="\r\n", quoting=csv.QUOTE_ALL)
    assert data.count(b'""') >= 2 and b"\nLeeds\n" in data
    summary = run_import(instance, clock, data)
    assert summary.ignored_columns == ["Address"]
    pupils = pupils_in_db(instance)
    assert (pupils["Q1"]["forename"], pupils["Q1"]["surname"]) == ("Mary, Jane", 'O"Neill')
    assert pupils["Q1"]["contacts"] == [(1, "Mr & Mrs Smith, Jr", "")]
    assert pupils["Q2"]["forename"] == 'Say "Hi"'


UNICODE_NAMES = [
    ("Zoë", "Brontë"),
    ("Siobhán", "Ní Bhriain"),
    ("Łukasz", "Wróblewski"),
    ("Seán", "O'Brien"),
    ("محمد", "العلي"),
    ("小明", "王"),
    ("محمد\u200cرضا", "رضایی"),  # Persian: a zero-width non-joiner inside the name
    ("Nguyễn", "Thị Minh Khai"),
    ("Ἀθηνᾶ", "Παπαδοπούλου"),
    ("अर्जुन", "शर्मा"),
]


def test_unicode_names_are_stored_as_written(instance: Instance, clock: ManualClock) -> None:
    rows = [[f"U{i}", first, last, "7U", "7"] for i, (first, last) in enumerate(UNICODE_NAMES)]
    run_import(instance, clock, make_csv(HEADER, rows))
    pupils = pupils_in_db(instance)
    for i, (first, last) in enumerate(UNICODE_NAMES):
        assert (pupils[f"U{i}"]["forename"], pupils[f"U{i}"]["surname"]) == (first, last)


def test_combining_characters_are_normalised_to_nfc(instance: Instance, clock: ManualClock) -> None:
    decomposed_first, decomposed_last = "Zoe\u0308", "Sio\u0301bha\u0301n"
    assert unicodedata.is_normalized("NFC", decomposed_first) is False
    run_import(
        instance, clock, make_csv(HEADER, [["N1", decomposed_first, decomposed_last, "7A", ""]])
    )
    pupil = pupils_in_db(instance)["N1"]
    assert pupil["forename"] == unicodedata.normalize("NFC", decomposed_first) == "Zoë"
    assert pupil["surname"] == unicodedata.normalize("NFC", decomposed_last)
    # The same name typed precomposed later is the same name: nothing to update.
    summary = run_import(
        instance, clock, make_csv(HEADER, [["N1", "Zoë", pupil["surname"], "7A", ""]])
    )
    assert (summary.unchanged, summary.updated) == (1, 0)


# ------------------------------------------------------------------------------ bad lines


def test_a_duplicate_is_reported_even_when_its_first_line_has_another_problem() -> None:
    lines = [
        ",".join(HEADER),
        "D1,,Ng,7A,7",  # empty forename
        "D1,Amy,Ng,7A,7",  # and the same admission number again
        "D2,Ben,Ode,7A,7",
        "D2,Ben,,7A,7",  # both problems on the second line
    ]
    exc = rejection(physical(lines))
    assert bad_lines(exc) == [2, 3, 5, 5]
    assert "forename is empty" in exc.problems[0]
    assert "D1" in exc.problems[1] and "also on line 2" in exc.problems[1]
    assert {"surname is empty", "also on line 4"} == {
        next(part for part in ("surname is empty", "also on line 4") if part in problem)
        for problem in exc.problems[2:]
    }


def test_duplicate_admission_numbers_name_both_lines() -> None:
    lines = [
        ",".join(HEADER),
        "D1,Amy,Ng,7A,7",
        "D2,Ben,Ode,7A,7",
        "D1,Amy,Ng,7B,7",
        "d2,Ben,Ode,7A,7",  # the same admission number in lower case
    ]
    exc = rejection(physical(lines))
    assert bad_lines(exc) == [4, 5]
    assert "line 2" in exc.problems[0] and "D1" in exc.problems[0]
    assert "line 3" in exc.problems[1]


@pytest.mark.parametrize("field", ["admission_number", "forename", "surname", "form"])
def test_missing_required_field_is_reported_with_its_line(field: str) -> None:
    good = {"admission_number": "M1", "forename": "Amy", "surname": "Ng", "form": "7A"}
    blank = {**good, "admission_number": "M2", field: "  "}
    rows = [[row[name] for name in HEADER[:4]] for row in (good, blank)]
    exc = rejection(make_csv(HEADER[:4], rows))
    assert bad_lines(exc) == [3]
    assert roster.LABELS[field] in exc.problems[0] and "empty" in exc.problems[0]


def test_rows_with_too_many_or_too_few_fields() -> None:
    lines = [
        "adno,forename,surname,form",
        "F1,Amy,Ng,7A",
        "F2,Smith, John,Doe,7A",  # an unquoted comma in a name
        "F3,Ben,7A",
        "F4,Cat,Lee,7A",
    ]
    exc = rejection(physical(lines))
    assert bad_lines(exc) == [3, 4]
    assert "5 fields" in exc.problems[0] and "3 fields" in exc.problems[1]


def test_latin1_file_names_every_bad_line() -> None:
    lines = ["adno,forename,surname,form", "L1,Amy,Ng,7A", "L2,Zoë,Ng,7A", "L3,Ben,Ng,7A"]
    lines += ["L4,Siobhán,Ní Bhriain,7A"]
    data = "\n".join(lines).encode("latin-1")
    exc = rejection(data)
    expected = [n for n, text in enumerate(lines, start=1) if not text.isascii()]
    assert bad_lines(exc) == expected
    assert "UTF-8" in str(exc)


def test_empty_file_and_blank_file_are_refused() -> None:
    for data in (b"", b"\n\n", codecs.BOM_UTF8, b" , ,\r\n"):
        exc = rejection(data)
        assert "empty" in str(exc)


def test_blank_lines_before_the_header_are_skipped(instance: Instance, clock: ManualClock) -> None:
    data = physical(["", " , ", "Adno,Forename,Surname,Form", "B1,Amy,Ng,7A", "B2,,Ode,7A"])
    exc = rejection(data)
    assert bad_lines(exc) == [5]
    exc = rejection(physical(["", "Adno,Forename,Form", "B1,Amy,7A"]))
    assert bad_lines(exc) == [2]
    run_import(instance, clock, data.replace(b"B2,,Ode", b"B2,Ben,Ode"))
    assert sorted(pupils_in_db(instance)) == ["B1", "B2"]


def test_header_only_is_refused() -> None:
    exc = rejection(physical(["Adno,Forename,Surname,Form", "", ",,,"]))
    assert "no pupils" in str(exc)


def test_every_bad_line_is_named_by_its_physical_line_number() -> None:
    """A quoted field spanning lines shifts the numbers of the lines after it."""
    lines: list[tuple[str, bool]] = [
        ("adno,forename,surname,form,notes", False),
        ('P1,Amy,Ng,7A,"a note', False),
        ("over two lines", False),
        ('continued"', False),
        ("P2,,Ode,7A,x", True),  # empty forename
        ("", False),  # a blank line is skipped but counted
        ('P3,Cy,"Do', True),  # a line break inside the surname: reported where it starts
        ('e",7A,y', False),
        ("P4,Ed,Fo,7A,z,extra", True),  # too many fields
        ('P5,"Fay"x,Go,7A,z', True),  # text after a closing quote
        ("P6,Gus,Hu,7A,ok", False),
        ("P1,Amy,Ng,7A,again", True),  # duplicate of line 2
        ('P7,Ida,Ng,7A,"never closed', True),  # runs to the end of the file
        ("P8,Jo,Ng,7A,swallowed by the open quote", False),
    ]
    expected = [n for n, (_, bad) in enumerate(lines, start=1) if bad]
    for newline in ("\n", "\r\n"):
        exc = rejection(physical([text for text, _ in lines], newline))
        assert bad_lines(exc) == expected, newline


def test_control_characters_in_a_name_are_refused() -> None:
    exc = rejection(
        physical(["adno,forename,surname,form", "X1,Am\x07y,Ng,7A", "X2,Bo\u202eb,Ng,7A"])
    )
    assert bad_lines(exc) == [2, 3]


def test_nul_bytes_name_their_lines() -> None:
    exc = rejection(
        physical(["adno,forename,surname,form", "X1,A\x00,Ng,7A", "X2,B,Ng,7A", "X3,\x00,N,7A"])
    )
    assert bad_lines(exc) == [2, 4]


@pytest.mark.sqlite_only
def test_unknown_columns_are_ignored_and_never_stored(
    instance: Instance, clock: ManualClock
) -> None:
    header = ["UPN", "Adno", "Forename", "Surname", "Form", "Date of Birth", "Medical Notes"]
    secrets = ["K801200001001", "2013-04-17", "Carries an EpiPen for nut allergy"]
    row = [secrets[0], "S1", "Amara", "Quennell-Prynne", "7A", secrets[1], secrets[2]]
    summary = run_import(instance, clock, make_csv(header, [row]))
    assert summary.ignored_columns == ["UPN", "Date of Birth", "Medical Notes"]
    stored = database_bytes(instance)
    assert b"Quennell-Prynne" in stored  # the scan does see what was imported
    for value in secrets:
        assert value.encode() not in stored


# ------------------------------------------------------------------------------ all-or-nothing


REJECTED_FILES = {
    "duplicate": physical(["adno,forename,surname,form", "R1,A,B,7A", "R1,C,D,7A"]),
    "latin-1": "adno,forename,surname,form\nR1,Zoë,B,7A\n".encode("latin-1"),
    "short row": physical(["adno,forename,surname,form", "R1,A,B,7A", "R2,A,7A"]),
    "bad quote": physical(["adno,forename,surname,form", 'R1,"A"x,B,7A']),
    "empty": b"",
    "header only": physical(["adno,forename,surname,form"]),
}


@pytest.mark.parametrize("name", sorted(REJECTED_FILES))
def test_a_rejected_file_changes_nothing(instance: Instance, clock: ManualClock, name: str) -> None:
    run_import(instance, clock, make_csv(HEADER, school(3)))
    before = raw_tables(instance)
    with pytest.raises(ImportRejected):
        run_import(instance, clock, REJECTED_FILES[name])
    assert raw_tables(instance) == before


def test_a_mass_leave_refusal_changes_nothing(instance: Instance, clock: ManualClock) -> None:
    on_roll = roster.MASS_LEAVE_MINIMUM * 2
    run_import(instance, clock, make_csv(HEADER, school(on_roll)))
    before = raw_tables(instance)
    # New pupils and an update in the file, but most of the school missing from it.
    rows = [*school(2), ["NEW1", "New", "Pupil", "7C", "7"]]
    rows[0][1] = "Renamed"
    with pytest.raises(ImportRejected) as caught:
        run_import(instance, clock, make_csv(HEADER, rows))
    assert "--allow-mass-leave" in str(caught.value)
    assert raw_tables(instance) == before


# ------------------------------------------------------------------------------ upsert


def test_upsert_by_admission_number_keeps_ids_and_counts(
    instance: Instance, clock: ManualClock
) -> None:
    header = [*HEADER, "contact1_name", "contact1_relationship"]
    first = [
        ["U1", "Amy", "Ng", "7A", "7", "Li Ng", "Mother"],
        ["U2", "Ben", "Ode", "7A", "7", "Ada Ode", "Mother"],
        ["U3", "Cat", "Lee", "7B", "7", "", ""],
    ]
    run_import(instance, clock, make_csv(header, first))
    ids = {number: pupil["id"] for number, pupil in pupils_in_db(instance).items()}
    clock.advance(days=1)
    second = [
        ["U1", "Amy", "Ng", "7A", "7", "Li Ng", "Mother"],  # unchanged
        ["U2", "Benjamin", "Ode-Smith", "8A", "8", "Tom Ode", "Father"],  # names, form, contact
        ["U3", "Cat", "Lee", "7B", "7", "Jo Lee", "Carer"],  # a contact added
        ["U4", "Dan", "Moe", "7B", "7", "", ""],  # new
    ]
    summary = run_import(instance, clock, make_csv(header, second))
    assert (summary.added, summary.updated, summary.unchanged, summary.left) == (1, 2, 1, 0)
    pupils = pupils_in_db(instance)
    assert {number: pupils[number]["id"] for number in ids} == ids
    assert (pupils["U2"]["forename"], pupils["U2"]["surname"]) == ("Benjamin", "Ode-Smith")
    assert (pupils["U2"]["form"], pupils["U2"]["year"]) == ("8A", "8")
    assert pupils["U2"]["contacts"] == [(1, "Tom Ode", "Father")]
    assert pupils["U3"]["contacts"] == [(1, "Jo Lee", "Carer")]
    # A contact dropped from the file is removed.
    third = [[*row[:5], "", ""] for row in second]
    summary = run_import(instance, clock, make_csv(header, third))
    assert summary.updated == 3 and summary.unchanged == 1
    assert all(pupil["contacts"] == [] for pupil in pupils_in_db(instance).values())


CONTACTS_HEADER = [*HEADER, "contact1_name", "contact1_relationship"]
CONTACTS_HEADER += ["contact2_name", "contact2_relationship"]


def test_contacts_are_people_not_slots(instance: Instance, clock: ManualClock) -> None:
    """A re-import never renames one adult into another: a release to a parent names the
    contact row it was made to, and that row must keep naming the same person."""
    first = [["C1", "Amy", "Ng", "7A", "7", "Jo Ng", "Mother", "Li Ng", "Father"]]
    run_import(instance, clock, make_csv(CONTACTS_HEADER, first))
    with instance.database.transaction() as session:
        office = staff_actor(session, clock, Role.OFFICE)
        pupil = session.execute(select(Pupil)).scalar_one()
        record = instance.ledger.confiscate(session, office, clock, pupil=pupil, reason="in class")
        clock.set(instance.policy.at_local(instance.policy.school_day(clock.now()), time(15, 30)))
        instance.ledger.release_to_parent(
            session, office, clock, record, id_checked=True, contact=pupil.contacts[0]
        )
        record_id, released_to = record.id, record.collector_name
    before = {name: id_ for _, name, _, id_ in contact_rows(instance)}

    clock.advance(days=1)
    # The MIS now lists the father first ("Dad"), and a new carer second.
    second = [["C1", "Amy", "Ng", "7A", "7", "Li Ng", "Dad", "Sam Roe", "Carer"]]
    summary = run_import(instance, clock, make_csv(CONTACTS_HEADER, second))
    assert summary.updated == 1
    rows = contact_rows(instance)
    assert [(position, name, relation) for position, name, relation, _ in rows] == [
        (1, "Li Ng", "Dad"),
        (2, "Sam Roe", "Carer"),
    ]
    assert rows[0][3] == before["Li Ng"]  # the same person keeps their row
    with instance.database.reader() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None and record.collector_name == released_to == "Jo Ng"
        if record.collector_contact_id is not None:
            contact = session.get(Contact, record.collector_contact_id)
            assert contact is not None and contact.name == released_to


def test_contacts_swapping_places(instance: Instance, clock: ManualClock) -> None:
    run_import(
        instance,
        clock,
        make_csv(CONTACTS_HEADER, [["C1", "A", "B", "7A", "7", "X", "m", "Y", "f"]]),
    )
    ids = {name: id_ for _, name, _, id_ in contact_rows(instance)}
    swapped = [["C1", "A", "B", "7A", "7", "Y", "f", "X", "m"]]
    assert run_import(instance, clock, make_csv(CONTACTS_HEADER, swapped)).updated == 1
    assert contact_rows(instance) == [(1, "Y", "f", ids["Y"]), (2, "X", "m", ids["X"])]
    assert run_import(instance, clock, make_csv(CONTACTS_HEADER, swapped)).unchanged == 1


def contact_rows(instance: Instance) -> list[tuple[int, str, str, int]]:
    connection = raw_sql(instance)
    try:
        return connection.execute(
            "SELECT position, name, relationship, id FROM contacts ORDER BY pupil_id, position"
        ).fetchall()
    finally:
        connection.close()


def test_importing_the_same_file_twice_changes_nothing_the_second_time(
    instance: Instance, clock: ManualClock
) -> None:
    data = make_csv(HEADER, school(5))
    run_import(instance, clock, data)
    before = raw_tables(instance)
    summary = run_import(instance, clock, data)
    assert (summary.unchanged, summary.added, summary.updated, summary.left) == (5, 0, 0, 0)
    after = raw_tables(instance)
    assert after["pupils"] == before["pupils"] and after["contacts"] == before["contacts"]


def _deposit(instance: Instance, clock: ManualClock, admission: str) -> int:
    """A real daily deposit through the ledger; returns the custody record's id."""
    with instance.database.transaction() as session:
        pupil = session.execute(
            select(Pupil).where(Pupil.admission_number == admission)
        ).scalar_one()
        return deposit(instance.ledger, session, clock, pupil).id


def test_full_import_marks_missing_pupils_left_and_keeps_their_history(
    instance: Instance, clock: ManualClock
) -> None:
    run_import(instance, clock, make_csv(HEADER, school(4)))
    record_id = _deposit(instance, clock, "A0003")
    clock.advance(days=1)
    summary = run_import(instance, clock, make_csv(HEADER, school(3)))
    assert (summary.left, summary.unchanged) == (1, 3)
    pupils = pupils_in_db(instance)
    leaver = pupils["A0003"]
    assert leaver["status"] is PupilStatus.LEFT and leaver["left_at"] == clock.now()
    assert {p["status"] for n, p in pupils.items() if n != "A0003"} == {PupilStatus.ACTIVE}
    with instance.database.reader() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None and record.pupil_id == leaver["id"]
        assert record.state is CustodyState.IN_LOCKER
        assert (
            session.execute(select(AuditEvent).where(AuditEvent.custody_id == record_id))
            .scalars()
            .all()
        )
        instance.audit.verify(session)

    # Back on roll when a later import includes them again.
    clock.advance(days=1)
    summary = run_import(instance, clock, make_csv(HEADER, school(4)))
    assert (summary.rejoined, summary.left, summary.added) == (1, 0, 0)
    back = pupils_in_db(instance)["A0003"]
    assert back["status"] is PupilStatus.ACTIVE and back["left_at"] is None
    assert back["id"] == leaver["id"]


def test_leavers_with_a_device_in_custody_are_listed_for_the_office(
    instance: Instance, clock: ManualClock
) -> None:
    """The MIS decides who is on roll, so they are still marked as left; but the import
    reports every leaver's device still in the school's care, with its record's state."""
    run_import(instance, clock, make_csv(HEADER, school(8)))
    in_locker = _deposit(instance, clock, "A0001")
    with instance.database.transaction() as session:
        pupils = {
            p.admission_number: p
            for p in session.execute(select(Pupil)).scalars()
            if p.admission_number in ("A0002", "A0003", "A0004", "A0005")
        }
        staff = staff_actor(session, clock, Role.STAFF)
        dsl = staff_actor(session, clock, Role.DSL)
        confiscated = instance.ledger.confiscate(
            session, staff, clock, pupil=pupils["A0002"], reason="in a lesson"
        ).id
        held = instance.ledger.confiscate(
            session, staff, clock, pupil=pupils["A0003"], reason="in a lesson"
        )
        held = instance.ledger.hold(session, dsl, clock, held, reason="referral").id
        cancelled = deposit(instance.ledger, session, clock, pupils["A0004"], confirm=False)
        instance.ledger.cancel_deposit(
            session, Actor.for_kiosk("main"), clock, cancelled, reason="door never opened"
        )
    clock.advance(days=1)
    # A0000-A0004 leave: A0000 never had a device, A0004's deposit was cancelled.
    summary = run_import(instance, clock, make_csv(HEADER, school(8)[5:]))
    assert summary.left == 5
    assert [(e.admission_number, e.record_id, e.state) for e in summary.left_in_custody] == [
        ("A0001", in_locker, CustodyState.IN_LOCKER),
        ("A0002", confiscated, CustodyState.CONFISCATED),
        ("A0003", held, CustodyState.SAFEGUARDING_HOLD),
    ]
    assert summary.left_in_custody[0].where.startswith("compartment ")
    assert summary.left_in_custody[0].where.endswith(" of kiosk main")
    assert summary.left_in_custody[1].name == "Forename2 Surname2"
    warnings = summary.warnings()
    assert warnings[0].startswith("warning: 3 pupils marked as left still have a device")
    assert len(warnings) == 4
    for line, state in zip(
        warnings[1:], ("IN_LOCKER", "CONFISCATED", "SAFEGUARDING_HOLD"), strict=True
    ):
        assert line.startswith("  A000") and f"is {state}" in line
    statuses = {n: p["status"] for n, p in pupils_in_db(instance).items()}
    assert [n for n, status in sorted(statuses.items()) if status is PupilStatus.LEFT] == [
        "A0000",
        "A0001",
        "A0002",
        "A0003",
        "A0004",
    ]
    with instance.database.reader() as session:
        event = (
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.kind == "roster.imported")
                .order_by(AuditEvent.seq.desc())
            )
            .scalars()
            .first()
        )
        assert event is not None
        assert [entry["record"] for entry in json.loads(event.details)["left_in_custody"]] == [
            in_locker,
            confiscated,
            held,
        ]
        instance.audit.verify(session)
    # Nothing to warn about when nobody leaves with a device.
    assert run_import(instance, clock, make_csv(HEADER, school(8)[5:])).warnings() == []


def test_partial_import_marks_nobody_left(instance: Instance, clock: ManualClock) -> None:
    run_import(instance, clock, make_csv(HEADER, school(roster.MASS_LEAVE_MINIMUM * 2)))
    summary = run_import(
        instance, clock, make_csv(HEADER, [["NEW", "Nia", "Jones", "7A", "7"]]), full=False
    )
    assert (summary.added, summary.left) == (1, 0)
    assert {p["status"] for p in pupils_in_db(instance).values()} == {PupilStatus.ACTIVE}


def test_partial_import_brings_a_leaver_back(instance: Instance, clock: ManualClock) -> None:
    run_import(instance, clock, make_csv(HEADER, school(3)))
    run_import(instance, clock, make_csv(HEADER, school(2)))
    summary = run_import(instance, clock, make_csv(HEADER, school(3)[2:]), full=False)
    assert summary.rejoined == 1
    assert {p["status"] for p in pupils_in_db(instance).values()} == {PupilStatus.ACTIVE}


def test_mass_leave_guard_and_allow_mass_leave(instance: Instance, clock: ManualClock) -> None:
    on_roll = roster.MASS_LEAVE_MINIMUM * 2
    run_import(instance, clock, make_csv(HEADER, school(on_roll)))
    staying = on_roll - roster.MASS_LEAVE_MINIMUM  # half the school would leave
    assert on_roll * roster.MASS_LEAVE_SHARE < roster.MASS_LEAVE_MINIMUM
    with pytest.raises(ImportRejected) as caught:
        run_import(instance, clock, make_csv(HEADER, school(staying)))
    assert f"{roster.MASS_LEAVE_MINIMUM} of {on_roll}" in str(caught.value)
    summary = run_import(instance, clock, make_csv(HEADER, school(staying)), allow_mass_leave=True)
    assert summary.left == roster.MASS_LEAVE_MINIMUM
    statuses = [p["status"] for p in pupils_in_db(instance).values()]
    assert statuses.count(PupilStatus.LEFT) == roster.MASS_LEAVE_MINIMUM


def test_a_few_leavers_need_no_confirmation(instance: Instance, clock: ManualClock) -> None:
    """Below the minimum the guard stays quiet, even when the share is large."""
    run_import(instance, clock, make_csv(HEADER, school(4)))
    summary = run_import(instance, clock, make_csv(HEADER, school(1)))
    assert summary.left == 3


def test_successful_import_writes_one_audit_event(instance: Instance, clock: ManualClock) -> None:
    data = make_csv([*HEADER, "Gender"], [[*row, "F"] for row in school(3)])
    before = len(raw_tables(instance)["audit_events"])
    summary = run_import(instance, clock, data)
    with instance.database.reader() as session:
        events = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
        instance.audit.verify(session)
    assert len(events) == before + 1
    event = events[-1]
    details = json.loads(event.details)
    assert event.kind == "roster.imported" and event.actor == ACTOR.label
    assert details["file_sha256"] == hashlib.sha256(data).hexdigest()
    assert (details["rows"], details["added"], details["left"]) == (3, summary.added, 0)
    assert details["full"] is True and details["ignored_columns"] == ["Gender"]


# ------------------------------------------------------------------------------ hypothesis


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_bytes_are_rejected_or_parsed_never_crash(data: bytes) -> None:
    try:
        parsed = roster.parse_roster(data)
    except ImportRejected as exc:
        assert str(exc)
    else:
        assert parsed.rows


CSV_PIECES = [*'ab7AZé小,"\r\n \t\x00\ufeff\u200b²٣-/_', "Year 7", "R1", "7A", "Amy"]
CSV_TEXT = st.lists(st.sampled_from(CSV_PIECES), max_size=40).map("".join)
CSV_FIELD = st.lists(st.sampled_from(CSV_PIECES), max_size=3).map("".join)
CSV_LINES = st.lists(st.lists(CSV_FIELD, min_size=3, max_size=6).map(",".join), max_size=4)


@settings(max_examples=200)
@given(
    st.sampled_from(
        ["Adno,Legal Forename,Legal Surname,Reg Group,Year\n", ",".join(HEADER) + "\r\n", ""]
    ),
    CSV_TEXT,
)
def test_random_text_after_a_header_never_crashes(header: str, body: str) -> None:
    try:
        roster.parse_roster((header + body).encode("utf-8"))
    except ImportRejected as exc:
        assert exc.problems or str(exc)


@pytest.fixture
def seeded(instance: Instance, clock: ManualClock) -> Instance:
    run_import(instance, clock, make_csv(HEADER, school(roster.MASS_LEAVE_MINIMUM + 2)))
    return instance


VALID_LINES = [",".join(row) for row in school(3)] + ["Z1,Zed,Zee,7Z,7"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.one_of(st.sampled_from(VALID_LINES), CSV_TEXT), max_size=6),
    st.booleans(),
)
def test_a_failing_import_leaves_the_database_unchanged(
    seeded: Instance, lines: list[str], full: bool
) -> None:
    clock = ManualClock()
    before = raw_tables(seeded)
    data = ("\n".join([",".join(HEADER), *lines]) + "\n").encode("utf-8")
    try:
        summary = run_import(seeded, clock, data, full=full)
    except ImportRejected:
        assert raw_tables(seeded) == before
    else:
        after = raw_tables(seeded)
        assert len(after["audit_events"]) == len(before["audit_events"]) + 1
        assert summary.rows >= 1


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(st.sampled_from(["D1", "d1", "D2", "D3", "E4"]), st.booleans(), st.booleans()),
        min_size=1,
        max_size=10,
    )
)
def test_every_duplicate_is_reported_with_its_first_line(
    rows: list[tuple[str, bool, bool]],
) -> None:
    """Whatever else is wrong with a line (an empty forename or form), a later line with the
    same admission number is reported naming the first line that had it."""
    lines = [",".join(HEADER)]
    for admission, empty_forename, empty_form in rows:
        lines.append(
            f"{admission},{'' if empty_forename else 'Amy'},Ng,{'' if empty_form else '7A'},7"
        )
    first: dict[str, int] = {}
    expected: list[str] = []
    for number, (admission, empty_forename, empty_form) in enumerate(rows, start=2):
        if empty_forename:
            expected.append(f"line {number}: the forename is empty")
        if empty_form:
            expected.append(f"line {number}: the form is empty")
        if admission.upper() in first:
            expected.append(
                f"line {number}: admission number {admission} is also on line "
                f"{first[admission.upper()]}"
            )
        else:
            first[admission.upper()] = number
    if not expected:
        assert len(roster.parse_roster(physical(lines)).rows) == len(rows)
        return
    assert rejection(physical(lines)).problems == expected


@pytest.fixture(scope="module")
def template_home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="roster-template-"))
    make_instance(root / "instance").close()
    yield root / "instance"
    shutil.rmtree(root, ignore_errors=True)


NAME_CHARS = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn"), blacklist_characters="\u2028\u2029"
)


def _name() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(NAME_CHARS, min_size=1, max_size=30),
        st.sampled_from(["O'Brien", "Smith, Jr", 'The "Rock"', "Zoe\u0308", "  spaced  "]),
    ).filter(lambda name: unicodedata.normalize("NFC", name.strip()) != "")


def _year() -> st.SearchStrategy[tuple[str, str | None]]:
    """(as written in the file, as stored)."""
    numbered = st.integers(1, 13).flatmap(
        lambda n: st.sampled_from([str(n), f"Year {n}", f"Y{n}", f"0{n}", f"yr{n}"]).map(
            lambda text: (text, str(n))
        )
    )
    return st.one_of(
        numbered, st.just(("", None)), st.sampled_from([("R", "R"), ("Reception", "R")])
    )


ROW = st.tuples(
    _name(),
    st.one_of(st.none(), _name()),
    _name(),
    st.one_of(st.from_regex(r"\A(1[0-3]|[1-9])[A-Z]{1,3}\Z"), _name()),
    _year(),
    st.lists(st.tuples(_name(), st.one_of(st.just(""), _name())), max_size=2),
)
ROSTER = st.lists(
    st.tuples(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9/_-]{0,19}\Z"), ROW),
    min_size=1,
    max_size=8,
    unique_by=lambda item: item[0].upper(),
)


def _clean(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


@settings(max_examples=40, deadline=None)
@given(
    ROSTER,
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_random_valid_rosters_import_exactly(
    template_home: Path, rows: list[Any], newline: str, bom: bool, quoting: int
) -> None:
    """Whatever the names, the database then holds exactly the file's pupils, and the same
    file imported again changes nothing."""
    header = ["Adno", "Legal Forename", "Preferred Forename", "Legal Surname", "Reg Group", "Year"]
    header += [
        "Contact 1 Name",
        "Contact 1 Relationship",
        "Contact 2 Name",
        "Contact 2 Relationship",
    ]
    records, expected = [], {}
    for admission, (first, preferred, last, form, (year_text, year), contacts) in rows:
        padded = contacts + [("", "")] * (2 - len(contacts))
        records.append(
            [admission, first, preferred or "", last, form, year_text]
            + [value for pair in padded for value in pair]
        )
        expected[admission] = {
            "forename": _clean(first),
            "preferred_forename": _clean(preferred) if preferred else None,
            "surname": _clean(last),
            "form": _clean(form),
            "year": year,
            "contacts": [
                (position, _clean(name), _clean(relation))
                for position, (name, relation) in enumerate(contacts, start=1)
            ],
            "status": PupilStatus.ACTIVE,
        }
    data = make_csv(header, records, newline=newline, bom=bom, quoting=quoting)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "instance"
        shutil.copytree(template_home, home)
        instance = Instance.open(home, env={})
        try:
            clock = ManualClock()
            summary = run_import(instance, clock, data)
            assert summary.added == len(rows)
            stored = {
                number: {key: value for key, value in pupil.items() if key not in ("id", "left_at")}
                for number, pupil in pupils_in_db(instance).items()
            }
            assert stored == expected
            again = run_import(instance, clock, data)
            assert (again.unchanged, again.added, again.updated, again.rejoined, again.left) == (
                len(rows),
                0,
                0,
                0,
                0,
            )
        finally:
            instance.close()
