"""Confiscations: record one, list those awaiting collection, release to a parent or carer
(the secure compartment opens through the kiosk), and the printable notice for parents."""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from kiosk.errors import LockerError, NotFound, PermissionDenied
from kiosk.models import Command, CustodyState, Kiosk, Role

from . import actions, core, queries

log = logging.getLogger(__name__)

bp = Blueprint("confiscations", __name__)


@bp.get("/confiscations")
def index() -> Any:
    with core.reader() as session:
        items = queries.awaiting_collection(session)
    return render_template(
        "confiscations/index.html",
        items=items,
        now=core.now(),
        restricted=core.sees_restricted(),
        notice=queries.HELD_NOTICE,
    )


def _form_context(session: Any, form: dict[str, str]) -> dict[str, Any]:
    """What the confiscation form needs: kiosks with free secure compartments, and the
    pupil (with any device in a locker) when one is chosen or searched for."""
    kiosks = session.execute(select(Kiosk.name, Kiosk.label).order_by(Kiosk.name)).all()
    free = queries.secure_free_by_kiosk(session)
    chosen = None
    in_locker = None
    matches: list[Any] = []
    admission = form.get("admission_number", "").strip()
    if admission:
        chosen = queries.pupil_by_admission(session, admission)
        if chosen is not None:
            daily = core.instance().ledger.active_daily(session, chosen.id)
            if daily is not None and daily.state is CustodyState.IN_LOCKER:
                in_locker = daily.compartment.number if daily.compartment else None
    query = form.get("q", "").strip()
    if query and chosen is None:
        matches = queries.search_pupils(session, query, limit=20)
    return {
        "kiosks": [(name, label, free.get(name, 0)) for name, label in kiosks],
        "chosen": chosen,
        "in_locker": in_locker,
        "matches": matches,
        "form": form,
    }


@bp.route("/confiscate", methods=["GET", "POST"])
def new() -> Any:
    """Record a confiscation (any member of staff)."""
    if request.method == "GET":
        form = {key: value[:200] for key, value in request.args.items()}
        with core.reader() as session:
            return render_template("confiscations/new.html", **_form_context(session, form))
    form = {key: value[:1000] for key, value in request.form.items() if key != "csrf_token"}
    referral = form.get("referral", "") if form.get("urgent") == "yes" else None
    try:
        with core.writer() as session:
            outcome = actions.confiscate(
                session,
                admission_number=form.get("admission_number", ""),
                reason=form.get("reason", ""),
                where=form.get("where", ""),
                device=form.get("device") or None,
                referral=referral,
            )
            record_id = outcome.record.id
            command_id = outcome.command.id if outcome.command else None
    except LockerError as error:
        with core.reader() as session:
            page = render_template(
                "confiscations/new.html", error=str(error), **_form_context(session, form)
            )
        return page, core.status_for(error)
    # The notice page says "Confiscation recorded." itself (done=1): no flash as well.
    return redirect(
        url_for("confiscations.notice", custody_id=record_id, command=command_id, done=1), 303
    )


def _item(session: Any, custody_id: int) -> queries.CustodyItem:
    item = queries.custody_item(session, custody_id)
    if item is None or item.record.confiscated_at is None:
        raise NotFound(f"no confiscation {custody_id}")
    return item


@bp.get("/confiscations/<id:custody_id>")
def show(custody_id: int) -> Any:
    """One confiscation, and the release-to-parent form."""
    with core.reader() as session:
        item = _item(session, custody_id)
        contacts = queries.contacts_of(session, item.pupil.id)
        command = _command(session, request.args.get("command"))
    return render_template(
        "confiscations/show.html",
        item=item,
        contacts=contacts,
        command=command,
        restricted=core.sees_restricted(),
        now=core.now(),
        notice=queries.HELD_NOTICE,
        form={},
    )


def _command(session: Any, raw: str | None) -> Command | None:
    if not raw or not raw.isdigit() or len(raw) > 12:
        return None
    return session.get(Command, int(raw))


@bp.post("/confiscations/<id:custody_id>/release")
def release(custody_id: int) -> Any:
    """Release to one of the pupil's contacts or another adult; ID checked; the secure
    compartment opens."""
    form = {key: value[:200] for key, value in request.form.items() if key != "csrf_token"}
    choice = form.get("collector", "")
    contact_id = None
    if choice.isdigit() and len(choice) <= 12:
        contact_id = int(choice)
    try:
        with core.writer() as session:
            outcome = actions.release(
                session,
                custody_id,
                id_checked=form.get("id_checked") == "yes",
                contact_id=contact_id,
                collector_name=form.get("collector_name") if contact_id is None else None,
                relationship=form.get("relationship") if contact_id is None else None,
            )
            name = outcome.record.collector_name
            command_id = outcome.command.id if outcome.command else None
    except LockerError as error:
        with core.reader() as session:
            item = _item(session, custody_id)
            contacts = queries.contacts_of(session, item.pupil.id)
            page = render_template(
                "confiscations/show.html",
                item=item,
                contacts=contacts,
                command=None,
                restricted=core.sees_restricted(),
                now=core.now(),
                notice=queries.HELD_NOTICE,
                error=str(error),
                form=form,
            )
        return page, core.status_for(error)
    if command_id is not None:
        flash(f"Released to {name}. The compartment is opening: hand the device over.", "ok")
    else:
        flash(f"Released to {name}. Hand the device over from the office safe.", "ok")
    return redirect(url_for("confiscations.show", custody_id=custody_id, command=command_id), 303)


@bp.get("/confiscations/<id:custody_id>/notice")
def notice(custody_id: int) -> Any:
    """A printable notice for parents (staff: only for devices they confiscated)."""
    with core.reader() as session:
        item = _item(session, custody_id)
        command = _command(session, request.args.get("command"))
    record = item.record
    if core.role() is Role.STAFF and record.confiscated_by != core.actor().label:
        raise PermissionDenied("staff may print the notice only for devices they confiscated")
    # Under hold (or handed to the police) the notice only says to contact the DSL; once
    # a hold is lifted the usual notice applies again, without the reason (which may
    # carry the concern) for those who may not read it.
    held = record.state in (CustodyState.SAFEGUARDING_HOLD, CustodyState.HANDED_TO_POLICE)
    hide_reason = record.ever_held and not core.sees_restricted()
    return render_template(
        "confiscations/notice.html",
        item=item,
        command=command,
        done=request.args.get("done") == "1",
        held=held,
        hide_reason=hide_reason,
        site_name=current_app.config["LOCKER_SITE_NAME"],
        policy=core.instance().policy,
    )
