"""Signing in and out: Flask-Login sessions, bearer tokens for the API, and the throttle.

Every sign-in and every failed sign-in is an audit event (``auth.login``,
``auth.login_failed``, details: user name and address). The throttle counts recent failures
since the last success from those events, so it holds across processes and restarts with no
table of its own: after ``[web] login_attempts`` failures in a row for a user name or for an
address, sign-in is refused with 429 until the oldest of those failures is
``[web] login_lockout_s`` old. The answer never says whether a user name exists.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from kiosk import users
from kiosk.actors import Actor
from kiosk.models import ApiToken, AuditEvent, Role, User

from . import core

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.session_protection = "basic"

LOGIN_OK, LOGIN_FAILED = "auth.login", "auth.login_failed"
TOKEN_TOUCH_EVERY = timedelta(minutes=5)
NAME_LIMIT = 64


class WebUser(UserMixin):
    """The signed-in member of staff (the User row, detached, read when they signed in)."""

    def __init__(self, user: User, via: str = "session") -> None:
        self.user = user
        self.id = user.id
        self.username = user.username
        self.display_name = user.display_name
        self.role: Role = user.role
        self.via = via

    def get_id(self) -> str:
        # Changing the password ends every session signed in with the old one.
        return f"{self.user.id}:{_stamp(self.user)}"


def _stamp(user: User) -> str:
    return str(int(user.password_changed_at.timestamp()))


@login_manager.user_loader
def _load_user(identifier: str) -> WebUser | None:
    user_id, _, stamp = identifier.partition(":")
    if not user_id.isdigit():
        return None
    with core.reader() as session_:
        user = session_.get(User, int(user_id))
    if user is None or not user.active or _stamp(user) != stamp:
        return None
    return WebUser(user)


def bearer_user() -> Any:
    """``before_request`` for /api/: ``Authorization: Bearer TOKEN`` signs the request in
    (it wins over a session cookie); a bad token is refused with 401."""
    if not request.path.startswith("/api/"):
        return None
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return core.error_response(
            "use Authorization: Bearer TOKEN", 401, headers={"WWW-Authenticate": "Bearer"}
        )
    token = token.strip()
    when = core.now()
    digest = users.token_digest(token)
    with core.reader() as session_:
        last_used = session_.execute(
            select(ApiToken.last_used_at).where(ApiToken.token_hash == digest)
        ).scalar_one_or_none()
        user = users.user_for_token(session_, token, when)
    if user is None:
        return core.error_response(
            "the API token is unknown, revoked, or its user is disabled",
            401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if last_used is None or when - last_used > TOKEN_TOUCH_EVERY:
        with core.writer() as session_:
            session_.execute(
                update(ApiToken).where(ApiToken.token_hash == digest).values(last_used_at=when)
            )
    # What Flask-Login's request_loader does: the user of this request only, no cookie.
    g._login_user = WebUser(user, via="token")
    return None


def signed_in_by_token() -> bool:
    return current_user.is_authenticated and getattr(current_user, "via", "") == "token"


# ------------------------------------------------------------------------------ throttle


def _like(key: str, value: str) -> str:
    """A LIKE pattern matching ``"key":"value"`` inside canonical JSON details."""
    fragment = json.dumps({key: value}, ensure_ascii=False, separators=(",", ":"))[1:-1]
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def retry_after(
    session_: Session,
    username: str,
    address: str,
    when: datetime,
    *,
    attempts: int,
    lockout_s: int,
) -> int:
    """Seconds before a sign-in for ``username`` from ``address`` may be tried (0: now)."""
    since = when - timedelta(seconds=lockout_s)
    conditions = [AuditEvent.details.like(_like("address", address), escape="\\")]
    if username:
        conditions.append(AuditEvent.details.like(_like("user", username), escape="\\"))
    rows = session_.execute(
        select(AuditEvent.kind, AuditEvent.occurred_at, AuditEvent.details)
        .where(
            AuditEvent.kind.in_((LOGIN_OK, LOGIN_FAILED)),
            AuditEvent.occurred_at >= since,
            or_(*conditions),
        )
        .order_by(AuditEvent.seq.desc())
        .limit(10 * attempts + 200)
    ).all()
    streaks: dict[tuple[str, str], list[datetime]] = {}
    ended: set[tuple[str, str]] = set()
    keys = [("address", address)] + ([("user", username)] if username else [])
    for kind, occurred_at, details in rows:
        try:
            values = json.loads(details)
        except ValueError:
            continue
        for key in keys:
            if key in ended or values.get(key[0]) != key[1]:
                continue
            if kind == LOGIN_OK:
                ended.add(key)
            else:
                streaks.setdefault(key, []).append(occurred_at)
    wait = 0.0
    for failures in streaks.values():
        if len(failures) >= attempts:
            until = failures[attempts - 1] + timedelta(seconds=lockout_s)
            wait = max(wait, (until - when).total_seconds())
    return math.ceil(wait) if wait > 0 else 0


def _too_many(wait: int) -> Any:
    minutes = max(1, math.ceil(wait / 60))
    message = (
        f"Too many sign-in attempts. Wait {minutes} minute{'s' if minutes != 1 else ''} "
        "and try again, or ask an administrator to check your account."
    )
    response = current_app.make_response(
        render_template("error.html", status=429, message=message, back=None, wait=wait)
    )
    response.status_code = 429
    response.headers["Retry-After"] = str(wait)
    return response


# ------------------------------------------------------------------------------ views


def home_for(role: Role) -> str:
    return url_for("confiscations.new") if role is Role.STAFF else url_for("grid.index")


def _safe_next(value: str | None) -> str | None:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


def _clean_name(raw: str) -> str:
    name = "".join(ch for ch in raw.strip().lower() if ch.isprintable())
    return name[:NAME_LIMIT]


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in with ``username`` and ``password``."""
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url or home_for(current_user.role))
        return render_template("login.html", next=next_url, username="", error=None)

    name = _clean_name(request.form.get("username", ""))
    password = request.form.get("password", "")[:1024]
    address = (request.remote_addr or "unknown")[:64]
    config = current_app.config
    limits = {
        "attempts": int(config["LOCKER_LOGIN_ATTEMPTS"]),
        "lockout_s": int(config["LOCKER_LOGIN_LOCKOUT_S"]),
    }
    instance, clock = core.instance(), core.clock()
    with core.reader() as session_:
        wait = retry_after(session_, name, address, clock.now(), **limits)
    if wait:
        log.warning("sign-in refused for %r from %s: throttled", name, address)
        return _too_many(wait)

    with core.writer() as session_:
        user = users.authenticate(session_, name, password)
        details = {"user": name, "address": address}
        if user is not None:
            user.last_login_at = clock.now()
            instance.audit.record(session_, clock, Actor.for_user(user), LOGIN_OK, details=details)
        else:
            instance.audit.record(
                session_, clock, Actor.system("web"), LOGIN_FAILED, details=details
            )
    if user is not None:
        session.clear()  # no session fixation
        login_user(WebUser(user))
        session.permanent = True
        return redirect(next_url or home_for(user.role))

    with core.reader() as session_:
        wait = retry_after(session_, name, address, clock.now(), **limits)
    if wait:
        return _too_many(wait)
    page = render_template(
        "login.html",
        next=next_url,
        username=request.form.get("username", "")[:NAME_LIMIT],
        error="That user name and password do not match.",
    )
    return page, 401


@bp.post("/logout")
def logout() -> Any:
    """Sign out (POST, with the form's CSRF token)."""
    instance, clock = core.instance(), core.clock()
    with core.writer() as session_:
        instance.audit.record(
            session_, clock, core.actor(), "auth.logout", details={"user": current_user.username}
        )
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.before_request(bearer_user)
    app.register_blueprint(bp)
