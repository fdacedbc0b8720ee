"""Simulator endpoints and the dashboard's simulator panel: only with simulated hardware.

``create_app(..., simulated=True)`` registers this blueprint (``locker demo``); on real
hardware it does not exist. The endpoints need no sign-in and no CSRF token (JSON only, so
a form on another site cannot post here): each inserts a ``sim.*`` command for the kiosk
(the only one, or ``?kiosk=NAME``) and answers 202 with the command's id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiosk import commands
from kiosk.actors import Actor
from kiosk.cards import format_uid
from kiosk.commands import SIM_FAULTS, CommandKind
from kiosk.demo import demo_uid
from kiosk.errors import NotFound
from kiosk.models import Compartment, Kiosk, Pupil, PupilStatus, User
from kiosk.reports import form_sort_key

from . import actions, core, queries

log = logging.getLogger(__name__)

bp = Blueprint("sim", __name__, url_prefix="/sim")
SIM_ACTOR = Actor.system("sim")
PANEL_PUPILS = 200


def _submit(kind: CommandKind, payload: dict[str, Any]) -> Any:
    instance = core.instance()
    with core.writer() as session:
        kiosk = actions.only_kiosk(session, request.args.get("kiosk"))
        command = commands.submit(
            session,
            SIM_ACTOR,
            core.clock(),
            instance.audit,
            kiosk=kiosk,
            kind=kind,
            payload=payload,
        )
        body = {
            "command": command.id,
            "kiosk": kiosk.name,
            "kind": kind.value,
            "status_url": url_for("sim.command", command_id=command.id),
        }
    return jsonify(body), 202


@bp.post("/tap")
def tap() -> Any:
    """``{"uid": "<hex>"}``: a card is tapped on the kiosk's reader."""
    data = core.json_object()
    return _submit(CommandKind.SIM_TAP, {"uid": data.get("uid")})


@bp.post("/doors/<int:compartment>")
def door(compartment: int) -> Any:
    """``{"open": true|false, "forced"?: true}``: someone opens or shuts a compartment's
    door; ``forced``: pulls it open while it is locked (the kiosk raises the forced-door
    alarm)."""
    data = core.json_object()
    payload = {"compartment": compartment, "open": data.get("open")}
    if "forced" in data:
        payload["forced"] = data.get("forced")
    return _submit(CommandKind.SIM_DOOR, payload)


@bp.post("/faults")
def fault() -> Any:
    """``{"fault": NAME, "on": bool, "compartment"?: N}``: switch a simulated fault."""
    data = core.json_object()
    payload = {"fault": data.get("fault"), "on": data.get("on")}
    if data.get("compartment") is not None:
        payload["compartment"] = data.get("compartment")
    return _submit(CommandKind.SIM_FAULT, payload)


@bp.get("/commands/<id:command_id>")
def command(command_id: int) -> Any:
    """A simulator command's status (for scripts driving the demo)."""
    with core.reader() as session:
        found = commands.get(session, command_id)
        if commands.CommandKind(found.kind) not in commands.SIM_KINDS:
            raise NotFound(f"no simulator command {command_id}")
        view = commands.CommandView.of(found)
    return jsonify(
        {
            "id": view.id,
            "kind": view.kind,
            "status": view.status,
            "result": view.result,
            "error": view.error,
        }
    )


# ------------------------------------------------------------------------------ the panel


@dataclass(frozen=True)
class Card:
    label: str
    detail: str
    uid: str


@dataclass(frozen=True)
class Panel:
    pupils: list[Card]
    staff: list[Card]
    kiosks: list[tuple[str, str, int]]  # name, label, compartments
    faults: tuple[str, ...]


def panel(session: Session) -> Panel:
    """The demo cards (UIDs derived as kiosk.demo does) and each kiosk's compartments."""
    pupils = session.execute(
        select(
            Pupil.admission_number,
            Pupil.forename,
            Pupil.preferred_forename,
            Pupil.surname,
            Pupil.form,
        )
        .where(Pupil.status == PupilStatus.ACTIVE)
        .order_by(Pupil.admission_number)
        .limit(PANEL_PUPILS)
    ).all()
    pupils = sorted(pupils, key=lambda row: (form_sort_key(row[4]), row[3], row[1]))
    staff = session.execute(
        select(User.username, User.display_name, User.role)
        .where(User.active.is_(True))
        .order_by(User.username)
    ).all()
    kiosks = session.execute(
        select(Kiosk.name, Kiosk.label, Compartment.number)
        .join(Compartment, Compartment.kiosk_id == Kiosk.id)
        .order_by(Kiosk.name, Compartment.number.desc())
    ).all()
    sizes: dict[tuple[str, str], int] = {}
    for name, label, number in kiosks:
        sizes.setdefault((name, label), number)
    return Panel(
        pupils=[
            Card(
                queries.full_name(forename, preferred, surname),
                f"{form} · {admission}",
                format_uid(demo_uid(admission)),
            )
            for admission, forename, preferred, surname, form in pupils
        ],
        staff=[
            Card(display, f"{role.value} · {username}", format_uid(demo_uid(f"staff:{username}")))
            for username, display, role in staff
        ],
        kiosks=[(name, label, size) for (name, label), size in sizes.items()],
        faults=SIM_FAULTS,
    )
