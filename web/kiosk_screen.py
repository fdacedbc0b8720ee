"""The kiosk's own screen, ``/kiosk/<kiosk>``: big prompts for pupils at the cabinet.
``/kiosk/`` leads to the screen of the kiosk this instance is (``[kiosk] name``).

No sign-in (it runs in Chromium's kiosk mode on the Pi). It shows only what the controller
publishes in ``Kiosk.state["screen"]``: a prompt, and at most a first name and an initial.
``static/kiosk.js`` polls ``/kiosk/<kiosk>/screen.json`` (one indexed single-row read) every
``LOCKER_SCREEN_POLL_MS`` (120 ms), so a tap shows within a few hundred milliseconds.

On a shared (PostgreSQL) database a kiosk also writes its state to a file in the instance
directory (``kiosk.offline.state_file``). While that file says the kiosk is working
offline, or when the database cannot be read, the screen is served from the file: the Pi's
own web app keeps showing the kiosk's prompts, with a "working offline" note.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, url_for
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from kiosk.errors import NotFound
from kiosk.models import Kiosk
from kiosk.offline import state_file

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


def _local_state(name: str) -> tuple[str, datetime, dict[str, Any]] | None:
    """(label, heartbeat, state) from the kiosk's own state file; None without a usable one."""
    path = state_file(core.instance().home, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        heartbeat = datetime.fromisoformat(data["heartbeat_at"])
        label, state = str(data["label"]), data["state"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the kiosk state file %s: %s", path, exc)
        return None
    if heartbeat.tzinfo is None or not isinstance(state, dict):
        return None
    return label, heartbeat, state


def screen_state(name: str) -> dict[str, Any]:
    """What the kiosk's screen shows: from the database, or from the kiosk's state file
    while the kiosk works offline (the database is then out of reach, or behind)."""
    local = _local_state(name)
    row: tuple[Any, ...] | None
    if local is not None and local[2].get("network") == "offline":
        row = (0, name, *local)
    else:
        try:
            with core.reader() as session:
                row = session.execute(
                    select(
                        Kiosk.id, Kiosk.name, Kiosk.label, Kiosk.heartbeat_at, Kiosk.state
                    ).where(Kiosk.name == name)
                ).first()
        except SQLAlchemyError as exc:
            if local is None:
                raise
            log.warning("kiosk screen %s from its state file: database unreadable (%s)", name, exc)
            row = (0, name, *local)
    if row is None:
        raise NotFound(f"no kiosk {name!r}")
    status = queries.kiosk_status(
        *row, now=core.now(), heartbeat_s=current_app.config["LOCKER_HEARTBEAT_S"]
    )
    published = row[4] if isinstance(row[4], dict) else {}
    return {
        "kiosk": status.name,
        "label": status.label,
        "status": status.status,
        "network": "offline" if published.get("network") == "offline" else "online",
        "screen": _screen(status.screen),
    }


@bp.get("/")
def this_kiosk() -> Any:
    """``/kiosk/``: the screen of the kiosk this instance is configured as (``[kiosk]
    name``), so the Pi's own screen follows a renamed cabinet without being told."""
    name = core.instance().config.kiosk.name
    return redirect(url_for("kiosk_screen.screen", kiosk=name))


@bp.get("/<kiosk>")
def screen(kiosk: str) -> Any:
    state = screen_state(kiosk)
    return render_template(
        "kiosk.html",
        kiosk=kiosk,
        label=state["label"],
        state=state,
        poll_ms=current_app.config["LOCKER_SCREEN_POLL_MS"],
    )


@bp.get("/<kiosk>/screen.json")
def state(kiosk: str) -> Any:
    return jsonify(screen_state(kiosk))
