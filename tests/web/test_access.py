"""The role table against every route: each role and no sign-in, for every rule and method.

Allowed: anything but 401/403 (and never a 5xx). Refused: 403 for a signed-in role; a
redirect to the sign-in page for a stranger on a page, 401 on the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.routing import Rule

from kiosk import commands, exemptions
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import ExemptionKind, Role
from web import access, create_app

from .conftest import (
    SCHOOL_MORNING,
    Client,
    confiscate,
    copy_instance,
    kiosk_of,
    pupil_of,
    sign_in,
    user_of,
)

ROLES: list[Role | None] = [None, Role.STAFF, Role.OFFICE, Role.DSL, Role.ADMIN]

# The agreed matrix, written out independently of web.access (which must match it).
ANON, STAFF, OFFICE, DSL, ADMIN = None, "staff", "office", "dsl", "admin"
EVERYONE = {ANON, STAFF, OFFICE, DSL, ADMIN}
ALL_STAFF = {STAFF, OFFICE, DSL, ADMIN}
OFFICE_UP = {OFFICE, DSL, ADMIN}
EXPECTED: dict[str, set[str | None]] = {
    "static": EVERYONE,
    "favicon": EVERYONE,
    "auth.login": EVERYONE,
    "auth.logout": ALL_STAFF,
    "grid.index": ALL_STAFF,  # staff are sent on to the confiscation form
    "register.index": OFFICE_UP,
    "register.csv": OFFICE_UP,
    "confiscations.index": OFFICE_UP,
    "confiscations.new": ALL_STAFF,
    "confiscations.show": OFFICE_UP,
    "confiscations.release": OFFICE_UP,  # [policy] release_roles, by default
    "confiscations.notice": ALL_STAFF,
    "safeguarding.index": {DSL, ADMIN},
    "safeguarding.refer": ALL_STAFF,
    "safeguarding.hold": ALL_STAFF,
    "safeguarding.lift": {DSL, ADMIN},
    "safeguarding.police": {DSL, ADMIN},
    "exemptions.index": OFFICE_UP,
    "exemptions.grant": {ADMIN},
    "exemptions.revoke": {ADMIN},
    "pupils.index": OFFICE_UP,
    "pupils.show": OFFICE_UP,
    "pupils.enrol_card": {OFFICE, ADMIN},
    "exams.index": OFFICE_UP,
    "reports.index": OFFICE_UP,
    "reports.csv": OFFICE_UP,
    "audit.index": OFFICE_UP,
    "health.index": OFFICE_UP,
    "health.healthz": EVERYONE,
    "commands.show": ALL_STAFF,
    "commands.open_compartment": OFFICE_UP,
    "commands.open_all": {ADMIN},
    "kiosk_screen.this_kiosk": EVERYONE,
    "kiosk_screen.screen": EVERYONE,
    "kiosk_screen.state": EVERYONE,
    "api.openapi": EVERYONE,
    "api.compartments": OFFICE_UP,
    "api.kiosks": OFFICE_UP,
    "api.custody_list": OFFICE_UP,
    "api.custody_get": OFFICE_UP,
    "api.custody_release": OFFICE_UP,
    "api.custody_hold": ALL_STAFF,
    "api.custody_lift_hold": {DSL, ADMIN},
    "api.custody_police": {DSL, ADMIN},
    "api.confiscations_list": OFFICE_UP,
    "api.confiscations_create": ALL_STAFF,
    "api.exemptions_list": OFFICE_UP,
    "api.exemptions_create": {ADMIN},
    "api.exemptions_revoke": {ADMIN},
    "api.events": OFFICE_UP,
    "api.command_get": ALL_STAFF,
    "sim.tap": EVERYONE,
    "sim.door": EVERYONE,
    "sim.fault": EVERYONE,
    "sim.command": EVERYONE,
}


@pytest.fixture(scope="module")
def world(
    template_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Flask, dict[str, Any]]]:
    """One simulated app for the whole matrix, with a record of each kind to point at."""
    instance: Instance = copy_instance(template_home, tmp_path_factory.mktemp("matrix") / "i")
    clock = ManualClock(SCHOOL_MORNING)
    custody_id = confiscate(instance, clock, "1001")
    with instance.database.transaction() as session:
        admin = Actor.for_user(user_of(session, Role.ADMIN))
        exemption = exemptions.grant(
            session,
            admin,
            clock,
            instance.audit,
            pupil=pupil_of(session, "1002"),
            kind=ExemptionKind.MEDICAL,
            starts_on=clock.now().date(),
            ends_on=clock.now().date() + timedelta(days=5),
            agreement_reference="MED-1",
        )
        command = commands.submit(
            session,
            admin,
            clock,
            instance.audit,
            kiosk=kiosk_of(session),
            kind="sim.tap",
            payload={"uid": "DE:AD:BE:EF"},
        )
        values = {
            "custody_id": custody_id,
            "exemption_id": exemption.id,
            "command_id": command.id,
            "kiosk": "main",
            "admission": "1001",
            "name": "deposits",
            "filename": "app.css",
            "compartment": 1,
        }
    app = create_app(instance, simulated=True, testing=True, config={"LOCKER_CLOCK": clock})
    yield app, values
    instance.close()


def _calls(app: Flask, values: dict[str, Any]) -> list[tuple[Rule, str, str]]:
    calls = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if rule.endpoint == "auth.login" and method == "POST":
                continue  # sign-in itself: tests/web/test_auth.py
            url = rule.build({arg: values[arg] for arg in rule.arguments})[1]
            calls.append((rule, method, url))
    # Sign out last: it ends the session the other calls use.
    return sorted(calls, key=lambda call: call[0].endpoint == "auth.logout")


def _call(client: Client, method: str, url: str) -> Any:
    if method == "GET":
        return client.get(url)
    if url.startswith(("/api/", "/sim/")):
        return client.post_json(url, {})
    return client.post(url, {})


def test_every_route_is_in_the_table(world: tuple[Flask, dict[str, Any]]) -> None:
    app, _ = world
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - set(access.ACCESS) == set(), "routes missing from web.access.ACCESS"
    assert set(access.ACCESS) - endpoints == set(), "stale entries in web.access.ACCESS"


def test_the_table_is_the_agreed_matrix(world: tuple[Flask, dict[str, Any]]) -> None:
    app, _values = world
    with app.app_context():
        actual = {
            endpoint: {
                role.value if role else None for role in ROLES if access.allowed(endpoint, role)
            }
            for endpoint in access.ACCESS
        }
    assert actual == EXPECTED


def test_sim_routes_exist_only_when_simulated(instance: Instance, clock: ManualClock) -> None:
    app = create_app(instance, testing=True, config={"LOCKER_CLOCK": clock})
    sim = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("sim.")]
    assert sim == []
    assert app.test_client().post("/sim/tap", json={"uid": "DEADBEEF"}).status_code == 404


def test_an_unlisted_endpoint_is_refused_to_everyone(
    instance: Instance, clock: ManualClock
) -> None:
    app = create_app(instance, testing=True, config={"LOCKER_CLOCK": clock})
    app.add_url_rule("/secret", "secret", lambda: "secret")
    admin = sign_in(app, Role.ADMIN)
    assert admin.get("/secret").status_code == 403
    assert app.test_client().get("/secret").status_code == 403


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value if r else "anonymous")
def test_role_matrix(world: tuple[Flask, dict[str, Any]], role: Role | None) -> None:
    app, values = world
    client = sign_in(app, role, address=f"10.0.0.{ROLES.index(role) + 1}")
    wrong = []
    checked = 0
    with app.app_context():
        for rule, method, url in _calls(app, values):
            response = _call(client, method, url)
            status = response.status_code
            allowed = access.allowed(rule.endpoint, role)
            location = response.headers.get("Location", "")
            if status >= 500:
                wrong.append(f"{method} {url}: {status} (server error)")
            elif allowed:
                sent_to_login = status == 302 and "/login" in location
                if status in (401, 403) or (sent_to_login and rule.endpoint != "auth.logout"):
                    wrong.append(f"{method} {url}: {status}, but {role} is allowed")
                elif method == "GET" and status not in (200, 302):
                    wrong.append(f"{method} {url}: {status} for an allowed GET")
            elif role is None:
                expected = 401 if url.startswith("/api/") else 302
                if status != expected or (status == 302 and "/login" not in location):
                    wrong.append(f"{method} {url}: {status} for a stranger (expected {expected})")
            elif status != 403:
                wrong.append(f"{method} {url}: {status}, but {role} is refused (expected 403)")
            checked += 1
    assert checked >= 55
    assert wrong == []


def test_staff_are_sent_to_the_confiscation_form(world: tuple[Flask, dict[str, Any]]) -> None:
    app, _ = world
    staff = sign_in(app, Role.STAFF, address="10.0.1.1")
    response = staff.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/confiscate")
    nav = staff.get("/confiscate").get_data(as_text=True).split("</nav>")[0]
    assert re.findall(r'<li><a href="([^"]+)"', nav) == ["/confiscate", "/refer"]


def test_release_roles_follow_the_policy(template_home: Path, tmp_path: Path) -> None:
    instance = copy_instance(
        template_home,
        tmp_path / "i",
        {"policy": {"release_roles": ["dsl", "admin"], "confiscation_release_from": "00:00"}},
    )
    clock = ManualClock(SCHOOL_MORNING)
    custody_id = confiscate(instance, clock, "1001")
    app = create_app(instance, testing=True, config={"LOCKER_CLOCK": clock})
    office = sign_in(app, Role.OFFICE)
    form = {"collector": "other", "collector_name": "A Parent", "relationship": "Mother"}
    refused = office.post(f"/confiscations/{custody_id}/release", {**form, "id_checked": "yes"})
    assert refused.status_code == 403
    dsl = sign_in(app, Role.DSL)
    released = dsl.post(f"/confiscations/{custody_id}/release", {**form, "id_checked": "yes"})
    assert released.status_code == 303
    instance.close()
