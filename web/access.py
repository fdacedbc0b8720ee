"""Who may use which route: one table, enforced before every request.

Every endpoint of the app must be listed in :data:`ACCESS`; an endpoint that is not is
refused to everyone (fail closed) and a test checks that the table and the routes agree.
The custody ledger checks roles again for every operation, so the web can never allow more
than the rules do.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from flask import Flask, redirect, request, url_for
from flask_login import current_user

from kiosk.models import Role

from . import core

log = logging.getLogger(__name__)

PUBLIC: Literal["public"] = "public"
RELEASE: Literal["release"] = "release"  # the roles of [policy] release_roles

ANY_STAFF = frozenset({Role.STAFF, Role.OFFICE, Role.DSL, Role.ADMIN})
OFFICE_UP = frozenset({Role.OFFICE, Role.DSL, Role.ADMIN})
DSL_UP = frozenset({Role.DSL, Role.ADMIN})
ENROL = frozenset({Role.OFFICE, Role.ADMIN})
ADMIN = frozenset({Role.ADMIN})

Rule = frozenset[Role] | Literal["public", "release"]

# endpoint -> who may use it. Keep in step with the routes (tests/web/test_access.py).
ACCESS: dict[str, Rule] = {
    "static": PUBLIC,
    "favicon": PUBLIC,
    # sign in and out
    "auth.login": PUBLIC,
    "auth.logout": ANY_STAFF,
    # the dashboard (staff are sent on to the confiscation form)
    "grid.index": ANY_STAFF,
    # register
    "register.index": OFFICE_UP,
    "register.csv": OFFICE_UP,
    # confiscations and release to a parent
    "confiscations.index": OFFICE_UP,
    "confiscations.new": ANY_STAFF,
    "confiscations.show": OFFICE_UP,
    "confiscations.release": RELEASE,
    "confiscations.notice": ANY_STAFF,  # staff: only the ones they confiscated
    # safeguarding
    "safeguarding.index": DSL_UP,
    "safeguarding.refer": ANY_STAFF,
    "safeguarding.hold": ANY_STAFF,
    "safeguarding.lift": DSL_UP,
    "safeguarding.police": DSL_UP,
    # exemptions
    "exemptions.index": OFFICE_UP,
    "exemptions.grant": ADMIN,
    "exemptions.revoke": ADMIN,
    # pupils and cards
    "pupils.index": OFFICE_UP,
    "pupils.show": OFFICE_UP,
    "pupils.enrol_card": ENROL,
    # exam check
    "exams.index": OFFICE_UP,
    # reports
    "reports.index": OFFICE_UP,
    "reports.csv": OFFICE_UP,
    # audit log
    "audit.index": OFFICE_UP,
    # kiosk health and commands
    "health.index": OFFICE_UP,
    "health.healthz": PUBLIC,
    "commands.show": ANY_STAFF,
    "commands.open_compartment": OFFICE_UP,
    "commands.open_all": ADMIN,
    # the kiosk's own screen (no sign-in: it runs on the cabinet)
    "kiosk_screen.this_kiosk": PUBLIC,
    "kiosk_screen.screen": PUBLIC,
    "kiosk_screen.state": PUBLIC,
    # JSON API
    "api.openapi": PUBLIC,
    "api.compartments": OFFICE_UP,
    "api.kiosks": OFFICE_UP,
    "api.custody_list": OFFICE_UP,
    "api.custody_get": OFFICE_UP,
    "api.custody_release": RELEASE,
    "api.custody_hold": ANY_STAFF,
    "api.custody_lift_hold": DSL_UP,
    "api.custody_police": DSL_UP,
    "api.confiscations_list": OFFICE_UP,
    "api.confiscations_create": ANY_STAFF,
    "api.exemptions_list": OFFICE_UP,
    "api.exemptions_create": ADMIN,
    "api.exemptions_revoke": ADMIN,
    "api.events": OFFICE_UP,
    "api.command_get": ANY_STAFF,
    # simulated hardware only (registered only with simulated=True)
    "sim.tap": PUBLIC,
    "sim.door": PUBLIC,
    "sim.fault": PUBLIC,
    "sim.command": PUBLIC,
}


def release_roles() -> frozenset[Role]:
    return frozenset(Role(name) for name in core.instance().policy.config.release_roles)


def roles_for(endpoint: str) -> Rule | None:
    """The rule of ``endpoint`` with RELEASE resolved; None when the endpoint is unknown."""
    rule = ACCESS.get(endpoint)
    if rule == RELEASE:
        return release_roles()
    return rule


def allowed(endpoint: str, role: Role | None) -> bool:
    """May ``role`` (None: not signed in) use ``endpoint``?"""
    rule = roles_for(endpoint)
    if rule is None:
        return False
    if rule == PUBLIC:
        return True
    return role is not None and role in rule


def can(endpoint: str) -> bool:
    """For templates: may the current user use ``endpoint``?"""
    return allowed(endpoint, core.role())


def _is_api() -> bool:
    return request.path.startswith("/api/")


def enforce() -> Any:
    """``before_request``: refuse what the table does not allow."""
    endpoint = request.endpoint
    if endpoint is None:
        return None  # routing will answer 404 or 405
    rule = roles_for(endpoint)
    if rule is None:
        log.error("endpoint %s is not in web.access.ACCESS: refused", endpoint)
        return core.error_response("This page is not available.", 403)
    if rule == PUBLIC:
        return None
    if not current_user.is_authenticated:
        if _is_api() or core.wants_json():
            return core.error_response(
                "sign in or send Authorization: Bearer TOKEN", 401, headers=_challenge()
            )
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if current_user.role not in rule:
        return core.error_response(f"the {current_user.role.value} role may not use this page", 403)
    return None


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="locker"'}


def init_app(app: Flask) -> None:
    app.before_request(enforce)
    app.jinja_env.globals["can"] = can
