"""Simulator endpoints (simulated hardware only): each inserts a sim.* command."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from kiosk.cards import format_uid
from kiosk.clock import ManualClock
from kiosk.demo import demo_uid
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Command, Role
from web import create_app

from .conftest import sign_in


@pytest.fixture
def sim_app(instance: Instance, clock: ManualClock) -> Flask:
    return create_app(instance, simulated=True, testing=True, config={"LOCKER_CLOCK": clock})


def _commands(instance: Instance) -> list[tuple[str, dict[str, object]]]:
    with instance.database.reader() as session:
        rows = session.execute(select(Command.kind, Command.payload).order_by(Command.id)).all()
    return [(kind, payload) for kind, payload in rows]


def test_tap_door_and_fault(sim_app: Flask, instance: Instance) -> None:
    client = sim_app.test_client()
    tap = client.post("/sim/tap", json={"uid": "de:ad:be:ef"})
    assert tap.status_code == 202
    body = tap.get_json()
    assert body["kind"] == "sim.tap" and body["kiosk"] == "main"
    status = client.get(body["status_url"])
    assert status.get_json()["status"] == "pending"
    assert client.post("/sim/doors/3", json={"open": True}).status_code == 202
    assert client.post("/sim/doors/3", json={"open": "yes"}).status_code == 400
    fault = client.post("/sim/faults", json={"fault": "jam_lock", "on": True, "compartment": 2})
    assert fault.status_code == 202
    assert client.post("/sim/faults", json={"fault": "melt", "on": True}).status_code == 400
    assert client.post("/sim/tap", json={"uid": "xyz"}).status_code == 400
    assert client.post("/sim/tap", data="uid=DEADBEEF").status_code == 415
    assert client.post("/sim/tap?kiosk=other", json={"uid": "DEADBEEF"}).status_code == 404
    assert _commands(instance) == [
        ("sim.tap", {"uid": "DE:AD:BE:EF"}),
        ("sim.door", {"compartment": 3, "open": True}),
        ("sim.fault", {"fault": "jam_lock", "on": True, "compartment": 2}),
    ]
    with instance.database.reader() as session:  # simulator pokes are not school events
        kinds = session.execute(select(AuditEvent.kind)).scalars().all()
    assert "command.submitted" not in kinds


def test_panel_lists_demo_cards(sim_app: Flask) -> None:
    html = sign_in(sim_app, Role.OFFICE).get("/").get_data(as_text=True)
    assert 'id="sim-panel"' in html
    assert f'data-uid="{format_uid(demo_uid("1001"))}"' in html
    assert f'data-uid="{format_uid(demo_uid("staff:teacher"))}"' in html
    assert "/static/sim.js" in html


def test_no_panel_without_simulation(app: Flask) -> None:
    html = sign_in(app, Role.OFFICE).get("/").get_data(as_text=True)
    assert "sim-panel" not in html and "sim.js" not in html
