"""Signing in and out: Flask-Login sessions, bearer tokens for the API, and the throttle.

Every sign-in and every failed sign-in is an audit event (``auth.login``,
``auth.login_failed``, details: user name and address); the throttle counts those events,
so it holds across processes and restarts with no table of its own, and an in-process
count of the checks still running (:class:`LoginThrottle`) so that a burst of concurrent
attempts cannot all pass before the first failure is written.

**The throttle's policy.** A password is checked only when all three of these allow it
(``N`` is ``[web] login_attempts``, the window is ``[web] login_lockout_s``):

- *one address, one user name*: after ``N`` failures in a row (in the window) for that
  pair, that address may not try that name again until the oldest of them leaves the
  window (429). This is the lock-out a guesser at one keyboard meets;
- *one address, any user names*: after ``ADDRESS_FACTOR x N`` failures in the window from
  an address, it may not try any name until the oldest leaves the window (429): one
  address cannot spray every account, yet a busy office shares a looser budget. A success
  does not reset this count;
- *one user name, any addresses*: this never locks a name out (else anyone who knows the
  name ``dsl`` could keep the DSL out). After ``N`` failures in a row from anywhere, each
  further check of that name must wait a delay after the last one, doubling from 2 s up to
  ``USER_BACKOFF_CAP_S`` (429 with a ``Retry-After`` of seconds): guessing from many
  addresses is slowed to a trickle, and the right password from another address gets in
  after a short wait. A success for the name ends its run.

A check still running counts as a failure until its outcome is written, so however many
attempts arrive at once no more than the limits' worth of passwords are checked; and no
more than ``CONCURRENT_CHECKS`` run at once (another attempt meanwhile is told to try again
in a second, and is not counted), so a flood of sign-ins cannot take every worker thread
and core from the kiosk screen and the dashboard. (Running checks are counted per web
process; ``locker web`` is one process. Several processes would each add their own running
checks to what the audit trail already holds.) The password is verified outside any
transaction (the user is read in a reader session, the outcome is written in a short unit
of work afterwards): an argon2 check takes ~0.1 s and must never hold the database's write
lock that the kiosk needs for every tap. Refused
attempts are not audit events (a flood of them must not write to the chain). The answer
never says whether a user name exists.

The address is the client's: behind a reverse proxy, set ``[web] trusted_proxies`` (the
number of proxies in front of the app) and the app takes it from ``X-Forwarded-For``
through werkzeug's ProxyFix (:class:`web.TrustedProxies`); otherwise the header is
ignored.

**Sessions** are server-side records: signing in adds a row to ``api_tokens`` keyed by a
random session id (stored there only as a hash that no API token can have, see
:func:`session_key`), and the session cookie names it. Signing out revokes the row, so a
copied cookie stops working at once; changing the password still ends every session, and
a session ends after ``PERMANENT_SESSION_LIFETIME`` in any case.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

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
from sqlalchemy import select, update
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
ADDRESS_FACTOR = 4
USER_BACKOFF_CAP_S = 60
#: Password checks running at once in this process. Each takes ~0.1 s of CPU and memory
#: by design; a flood of sign-ins from many addresses would otherwise take every worker
#: thread and core, and the kiosk screen and the dashboard would wait behind it.
CONCURRENT_CHECKS = 2
SESSION_NAME = "web session"


# ------------------------------------------------------------------------------ passwords

Verifier = Callable[[str | None, str], bool]


# ------------------------------------------------------------------------------ sessions


class WebUser(UserMixin):
    """The signed-in member of staff (the User row, detached, read for this request)."""

    def __init__(self, user: User, via: str = "session", session_id: str = "") -> None:
        self.user = user
        self.id = user.id
        self.username = user.username
        self.display_name = user.display_name
        self.role: Role = user.role
        self.via = via
        self.session_id = session_id

    def get_id(self) -> str:
        # The session's server-side record, and the password it was signed in with:
        # signing out revokes the one, changing the password ends every session.
        return f"{self.user.id}:{_stamp(self.user)}:{self.session_id}"


def _stamp(user: User) -> str:
    return str(int(user.password_changed_at.timestamp()))


def session_key(session_id: str) -> str:
    """How a web session is stored in ``api_tokens.token_hash``: an ``s`` and 63 hex
    digits of its SHA-256. An API token's hash is 64 hex digits (never an ``s``), so the
    two can never be mistaken for one another, and a session id is not a bearer token."""
    return "s" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:63]


def _lifetime() -> timedelta:
    value = current_app.config["PERMANENT_SESSION_LIFETIME"]
    return value if isinstance(value, timedelta) else timedelta(seconds=int(value))


def _start_session(session_: Session, user: User, when: datetime) -> str:
    """A new server-side session for ``user`` (in the caller's unit of work); its id.
    The user's sessions that have outlived their lifetime are revoked on the way, so that
    retention (which removes revoked rows) clears them."""
    session_id = secrets.token_urlsafe(32)
    session_.execute(
        update(ApiToken)
        .where(
            ApiToken.user_id == user.id,
            ApiToken.token_hash.like("s%"),
            ApiToken.revoked_at.is_(None),
            ApiToken.created_at < when - _lifetime(),
        )
        .values(revoked_at=when)
    )
    session_.add(
        ApiToken(
            user_id=user.id,
            token_hash=session_key(session_id),
            name=SESSION_NAME,
            created_at=when,
        )
    )
    return session_id


@login_manager.user_loader
def _load_user(identifier: str) -> WebUser | None:
    user_id, stamp, session_id = [*identifier.split(":"), "", ""][:3]
    if not user_id.isdigit() or len(user_id) > 12 or not session_id:
        return None
    with core.reader() as session_:
        row = session_.execute(
            select(User, ApiToken.created_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(
                User.id == int(user_id),
                ApiToken.token_hash == session_key(session_id),
                ApiToken.revoked_at.is_(None),
            )
        ).first()
    if row is None:
        return None
    user, started = row
    if not user.active or _stamp(user) != stamp or started < core.now() - _lifetime():
        return None
    return WebUser(user, session_id=session_id)


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


@dataclass(frozen=True)
class Limits:
    """The throttle's numbers (see the module's docstring)."""

    attempts: int
    lockout_s: int
    address_attempts: int
    user_backoff_cap_s: int = USER_BACKOFF_CAP_S
    concurrent: int = CONCURRENT_CHECKS

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        attempts = int(config["LOCKER_LOGIN_ATTEMPTS"])
        return cls(
            attempts=attempts,
            lockout_s=int(config["LOCKER_LOGIN_LOCKOUT_S"]),
            address_attempts=int(
                config.get("LOCKER_LOGIN_ADDRESS_ATTEMPTS") or ADDRESS_FACTOR * attempts
            ),
            user_backoff_cap_s=int(config.get("LOCKER_LOGIN_BACKOFF_CAP_S", USER_BACKOFF_CAP_S)),
            concurrent=max(1, int(config.get("LOCKER_LOGIN_CONCURRENT", CONCURRENT_CHECKS))),
        )


@dataclass(frozen=True)
class Attempt:
    """A sign-in attempt: one from the audit trail, or a check still running here."""

    ok: bool
    at: datetime
    user: str
    address: str


def _like(key: str, value: str) -> str:
    """A LIKE pattern matching ``"key":"value"`` inside canonical JSON details."""
    fragment = json.dumps({key: value}, ensure_ascii=False, separators=(",", ":"))[1:-1]
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def recorded_attempts(
    session_: Session, username: str, address: str, when: datetime, limits: Limits
) -> list[Attempt]:
    """The sign-ins and failures of the window that concern ``username`` or ``address``,
    newest first (as many as the throttle can need of each)."""
    since = when - timedelta(seconds=limits.lockout_s)
    found: dict[int, Attempt] = {}
    wanted = [("address", address, limits.address_attempts + 2 * limits.attempts + 50)]
    if username:
        wanted.append(("user", username, 3 * limits.attempts + 100))
    for key, value, limit in wanted:
        rows = session_.execute(
            select(AuditEvent.seq, AuditEvent.kind, AuditEvent.occurred_at, AuditEvent.details)
            .where(
                AuditEvent.kind.in_((LOGIN_OK, LOGIN_FAILED)),
                AuditEvent.occurred_at >= since,
                AuditEvent.details.like(_like(key, value), escape="\\"),
            )
            .order_by(AuditEvent.seq.desc())
            .limit(limit)
        ).all()
        for seq, kind, occurred_at, details in rows:
            try:
                values = json.loads(details)
            except ValueError:
                continue
            if not isinstance(values, dict):
                continue
            found[seq] = Attempt(
                kind == LOGIN_OK, occurred_at, str(values.get("user")), str(values.get("address"))
            )
    return [found[seq] for seq in sorted(found, reverse=True)]


def _run(attempts: Iterable[Attempt], matches: Callable[[Attempt], bool]) -> list[datetime]:
    """The failures (newest first) of the attempts that ``matches``, back to the last
    success among them."""
    failures = []
    for attempt in attempts:
        if not matches(attempt):
            continue
        if attempt.ok:
            break
        failures.append(attempt.at)
    return failures


def _until_window_frees(failures: list[datetime], limit: int, lockout_s: int) -> datetime | None:
    if len(failures) < limit:
        return None
    return sorted(failures, reverse=True)[limit - 1] + timedelta(seconds=lockout_s)


def retry_after(
    recorded: list[Attempt],
    running: Iterable[Attempt],
    username: str,
    address: str,
    when: datetime,
    limits: Limits,
) -> int:
    """Seconds before ``username`` may be tried from ``address`` (0: now), from the
    ``recorded`` attempts of the window (newest first) and the checks still ``running``
    (each counts as a failure). The policy is the module's docstring."""
    since = when - timedelta(seconds=limits.lockout_s)
    live = [attempt for attempt in running if attempt.at >= since]
    everything = sorted(live, key=lambda a: a.at, reverse=True) + [
        attempt for attempt in recorded if attempt.at >= since
    ]
    # Checks still running are newer than anything written: they come first.
    pair = _run(everything, lambda a: a.user == username and a.address == address)
    by_address = [a.at for a in everything if a.address == address and not a.ok]
    by_user = _run(everything, lambda a: a.user == username) if username else []
    waits = [
        _until_window_frees(pair, limits.attempts, limits.lockout_s),
        _until_window_frees(by_address, limits.address_attempts, limits.lockout_s),
    ]
    if len(by_user) >= limits.attempts:
        extra = len(by_user) - limits.attempts
        delay = min(2 ** min(extra + 1, 30), limits.user_backoff_cap_s)
        waits.append(max(by_user) + timedelta(seconds=delay))
    wait = max(((until - when).total_seconds() for until in waits if until), default=0.0)
    return math.ceil(wait) if wait > 0 else 0


class LoginThrottle:
    """The checks running in this process, and the lock that admits new ones.

    :meth:`admit` reads the recorded attempts and counts the running checks under one lock,
    and registers the new check before letting go of it: two concurrent requests can never
    both take the last free attempt. :meth:`done` forgets a check once its outcome has been
    written (from then on the audit trail counts it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Attempt] = {}
        self._ids = itertools.count(1)

    def admit(
        self,
        username: str,
        address: str,
        when: datetime,
        limits: Limits,
        recorded: Callable[[], list[Attempt]],
    ) -> tuple[int | None, int, bool]:
        """``(ticket, 0, False)`` when the password may be checked now; else ``(None,
        seconds to wait, busy)``, where ``busy`` means that ``limits.concurrent`` checks
        are running already (the attempt is not counted against anyone)."""
        with self._lock:
            if len(self._running) >= limits.concurrent:
                return None, 1, True
            wait = retry_after(recorded(), self._running.values(), username, address, when, limits)
            if wait:
                return None, wait, False
            ticket = next(self._ids)
            self._running[ticket] = Attempt(False, when, username, address)
            return ticket, 0, False

    def done(self, ticket: int) -> None:
        with self._lock:
            self._running.pop(ticket, None)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)


def throttle() -> LoginThrottle:
    return current_app.extensions["locker_login_throttle"]


def _too_many(wait: int, *, busy: bool = False) -> Any:
    if wait < 60:
        when = f"{wait} second{'s' if wait != 1 else ''}"
    else:
        minutes = math.ceil(wait / 60)
        when = f"{minutes} minute{'s' if minutes != 1 else ''}"
    message = (
        f"Too many sign-in attempts. Wait {when} and try again, or ask an administrator "
        "to check your account."
    )
    if busy:
        message = "Many people are signing in at once. Wait a second and try again."
    response = current_app.make_response(
        render_template("error.html", status=429, message=message, back=None, wait=wait)
    )
    response.status_code = 429
    response.headers["Retry-After"] = str(wait)
    return response


# ------------------------------------------------------------------------------ views


def home_for(role: Role) -> str:
    return url_for("confiscations.new") if role is Role.STAFF else url_for("grid.index")


#: What a browser drops from a URL before parsing it: leading and trailing C0 controls and
#: spaces, and every tab and newline (WHATWG URL standard).
_C0_AND_SPACE = "".join(chr(n) for n in range(0x21))
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
#: Characters left as they are in a next address; everything else is percent-encoded.
_URL_SAFE = "/?&=#%:@!$'()*+,;~-._"


def _safe_next(value: str | None) -> str | None:
    r"""``value`` as a path on this site to go to after signing in, or None.

    Read as a browser would read it (controls and spaces trimmed, tabs and newlines
    removed: ``"/\t/evil.example"`` is ``//evil.example`` to a browser), it must be a path
    starting with one ``/``: no scheme, no host, no ``//`` or ``/\`` (which browsers take
    for a host), no backslash or control character anywhere. What is returned is that
    reading, percent-encoded down to plain ASCII: the browser cannot read it any other way.
    """
    if not value:
        return None
    text = value.strip(_C0_AND_SPACE).translate(_TAB_OR_NEWLINE)
    if not text.startswith("/") or text[1:2] in ("/", "\\"):
        return None
    if "\\" in text or any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text):
        return None
    parts = urlsplit(text)
    if parts.scheme or parts.netloc:
        return None
    encoded = quote(text, safe=_URL_SAFE)
    return encoded if encoded.startswith("/") and encoded[1:2] != "/" else None


def _clean_name(raw: str) -> str:
    name = "".join(ch for ch in raw.strip().lower() if ch.isprintable())
    return name[:NAME_LIMIT]


def _address() -> str:
    """The client's address (behind trusted proxies: ProxyFix has put it here)."""
    return (request.remote_addr or "unknown")[:64]


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign in with ``username`` and ``password`` (the throttle: the module's docstring)."""
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url or home_for(current_user.role))
        return render_template("login.html", next=next_url, username="", error=None)

    name = _clean_name(request.form.get("username", ""))
    password = request.form.get("password", "")[:1024]
    address = _address()
    limits = Limits.from_config(current_app.config)
    clock = core.clock()
    gate = throttle()

    def recorded() -> list[Attempt]:
        with core.reader() as session_:
            return recorded_attempts(session_, name, address, clock.now(), limits)

    ticket, wait, busy = gate.admit(name, address, clock.now(), limits, recorded)
    if ticket is None:
        log.warning(
            "sign-in refused for %r from %s: %s", name, address, "busy" if busy else "throttled"
        )
        return _too_many(wait, busy=busy)
    try:
        user = _check(name, password, address)
    finally:
        gate.done(ticket)

    if user is not None:
        session.clear()  # no session fixation
        login_user(WebUser(user, session_id=g.pop("locker_new_session")))
        session.permanent = True
        return redirect(next_url or home_for(user.role))

    wait = retry_after(recorded(), (), name, address, clock.now(), limits)
    if wait:
        return _too_many(wait)
    page = render_template(
        "login.html",
        next=next_url,
        username=request.form.get("username", "")[:NAME_LIMIT],
        error="That user name and password do not match.",
    )
    return page, 401


def _check(name: str, password: str, address: str) -> User | None:
    """Check the password and write the outcome: the signed-in user, or None.

    The user is read in a reader session and the password verified with no transaction
    open; only then is the outcome written, in a short unit of work (which finds the
    account as it is now: disabled or given a new password meanwhile means no)."""
    instance, clock = core.instance(), core.clock()
    verify: Verifier = current_app.config["LOCKER_PASSWORD_VERIFIER"]
    with core.reader() as session_:
        found = session_.execute(select(User).where(User.username == name)).scalar_one_or_none()
    stored = found.password_hash if found is not None and found.active else None
    ok = verify(stored, password) if name else verify(None, password)
    rehashed = (
        users.hash_password(password) if ok and stored and users.needs_rehash(stored) else None
    )
    details = {"user": name, "address": address}
    with core.writer() as session_:
        user = session_.get(User, found.id) if ok and found is not None else None
        if user is not None and (not user.active or user.password_hash != stored):
            user = None
        if user is None:
            instance.audit.record(
                session_, clock, Actor.system("web"), LOGIN_FAILED, details=details
            )
            return None
        user.last_login_at = clock.now()
        if rehashed:
            user.password_hash = rehashed
        g.locker_new_session = _start_session(session_, user, clock.now())
        instance.audit.record(session_, clock, Actor.for_user(user), LOGIN_OK, details=details)
    return user


@bp.post("/logout")
def logout() -> Any:
    """Sign out (POST, with the form's CSRF token): the session's server-side record is
    revoked, so the cookie (or a copy of it) no longer signs anyone in."""
    instance, clock = core.instance(), core.clock()
    session_id = getattr(current_user, "session_id", "")
    with core.writer() as session_:
        if session_id:
            session_.execute(
                update(ApiToken)
                .where(
                    ApiToken.token_hash == session_key(session_id),
                    ApiToken.revoked_at.is_(None),
                )
                .values(revoked_at=clock.now())
            )
        instance.audit.record(
            session_, clock, core.actor(), "auth.logout", details={"user": current_user.username}
        )
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    app.config.setdefault("LOCKER_PASSWORD_VERIFIER", users.verify_password)
    app.extensions["locker_login_throttle"] = LoginThrottle()
    login_manager.init_app(app)
    app.before_request(bearer_user)
    app.register_blueprint(bp)
