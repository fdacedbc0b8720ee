"""The JSON API's behaviour: shapes, filters, conditional GET, actions, errors as JSON."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from kiosk import users
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import Command, Compartment, CustodyState, Role

from .conftest import Client, confiscate, deposit, hold, kiosk_of, publish, user_of


def _bearer(instance: Instance, clock: ManualClock, role: Role) -> dict[str, str]:
    with instance.database.transaction() as session:
        token = users.create_token(
            session, Actor.system("test"), clock, instance.audit, user_of(session, role)
        )
    return {"Authorization": f"Bearer {token}"}


def test_compartments(login: Callable[..., Client], instance: Instance, clock: ManualClock) -> None:
    deposit(instance, clock, "1001")
    held = confiscate(instance, clock, "1002")
    hold(instance, clock, held, "x")
    with instance.database.transaction() as session:
        compartment = session.execute(
            select(Compartment).where(
                Compartment.kiosk_id == kiosk_of(session).id, Compartment.number == 2
            )
        ).scalar_one()
        compartment.door_open = True
    publish(
        instance,
        clock,
        {"status": "ok", "alarms": [{"compartment": 2, "kind": "door_open", "since": "x"}]},
    )
    client = login(Role.OFFICE)
    response = client.get("/api/v1/compartments")
    assert response.status_code == 200
    data = response.get_json()
    assert [k["status"] for k in data["kiosks"]] == ["ok"]
    assert data["kiosks"][0]["alarms"] == [{"compartment": 2, "kind": "door_open", "since": "x"}]
    by_number = {c["number"]: c for c in data["compartments"]}
    assert len(by_number) == 24
    first = by_number[1]
    assert set(first) >= {
        "id",
        "kiosk",
        "label",
        "kind",
        "state",
        "door",
        "locked",
        "alarm",
        "custody",
    }
    assert first["state"] == "in_locker" and first["kind"] == "pupil"
    assert first["custody"]["pupil"] == {
        "admission_number": "1001",
        "display_name": "Sam Taylor",
        "form": "7A",
    }
    assert first["custody"]["state"] == "IN_LOCKER" and first["custody"]["kind"] == "daily"
    assert (first["door"], first["locked"]) == (None, None)
    assert (by_number[2]["door"], by_number[2]["locked"]) == ("open", False)
    assert by_number[21]["state"] == "held" and by_number[21]["kind"] == "secure"
    assert by_number[3]["state"] == "free" and by_number[3]["custody"] is None
    etag = response.headers["ETag"]
    again = client.get("/api/v1/compartments", headers={"If-None-Match": etag})
    assert again.status_code == 304
    deposit(instance, clock, "1003")
    changed = client.get("/api/v1/compartments", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert client.get("/api/v1/compartments?kiosk=main").status_code == 200
    missing = client.get("/api/v1/compartments?kiosk=nope")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "no kiosk 'nope'"}


def test_custody_list_filters_and_restricts(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    deposit(instance, clock, "1001")
    held = confiscate(instance, clock, "1002", reason="REASON-X")
    hold(instance, clock, held, "HOLD-Y")
    client = app.test_client()
    office = _bearer(instance, clock, Role.OFFICE)
    every = client.get("/api/v1/custody", headers=office).get_json()["custody"]
    assert {c["state"] for c in every} == {"IN_LOCKER", "SAFEGUARDING_HOLD"}
    (record,) = client.get("/api/v1/custody?state=safeguarding_hold", headers=office).get_json()[
        "custody"
    ]
    assert record["hold_reason"] is None and record["confiscation_reason"] is None
    assert record["notice"] == "held: contact the DSL"
    dsl = _bearer(instance, clock, Role.DSL)
    seen = client.get(f"/api/v1/custody/{held}", headers=dsl).get_json()["custody"]
    assert (seen["hold_reason"], seen["confiscation_reason"]) == ("HOLD-Y", "REASON-X")
    assert (
        client.get("/api/v1/custody?pupil=1001", headers=office).get_json()["custody"][0]["pupil"][
            "admission_number"
        ]
        == "1001"
    )
    bad = client.get("/api/v1/custody?state=LOST", headers=office)
    assert bad.status_code == 400 and "unknown state" in bad.get_json()["error"]
    assert client.get("/api/v1/custody?limit=0", headers=office).status_code == 400
    assert client.get("/api/v1/custody?pupil=0", headers=office).status_code == 404
    assert client.get("/api/v1/custody/999", headers=office).status_code == 404


def test_release_through_the_api_opens_the_compartment(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    client = app.test_client()
    headers = _bearer(instance, clock, Role.OFFICE)
    url = f"/api/v1/custody/{record_id}/release"
    assert client.post(url, json={"collector_name": "Jo"}, headers=headers).status_code == 400
    assert client.post(url, data="x", headers=headers).status_code == 415
    assert client.post(url, json=[1], headers=headers).status_code == 400
    wrong = client.post(url, json={"id_checked": "yes"}, headers=headers)
    assert wrong.status_code == 400 and wrong.get_json() == {
        "error": "id_checked must be true or false"
    }
    response = client.post(
        url,
        json={"id_checked": True, "collector_name": "Jo Taylor", "relationship": "Mother"},
        headers=headers,
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["custody"]["state"] == "RELEASED_TO_PARENT"
    assert body["custody"]["collector"] == {
        "name": "Jo Taylor",
        "relationship": "Mother",
        "id_checked": True,
    }
    assert body["command"]["kind"] == "open_compartment"
    assert body["command"]["payload"] == {
        "compartment": 21,
        "custody_id": record_id,
        "purpose": "release",
    }
    with instance.database.reader() as session:
        assert session.execute(select(Command.kind)).scalars().all() == ["open_compartment"]
    again = client.post(
        url,
        json={"id_checked": True, "collector_name": "Jo Taylor", "relationship": "Mother"},
        headers=headers,
    )
    assert again.status_code == 409
    status = client.get(f"/api/v1/commands/{body['command']['id']}", headers=headers)
    assert status.get_json()["command"]["status"] == "pending"


def test_hold_then_release_is_refused_with_409(
    app: Flask, instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    client = app.test_client()
    staff = _bearer(instance, clock, Role.STAFF)
    held = client.post(
        f"/api/v1/custody/{record_id}/hold", json={"reason": "worried"}, headers=staff
    )
    assert held.status_code == 200
    assert held.get_json()["custody"]["hold_reason"] is None
    office = _bearer(instance, clock, Role.OFFICE)
    refused = client.post(
        f"/api/v1/custody/{record_id}/release",
        json={"id_checked": True, "collector_name": "A", "relationship": "B"},
        headers=office,
    )
    assert refused.status_code == 409
    assert "safeguarding hold" in refused.get_json()["error"]
    lift = client.post(
        f"/api/v1/custody/{record_id}/lift-hold", json={"note": "ok"}, headers=office
    )
    assert lift.status_code == 403
    dsl = _bearer(instance, clock, Role.DSL)
    police = client.post(
        f"/api/v1/custody/{record_id}/police", json={"reference": "REF-1"}, headers=dsl
    )
    assert police.status_code == 200
    assert police.get_json()["custody"]["police_reference"] == "REF-1"


def test_confiscations_and_exemptions(app: Flask, instance: Instance, clock: ManualClock) -> None:
    client = app.test_client()
    staff = _bearer(instance, clock, Role.STAFF)
    created = client.post(
        "/api/v1/confiscations",
        json={"admission_number": "1001", "reason": "phone out", "where": "kiosk:main"},
        headers=staff,
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["custody"]["state"] == CustodyState.CONFISCATED.value
    assert body["command"]["payload"]["purpose"] == "confiscation"
    assert client.get("/api/v1/confiscations", headers=staff).status_code == 403
    office = _bearer(instance, clock, Role.OFFICE)
    listed = client.get("/api/v1/confiscations", headers=office).get_json()["custody"]
    assert [c["pupil"]["admission_number"] for c in listed] == ["1001"]
    nowhere = client.post(
        "/api/v1/confiscations",
        json={"admission_number": "1002", "reason": "x", "where": "kiosk:none"},
        headers=staff,
    )
    assert nowhere.status_code == 404
    admin = _bearer(instance, clock, Role.ADMIN)
    exemption = {
        "admission_number": "1002",
        "kind": "medical",
        "starts_on": "2026-09-01",
        "review_on": "2026-12-01",
        "agreement_reference": "MED-9",
    }
    assert client.post("/api/v1/exemptions", json=exemption, headers=office).status_code == 403
    granted = client.post("/api/v1/exemptions", json=exemption, headers=admin)
    assert granted.status_code == 201
    assert granted.get_json()["exemption"]["active"] is True
    listed = client.get("/api/v1/exemptions", headers=office).get_json()["exemptions"]
    assert [e["agreement_reference"] for e in listed] == ["MED-9"]
    bad_date = client.post(
        "/api/v1/exemptions", json={**exemption, "starts_on": "1st Sept"}, headers=admin
    )
    assert bad_date.status_code == 400
    revoked = client.post(
        f"/api/v1/exemptions/{granted.get_json()['exemption']['id']}/revoke",
        json={"reason": "ended"},
        headers=admin,
    )
    assert revoked.get_json()["exemption"]["active"] is False


def test_events_since_and_restricted(app: Flask, instance: Instance, clock: ManualClock) -> None:
    record_id = confiscate(instance, clock, "1001")
    client = app.test_client()
    office = _bearer(instance, clock, Role.OFFICE)
    first = client.get("/api/v1/events?limit=2", headers=office).get_json()
    assert [e["seq"] for e in first["events"]] == [1, 2]
    assert first["next_since"] == 2
    hold(instance, clock, record_id, "SECRET")
    rest = client.get(f"/api/v1/events?since={first['next_since']}", headers=office).get_json()
    held = [e for e in rest["events"] if e["kind"] == "custody.held"]
    assert held[0]["restricted"] is True and held[0]["details"] is None
    # The record was held: its earlier events' details are withheld from the office too.
    again = client.get("/api/v1/events?limit=1000", headers=office).get_json()["events"]
    confiscated = [e for e in again if e["kind"] == "custody.confiscated"]
    assert confiscated[0]["restricted"] is False and confiscated[0]["details"] is None
    dsl = _bearer(instance, clock, Role.DSL)
    seen = client.get("/api/v1/events?since=0&limit=1000", headers=dsl).get_json()
    assert [e["details"]["reason"] for e in seen["events"] if e["kind"] == "custody.held"] == [
        "SECRET"
    ]
    assert client.get("/api/v1/events?since=-1", headers=office).status_code == 400
    assert client.get("/api/v1/events?since=abc", headers=office).status_code == 400


def test_errors_are_json_under_the_api(app: Flask, login: Callable[..., Client]) -> None:
    client = app.test_client()
    anonymous = client.get("/api/v1/compartments")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in anonymous.get_json()
    office = login(Role.OFFICE)
    for path, status in (
        ("/api/v1/nothing", 404),
        ("/api/v1/custody/abc", 404),
        ("/api/v1/custody/99999999999999", 404),
    ):
        response = office.get(path)
        assert response.status_code == status, path
        assert response.is_json and "error" in response.get_json(), path
    wrong_method = office.raw.delete("/api/v1/compartments")
    assert wrong_method.status_code == 405 and "error" in wrong_method.get_json()
    assert "GET" in wrong_method.headers["Allow"]


def test_healthz_has_no_personal_data(app: Flask, instance: Instance, clock: ManualClock) -> None:
    deposit(instance, clock, "1001")
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {
        "status": "degraded",
        "database": "ok",
        "kiosks": [{"name": "main", "status": "unknown", "heartbeat_age_s": None}],
    }
    publish(instance, clock, {"status": "ok"})
    assert app.test_client().get("/healthz").get_json()["status"] == "ok"


def test_openapi_document_is_public(app: Flask) -> None:
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    assert {
        "/api/v1/compartments",
        "/api/v1/custody",
        "/api/v1/custody/{custody_id}/release",
        "/api/v1/custody/{custody_id}/hold",
        "/api/v1/events",
        "/healthz",
    } <= paths
    # Every API route is documented, and every documented path exists.
    routes = {
        rule.rule.replace("<id:", "{").replace(">", "}")
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi"
    }
    assert routes == paths - {"/healthz"}


def test_ids_beyond_what_the_database_can_hold_are_not_found(app, login):
    """PostgreSQL's integer ids stop at 2**31 - 1: a bigger id is a 404, never a 500."""
    client = login(Role.ADMIN)
    for path in ("/api/v1/custody/2147483648", "/api/v1/commands/999999999999"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.get_json()
