"""Kiosk health (last heartbeat, faults, alarms, compartments out of service) and
``GET /healthz`` for monitoring (no sign-in, no personal data)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from kiosk.models import Command, CommandStatus, Compartment, Kiosk

from . import core, queries

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/kiosks")
def index() -> Any:
    """Every kiosk: heartbeat, status, faults, alarms, out-of-service compartments, the
    commands waiting for it; and the forms to open a compartment or all of them."""
    when = core.now()
    with core.reader() as session:
        kiosks = queries.kiosks(session, when, current_app.config["LOCKER_HEARTBEAT_S"])
        out_of_service = session.execute(
            select(Kiosk.name, Compartment.number, Compartment.out_of_service_reason)
            .join(Kiosk, Kiosk.id == Compartment.kiosk_id)
            .where(Compartment.out_of_service.is_(True))
            .order_by(Kiosk.name, Compartment.number)
        ).all()
        waiting = session.execute(
            select(Kiosk.name, func.count(Command.id), func.min(Command.created_at))
            .join(Kiosk, Kiosk.id == Command.kiosk_id)
            .where(Command.status.in_((CommandStatus.PENDING, CommandStatus.RUNNING)))
            .group_by(Kiosk.name)
        ).all()
        recent = session.execute(
            select(Command, Kiosk.name)
            .join(Kiosk, Kiosk.id == Command.kiosk_id)
            .order_by(Command.id.desc())
            .limit(15)
        ).all()
        numbers = dict(
            session.execute(
                select(Kiosk.name, func.max(Compartment.number))
                .join(Compartment, Compartment.kiosk_id == Kiosk.id)
                .group_by(Kiosk.name)
            ).all()
        )
    oos: dict[str, list[tuple[int, str | None]]] = {}
    for name, number, reason in out_of_service:
        oos.setdefault(name, []).append((number, reason))
    return render_template(
        "health.html",
        kiosks=kiosks,
        oos=oos,
        waiting={name: (count, oldest) for name, count, oldest in waiting},
        recent=recent,
        numbers=numbers,
        heartbeat_s=current_app.config["LOCKER_HEARTBEAT_S"],
        now=when,
    )


@bp.get("/healthz")
def healthz() -> Any:
    """Database reachable, and each kiosk's heartbeat age: nothing about anyone."""
    when = core.now()
    try:
        with core.reader() as session:
            kiosks = queries.kiosks(session, when, current_app.config["LOCKER_HEARTBEAT_S"])
    except SQLAlchemyError as exc:
        log.warning("healthz: database unreachable: %s", exc)
        return jsonify({"status": "error", "database": "unreachable", "kiosks": []}), 503
    degraded = any(k.status != "ok" for k in kiosks)
    return jsonify(
        {
            "status": "degraded" if degraded else "ok",
            "database": "ok",
            "kiosks": [
                {
                    "name": k.name,
                    "status": k.status,
                    "heartbeat_age_s": round(k.age_s, 1) if k.age_s is not None else None,
                }
                for k in kiosks
            ],
        }
    )
