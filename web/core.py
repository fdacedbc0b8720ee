"""What every blueprint shares: the instance, the clock, the actor, sessions, errors, dates.

A request is one unit of work: reads go through :func:`reader`, every change through
:func:`writer` (one ``Database.transaction()``), calling the kiosk services with
:func:`actor` and :func:`clock`. Errors raised on purpose by the kiosk package become 4xx
responses here: an HTML page for people, ``{"error": "..."}`` for the JSON API.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, jsonify, render_template, request
from flask_login import current_user
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, UnsupportedMediaType
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError as RoutingValidationError

from kiosk.actors import Actor
from kiosk.clock import Clock
from kiosk.errors import (
    ConflictError,
    LockerError,
    NotFound,
    PermissionDenied,
    PolicyError,
    ValidationError,
)
from kiosk.instance import Instance
from kiosk.models import Role

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/sim/")


@dataclass
class LockerApp:
    """What ``create_app`` hangs on ``app.extensions["locker"]``."""

    instance: Instance
    simulated: bool


def locker() -> LockerApp:
    return current_app.extensions["locker"]


def instance() -> Instance:
    return locker().instance


def clock() -> Clock:
    return current_app.config["LOCKER_CLOCK"]


def now() -> datetime:
    return clock().now()


def actor() -> Actor:
    """The signed-in member of staff as the ledger's actor."""
    return Actor.for_user(current_user.user)


def role() -> Role | None:
    return current_user.role if current_user.is_authenticated else None


def has_role(*roles: Role) -> bool:
    return role() in roles


def sees_restricted() -> bool:
    """DSL and admin read safeguarding details; nobody else does."""
    return has_role(Role.DSL, Role.ADMIN)


@contextmanager
def reader() -> Iterator[Session]:
    with instance().database.reader() as session:
        yield session


@contextmanager
def writer() -> Iterator[Session]:
    with instance().database.transaction() as session:
        yield session


# ------------------------------------------------------------------------------ errors


def status_for(error: LockerError) -> int:
    """The HTTP status of an error raised on purpose by the kiosk package."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, PermissionDenied):
        return 403
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, PolicyError | ConflictError):
        return 409
    return 400


def wants_json() -> bool:
    """JSON for the API, the simulator and ``*.json`` endpoints, or when asked for."""
    path = request.path
    if path.startswith(JSON_PREFIXES) or path == "/healthz" or path.endswith(".json"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > (request.accept_mimetypes["text/html"])
    )


def safe_back(default: str = "/") -> str:
    """The page the person came from, when it is on this site; else ``default``."""
    referrer = request.referrer or ""
    parts = urlsplit(referrer)
    if referrer and parts.netloc == request.host and parts.scheme in ("http", "https"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return default


def error_response(message: str, status: int, *, headers: dict[str, str] | None = None) -> Any:
    if wants_json():
        response = jsonify({"error": message})
    else:
        response = current_app.make_response(
            render_template(
                "error.html", status=status, message=message, back=safe_back(), wait=None
            )
        )
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


HTTP_MESSAGES = {
    400: "The request was not understood.",
    401: "Please sign in.",
    403: "Your role may not do this.",
    404: "There is no such page or record.",
    405: "That method is not allowed here.",
    409: "That conflicts with the current state.",
    413: "The upload is too large.",
    415: "Send JSON (Content-Type: application/json).",
    429: "Too many requests; wait a little.",
    500: "Something went wrong; the error was logged.",
}


def register_error_handlers(app: Any) -> None:
    @app.errorhandler(LockerError)
    def locker_error(error: LockerError) -> Any:
        return error_response(str(error), status_for(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        custom = error.description if error.description != type(error).description else None
        message = custom or HTTP_MESSAGES.get(status) or error.name
        headers = dict(error.get_headers())
        headers.pop("Content-Type", None)
        return error_response(message, status, headers=headers)

    @app.errorhandler(OperationalError)
    def database_busy(error: OperationalError) -> Any:
        log.warning("database error: %s", error.orig)
        return error_response("The database is busy or unreachable; try again.", 503)


# ------------------------------------------------------------------------------ input

#: How deeply a JSON body may nest. Every body the API and the simulator take is a flat
#: object; a little room is left for a client that sends nested extras we ignore.
JSON_MAX_DEPTH = 16


def json_object() -> dict[str, Any]:
    """The request's body as a JSON object: the one way every JSON endpoint reads a body.

    415 when it is not sent as JSON; 400 (a :class:`ValidationError`) when it is not valid
    JSON, not an object, nested deeper than :data:`JSON_MAX_DEPTH` (Python's parser
    would otherwise run out of recursion on ``[[[[...`` and answer 500), or holds a NUL
    character in a string (named by its key).
    """
    if not request.is_json:
        raise UnsupportedMediaType("send a JSON object (Content-Type: application/json)")
    raw = request.get_data(cache=True)
    if _nesting(raw) > JSON_MAX_DEPTH:
        raise ValidationError(f"the body is nested too deeply (at most {JSON_MAX_DEPTH} levels)")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValidationError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object")
    _refuse_nul_in_json(data, "the body")
    return data


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def _nesting(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` JSON (brackets inside strings
    do not count), without parsing it: linear time, no recursion."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def refuse_nul_characters() -> None:
    """``before_request``: a 400 naming the field when a query parameter, a form field or a
    part of the path holds a NUL character. No text in the school's records may hold one
    (PostgreSQL refuses it outright), and no person types one; JSON bodies are checked by
    :func:`json_object`."""
    parts: list[tuple[str, Any]] = [
        *(("query parameter " + name, value) for name, value in request.args.items(multi=True)),
        *(("path " + name, value) for name, value in (request.view_args or {}).items()),
    ]
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and not request.is_json:
        parts += [("field " + name, value) for name, value in request.form.items(multi=True)]
    for where, value in parts:
        if isinstance(value, str) and "\x00" in value:
            raise ValidationError(f"{where}: a NUL character is not allowed")


def _refuse_nul_in_json(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{where}: a NUL character is not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul_in_json(key, where)
            _refuse_nul_in_json(item, f"{key}" if where == "the body" else f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nul_in_json(item, f"{where}[{index}]")


#: The largest record id: ids are 32-bit in the database (PostgreSQL's ``integer``).
MAX_ID = 2**31 - 1


class IdConverter(BaseConverter):
    """``<id:name>``: a record id. Ids are 32-bit in the database (PostgreSQL's ``integer``):
    a bigger number cannot name a row, so the route does not match (404)."""

    regex = r"\d{1,12}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_ID:
            raise RoutingValidationError()
        return number

    def to_url(self, value: Any) -> str:
        return str(int(value))


#: The dates a form or query may name: a range every calendar sum the pages do (a day
#: either side, a month of reports back) stays well inside, in any timezone.
MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(2199, 12, 31)


def parse_date(value: str | None, what: str, default: date | None = None) -> date | None:
    """A YYYY-MM-DD date from a form or query, ``default`` when empty; ValidationError (400)
    for anything else, and for a date outside :data:`MIN_DATE` .. :data:`MAX_DATE`."""
    if value is None or not value.strip():
        return default
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(f"{what}: expected a date YYYY-MM-DD, got {value[:20]!r}") from None
    if not MIN_DATE <= day <= MAX_DATE:
        raise ValidationError(
            f"{what}: {day.isoformat()} is out of range; choose a date from "
            f"{MIN_DATE.isoformat()} to {MAX_DATE.isoformat()}"
        )
    return day


def parse_int(value: Any, what: str, *, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{what} must be a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{what} must be a whole number") from None
    if not minimum <= number <= maximum:
        raise ValidationError(f"{what} must be between {minimum} and {maximum}")
    return number


def today() -> date:
    return instance().policy.school_day(now())


def local(when: datetime | str | None, fmt: str = "%d %b %Y %H:%M") -> str:
    """``when`` in the school's local time (the policy's timezone). ``when`` may be an
    ISO 8601 text (as the kiosk publishes its times); text that is not one is shown as it
    is, and a time without a zone is taken as UTC."""
    if when is None or when == "":
        return ""
    if not isinstance(when, str | datetime):  # what a kiosk published, as it is
        return str(when)[:40]
    if isinstance(when, str):
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError:
            return when[:40]
        when = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    try:
        return instance().policy.local(when).strftime(fmt)
    except (OverflowError, ValueError):  # a time at the very edge of the calendar
        return when.isoformat()


def age_text(when: datetime | None, reference: datetime | None = None) -> str:
    """``3 min ago`` style text."""
    if when is None:
        return "never"
    seconds = ((reference or now()) - when).total_seconds()
    if seconds < 0:
        seconds = 0
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{int(seconds // 86400)} days ago"


def duration_text(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when is not None else None
