"""Exemptions: written agreements that let a pupil keep a device. An admin approves and
revokes them; the office and the DSL may look."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import or_, select

from kiosk.errors import LockerError
from kiosk.models import Exemption, ExemptionKind, Pupil

from . import actions, core

log = logging.getLogger(__name__)

bp = Blueprint("exemptions", __name__)


def _page(form: dict[str, str], error: str | None = None) -> str:
    today = core.today()
    with core.reader() as session:
        rows = session.execute(
            select(Exemption, Pupil)
            .join(Pupil, Pupil.id == Exemption.pupil_id)
            .where(
                or_(
                    Exemption.ends_on.is_(None),
                    Exemption.ends_on >= today - timedelta(days=30),
                    Exemption.revoked_at.is_not(None),
                )
            )
            .order_by(Exemption.starts_on.desc(), Exemption.id.desc())
            .limit(500)
        ).all()
    current, upcoming, ended = [], [], []
    for exemption, pupil in rows:
        if exemption.revoked_at is not None or (
            exemption.ends_on is not None and exemption.ends_on < today
        ):
            ended.append((exemption, pupil))
        elif exemption.starts_on > today:
            upcoming.append((exemption, pupil))
        else:
            current.append((exemption, pupil))
    return render_template(
        "exemptions.html",
        current=current,
        upcoming=upcoming,
        ended=ended[:50],
        kinds=list(ExemptionKind),
        today=today,
        form=form,
        error=error,
        show_notes=core.sees_restricted(),
    )


@bp.get("/exemptions")
def index() -> Any:
    return _page({})


@bp.post("/exemptions")
def grant() -> Any:
    """Approve an exemption (admin): pupil, kind, dates or review date, agreement."""
    form = {key: value[:600] for key, value in request.form.items() if key != "csrf_token"}
    try:
        starts_on = core.parse_date(form.get("starts_on"), "starts on") or core.today()
        with core.writer() as session:
            exemption = actions.grant_exemption(
                session,
                admission_number=form.get("admission_number", ""),
                kind=form.get("kind", ""),
                starts_on=starts_on,
                ends_on=core.parse_date(form.get("ends_on"), "ends on"),
                review_on=core.parse_date(form.get("review_on"), "review on"),
                agreement_reference=form.get("agreement_reference", ""),
                notes=form.get("notes", ""),
            )
            exemption_id = exemption.id
    except LockerError as error:
        return _page(form, str(error)), core.status_for(error)
    flash(f"Exemption {exemption_id} approved.", "ok")
    return redirect(url_for("exemptions.index"), 303)


@bp.post("/exemptions/<id:exemption_id>/revoke")
def revoke(exemption_id: int) -> Any:
    with core.writer() as session:
        actions.revoke_exemption(session, exemption_id, request.form.get("reason", "")[:600])
    flash(f"Exemption {exemption_id} revoked.", "ok")
    return redirect(url_for("exemptions.index"), 303)
