"""Jinja setup: filters for times, the navigation, and what every page needs.

Autoescaping is on for every template (Flask's default for ``.html``); no template marks
data from people ``|safe``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Flask, current_app, request

from kiosk.models import Role

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


def _local(when: datetime | None, fmt: str = "%d %b %Y %H:%M") -> str:
    return core.local(when, fmt)


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
