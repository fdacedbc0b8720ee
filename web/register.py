"""Today's register by form group: deposited, exempt, nothing recorded (kiosk.reports)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, render_template, request

from kiosk import reports

from . import core

log = logging.getLogger(__name__)

bp = Blueprint("register", __name__)


def _day() -> Any:
    return core.parse_date(request.args.get("date"), "date", core.today())


@bp.get("/register")
def index() -> Any:
    """The summary by form group, and one form's pupils when ``form`` is given."""
    day = _day()
    form = request.args.get("form") or None
    with core.reader() as session:
        rows = reports.daily_register(session, core.instance().policy, day)
    summary = reports.summarise(rows)
    pupils = [row for row in rows if row.form == form] if form else []
    totals = {
        "pupils": len(rows),
        "deposited": sum(s.deposited for s in summary),
        "exempt": sum(s.exempt for s in summary),
        "nothing_recorded": sum(s.nothing_recorded for s in summary),
        "confiscations": sum(s.confiscations for s in summary),
    }
    return render_template(
        "register.html",
        day=day,
        today=core.today(),
        form=form,
        summary=summary,
        pupils=pupils,
        totals=totals,
    )


@bp.get("/register.csv")
def csv() -> Any:
    """The register as CSV: by form group, or one row per pupil with ``pupils=1``."""
    day = _day()
    per_pupil = request.args.get("pupils") == "1"
    with core.reader() as session:
        rows = reports.daily_register(session, core.instance().policy, day)
    body = reports.register_csv(rows, per_pupil=per_pupil)
    name = f"register-{day.isoformat()}{'-pupils' if per_pupil else ''}.csv"
    return Response(
        body,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
