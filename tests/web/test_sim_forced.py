"""The simulator's forced door over HTTP (``locker demo``): the panel's button and the JSON
endpoint both become a ``sim.door`` command with ``forced``."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import Command, Role
from web import create_app

from .conftest import sign_in


@pytest.fixture
def sim_app(instance: Instance, clock: ManualClock) -> Flask:
    return create_app(instance, simulated=True, testing=True, config={"LOCKER_CLOCK": clock})


def test_a_door_can_be_forced_open_over_http(sim_app: Flask, instance: Instance) -> None:
    client = sim_app.test_client()
    assert client.post("/sim/doors/5", json={"open": True, "forced": True}).status_code == 202
    assert client.post("/sim/doors/5", json={"open": True, "forced": "yes"}).status_code == 400
    assert client.post("/sim/doors/5", json={"open": False, "forced": True}).status_code == 400
    with instance.database.reader() as session:
        payloads = session.execute(select(Command.payload)).scalars().all()
    assert payloads == [{"compartment": 5, "open": True, "forced": True}]


def test_the_panel_has_a_force_button(sim_app: Flask) -> None:
    html = sign_in(sim_app, Role.OFFICE).get("/").get_data(as_text=True)
    assert 'data-forced="true"' in html
