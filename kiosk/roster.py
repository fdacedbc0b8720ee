"""Roster import from a school MIS export (SIMS, Arbor, Bromcom, or a hand-made CSV).

The file is UTF-8 (with or without the BOM Excel writes), comma-separated, with a header
row. Columns are matched case-insensitively after folding spaces and punctuation, with the
common MIS names accepted as aliases (SIMS ``Adno``, ``Reg Group``; Arbor ``First Name``,
``Registration Form``...). Columns we do not need (date of birth, gender, ...) are ignored
and never stored.

An import is all-or-nothing: the whole file is read and checked first, every bad line is
reported by its line number, and nothing is written unless every line is good. Pupils are
matched by admission number; a full import (the default) marks pupils missing from the file
as left (their history stays), and refuses to mark a large share of the school as left
unless told that is intended.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.errors import ImportRejected
from kiosk.models import Contact, CustodyRecord, CustodyState, Pupil, PupilStatus

CANONICAL = (
    "admission_number",
    "forename",
    "preferred_forename",
    "surname",
    "year",
    "form",
    "contact1_name",
    "contact1_relationship",
    "contact2_name",
    "contact2_relationship",
)
REQUIRED = ("admission_number", "forename", "surname", "form")
MAX_LENGTH = {
    "admission_number": 20,
    "forename": 100,
    "preferred_forename": 100,
    "surname": 100,
    "year": 20,
    "form": 40,
    "contact1_name": 120,
    "contact1_relationship": 60,
    "contact2_name": 120,
    "contact2_relationship": 60,
}
LABELS = {
    "admission_number": "admission number",
    "forename": "forename",
    "preferred_forename": "preferred forename",
    "surname": "surname",
    "year": "year",
    "form": "form",
    "contact1_name": "contact 1 name",
    "contact1_relationship": "contact 1 relationship",
    "contact2_name": "contact 2 name",
    "contact2_relationship": "contact 2 relationship",
}

# Header names after folding (lower case, runs of other characters -> "_").
ALIASES: dict[str, tuple[str, ...]] = {
    "admission_number": (
        "admission_number",
        "adno",
        "adm_no",
        "admission_no",
        "admissionno",
        "admission_num",
        "admissions_number",
        "adm_number",
        "pupil_admission_number",
        "student_admission_number",
        "admission",
    ),
    "forename": (
        "forename",
        "legal_forename",
        "first_name",
        "firstname",
        "given_name",
        "legal_first_name",
        "pupil_forename",
        "student_first_name",
    ),
    "preferred_forename": (
        "preferred_forename",
        "preferred_first_name",
        "preferred_name",
        "known_as",
        "chosen_name",
        "chosen_forename",
    ),
    "surname": (
        "surname",
        "legal_surname",
        "last_name",
        "lastname",
        "family_name",
        "legal_last_name",
        "pupil_surname",
        "student_last_name",
    ),
    "year": (
        "year",
        "year_group",
        "nc_year",
        "national_curriculum_year",
        "yr",
        "year_taught_in",
        "curriculum_year",
    ),
    "form": (
        "form",
        "reg_group",
        "reg",
        "registration_group",
        "registration_form",
        "form_group",
        "tutor_group",
        "reg_form",
        "registration_class",
        "class",
        "form_name",
    ),
    "contact1_name": (
        "contact1_name",
        "contact_1_name",
        "contact_1",
        "contact1",
        "primary_contact",
        "primary_contact_name",
        "priority_1_contact",
        "parent_1_name",
        "carer_1_name",
        "parent_carer_1",
        "first_contact_name",
    ),
    "contact1_relationship": (
        "contact1_relationship",
        "contact_1_relationship",
        "primary_contact_relationship",
        "relationship_1",
        "priority_1_relationship",
        "parent_1_relationship",
        "contact1_relation",
        "first_contact_relationship",
    ),
    "contact2_name": (
        "contact2_name",
        "contact_2_name",
        "contact_2",
        "contact2",
        "secondary_contact",
        "secondary_contact_name",
        "priority_2_contact",
        "parent_2_name",
        "carer_2_name",
        "parent_carer_2",
        "second_contact_name",
    ),
    "contact2_relationship": (
        "contact2_relationship",
        "contact_2_relationship",
        "secondary_contact_relationship",
        "relationship_2",
        "priority_2_relationship",
        "parent_2_relationship",
        "contact2_relation",
        "second_contact_relationship",
    ),
}
_ALIAS_TO_FIELD = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
_ADMISSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_-]{0,19}$")
_YEAR = re.compile(r"^(?:year|yr|y)\s*(\d{1,2})$", re.IGNORECASE)
# Zero-width (non-)joiners are part of how some names are written (Persian, Urdu, Hindi).
_JOINERS = frozenset({"\u200c", "\u200d"})
MASS_LEAVE_SHARE = 0.25
MASS_LEAVE_MINIMUM = 10
MAX_PROBLEMS_SHOWN = 200


def fold_header(name: str) -> str:
    name = unicodedata.normalize("NFKC", name).replace("\ufeff", "").strip().lower()
    return re.sub(r"[^0-9a-z]+", "_", name).strip("_")


def normalise_year(value: str) -> str:
    value = value.strip()
    match = _YEAR.match(value)
    if match:
        return str(int(match[1]))
    if value.lower() in {"r", "rec", "reception"}:
        return "R"
    if value.isdecimal():  # not isdigit(): "²" is a digit but not a number int() reads
        return str(int(value))
    return value


@dataclass(frozen=True)
class RosterRow:
    line: int
    admission_number: str
    forename: str
    preferred_forename: str | None
    surname: str
    year: str | None
    form: str
    contacts: tuple[tuple[str, str], ...]  # (name, relationship), in priority order


@dataclass
class ParsedRoster:
    rows: list[RosterRow]
    ignored_columns: list[str]
    sha256: str


@dataclass(frozen=True)
class LeftInCustody:
    """A pupil the import marked as left while a device of theirs is in the school's care
    (in a locker, confiscated, or under safeguarding hold): the office must act on it."""

    admission_number: str
    name: str
    form: str
    record_id: int
    state: CustodyState
    where: str  # "compartment 7 of kiosk main", or "office"

    def describe(self) -> str:
        return (
            f"{self.admission_number} {self.name} ({self.form}): custody record "
            f"{self.record_id} is {self.state.value}, {self.where}"
        )


@dataclass
class ImportSummary:
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejoined: int = 0
    left: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    #: Pupils marked as left whose device is still in custody, one entry per record.
    left_in_custody: list[LeftInCustody] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """What the office must act on after this import, one line each."""
        if not self.left_in_custody:
            return []
        pupils = len({entry.admission_number for entry in self.left_in_custody})
        return [
            f"warning: {pupils} pupil{'s' if pupils != 1 else ''} marked as left still "
            f"{'have' if pupils != 1 else 'has'} a device in the school's care; their card no "
            "longer works at the kiosk, so the office must return or release each device "
            "(or re-import them if they are still on roll):",
            *(f"  {entry.describe()}" for entry in self.left_in_custody),
        ]

    def describe(self) -> str:
        parts = [
            f"{self.rows} pupils in the file",
            f"{self.added} added",
            f"{self.updated} updated",
            f"{self.unchanged} unchanged",
        ]
        if self.rejoined:
            parts.append(f"{self.rejoined} back on roll")
        parts.append(f"{self.left} marked as left")
        return ", ".join(parts)


def _decode(data: bytes) -> str:
    problems: list[str] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                f"line {number}: not UTF-8 (byte 0x{line[exc.start]:02X} at column {exc.start + 1})"
            )
    if problems:
        raise ImportRejected(
            "the roster is not UTF-8 text: save it as 'CSV UTF-8' and import it again",
            problems[:MAX_PROBLEMS_SHOWN],
        )
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


def _clean(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


def parse_roster(data: bytes) -> ParsedRoster:
    """Read and check a whole roster file; ImportRejected lists every bad line."""
    text = _decode(data)
    if "\x00" in text:
        nul_lines = [
            f"line {number}: a NUL byte"
            for number, physical in enumerate(text.split("\n"), start=1)
            if "\x00" in physical
        ]
        raise ImportRejected("the roster is not a text file", nul_lines[:MAX_PROBLEMS_SHOWN])
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[str] = []
    header: list[str] | None = []
    header_line = 1
    try:
        while header is not None and not any(cell.strip() for cell in header):
            header_line = reader.line_num + 1  # blank lines before the header are skipped
            header = next(reader, None)
    except csv.Error as exc:
        raise ImportRejected(
            "the roster's header row is malformed", [f"line {header_line}: {exc}"]
        ) from None
    if header is None:
        raise ImportRejected("the roster is empty", ["line 1: no header row"])

    columns: dict[str, int] = {}
    ignored: list[str] = []
    for index, cell in enumerate(header):
        name = _ALIAS_TO_FIELD.get(fold_header(cell))
        if name is None:
            if cell.strip():
                ignored.append(cell.strip())
            continue
        if name in columns:
            problems.append(
                f"line {header_line}: columns {header[columns[name]].strip()!r} and "
                f"{cell.strip()!r} both give the {LABELS[name]}"
            )
            continue
        columns[name] = index
    for name in REQUIRED:
        if name not in columns:
            examples = ", ".join(repr(alias) for alias in ALIASES[name][:4])
            problems.append(
                f"line {header_line}: no column for the {LABELS[name]} (e.g. {examples})"
            )
    if problems:
        raise ImportRejected("the roster's header row is not usable", problems)

    rows: list[RosterRow] = []
    seen: dict[str, int] = {}
    width = len(header)
    line = reader.line_num + 1
    while True:
        start = line
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # Report it and carry on with the next line, so every bad line is listed.
            problems.append(f"line {start}: {exc} (check the quotes on this line)")
            if reader.line_num + 1 <= start:
                break  # nothing was consumed: stop rather than loop
            line = reader.line_num + 1
            continue
        line = reader.line_num + 1
        if not record or not any(cell.strip() for cell in record):
            continue  # blank line
        if len(record) != width:
            problems.append(
                f"line {start}: {len(record)} fields but the header has {width} "
                "(a comma inside a name needs the field in double quotes)"
            )
            continue
        row_problems, row = _check_row(start, record, columns, seen)
        problems.extend(row_problems)
        if row is not None:
            rows.append(row)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more problems")
        raise ImportRejected(
            f"the roster was not imported: {len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''} (nothing was changed)",
            shown,
        )
    if not rows:
        raise ImportRejected(
            "the roster has no pupils", [f"line {header_line + 1}: no pupil rows after the header"]
        )
    return ParsedRoster(rows, ignored, hashlib.sha256(data).hexdigest())


def _check_row(
    line: int, record: list[str], columns: dict[str, int], seen: dict[str, int]
) -> tuple[list[str], RosterRow | None]:
    problems: list[str] = []
    values: dict[str, str] = {}
    for name in CANONICAL:
        value = _clean(record[columns[name]]) if name in columns else ""
        if any(
            unicodedata.category(char) in {"Cc", "Cf"} and char not in _JOINERS for char in value
        ):
            problems.append(f"line {line}: the {LABELS[name]} contains control characters")
        if len(value) > MAX_LENGTH[name]:
            problems.append(
                f"line {line}: the {LABELS[name]} is longer than {MAX_LENGTH[name]} characters"
            )
        values[name] = value
    for name in REQUIRED:
        if not values[name]:
            problems.append(f"line {line}: the {LABELS[name]} is empty")
    admission = values["admission_number"]
    if admission and not _ADMISSION.match(admission):
        problems.append(
            f"line {line}: admission number {admission[:30]!r} may only hold letters, digits, "
            "'/', '-' and '_'"
        )
    elif admission and admission.upper() in seen:
        problems.append(
            f"line {line}: admission number {admission} is also on line {seen[admission.upper()]}"
        )
    elif admission:
        # Seen even when this line has other problems: a later line with the same number is
        # a duplicate to report as well, not something to find on the next attempt.
        seen[admission.upper()] = line
    contacts: list[tuple[str, str]] = []
    for number in (1, 2):
        name, relation = values[f"contact{number}_name"], values[f"contact{number}_relationship"]
        if relation and not name:
            problems.append(f"line {line}: contact {number} has a relationship but no name")
        elif name:
            contacts.append((name, relation))
    if problems:
        return problems, None
    return [], RosterRow(
        line=line,
        admission_number=admission,
        forename=values["forename"],
        preferred_forename=values["preferred_forename"] or None,
        surname=values["surname"],
        year=normalise_year(values["year"]) or None,
        form=values["form"],
        contacts=tuple(contacts),
    )


def import_roster(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    roster: ParsedRoster,
    *,
    full: bool = True,
    allow_mass_leave: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Upsert the parsed roster in the caller's transaction (all of it or, on any error,
    none of it: the caller's unit of work rolls back)."""
    now = clock.now()
    summary = ImportSummary(rows=len(roster.rows), ignored_columns=list(roster.ignored_columns))
    existing = {
        pupil.admission_number.upper(): pupil
        for pupil in session.execute(select(Pupil).options(selectinload(Pupil.contacts))).scalars()
    }
    in_file = {row.admission_number.upper() for row in roster.rows}
    to_leave = [
        pupil
        for key, pupil in existing.items()
        if full and key not in in_file and pupil.status is PupilStatus.ACTIVE
    ]
    on_roll = sum(1 for pupil in existing.values() if pupil.status is PupilStatus.ACTIVE)
    if (
        to_leave
        and not allow_mass_leave
        and len(to_leave) >= MASS_LEAVE_MINIMUM
        and len(to_leave) > on_roll * MASS_LEAVE_SHARE
    ):
        raise ImportRejected(
            f"this import would mark {len(to_leave)} of {on_roll} pupils as left; if the file "
            "really is the whole school, run it again with --allow-mass-leave, or use "
            "--partial to add and update pupils only",
            [],
        )

    for done, row in enumerate(roster.rows, start=1):
        pupil = existing.get(row.admission_number.upper())
        if pupil is None:
            pupil = Pupil(
                admission_number=row.admission_number,
                forename=row.forename,
                preferred_forename=row.preferred_forename,
                surname=row.surname,
                year_group=row.year,
                form=row.form,
                status=PupilStatus.ACTIVE,
                created_at=now,
                updated_at=now,
            )
            pupil.contacts = [
                Contact(position=position, name=name, relation=relation)
                for position, (name, relation) in enumerate(row.contacts, start=1)
            ]
            session.add(pupil)
            summary.added += 1
        else:
            changed = _update(session, pupil, row, now)
            if pupil.status is PupilStatus.LEFT:
                pupil.status, pupil.left_at, pupil.updated_at = PupilStatus.ACTIVE, None, now
                summary.rejoined += 1
            elif changed:
                summary.updated += 1
            else:
                summary.unchanged += 1
        if progress is not None:
            progress(done)

    for pupil in to_leave:
        pupil.status, pupil.left_at, pupil.updated_at = PupilStatus.LEFT, now, now
    summary.left = len(to_leave)
    summary.left_in_custody = _in_custody(session, to_leave)
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "roster.imported",
        details={
            "file_sha256": roster.sha256,
            "full": full,
            "rows": summary.rows,
            "added": summary.added,
            "updated": summary.updated,
            "unchanged": summary.unchanged,
            "rejoined": summary.rejoined,
            "left": summary.left,
            "ignored_columns": summary.ignored_columns,
            "left_in_custody": [
                {
                    "pupil": entry.admission_number,
                    "record": entry.record_id,
                    "state": entry.state.value,
                }
                for entry in summary.left_in_custody
            ],
        },
    )
    return summary


#: Custody states in which a device is in the school's care and must be handed back (or
#: released, or passed to the police) by someone: a pupil who has left cannot use the kiosk.
IN_CUSTODY_STATES = (
    CustodyState.PENDING_DEPOSIT,
    CustodyState.IN_LOCKER,
    CustodyState.CONFISCATED,
    CustodyState.SAFEGUARDING_HOLD,
)


def _in_custody(session: Session, pupils: list[Pupil]) -> list[LeftInCustody]:
    if not pupils:
        return []
    by_id = {pupil.id: pupil for pupil in pupils}
    found: list[LeftInCustody] = []
    ids = list(by_id)
    for chunk in range(0, len(ids), 500):  # stay below the bound-parameter limit
        records = session.execute(
            select(CustodyRecord)
            .where(
                CustodyRecord.pupil_id.in_(ids[chunk : chunk + 500]),
                CustodyRecord.state.in_(IN_CUSTODY_STATES),
            )
            .options(selectinload(CustodyRecord.compartment))
        ).scalars()
        for record in records:
            pupil = by_id[record.pupil_id]
            compartment = record.compartment
            where = (
                f"compartment {compartment.number} of kiosk {compartment.kiosk.name}"
                if compartment is not None
                else "office"
            )
            found.append(
                LeftInCustody(
                    admission_number=pupil.admission_number,
                    name=f"{pupil.forename} {pupil.surname}",
                    form=pupil.form,
                    record_id=record.id,
                    state=record.state,
                    where=where,
                )
            )
    return sorted(found, key=lambda entry: (entry.admission_number.upper(), entry.record_id))


def _update(session: Session, pupil: Pupil, row: RosterRow, now: object) -> bool:
    changed = False
    for attribute, value in (
        ("admission_number", row.admission_number),
        ("forename", row.forename),
        ("preferred_forename", row.preferred_forename),
        ("surname", row.surname),
        ("year_group", row.year),
        ("form", row.form),
    ):
        if getattr(pupil, attribute) != value:
            setattr(pupil, attribute, value)
            changed = True
    if _sync_contacts(session, pupil, list(row.contacts)):
        changed = True
    if changed:
        pupil.updated_at = now  # type: ignore[assignment]
    return changed


def _sync_contacts(session: Session, pupil: Pupil, wanted: list[tuple[str, str]]) -> bool:
    """Make the pupil's contacts ``wanted`` (in priority order).

    A contact row is a person: one who stays in the file keeps their row (and id) even when
    their position or relationship changes, and one who is no longer listed is deleted, never
    renamed into somebody else (a custody record may name the contact a device was released
    to).
    """
    if [(contact.name, contact.relation) for contact in pupil.contacts] == wanted:
        return False
    available = list(pupil.contacts)
    kept: list[tuple[int, Contact, str]] = []
    new: list[tuple[int, str, str]] = []
    for position, (name, relation) in enumerate(wanted, start=1):
        match = next((contact for contact in available if contact.name == name), None)
        if match is None:
            new.append((position, name, relation))
        else:
            available.remove(match)
            kept.append((position, match, relation))
    for contact in available:
        pupil.contacts.remove(contact)
    if any(contact.position != position for position, contact, _ in kept):
        # Step the kept contacts out of the way first: positions are unique per pupil.
        offset = max([contact.position for contact in pupil.contacts] + [len(wanted)]) + 1
        for contact in pupil.contacts:
            contact.position += offset
    session.flush()
    for position, contact, relation in kept:
        contact.position, contact.relation = position, relation
    for position, name, relation in new:
        pupil.contacts.append(Contact(position=position, name=name, relation=relation))
    pupil.contacts.sort(key=lambda contact: contact.position)
    return True
