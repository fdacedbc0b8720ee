"""Commands to a kiosk from the dashboard: open a compartment, open all; and the page that
follows a command until the kiosk reports its result."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from kiosk import commands as kiosk_commands
from kiosk.errors import ValidationError
from kiosk.models import Kiosk

from . import actions, core

log = logging.getLogger(__name__)

bp = Blueprint("commands", __name__)


@bp.get("/commands/<id:command_id>")
def show(command_id: int) -> Any:
    with core.reader() as session:
        command = kiosk_commands.get(session, command_id)
        kiosk = session.execute(select(Kiosk).where(Kiosk.id == command.kiosk_id)).scalar_one()
    return render_template("command.html", command=command, kiosk=kiosk)


@bp.post("/kiosks/<kiosk>/open")
def open_compartment(kiosk: str) -> Any:
    number = core.parse_int(request.form.get("compartment"), "the compartment", minimum=1)
    with core.writer() as session:
        command = actions.open_compartment(session, kiosk, number)
        command_id = command.id
    flash(f"Asked the kiosk to open compartment {number}.", "ok")
    return redirect(url_for("commands.show", command_id=command_id), 303)


@bp.post("/kiosks/<kiosk>/open-all")
def open_all(kiosk: str) -> Any:
    if request.form.get("confirm") != "yes":
        raise ValidationError("tick the box to confirm that every door of the cabinet opens")
    with core.writer() as session:
        command = actions.open_all(session, kiosk)
        command_id = command.id
    flash("Asked the kiosk to open every compartment (one after another).", "ok")
    return redirect(url_for("commands.show", command_id=command_id), 303)
