"""The exam check: for the candidates of a sitting (chosen by form or year, typed, or
uploaded as CSV), whose device is not in a locker and who is not exempt.

JCQ rules: possession alone can disqualify a candidate, so "exempt" is listed separately
for the exams officer to check against the access arrangements, not as "fine".
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import select

from kiosk import exemptions
from kiosk.errors import ValidationError
from kiosk.models import ACTIVE_STATES, CustodyRecord, CustodyState, Pupil, PupilStatus

from . import core, queries

log = logging.getLogger(__name__)

bp = Blueprint("exams", __name__)

HEADER_NAMES = {"admission_number", "admissionnumber", "admission_no", "adno", "adm_no"}
MAX_CANDIDATES = 5000
PROBLEM, CHECK, EXEMPT, SAFE = "not in a locker", "check", "exempt", "in school custody"


@dataclass(frozen=True)
class Candidate:
    admission_number: str
    name: str
    form: str
    outcome: str  # PROBLEM, CHECK, EXEMPT or SAFE
    detail: str


def _fold(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def numbers_from_csv(data: bytes) -> list[str]:
    """Admission numbers from an uploaded CSV: the admission-number column when the header
    names one, else the first column (a header row of words is skipped)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("the file is not UTF-8 text (save it as CSV UTF-8)") from None
    if "\x00" in text:
        raise ValidationError("the file is not a text file (it holds a NUL byte): save it as CSV")
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ValidationError(f"the file is not a readable CSV: {exc}") from None
    if not rows:
        return []
    column = 0
    header = [_fold(cell) for cell in rows[0]]
    named = [i for i, name in enumerate(header) if name in HEADER_NAMES]
    if named:
        column, rows = named[0], rows[1:]
    elif rows[0] and not any(ch.isdigit() for ch in rows[0][0]):
        rows = rows[1:]
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


def _numbers_from_text(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,;]+", text) if item]


def check(session: Any, numbers: list[str]) -> tuple[list[Candidate], list[str]]:
    """Each candidate's outcome, problems first; and the numbers that match no pupil."""
    wanted = list(dict.fromkeys(number[:20] for number in numbers))[:MAX_CANDIDATES]
    pupils = list(
        session.execute(select(Pupil).where(Pupil.admission_number.in_(wanted))).scalars()
    )
    found = {pupil.admission_number for pupil in pupils}
    unknown = [number for number in wanted if number not in found]
    ids = [pupil.id for pupil in pupils]
    records: dict[int, list[CustodyState]] = {}
    for pupil_id, state in session.execute(
        select(CustodyRecord.pupil_id, CustodyRecord.state).where(
            CustodyRecord.pupil_id.in_(ids), CustodyRecord.state.in_(ACTIVE_STATES)
        )
    ):
        records.setdefault(pupil_id, []).append(state)
    exempt = {e.pupil_id: e for e in exemptions.active_on(session, core.today(), ids)}
    candidates = []
    for pupil in pupils:
        states = records.get(pupil.id, [])
        if CustodyState.IN_LOCKER in states:
            outcome, detail = SAFE, "in a locker"
        elif CustodyState.CONFISCATED in states or CustodyState.SAFEGUARDING_HOLD in states:
            outcome, detail = SAFE, "confiscated: held by the school"
        elif CustodyState.PENDING_DEPOSIT in states:
            outcome, detail = CHECK, "being deposited: the door has not closed yet"
        elif pupil.id in exempt:
            kind = exempt[pupil.id].kind.value.replace("_", " ")
            outcome, detail = EXEMPT, f"exempt ({kind}): check the exam access arrangements"
        else:
            outcome, detail = PROBLEM, "no device recorded in a locker today"
        if pupil.status is not PupilStatus.ACTIVE:
            detail += " (no longer on roll)"
        candidates.append(
            Candidate(
                pupil.admission_number,
                queries.full_name(pupil.forename, pupil.preferred_forename, pupil.surname),
                pupil.form,
                outcome,
                detail,
            )
        )
    order = {PROBLEM: 0, CHECK: 1, EXEMPT: 2, SAFE: 3}
    candidates.sort(key=lambda c: (order[c.outcome], c.form, c.name.lower()))
    return candidates, unknown


@bp.route("/exams", methods=["GET", "POST"])
def index() -> Any:
    """Choose forms or a year group, type admission numbers, or upload a CSV."""
    values = request.values
    chosen_forms = [form[:40] for form in values.getlist("form") if form]
    year = (values.get("year") or "").strip()[:20]
    typed = (values.get("numbers") or "")[:100_000]
    upload = request.files.get("candidates")
    asked = bool(chosen_forms or year or typed.strip() or (upload and upload.filename))
    with core.reader() as session:
        forms = queries.forms(session)
        years = sorted(
            {
                y
                for y in session.execute(
                    select(Pupil.year_group).where(Pupil.status == PupilStatus.ACTIVE).distinct()
                ).scalars()
                if y
            },
            key=lambda y: (len(y), y),
        )
        numbers = _numbers_from_text(typed)
        if upload and upload.filename:
            numbers += numbers_from_csv(upload.read())
        if chosen_forms or year:
            query = select(Pupil.admission_number).where(Pupil.status == PupilStatus.ACTIVE)
            if chosen_forms:
                query = query.where(Pupil.form.in_(chosen_forms))
            if year:
                query = query.where(Pupil.year_group == year)
            numbers += list(session.execute(query).scalars())
        candidates, unknown = check(session, numbers) if asked else ([], [])
    counts = {
        name: sum(c.outcome == name for c in candidates) for name in (PROBLEM, CHECK, EXEMPT, SAFE)
    }
    return render_template(
        "exams.html",
        forms=forms,
        years=years,
        chosen_forms=chosen_forms,
        year=year,
        typed=typed,
        asked=asked,
        candidates=candidates,
        unknown=unknown,
        counts=counts,
        outcomes={"problem": PROBLEM, "check": CHECK, "exempt": EXEMPT, "safe": SAFE},
    )
