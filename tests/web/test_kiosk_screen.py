"""The kiosk screen: no sign-in, only what the controller publishes, sanitised."""

from __future__ import annotations

from flask import Flask

from kiosk.clock import ManualClock
from kiosk.instance import Instance

from .conftest import publish

SCREEN = {
    "seq": 7,
    "tone": "ok",
    "title": "Locker 4 is open",
    "message": "Put your phone in and close the door",
    "name": "Sam T.",
    "compartment": 4,
    "at": "2026-09-07T06:45:00+00:00",
}


def test_screen_before_the_kiosk_was_ever_seen(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/kiosk/main")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Tap your card" in html and "Starting up" in html
    assert "Set-Cookie" not in page.headers  # no session for the cabinet's screen
    state = client.get("/kiosk/main/screen.json").get_json()
    assert state["status"] == "unknown" and state["screen"]["tone"] == "idle"


def test_screen_follows_what_the_controller_publishes(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    publish(instance, clock, {"status": "ok", "screen": SCREEN, "faults": ["secret detail"]})
    client = app.test_client()
    state = client.get("/kiosk/main/screen.json").get_json()
    assert state == {"kiosk": "main", "status": "ok", "screen": SCREEN}
    html = client.get("/kiosk/main").get_data(as_text=True)
    assert "Sam T." in html and "Locker 4 is open" in html and "secret detail" not in html
    clock.advance(60)
    assert client.get("/kiosk/main/screen.json").get_json()["status"] == "offline"


def test_screen_fields_are_checked(app: Flask, instance: Instance, clock: ManualClock) -> None:
    publish(
        instance,
        clock,
        {
            "status": "ok",
            "screen": {
                "seq": "x",
                "tone": "<b>",
                "title": 5,
                "message": "m" * 1000,
                "name": {"surname": "Taylor"},
                "compartment": True,
                "extra": "not shown",
            },
        },
    )
    screen = app.test_client().get("/kiosk/main/screen.json").get_json()["screen"]
    assert screen == {
        "seq": 0,
        "tone": "info",
        "title": "",
        "message": "m" * 300,
        "name": None,
        "compartment": None,
        "at": None,
    }


def test_unknown_kiosk(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/kiosk/nowhere").status_code == 404
    missing = client.get("/kiosk/nowhere/screen.json")
    assert missing.status_code == 404 and missing.get_json() == {"error": "no kiosk 'nowhere'"}
