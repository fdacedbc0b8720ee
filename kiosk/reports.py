"""Reports for the school's monitoring: the daily register by form group.

For a school day, every pupil on roll is one of: ``deposited`` (a device was locked away that
day), ``exempt`` (an exemption in force), or ``nothing recorded``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from kiosk import exemptions
from kiosk.models import CustodyKind, CustodyRecord, Pupil, PupilStatus
from kiosk.policy import Policy

DEPOSITED, EXEMPT, NOTHING = "deposited", "exempt", "nothing recorded"
STATUSES = (DEPOSITED, EXEMPT, NOTHING)


@dataclass(frozen=True)
class RegisterRow:
    form: str
    admission_number: str
    surname: str
    forename: str
    status: str
    confiscated: bool


@dataclass(frozen=True)
class FormSummary:
    form: str
    pupils: int
    deposited: int
    exempt: int
    nothing_recorded: int
    confiscations: int


def form_sort_key(form: str) -> list[object]:
    """Natural order: 7A, 7B, 10A rather than 10A, 7A, 7B."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", form)]


def daily_register(session: Session, policy: Policy, day: date) -> list[RegisterRow]:
    """One row per pupil on roll that day, ordered by form, surname, forename."""
    start, end = policy.day_bounds(day)
    pupils = (
        session.execute(
            select(Pupil).where(
                Pupil.created_at < end,
                or_(Pupil.status == PupilStatus.ACTIVE, Pupil.left_at >= start),
            )
        )
        .scalars()
        .all()
    )
    deposited = set(
        session.execute(
            select(CustodyRecord.pupil_id).where(
                CustodyRecord.kind == CustodyKind.DAILY,
                CustodyRecord.stored_at.is_not(None),
                CustodyRecord.started_at >= start,
                CustodyRecord.started_at < end,
            )
        ).scalars()
    )
    confiscated = set(
        session.execute(
            select(CustodyRecord.pupil_id).where(
                CustodyRecord.confiscated_at >= start, CustodyRecord.confiscated_at < end
            )
        ).scalars()
    )
    exempt = {exemption.pupil_id for exemption in exemptions.active_on(session, day)}
    rows = []
    for pupil in pupils:
        if pupil.id in deposited:
            status = DEPOSITED
        elif pupil.id in exempt:
            status = EXEMPT
        else:
            status = NOTHING
        rows.append(
            RegisterRow(
                pupil.form,
                pupil.admission_number,
                pupil.surname,
                pupil.first_name,
                status,
                pupil.id in confiscated,
            )
        )
    rows.sort(key=lambda r: (form_sort_key(r.form), r.surname.lower(), r.forename.lower()))
    return rows


def summarise(rows: list[RegisterRow]) -> list[FormSummary]:
    forms: dict[str, list[RegisterRow]] = {}
    for row in rows:
        forms.setdefault(row.form, []).append(row)
    return [
        FormSummary(
            form,
            len(members),
            sum(row.status == DEPOSITED for row in members),
            sum(row.status == EXEMPT for row in members),
            sum(row.status == NOTHING for row in members),
            sum(row.confiscated for row in members),
        )
        for form, members in sorted(forms.items(), key=lambda item: form_sort_key(item[0]))
    ]


def _safe_cell(value: object) -> object:
    """Stop a spreadsheet from running a cell as a formula (names come from people)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def register_csv(rows: list[RegisterRow], *, per_pupil: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if per_pupil:
        writer.writerow(
            ["form", "admission_number", "surname", "forename", "status", "confiscated"]
        )
        for row in rows:
            writer.writerow(
                [
                    _safe_cell(value)
                    for value in (
                        row.form,
                        row.admission_number,
                        row.surname,
                        row.forename,
                        row.status,
                        "yes" if row.confiscated else "",
                    )
                ]
            )
    else:
        writer.writerow(
            ["form", "pupils", "deposited", "exempt", "nothing_recorded", "confiscations"]
        )
        for summary in summarise(rows):
            writer.writerow(
                [
                    _safe_cell(summary.form),
                    summary.pupils,
                    summary.deposited,
                    summary.exempt,
                    summary.nothing_recorded,
                    summary.confiscations,
                ]
            )
    return out.getvalue()
