"""The dashboard: the live locker grid of every kiosk (or one), updating without a reload.

The page is rendered whole on the server (usable without JavaScript); ``static/grid.js``
then polls ``GET /api/v1/compartments`` (with ``If-None-Match``) and repaints what changed.
"""

from __future__ import annotations

import logging
from itertools import groupby
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from kiosk.errors import NotFound
from kiosk.models import Role

from . import core, queries, sim

log = logging.getLogger(__name__)

bp = Blueprint("grid", __name__)


@bp.get("/")
def index() -> Any:
    """The live grid (staff, who only confiscate and refer, go to the confiscation form)."""
    if core.role() is Role.STAFF:
        return redirect(url_for("confiscations.new"))
    chosen = request.args.get("kiosk") or None
    when = core.now()
    simulated = current_app.config["LOCKER_SIMULATED"]
    with core.reader() as session:
        kiosks = queries.kiosks(session, when, current_app.config["LOCKER_HEARTBEAT_S"])
        if chosen is not None and chosen not in {k.name for k in kiosks}:
            raise NotFound(f"no kiosk {chosen!r}")
        cells = queries.grid(session, chosen)
        awaiting = queries.awaiting_count(session)
        panel = sim.panel(session) if simulated else None
    by_kiosk = {name: list(group) for name, group in groupby(cells, key=lambda c: c.kiosk)}
    shown = [k for k in kiosks if chosen is None or k.name == chosen]
    return render_template(
        "grid.html",
        kiosks=shown,
        all_kiosks=kiosks,
        chosen=chosen,
        cells=by_kiosk,
        summary=queries.summarise(cells),
        awaiting=awaiting,
        labels=queries.GRID_LABELS,
        flag_labels=queries.FLAG_LABELS,
        states=queries.GRID_STATES,
        panel=panel,
        now=when,
        poll_ms=current_app.config["LOCKER_GRID_POLL_MS"],
    )
