"""Signing in and out: sessions, cookie flags, CSRF, the throttle (with an injected clock),
no user-name enumeration, bearer tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from kiosk import users
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Role

from .conftest import PASSWORD, Client, confiscate, user_of


def _events(instance: Instance, kind: str) -> list[dict[str, object]]:
    with instance.database.reader() as session:
        rows = session.execute(
            select(AuditEvent.details).where(AuditEvent.kind == kind).order_by(AuditEvent.seq)
        ).scalars()
        return [json.loads(row) for row in rows]


def test_sign_in_records_an_event_and_sets_a_safe_cookie(
    login: Callable[..., Client], instance: Instance
) -> None:
    client = login(None)
    response = client.post("/login", {"username": "Office", "password": PASSWORD})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "locker_session=" in cookie
    assert "HttpOnly" in cookie
    assert "Secure" in cookie
    assert "SameSite=Lax" in cookie
    assert _events(instance, "auth.login") == [{"address": "127.0.0.1", "user": "office"}]
    assert client.get("/").status_code == 200


def test_secure_cookies_follow_the_configuration(instance: Instance, clock: ManualClock) -> None:
    from web import create_app

    app = create_app(instance, testing=True, config={"SESSION_COOKIE_SECURE": False})
    assert app.config["SESSION_COOKIE_SECURE"] is False
    default = create_app(instance)
    assert default.config["SESSION_COOKIE_SECURE"] is instance.config.web.secure_cookies is True


def test_sign_in_goes_back_to_the_page_asked_for(login: Callable[..., Client]) -> None:
    client = login(None)
    first = client.get("/register")
    assert first.status_code == 302
    assert first.headers["Location"] == "/login?next=/register"
    response = client.post(
        "/login", {"username": "office", "password": PASSWORD, "next": "/register"}
    )
    assert response.headers["Location"] == "/register"
    evil = login(None).post(
        "/login", {"username": "office", "password": PASSWORD, "next": "//evil.example/"}
    )
    assert evil.headers["Location"] == "/"


def test_a_form_without_the_csrf_token_is_refused(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/login", data={"username": "office", "password": PASSWORD})
    assert response.status_code == 400
    assert "reload the page" in response.get_data(as_text=True)


def test_sign_out_needs_a_post_with_the_token(login: Callable[..., Client]) -> None:
    client = login(Role.OFFICE)
    assert client.get("/logout").status_code == 405
    assert client.raw.post("/logout").status_code == 400  # no CSRF token
    assert client.get("/").status_code == 200
    response = client.post("/logout")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_and_unknown_user_look_the_same(
    login: Callable[..., Client], instance: Instance
) -> None:
    client = login(None)
    wrong = client.post("/login", {"username": "office", "password": "not-the-password"})
    unknown = client.post("/login", {"username": "nobody", "password": "not-the-password"})
    assert wrong.status_code == unknown.status_code == 401

    def page(response: object, name: str) -> str:
        html = response.get_data(as_text=True)  # type: ignore[attr-defined]
        return re.sub(r'(name="csrf[-_]token"[^>]*?)(value|content)="[^"]*"', r"\1", html).replace(
            name, "NAME"
        )

    assert page(wrong, "office") == page(unknown, "nobody")
    assert "That user name and password do not match." in page(wrong, "office")
    assert [e["user"] for e in _events(instance, "auth.login_failed")] == ["office", "nobody"]


def test_throttle_per_user_name(
    login: Callable[..., Client], clock: ManualClock, app: Flask, instance: Instance
) -> None:
    app.config["LOCKER_LOGIN_ATTEMPTS"] = 3
    app.config["LOCKER_LOGIN_LOCKOUT_S"] = 300
    statuses = []
    for n in range(3):
        # Each attempt from a different address: only the user name is counted.
        client = login(None, address=f"10.1.0.{n}")
        statuses.append(
            client.post("/login", {"username": "office", "password": "nope"}).status_code
        )
        clock.advance(10)
    assert statuses == [401, 401, 429]
    locked = login(None, address="10.1.0.9").post(
        "/login", {"username": "office", "password": PASSWORD}
    )
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == str(300 - 30)  # the first failure was 30 s ago
    assert "Wait 5 minutes" in locked.get_data(as_text=True)
    # The right password is not even checked while locked: no success is recorded.
    assert _events(instance, "auth.login") == []
    # Another user from the same addresses is not affected.
    other = login(None, address="10.1.0.1").post(
        "/login", {"username": "dsl", "password": PASSWORD}
    )
    assert other.status_code == 302
    clock.advance(300 - 30)
    unlocked = login(None, address="10.1.0.9").post(
        "/login", {"username": "office", "password": PASSWORD}
    )
    assert unlocked.status_code == 302


def test_throttle_per_address_and_a_success_resets_it(
    login: Callable[..., Client], clock: ManualClock, app: Flask
) -> None:
    app.config["LOCKER_LOGIN_ATTEMPTS"] = 3
    client = login(None, address="10.2.0.1")
    assert client.post("/login", {"username": "a1", "password": "x"}).status_code == 401
    assert client.post("/login", {"username": "a2", "password": "x"}).status_code == 401
    # A success from this address ends the run of failures.
    ok = client.post("/login", {"username": "office", "password": PASSWORD})
    assert ok.status_code == 302
    client = login(None, address="10.2.0.1")
    assert client.post("/login", {"username": "a3", "password": "x"}).status_code == 401
    assert client.post("/login", {"username": "a4", "password": "x"}).status_code == 401
    third = client.post("/login", {"username": "a5", "password": "x"})
    assert third.status_code == 429
    assert "Too many sign-in attempts" in third.get_data(as_text=True)
    # A different address is fine.
    elsewhere = login(None, address="10.2.0.2")
    assert elsewhere.post("/login", {"username": "dsl", "password": PASSWORD}).status_code == 302


def test_throttle_holds_across_app_instances(
    instance: Instance, clock: ManualClock, login: Callable[..., Client], app: Flask
) -> None:
    """The count lives in the audit trail: a second process (app) sees the failures."""
    from web import create_app

    from .conftest import sign_in

    app.config["LOCKER_LOGIN_ATTEMPTS"] = 2
    client = login(None, address="10.3.0.1")
    for _ in range(2):
        client.post("/login", {"username": "head", "password": "x"})
    other = create_app(
        instance, testing=True, config={"LOCKER_CLOCK": clock, "LOCKER_LOGIN_ATTEMPTS": 2}
    )
    second = sign_in(other, None, address="10.3.0.2")
    assert second.post("/login", {"username": "head", "password": PASSWORD}).status_code == 429


def test_changing_the_password_ends_sessions(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    client = login(Role.OFFICE)
    assert client.get("/").status_code == 200
    clock.advance(5)
    with instance.database.transaction() as session:
        user = user_of(session, Role.OFFICE)
        users.set_password(
            session, Actor.system("test"), clock, instance.audit, user, "another-fine-passphrase"
        )
    assert client.get("/").status_code == 302


def _token(instance: Instance, clock: ManualClock, role: Role) -> str:
    with instance.database.transaction() as session:
        return users.create_token(
            session, Actor.system("test"), clock, instance.audit, user_of(session, role)
        )


def test_bearer_tokens(app: Flask, instance: Instance, clock: ManualClock) -> None:
    client = app.test_client()
    token = _token(instance, clock, Role.OFFICE)
    ok = client.get("/api/v1/compartments", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert "Set-Cookie" not in ok.headers
    bad = client.get("/api/v1/compartments", headers={"Authorization": "Bearer lk_nope"})
    assert bad.status_code == 401
    assert bad.get_json() == {"error": "the API token is unknown, revoked, or its user is disabled"}
    basic = client.get("/api/v1/compartments", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    # Tokens are for the API only, not for pages.
    page = client.get("/", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 302
    staff = _token(instance, clock, Role.STAFF)
    refused = client.get("/api/v1/compartments", headers={"Authorization": f"Bearer {staff}"})
    assert refused.status_code == 403


def test_bearer_changes_need_no_csrf_but_session_changes_do(
    app: Flask, instance: Instance, clock: ManualClock, login: Callable[..., Client]
) -> None:
    custody_id = confiscate(instance, clock, "1001")
    token = _token(instance, clock, Role.DSL)
    client = app.test_client()
    held = client.post(
        f"/api/v1/custody/{custody_id}/hold",
        json={"reason": "referred"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert held.status_code == 200
    assert held.get_json()["custody"]["state"] == "SAFEGUARDING_HOLD"
    office = login(Role.OFFICE)
    no_header = office.raw.post(f"/api/v1/custody/{custody_id}/hold", json={"reason": "x"})
    assert no_header.status_code == 400
    assert "error" in no_header.get_json()


def test_revoked_token_is_refused(app: Flask, instance: Instance, clock: ManualClock) -> None:
    token = _token(instance, clock, Role.ADMIN)
    with instance.database.transaction() as session:
        from kiosk.models import ApiToken

        row = session.execute(select(ApiToken)).scalar_one()
        users.revoke_token(session, Actor.system("test"), clock, instance.audit, row.id)
    response = app.test_client().get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
