"""Jinja setup: filters for times, the navigation, and what every page needs.

Autoescaping is on for every template (Flask's default for ``.html``); no template marks
data from people ``|safe``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy import select

from kiosk.models import Role, User

from . import access, core

log = logging.getLogger(__name__)

# The dashboard's navigation: every page is one click from it (shown to those who may use it).
NAV: tuple[tuple[str, str], ...] = (
    ("grid.index", "Lockers"),
    ("register.index", "Register"),
    ("confiscations.index", "Confiscations"),
    ("confiscations.new", "Confiscate"),
    ("safeguarding.refer", "Refer to DSL"),
    ("safeguarding.index", "Safeguarding"),
    ("exemptions.index", "Exemptions"),
    ("pupils.index", "Pupils & cards"),
    ("exams.index", "Exam check"),
    ("reports.index", "Reports"),
    ("audit.index", "Audit log"),
    ("health.index", "Kiosks"),
)


def _local(when: datetime | str | None, fmt: str = "%d %b %Y %H:%M") -> str:
    return core.local(when, fmt)


def _display_names() -> dict[str, str]:
    """Every member of staff's display name by user name (read once per request)."""
    names = getattr(g, "locker_display_names", None)
    if names is None:
        with core.reader() as session:
            names = dict(session.execute(select(User.username, User.display_name)).all())
        g.locker_display_names = names
    return names


def who(label: str | None) -> str:
    """An actor as people read it: ``user:head`` is the head's display name, ``kiosk:main``
    "kiosk main", ``system:cli`` "system (cli)", ``pupil:1234`` "pupil 1234"."""
    if not label:
        return ""
    kind, _, name = label.partition(":")
    if kind == "user" and name:
        return _display_names().get(name, name)
    if kind in ("kiosk", "pupil") and name:
        return f"{kind} {name}"
    if kind == "system":
        return f"system ({name})" if name else "system"
    return label


def _nav() -> list[dict[str, Any]]:
    here = request.endpoint or ""
    staff = core.role() is Role.STAFF  # the dashboard only sends them on to Confiscate
    return [
        {"endpoint": endpoint, "label": label, "current": here == endpoint}
        for endpoint, label in NAV
        if access.can(endpoint) and not (staff and endpoint == "grid.index")
    ]


def init_app(app: Flask) -> None:
    app.jinja_env.filters["local"] = _local
    app.jinja_env.filters["ago"] = core.age_text
    app.jinja_env.filters["who"] = who
    app.jinja_env.filters["duration"] = core.duration_text
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {
            "site_name": current_app.config["LOCKER_SITE_NAME"],
            "simulated": current_app.config["LOCKER_SIMULATED"],
            "nav": _nav,
            "role": core.role(),
        }
