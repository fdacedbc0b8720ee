"""The kiosk's own screen, ``/kiosk/<kiosk>``: big prompts for pupils at the cabinet.

No sign-in (it runs in Chromium's kiosk mode on the Pi). It shows only what the controller
publishes in ``Kiosk.state["screen"]``: a prompt, and at most a first name and an initial.
``static/kiosk.js`` polls ``/kiosk/<kiosk>/screen.json`` (one indexed single-row read) every
``LOCKER_SCREEN_POLL_MS`` (120 ms), so a tap shows within a few hundred milliseconds.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import select

from kiosk.errors import NotFound
from kiosk.models import Kiosk

from . import core, queries

log = logging.getLogger(__name__)

bp = Blueprint("kiosk_screen", __name__, url_prefix="/kiosk")

TONES = ("idle", "ok", "refused", "alarm", "info")
IDLE = {
    "seq": 0,
    "tone": "idle",
    "title": "Tap your card",
    "message": "to lock your phone away, or to collect it",
    "name": None,
    "compartment": None,
    "at": None,
}


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _screen(raw: Any) -> dict[str, Any]:
    """The published screen, checked field by field (nothing else leaves the row)."""
    if not isinstance(raw, dict):
        return dict(IDLE)
    seq = raw.get("seq")
    compartment = raw.get("compartment")
    tone = raw.get("tone")
    return {
        "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) else 0,
        "tone": tone if tone in TONES else "info",
        "title": _text(raw.get("title"), 120) or "",
        "message": _text(raw.get("message"), 300) or "",
        "name": _text(raw.get("name"), 40),
        "compartment": (
            compartment
            if isinstance(compartment, int) and not isinstance(compartment, bool)
            else None
        ),
        "at": _text(raw.get("at"), 40),
    }


def screen_state(name: str) -> dict[str, Any]:
    with core.reader() as session:
        row = session.execute(
            select(Kiosk.id, Kiosk.name, Kiosk.label, Kiosk.heartbeat_at, Kiosk.state).where(
                Kiosk.name == name
            )
        ).first()
    if row is None:
        raise NotFound(f"no kiosk {name!r}")
    status = queries.kiosk_status(
        *row, now=core.now(), heartbeat_s=current_app.config["LOCKER_HEARTBEAT_S"]
    )
    return {"kiosk": status.name, "status": status.status, "screen": _screen(status.screen)}


@bp.get("/<kiosk>")
def screen(kiosk: str) -> Any:
    state = screen_state(kiosk)
    with core.reader() as session:
        label = session.execute(select(Kiosk.label).where(Kiosk.name == kiosk)).scalar_one()
    return render_template(
        "kiosk.html",
        kiosk=kiosk,
        label=label,
        state=state,
        poll_ms=current_app.config["LOCKER_SCREEN_POLL_MS"],
    )


@bp.get("/<kiosk>/screen.json")
def state(kiosk: str) -> Any:
    return jsonify(screen_state(kiosk))
