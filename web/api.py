"""The JSON API under ``/api/v1`` (session or ``Authorization: Bearer TOKEN``).

Bearer requests are CSRF-exempt; session requests that change something need the
``X-CSRFToken`` header (the page's ``<meta name="csrf-token">``). Every error is a 4xx with
``{"error": "..."}``. The OpenAPI document (:mod:`web.openapi`) describes exactly these
responses, and a schemathesis test holds the two together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from kiosk import commands as kiosk_commands
from kiosk import exemptions
from kiosk.errors import NotFound, ValidationError
from kiosk.models import (
    ACTIVE_STATES,
    AuditEvent,
    Command,
    CustodyRecord,
    CustodyState,
    Exemption,
    Pupil,
)

from . import actions, auth, core, openapi, queries

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _csrf_for_sessions() -> None:
    """Session-authenticated changes need the CSRF header; bearer-token ones do not."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and not auth.signed_in_by_token():
        current_app.extensions["csrf"].protect()


# ------------------------------------------------------------------------------ input


def _body() -> dict[str, Any]:
    return core.json_object()


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be a string")
    return value


def _flag(data: dict[str, Any], key: str, default: bool = False) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError(f"{key} must be true or false")
    return value


def _id(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= core.MAX_ID:
        raise ValidationError(f"{key} must be a positive whole number")
    return value


def _date(data: dict[str, Any], key: str) -> date | None:
    """An optional YYYY-MM-DD date (an empty text counts as absent)."""
    value = _text(data, key, required=False)
    return core.parse_date(value, key) if value is not None else None


def _required_date(data: dict[str, Any], key: str) -> date:
    day = _date(data, key)
    if day is None:
        raise ValidationError(f"{key} is required (a date YYYY-MM-DD)")
    return day


def _query_int(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    return core.parse_int(raw, name, minimum=minimum, maximum=maximum)


# ------------------------------------------------------------------------------ output


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value.isoformat()
    return core.iso(value)


def pupil_json(pupil: Pupil) -> dict[str, Any]:
    return {
        "admission_number": pupil.admission_number,
        "display_name": queries.full_name(pupil.forename, pupil.preferred_forename, pupil.surname),
        "form": pupil.form,
    }


def since_of(record: CustodyRecord) -> Any:
    return {
        CustodyState.PENDING_DEPOSIT: record.started_at,
        CustodyState.IN_LOCKER: record.stored_at or record.started_at,
        CustodyState.CONFISCATED: record.confiscated_at or record.started_at,
        CustodyState.SAFEGUARDING_HOLD: record.held_at or record.started_at,
    }.get(record.state, record.ended_at or record.updated_at)


def custody_json(item: queries.CustodyItem, restricted: bool) -> dict[str, Any]:
    """A custody record as the API shows it: safeguarding details only for DSL and admin."""
    record = item.record
    hide = record.ever_held and not restricted
    held = record.state is CustodyState.SAFEGUARDING_HOLD
    out: dict[str, Any] = {
        "id": record.id,
        "state": record.state.value,
        "kind": record.kind.value,
        "since": _iso(since_of(record)),
        "pupil": pupil_json(item.pupil),
        "location": item.location,
        "compartment": (
            {"kiosk": item.kiosk.name if item.kiosk else None, "number": item.compartment.number}
            if item.compartment is not None
            else None
        ),
        "device": record.device,
        "started_at": _iso(record.started_at),
        "stored_at": _iso(record.stored_at),
        "ended_at": _iso(record.ended_at),
        "confiscated_at": _iso(record.confiscated_at),
        "confiscated_by": record.confiscated_by,
        "confiscation_reason": None if hide else record.confiscation_reason,
        "release_not_before": _iso(record.release_not_before),
        "held": held,
        "notice": queries.HELD_NOTICE if held and not restricted else None,
        "hold_reason": record.hold_reason if restricted else None,
        "held_by": record.held_by if restricted else None,
        "police_reference": record.police_reference if restricted else None,
        "collector": (
            {
                "name": record.collector_name,
                "relationship": record.collector_relationship,
                "id_checked": record.id_checked,
            }
            if record.collector_name
            else None
        ),
        "flag": record.flag,
    }
    return out


def command_json(command: Command) -> dict[str, Any]:
    view = kiosk_commands.CommandView.of(command)
    return {
        "id": view.id,
        "kind": view.kind,
        "status": view.status,
        "payload": command.payload,
        "created_at": _iso(view.created_at),
        "finished_at": _iso(view.finished_at),
        "result": view.result,
        "error": view.error,
    }


def exemption_json(exemption: Exemption, pupil: Pupil, today: date) -> dict[str, Any]:
    active = (
        exemption.revoked_at is None
        and exemption.starts_on <= today
        and (exemption.ends_on is None or exemption.ends_on >= today)
    )
    return {
        "id": exemption.id,
        "pupil": pupil_json(pupil),
        "kind": exemption.kind.value,
        "starts_on": _iso(exemption.starts_on),
        "ends_on": _iso(exemption.ends_on),
        "review_on": _iso(exemption.review_on),
        "agreement_reference": exemption.agreement_reference,
        "approved_by": exemption.approved_by,
        "created_at": _iso(exemption.created_at),
        "revoked_at": _iso(exemption.revoked_at),
        "revoke_reason": exemption.revoke_reason,
        "active": active,
    }


def event_json(event: AuditEvent, restricted: bool, held: set[int]) -> dict[str, Any]:
    """An audit event; its details are null for those who may not read them (restricted
    events, and any event of a record once under hold)."""
    details: Any = None
    if restricted or not (event.restricted or event.custody_id in held):
        try:
            details = json.loads(event.details)
        except ValueError:
            details = {"raw": event.details}
    return {
        "seq": event.seq,
        "occurred_at": _iso(event.occurred_at),
        "kind": event.kind,
        "actor": event.actor,
        "kiosk": event.kiosk,
        "custody_id": event.custody_id,
        "pupil_id": event.pupil_id,
        "restricted": event.restricted,
        "details": details,
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) else None


def kiosk_json(status: queries.KioskStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "label": status.label,
        "status": status.status,
        "heartbeat_at": _iso(status.heartbeat_at),
        "faults": status.faults,
        "alarms": [
            {
                "compartment": _int_or_none(alarm.get("compartment")),
                "kind": _str_or_none(alarm.get("kind")),
                "since": _str_or_none(alarm.get("since")),
            }
            for alarm in status.alarms
        ],
    }


def compartment_json(cell: queries.Cell) -> dict[str, Any]:
    custody = None
    if cell.custody_id is not None:
        custody = {
            "id": cell.custody_id,
            "state": cell.custody_state,
            "kind": cell.custody_kind,
            "since": _iso(cell.since),
            "stored": cell.stored,
            "flag": cell.flag,
            "flag_detail": cell.flag_detail,
            "pupil": {
                "admission_number": cell.admission_number,
                "display_name": cell.pupil_name,
                "form": cell.form,
            },
        }
    return {
        "id": cell.id,
        "kiosk": cell.kiosk,
        "number": cell.number,
        "label": cell.label,
        "kind": cell.kind,
        "state": cell.state,
        "door": cell.door,
        "locked": cell.locked,
        "alarm": cell.alarm,
        "out_of_service": cell.out_of_service,
        "out_of_service_reason": cell.out_of_service_reason,
        "custody": custody,
    }


def _conditional(payload: Any, status: int = 200) -> Response:
    """JSON with an ETag; 304 when the client already has this version."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    tag = '"' + hashlib.blake2b(body.encode(), digest_size=12).hexdigest() + '"'
    if tag in request.headers.get("If-None-Match", ""):
        response = Response(status=304)
    else:
        response = Response(body, status=status, mimetype="application/json")
    response.headers["ETag"] = tag
    return response


def _custody_item(session: Any, custody_id: int) -> queries.CustodyItem:
    item = queries.custody_item(session, custody_id)
    if item is None:
        raise NotFound(f"no custody record {custody_id}")
    return item


def _outcome(outcome: actions.Outcome, status: int = 200) -> Any:
    with core.reader() as session:
        item = _custody_item(session, outcome.record.id)
        command = session.get(Command, outcome.command.id) if outcome.command else None
        body = {
            "custody": custody_json(item, core.sees_restricted()),
            "command": command_json(command) if command is not None else None,
        }
    return jsonify(body), status


# ------------------------------------------------------------------------------ routes


@bp.get("/openapi.json", endpoint="openapi")
def openapi_document() -> Any:
    """The OpenAPI 3 document of this API."""
    return jsonify(openapi.document())


@bp.get("/compartments")
def compartments() -> Any:
    """Every compartment with its state (the grid's data)."""
    kiosk = request.args.get("kiosk") or None
    when = core.now()
    with core.reader() as session:
        statuses = queries.kiosks(session, when, current_app.config["LOCKER_HEARTBEAT_S"])
        if kiosk is not None and kiosk not in {k.name for k in statuses}:
            raise NotFound(f"no kiosk {kiosk!r}")
        cells = queries.grid(session, kiosk)
        awaiting = queries.awaiting_count(session)
    payload = {
        "kiosks": [kiosk_json(k) for k in statuses if kiosk is None or k.name == kiosk],
        "compartments": [compartment_json(cell) for cell in cells],
        "awaiting_collection": awaiting,
    }
    return _conditional(payload)


@bp.get("/kiosks")
def kiosks() -> Any:
    when = core.now()
    with core.reader() as session:
        statuses = queries.kiosks(session, when, current_app.config["LOCKER_HEARTBEAT_S"])
    return jsonify({"kiosks": [kiosk_json(k) for k in statuses]})


def _states(raw: str | None) -> set[CustodyState]:
    if not raw:
        return set(ACTIVE_STATES)
    wanted = set()
    for name in raw.split(","):
        try:
            wanted.add(CustodyState(name.strip().upper()))
        except ValueError:
            names = ", ".join(state.value for state in CustodyState)
            raise ValidationError(
                f"unknown state {name.strip()[:40]!r}; states are {names}"
            ) from None
    return wanted


@bp.get("/custody")
def custody_list() -> Any:
    """Custody records, active ones unless ``state`` names others (comma-separated)."""
    states = _states(request.args.get("state"))
    limit = _query_int("limit", 100, 1, 500)
    admission = request.args.get("pupil")
    query = queries.custody_query(states)
    with core.reader() as session:
        if admission:
            found = queries.pupil_by_admission(session, admission[:20])
            if found is None:
                raise NotFound(f"no pupil with admission number {admission[:20]!r}")
            query = query.where(CustodyRecord.pupil_id == found.id)
        items = queries.custody_items(session, query.order_by(CustodyRecord.id.desc()).limit(limit))
        restricted = core.sees_restricted()
        return jsonify({"custody": [custody_json(item, restricted) for item in items]})


@bp.get("/custody/<id:custody_id>")
def custody_get(custody_id: int) -> Any:
    with core.reader() as session:
        item = _custody_item(session, custody_id)
        return jsonify({"custody": custody_json(item, core.sees_restricted())})


@bp.post("/custody/<id:custody_id>/release")
def custody_release(custody_id: int) -> Any:
    """Release to a parent or carer: ``contact_id`` (one of the pupil's contacts) or
    ``collector_name`` and ``relationship``; ``id_checked`` must be true."""
    data = _body()
    with core.writer() as session:
        outcome = actions.release(
            session,
            custody_id,
            id_checked=_flag(data, "id_checked"),
            contact_id=_id(data, "contact_id"),
            collector_name=_text(data, "collector_name", required=False),
            relationship=_text(data, "relationship", required=False),
        )
    return _outcome(outcome)


@bp.post("/custody/<id:custody_id>/hold")
def custody_hold(custody_id: int) -> Any:
    data = _body()
    with core.writer() as session:
        outcome = actions.hold(session, custody_id, _text(data, "reason") or "")
    return _outcome(outcome)


@bp.post("/custody/<id:custody_id>/lift-hold")
def custody_lift_hold(custody_id: int) -> Any:
    data = _body()
    with core.writer() as session:
        outcome = actions.lift_hold(session, custody_id, _text(data, "note") or "")
    return _outcome(outcome)


@bp.post("/custody/<id:custody_id>/police")
def custody_police(custody_id: int) -> Any:
    data = _body()
    with core.writer() as session:
        outcome = actions.hand_to_police(session, custody_id, _text(data, "reference") or "")
    return _outcome(outcome)


@bp.get("/confiscations")
def confiscations_list() -> Any:
    """Confiscated devices awaiting collection (held ones say only: contact the DSL)."""
    with core.reader() as session:
        items = queries.awaiting_collection(session)
        restricted = core.sees_restricted()
        return jsonify({"custody": [custody_json(item, restricted) for item in items]})


@bp.post("/confiscations")
def confiscations_create() -> Any:
    """Record a confiscation: ``where`` is ``safe``, ``locker`` or ``kiosk:NAME``."""
    data = _body()
    with core.writer() as session:
        outcome = actions.confiscate(
            session,
            admission_number=_text(data, "admission_number") or "",
            reason=_text(data, "reason") or "",
            where=_text(data, "where", required=False) or actions.SAFE,
            device=_text(data, "device", required=False),
            referral=_text(data, "referral", required=False),
        )
    return _outcome(outcome, 201)


@bp.get("/exemptions")
def exemptions_list() -> Any:
    """Exemptions in force on ``active_on`` (default today)."""
    raw = request.args.get("active_on")
    if raw is not None and not raw.strip():
        raise ValidationError("active_on: expected a date YYYY-MM-DD")
    day = core.parse_date(raw, "active_on") or core.today()
    with core.reader() as session:
        rows = exemptions.active_on(session, day)
        pupils = {
            pupil.id: pupil
            for pupil in session.execute(
                select(Pupil).where(Pupil.id.in_({row.pupil_id for row in rows}))
            ).scalars()
        }
        return jsonify(
            {"exemptions": [exemption_json(row, pupils[row.pupil_id], day) for row in rows]}
        )


@bp.post("/exemptions")
def exemptions_create() -> Any:
    data = _body()
    starts_on = _required_date(data, "starts_on")
    with core.writer() as session:
        exemption = actions.grant_exemption(
            session,
            admission_number=_text(data, "admission_number") or "",
            kind=_text(data, "kind") or "",
            starts_on=starts_on,
            ends_on=_date(data, "ends_on"),
            review_on=_date(data, "review_on"),
            agreement_reference=_text(data, "agreement_reference") or "",
            notes=_text(data, "notes", required=False) or "",
        )
        body = {"exemption": exemption_json(exemption, exemption.pupil, core.today())}
    return jsonify(body), 201


@bp.post("/exemptions/<id:exemption_id>/revoke")
def exemptions_revoke(exemption_id: int) -> Any:
    data = _body()
    with core.writer() as session:
        exemption = actions.revoke_exemption(session, exemption_id, _text(data, "reason") or "")
        body = {"exemption": exemption_json(exemption, exemption.pupil, core.today())}
    return jsonify(body)


@bp.get("/events")
def events() -> Any:
    """Audit events after ``since`` (a seq), oldest first; restricted details only for the
    DSL and admin."""
    since = _query_int("since", 0, 0, 2**62)
    limit = _query_int("limit", 100, 1, 1000)
    restricted = core.sees_restricted()
    with core.reader() as session:
        rows = list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.seq > since)
                .order_by(AuditEvent.seq)
                .limit(limit)
            ).scalars()
        )
        held = (
            set()
            if restricted
            else queries.ever_held(
                session, {row.custody_id for row in rows if row.custody_id is not None}
            )
        )
    return jsonify(
        {
            "events": [event_json(row, restricted, held) for row in rows],
            "next_since": rows[-1].seq if rows else since,
        }
    )


@bp.get("/commands/<id:command_id>")
def command_get(command_id: int) -> Any:
    with core.reader() as session:
        command = kiosk_commands.get(session, command_id)
        return jsonify({"command": command_json(command)})
