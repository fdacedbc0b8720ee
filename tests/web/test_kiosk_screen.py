"""The kiosk screen: no sign-in, only what the controller publishes, sanitised."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.offline import state_file

from .conftest import publish, write_state_file

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
    assert state == {
        "kiosk": "main",
        "label": "Main cabinet",
        "status": "ok",
        "network": "online",
        "screen": SCREEN,
    }
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


def test_kiosk_root_leads_to_this_cabinets_own_screen(app: Flask, instance: Instance) -> None:
    """The Pi's screen opens /kiosk/ (install/locker-screen.sh): it follows [kiosk] name."""
    client = app.test_client()
    response = client.get("/kiosk/")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/kiosk/{instance.config.kiosk.name}"
    assert client.get("/kiosk/", follow_redirects=True).status_code == 200


def test_unknown_kiosk(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/kiosk/nowhere").status_code == 404
    missing = client.get("/kiosk/nowhere/screen.json")
    assert missing.status_code == 404 and missing.get_json() == {"error": "no kiosk 'nowhere'"}


OFFLINE_SCREEN = {**SCREEN, "seq": 8, "title": "Locked away"}


def test_an_offline_kiosk_screen_is_served_from_its_state_file(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    publish(instance, clock, {"status": "ok", "screen": SCREEN, "network": "online"})
    client = app.test_client()
    # A state file of a kiosk that is online changes nothing: the database is read.
    write_state_file(instance, clock.now(), {"status": "ok", "screen": OFFLINE_SCREEN})
    assert client.get("/kiosk/main/screen.json").get_json()["screen"] == SCREEN
    # Offline, the kiosk cannot write to the database: its file is what it shows now.
    write_state_file(
        instance, clock.now(), {"status": "ok", "screen": OFFLINE_SCREEN, "network": "offline"}
    )
    state = client.get("/kiosk/main/screen.json").get_json()
    assert state["screen"] == OFFLINE_SCREEN and state["network"] == "offline"
    assert state["status"] == "ok" and state["label"] == "Form room 7"
    html = client.get("/kiosk/main").get_data(as_text=True)
    assert "Locked away" in html and 'id="network" class="network">Working offline' in html
    # A kiosk whose file stopped moving is reported as not heard from, as from the database.
    clock.advance(60)
    assert client.get("/kiosk/main/screen.json").get_json()["status"] == "offline"


def screen_fails(client: FlaskClient) -> bool:
    """The screen JSON is an error (a 503 for an OperationalError, a 500 otherwise: the
    test client raises those)."""
    try:
        return client.get("/kiosk/main/screen.json").status_code >= 500
    except SQLAlchemyError:
        return True


def test_the_state_file_stands_in_when_the_database_cannot_be_read(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    client = app.test_client()
    with instance.database.transaction() as session:  # the database goes wrong under the app
        session.execute(text("ALTER TABLE kiosks RENAME TO kiosks_elsewhere"))
    assert screen_fails(client)  # no file: nothing to stand in
    write_state_file(instance, clock.now(), {"status": "ok", "screen": SCREEN})
    state = client.get("/kiosk/main/screen.json").get_json()
    assert state["screen"] == SCREEN and state["status"] == "ok"
    # A damaged file is ignored, not shown.
    state_file(instance.home, "main").write_text("{not json", "utf-8")
    assert screen_fails(client)
