"""Pupils and cards: find a pupil, see their contacts, devices and cards, and enrol a card
by tapping it at a kiosk (the kiosk gives the next unknown card to the pupil)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from kiosk import exemptions
from kiosk.errors import NotFound
from kiosk.models import Card, Exemption, Kiosk

from . import actions, core, queries

log = logging.getLogger(__name__)

bp = Blueprint("pupils", __name__)


@bp.get("/pupils")
def index() -> Any:
    text = request.args.get("q", "")[:100]
    form = request.args.get("form") or None
    with core.reader() as session:
        forms = queries.forms(session)
        pupils = queries.search_pupils(session, text, form, limit=200) if (text or form) else []
    return render_template("pupils/index.html", q=text, form=form, forms=forms, pupils=pupils)


@bp.get("/pupils/<admission>")
def show(admission: str) -> Any:
    with core.reader() as session:
        pupil = queries.pupil_by_admission(session, admission)
        if pupil is None:
            raise NotFound(f"no pupil with admission number {admission[:20]!r}")
        contacts = queries.contacts_of(session, pupil.id)
        cards = list(
            session.execute(
                select(Card).where(Card.pupil_id == pupil.id).order_by(Card.enrolled_at.desc())
            ).scalars()
        )
        history = queries.history_for_pupil(session, pupil.id)
        exempt = list(
            session.execute(
                select(Exemption)
                .where(Exemption.pupil_id == pupil.id)
                .order_by(Exemption.starts_on.desc())
            ).scalars()
        )
        in_force = {e.id for e in exemptions.active_on(session, core.today(), [pupil.id])}
        kiosks = session.execute(select(Kiosk.name, Kiosk.label).order_by(Kiosk.name)).all()
    return render_template(
        "pupils/show.html",
        pupil=pupil,
        contacts=contacts,
        cards=cards,
        history=history,
        exemptions=exempt,
        in_force=in_force,
        kiosks=kiosks,
        restricted=core.sees_restricted(),
        notice=queries.HELD_NOTICE,
    )


@bp.post("/pupils/<admission>/enrol-card")
def enrol_card(admission: str) -> Any:
    """Ask a kiosk to give the next unknown card tapped on it to this pupil."""
    with core.writer() as session:
        kiosk = request.form.get("kiosk") or actions.only_kiosk(session, None).name
        command = actions.enrol_next_card(session, admission, kiosk)
        command_id = command.id
    flash("Now tap the new card on the kiosk's reader.", "ok")
    return redirect(url_for("commands.show", command_id=command_id), 303)
