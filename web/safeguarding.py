"""Safeguarding: any member of staff can make an urgent referral (hold a device for the DSL);
only the DSL and admin see the reasons, lift a hold, or hand a device to the police."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from kiosk.errors import LockerError
from kiosk.models import CustodyRecord, CustodyState

from . import actions, core, queries

log = logging.getLogger(__name__)

bp = Blueprint("safeguarding", __name__)


@bp.get("/safeguarding")
def index() -> Any:
    """Devices under hold (with reasons), and recently closed holds."""
    with core.reader() as session:
        held = queries.custody_items(
            session,
            queries.custody_query({CustodyState.SAFEGUARDING_HOLD}).order_by(CustodyRecord.held_at),
        )
        closed = queries.custody_items(
            session,
            queries.custody_query()
            .where(
                CustodyRecord.ever_held.is_(True),
                CustodyRecord.state != CustodyState.SAFEGUARDING_HOLD,
            )
            .order_by(CustodyRecord.updated_at.desc())
            .limit(20),
        )
    return render_template("safeguarding/index.html", held=held, closed=closed)


@bp.route("/refer", methods=["GET", "POST"])
def refer() -> Any:
    """An urgent referral by admission number: every device of the pupil the school holds
    goes under hold."""
    form = {key: value[:1000] for key, value in request.values.items() if key != "csrf_token"}
    if request.method == "GET":
        return render_template("safeguarding/refer.html", form=form)
    try:
        with core.writer() as session:
            records = actions.refer(
                session, form.get("admission_number", ""), form.get("reason", "")
            )
            count = len(records)
    except LockerError as error:
        page = render_template("safeguarding/refer.html", form=form, error=str(error))
        return page, core.status_for(error)
    flash(
        f"Referred to the DSL: {count} device{'s' if count != 1 else ''} now held. "
        "Do not look at the device.",
        "ok",
    )
    return redirect(url_for("safeguarding.refer"), 303)


@bp.post("/custody/<id:custody_id>/hold")
def hold(custody_id: int) -> Any:
    with core.writer() as session:
        actions.hold(session, custody_id, request.form.get("reason", "")[:2000])
    flash("Held for the DSL. Nobody may release it; do not look at the device.", "ok")
    return redirect(core.safe_back(url_for("safeguarding.refer")), 303)


@bp.post("/safeguarding/<id:custody_id>/lift")
def lift(custody_id: int) -> Any:
    with core.writer() as session:
        actions.lift_hold(session, custody_id, request.form.get("note", "")[:2000])
    flash("Hold lifted: the device is an ordinary confiscation again.", "ok")
    return redirect(url_for("safeguarding.index"), 303)


@bp.post("/safeguarding/<id:custody_id>/police")
def police(custody_id: int) -> Any:
    with core.writer() as session:
        outcome = actions.hand_to_police(
            session, custody_id, request.form.get("reference", "")[:200]
        )
        command_id = outcome.command.id if outcome.command else None
    flash("Recorded as handed to the police.", "ok")
    if command_id is not None:
        return redirect(url_for("commands.show", command_id=command_id), 303)
    return redirect(url_for("safeguarding.index"), 303)
