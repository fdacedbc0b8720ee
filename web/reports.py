"""Reports for the policy's monitoring: deposits per day, confiscations per pupil and per
form, repeat confiscations, time to collection, door alarms; charts (inline SVG) and CSV.

Days are grouped by the database's date of the UTC time: in school hours in the UK that is
the local date.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk.errors import NotFound, ValidationError
from kiosk.models import AuditEvent, CustodyKind, CustodyRecord, CustodyState, Pupil
from kiosk.reports import form_sort_key

from . import core

log = logging.getLogger(__name__)

bp = Blueprint("reports", __name__)

# Audit event kinds the kiosk controller writes when a door alarm is raised.
DOOR_ALARM_KINDS = ("door.left_open", "door.forced", "door.alarm")
MAX_DAYS = 400
REPEAT_AT = 2


@dataclass
class Report:
    start: date
    end: date
    deposits: list[tuple[str, int]] = field(default_factory=list)
    confiscations_per_day: list[tuple[str, int]] = field(default_factory=list)
    per_form: list[tuple[str, int]] = field(default_factory=list)
    per_pupil: list[tuple[str, str, str, int]] = field(default_factory=list)
    collection: list[tuple[str, str, float]] = field(default_factory=list)  # pupil, form, hours
    collection_summary: dict[str, Any] = field(default_factory=dict)
    buckets: list[tuple[str, int]] = field(default_factory=list)
    alarms: list[tuple[str, str, str, int]] = field(default_factory=list)  # day, kiosk, kind, n
    alarms_per_day: list[tuple[str, int]] = field(default_factory=list)

    @property
    def repeat(self) -> list[tuple[str, str, str, int]]:
        return [row for row in self.per_pupil if row[3] >= REPEAT_AT]


def _range() -> tuple[date, date]:
    """The report's days from ``from`` and ``to`` (default: the 30 days to today); 400 for
    a bad or out-of-range date (:func:`web.core.parse_date`) or too long a span."""
    today = core.today()
    end = core.parse_date(request.args.get("to"), "to") or today
    start = core.parse_date(request.args.get("from"), "from") or end - timedelta(days=29)
    if start > end:
        raise ValidationError("the report starts after it ends")
    if (end - start).days >= MAX_DAYS:
        raise ValidationError(f"choose at most {MAX_DAYS} days")
    return start, end


def _day(value: Any) -> str:
    return str(value)[:10]


def build(session: Session, start: date, end: date) -> Report:
    policy = core.instance().policy
    low, high = policy.day_bounds(start)[0], policy.day_bounds(end)[1]
    report = Report(start, end)
    day = func.date(CustodyRecord.started_at)
    report.deposits = [
        (_day(d), n)
        for d, n in session.execute(
            select(day, func.count())
            .where(
                CustodyRecord.started_at >= low,
                CustodyRecord.started_at < high,
                CustodyRecord.kind == CustodyKind.DAILY,
                CustodyRecord.stored_at.is_not(None),
            )
            .group_by(day)
            .order_by(day)
        )
    ]
    confiscated = (CustodyRecord.confiscated_at >= low, CustodyRecord.confiscated_at < high)
    cday = func.date(CustodyRecord.confiscated_at)
    report.confiscations_per_day = [
        (_day(d), n)
        for d, n in session.execute(
            select(cday, func.count()).where(*confiscated).group_by(cday).order_by(cday)
        )
    ]
    per_form = session.execute(
        select(Pupil.form, func.count())
        .select_from(CustodyRecord)
        .join(Pupil, Pupil.id == CustodyRecord.pupil_id)
        .where(*confiscated)
        .group_by(Pupil.form)
    ).all()
    report.per_form = sorted(((f, n) for f, n in per_form), key=lambda r: form_sort_key(r[0]))
    count = func.count().label("n")
    report.per_pupil = [
        (adm, f"{preferred or forename} {surname}", form, n)
        for adm, forename, preferred, surname, form, n in session.execute(
            select(
                Pupil.admission_number,
                Pupil.forename,
                Pupil.preferred_forename,
                Pupil.surname,
                Pupil.form,
                count,
            )
            .select_from(CustodyRecord)
            .join(Pupil, Pupil.id == CustodyRecord.pupil_id)
            .where(*confiscated)
            .group_by(Pupil.id)
            .order_by(count.desc(), Pupil.surname)
            .limit(100)
        )
    ]
    released = session.execute(
        select(
            CustodyRecord.confiscated_at,
            CustodyRecord.ended_at,
            Pupil.admission_number,
            Pupil.form,
        )
        .select_from(CustodyRecord)
        .join(Pupil, Pupil.id == CustodyRecord.pupil_id)
        .where(*confiscated, CustodyRecord.state == CustodyState.RELEASED_TO_PARENT)
        .order_by(CustodyRecord.confiscated_at)
    ).all()
    hours = []
    buckets = {"same day": 0, "next day": 0, "2-6 days": 0, "7 days or more": 0}
    for taken, ended, admission, form in released:
        span = (ended - taken).total_seconds() / 3600
        hours.append(span)
        report.collection.append((admission, form, round(span, 2)))
        days = (policy.school_day(ended) - policy.school_day(taken)).days
        key = (
            "same day"
            if days <= 0
            else "next day"
            if days == 1
            else "2-6 days"
            if days < 7
            else "7 days or more"
        )
        buckets[key] += 1
    report.buckets = list(buckets.items())
    report.collection_summary = {
        "released": len(hours),
        "median_h": round(statistics.median(hours), 1) if hours else None,
        "mean_h": round(statistics.fmean(hours), 1) if hours else None,
        "max_h": round(max(hours), 1) if hours else None,
        "awaiting": session.execute(
            select(func.count())
            .select_from(CustodyRecord)
            .where(CustodyRecord.state == CustodyState.CONFISCATED)
        ).scalar_one(),
    }
    aday = func.date(AuditEvent.occurred_at)
    report.alarms = [
        (_day(d), kiosk or "", kind, n)
        for d, kiosk, kind, n in session.execute(
            select(aday, AuditEvent.kiosk, AuditEvent.kind, func.count())
            .where(
                AuditEvent.kind.in_(DOOR_ALARM_KINDS),
                AuditEvent.occurred_at >= low,
                AuditEvent.occurred_at < high,
            )
            .group_by(aday, AuditEvent.kiosk, AuditEvent.kind)
            .order_by(aday)
        )
    ]
    per_day: dict[str, int] = {}
    for d, _kiosk, _kind, n in report.alarms:
        per_day[d] = per_day.get(d, 0) + n
    report.alarms_per_day = sorted(per_day.items())
    return report


def every_day(series: list[tuple[str, int]], start: date, end: date) -> list[tuple[str, int]]:
    """``series`` with a zero for each school day (Monday to Friday) it does not mention."""
    counts = dict(series)
    days = []
    day = start
    while day <= end:
        key = day.isoformat()
        if day.weekday() < 5 or key in counts:
            days.append((key, counts.get(key, 0)))
        day += timedelta(days=1)
    return days


def bars(series: list[tuple[str, int]]) -> dict[str, Any]:
    """Geometry of a vertical bar chart (SVG units), for the template."""
    peak = max((n for _, n in series), default=0) or 1
    width = max(len(series), 1)
    return {
        "peak": peak,
        "width": width,
        "bars": [
            {
                "x": i,
                "h": round(80 * n / peak, 2),
                "y": round(80 - 80 * n / peak, 2),
                "label": d,
                "n": n,
            }
            for i, (d, n) in enumerate(series)
        ],
    }


@bp.get("/reports")
def index() -> Any:
    start, end = _range()
    with core.reader() as session:
        report = build(session, start, end)
    return render_template(
        "reports.html",
        report=report,
        charts={
            "deposits": bars(every_day(report.deposits, start, end)),
            "confiscations": bars(every_day(report.confiscations_per_day, start, end)),
            "alarms": bars(every_day(report.alarms_per_day, start, end)),
        },
        peak_form=max((n for _, n in report.per_form), default=0) or 1,
        peak_bucket=max((n for _, n in report.buckets), default=0) or 1,
        repeat_at=REPEAT_AT,
        door_kinds=DOOR_ALARM_KINDS,
    )


TABLES: dict[str, tuple[list[str], Any]] = {
    "deposits": (["day", "deposits"], lambda r: r.deposits),
    "confiscations_per_day": (["day", "confiscations"], lambda r: r.confiscations_per_day),
    "confiscations_per_form": (["form", "confiscations"], lambda r: r.per_form),
    "confiscations_per_pupil": (
        ["admission_number", "name", "form", "confiscations"],
        lambda r: r.per_pupil,
    ),
    "repeat_confiscations": (
        ["admission_number", "name", "form", "confiscations"],
        lambda r: r.repeat,
    ),
    "time_to_collection": (["admission_number", "form", "hours"], lambda r: r.collection),
    "door_alarms": (["day", "kiosk", "kind", "count"], lambda r: r.alarms),
}


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@bp.get("/reports/<name>.csv", endpoint="csv")
def csv_export(name: str) -> Any:
    if name not in TABLES:
        raise NotFound(f"no report {name!r}; reports are {', '.join(TABLES)}")
    start, end = _range()
    with core.reader() as session:
        report = build(session, start, end)
    header, rows = TABLES[name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows(report):
        writer.writerow([_cell(value) for value in row])
    filename = f"{name}-{start.isoformat()}-{end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
