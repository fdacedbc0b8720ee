"""Names come from people (the roster): every page escapes them; the CSP forbids inline
scripts as a second line of defence. The browser half is in test_browser.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import Role

from .conftest import XSS_NAME, XSS_SURNAME, Client, confiscate, deposit, publish

RAW = (XSS_NAME, XSS_SURNAME, "<b>Evil</b>", "<i>Father</i>")


@pytest.fixture
def xss_pages(instance: Instance, clock: ManualClock) -> list[str]:
    deposit(instance, clock, "1004")
    record_id = confiscate(instance, clock, "1004", reason="<script>alert('reason')</script>")
    publish(
        instance,
        clock,
        {"status": "fault", "faults": ["<script>alert('fault')</script>"], "screen": None},
    )
    return [
        "/",
        "/confiscations",
        f"/confiscations/{record_id}",
        f"/confiscations/{record_id}/notice",
        "/pupils?q=script",
        "/pupils/1004",
        "/register?form=8A",
        "/exams?form=8A",
        "/audit",
        "/kiosks",
        "/reports",
        f"/confiscate?q={XSS_NAME}",
    ]


def test_every_page_escapes_names(login: Callable[..., Client], xss_pages: list[str]) -> None:
    client = login(Role.ADMIN)
    seen_escaped = 0
    for path in xss_pages:
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        for raw in RAW:
            assert raw not in html, f"{raw!r} unescaped on {path}"
        assert "<script>alert" not in html, path
        seen_escaped += "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert seen_escaped >= 8  # the name is really on those pages, escaped


def test_json_carries_names_as_data(login: Callable[..., Client], xss_pages: list[str]) -> None:
    client = login(Role.OFFICE)
    data = client.get("/api/v1/compartments").get_json()
    names = [c["custody"]["pupil"]["display_name"] for c in data["compartments"] if c["custody"]]
    assert f"{XSS_NAME} {XSS_SURNAME}" in names
    response = client.get("/api/v1/compartments")
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_security_headers(login: Callable[..., Client]) -> None:
    response = login(Role.OFFICE).get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in response.get_data(as_text=True).replace(
        '<script src="/static/grid.js" defer></script>', ""
    )
