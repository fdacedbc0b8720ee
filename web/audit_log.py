"""The audit log: filter by kind (a prefix), pupil and dates, page back through it (by seq).

Restricted events (safeguarding) show their details to the DSL and admin only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import select

from kiosk.models import AuditEvent, Pupil

from . import core, queries

log = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

PAGE = 50
KNOWN_KINDS = (
    "auth.login",
    "auth.login_failed",
    "auth.logout",
    "custody.",
    "custody.deposit_started",
    "custody.deposit_confirmed",
    "custody.collected",
    "custody.confiscated",
    "custody.held",
    "custody.hold_lifted",
    "custody.released_to_parent",
    "custody.handed_to_police",
    "command.",
    "tap",
    "door.forced",
    "door.left_open",
    "kiosk.",
    "card.",
    "exemption.",
    "door.",
    "roster.",
    "user.",
    "config.",
)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def kind_prefix(prefix: str) -> list[Any]:
    """Conditions for "the kind starts with ``prefix``" that an index on the kind can
    serve: ``LIKE 'prefix%'`` (PostgreSQL turns a prefix LIKE into an index range under
    the C collation), and on SQLite, whose LIKE never uses an index on a case-sensitive
    column, the same range written out (``prefix <= kind < prefix'``, exact there: the
    column compares byte by byte and kinds are lower case)."""
    conditions: list[Any] = [AuditEvent.kind.like(_like_prefix(prefix), escape="\\")]
    if core.instance().database.is_sqlite and prefix.isascii():
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        conditions += [AuditEvent.kind >= prefix, AuditEvent.kind < after]
    return conditions


@bp.get("/audit")
def index() -> Any:
    """Newest first; ``kind`` is a prefix (``custody`` or ``auth`` finds those events; a
    trailing ``*`` is allowed), the dates are the school's local days."""
    args = request.args
    kind = (args.get("kind") or "").strip()[:60]
    admission = (args.get("pupil") or "").strip()[:20]
    start = core.parse_date(args.get("from"), "from")
    end = core.parse_date(args.get("to"), "to")
    before = args.get("before")
    before_seq = core.parse_int(before, "before", minimum=1, maximum=2**62) if before else None
    policy = core.instance().policy
    query = select(AuditEvent)
    prefix = kind.rstrip("*").lower()
    if prefix:
        query = query.where(*kind_prefix(prefix))
    if start:
        query = query.where(AuditEvent.occurred_at >= policy.day_bounds(start)[0])
    if end:
        query = query.where(AuditEvent.occurred_at < policy.day_bounds(end)[1])
    if before_seq:
        query = query.where(AuditEvent.seq < before_seq)
    pupil = None
    events: list[AuditEvent] = []
    names: dict[int, str] = {}
    with core.reader() as session:
        if admission:
            pupil = queries.pupil_by_admission(session, admission)
        if not admission or pupil is not None:
            if pupil is not None:
                query = query.where(AuditEvent.pupil_id == pupil.id)
            events = list(
                session.execute(query.order_by(AuditEvent.seq.desc()).limit(PAGE + 1)).scalars()
            )
        held = set()
        if not core.sees_restricted():
            held = queries.ever_held(
                session, {event.custody_id for event in events if event.custody_id is not None}
            )
        ids = {event.pupil_id for event in events if event.pupil_id is not None}
        if ids:
            names = dict(
                session.execute(
                    select(Pupil.id, Pupil.admission_number).where(Pupil.id.in_(ids))
                ).all()
            )
    more = len(events) > PAGE
    events = events[:PAGE]
    restricted = core.sees_restricted()
    rows = []
    for event in events:
        hidden = not restricted and (event.restricted or event.custody_id in held)
        details = "restricted: visible to the DSL and admin" if hidden else _pretty(event.details)
        rows.append((event, details, names.get(event.pupil_id or 0)))
    filters = {
        key: value
        for key, value in {
            "kind": args.get("kind", ""),
            "pupil": admission,
            "from": args.get("from", ""),
            "to": args.get("to", ""),
        }.items()
        if value
    }
    return render_template(
        "audit.html",
        rows=rows,
        filters=filters,
        older=events[-1].seq if more and events else None,
        paged=before_seq is not None,
        unknown_pupil=bool(admission) and pupil is None,
        kinds=KNOWN_KINDS,
    )


def _pretty(details: str) -> str:
    try:
        value = json.loads(details)
    except ValueError:
        return details
    if not value:
        return ""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_short(item)}" for key, item in value.items())
    return str(value)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:199] + "…"
