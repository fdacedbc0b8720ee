"""The dashboard's pages and flows through the real app and a real SQLite file."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import timedelta

from flask import Flask
from sqlalchemy import select

from kiosk import exemptions
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import (
    AuditEvent,
    Command,
    Compartment,
    CustodyRecord,
    CustodyState,
    Exemption,
    ExemptionKind,
    Role,
)

from .conftest import (
    Client,
    confiscate,
    deposit,
    hold,
    kiosk_of,
    publish,
    pupil_of,
    user_of,
)


def _text(response: object) -> str:
    return response.get_data(as_text=True)  # type: ignore[attr-defined]


def _record(instance: Instance, record_id: int) -> CustodyRecord:
    with instance.database.reader() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None
        return record


def _commands(instance: Instance) -> list[Command]:
    with instance.database.reader() as session:
        return list(session.execute(select(Command).order_by(Command.id)).scalars())


def _cell(html: str, number: int) -> str:
    """The grid cell of compartment ``number`` (its <li> ... </li>)."""
    cells = re.findall(r'<li id="cell-\d+".*?</li>', html, re.S)
    for cell in cells:
        if re.search(rf'<span class="num">{number}\b', cell):
            return cell
    raise AssertionError(f"no cell {number}")


# ------------------------------------------------------------------------------ the grid


def test_grid_shows_each_state(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    deposit(instance, clock, "1001")  # compartment 1
    confiscated = confiscate(instance, clock, "1002")  # secure 21
    held = confiscate(instance, clock, "1003")  # secure 22
    hold(instance, clock, held, "DSL-ONLY-REASON")
    with instance.database.transaction() as session:
        kiosk = kiosk_of(session)
        rows = {
            c.number: c
            for c in session.execute(
                select(Compartment).where(Compartment.kiosk_id == kiosk.id)
            ).scalars()
        }
        rows[5].out_of_service, rows[5].out_of_service_reason = True, "jammed"
        rows[6].door_open = True
        rows[7].alarm = "forced"
    html = _text(login(Role.OFFICE).get("/"))
    assert "in locker" in _cell(html, 1) and "Sam Taylor" in _cell(html, 1)
    assert "s-confiscated" in _cell(html, 21)
    assert f"/confiscations/{confiscated}" in _cell(html, 21)
    assert "held: contact the DSL" in _cell(html, 22)
    assert "DSL-ONLY-REASON" not in html
    assert "s-out_of_service" in _cell(html, 5)
    assert "door-open" in _cell(html, 6) and "door open" in _cell(html, 6)
    assert "alarm: forced" in _cell(html, 7)
    assert "s-free" in _cell(html, 2)
    assert 'data-count="in_locker">1<' in html
    assert "never seen" in html  # the controller has not published anything yet


def test_grid_shows_what_the_kiosk_asks_the_office_to_check(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    custody_id = deposit(instance, clock, "1001")  # compartment 1
    detail = "the pupil collected the device while the kiosk was offline at 10:02:00"
    with instance.database.transaction() as session:
        record = session.get(CustodyRecord, custody_id)
        assert record is not None
        instance.ledger.flag(
            session,
            Actor.for_kiosk("main"),
            clock,
            record,
            flag="offline_conflict",
            detail=detail,
        )
    office = login(Role.OFFICE)
    cell = _cell(_text(office.get("/")), 1)
    assert "flagged" in cell and "to check: offline conflict" in cell
    assert f'title="{detail}"' in cell
    assert "flagged" not in _cell(_text(office.get("/")), 2)
    listed = office.get("/api/v1/compartments").get_json()["compartments"]
    (first,) = [c for c in listed if c["number"] == 1]
    assert first["custody"]["flag"] == "offline_conflict"
    assert first["custody"]["flag_detail"] == detail


def test_kiosk_status_online_offline_fault(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    client = login(Role.OFFICE)
    publish(instance, clock, {"status": "ok", "faults": []})
    assert 'st-ok" data-kiosk-status>online' in _text(client.get("/"))
    clock.advance(31)  # more than 3 x heartbeat_s (10 s)
    assert 'st-offline" data-kiosk-status>offline' in _text(client.get("/"))
    publish(instance, clock, {"status": "fault", "faults": ["reader not answering"]})
    page = _text(client.get("/kiosks"))
    assert "reader not answering" in page and 'st-fault">fault' in page
    health = client.get("/healthz").get_json()
    assert health == {
        "status": "degraded",
        "database": "ok",
        "kiosks": [{"name": "main", "status": "fault", "heartbeat_age_s": 0.0}],
    }


def test_grid_for_one_kiosk_and_an_unknown_one(login: Callable[..., Client]) -> None:
    client = login(Role.DSL)
    assert client.get("/?kiosk=main").status_code == 200
    missing = client.get("/?kiosk=nowhere")
    assert missing.status_code == 404
    assert "no kiosk" in _text(missing)


# ------------------------------------------------------------------------------ register


def test_register_by_form_and_csv(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    deposit(instance, clock, "1001")
    with instance.database.transaction() as session:
        exemptions.grant(
            session,
            Actor.for_user(user_of(session, Role.ADMIN)),
            clock,
            instance.audit,
            pupil=pupil_of(session, "1002"),
            kind=ExemptionKind.YOUNG_CARER,
            starts_on=clock.now().date(),
            ends_on=clock.now().date(),
            agreement_reference="YC-7",
        )
    client = login(Role.OFFICE)
    html = _text(client.get("/register?form=7A"))
    row = re.search(r'<tr class="current">.*?</tr>', html, re.S)
    assert row is not None
    assert re.findall(r"<td>(\d+)</td>", row.group(0)) == ["2", "1", "1", "0", "0"]
    assert "Sam" in html and "deposited" in html and "exempt" in html
    csv = _text(client.get("/register.csv?date=2026-09-07&pupils=1"))
    assert csv.splitlines()[0] == "form,admission_number,surname,forename,status,confiscated"
    assert "7A,1001,Taylor,Sam,deposited," in csv
    assert client.get("/register?date=yesterday").status_code == 400


# ------------------------------------------------------------------------------ confiscation


def test_confiscate_into_a_kiosk_opens_a_secure_compartment(
    login: Callable[..., Client], instance: Instance
) -> None:
    client = login(Role.STAFF)
    response = client.post(
        "/confiscate",
        {"admission_number": "1001", "reason": "on it in maths", "where": "kiosk:main"},
    )
    assert response.status_code == 303
    assert "/notice" in response.headers["Location"]
    (command,) = _commands(instance)
    assert command.kind == "open_compartment"
    assert command.payload["purpose"] == "confiscation"
    record = _record(instance, command.payload["custody_id"])
    assert record.state is CustodyState.CONFISCATED
    assert record.confiscated_by == "user:teacher"
    assert command.payload["compartment"] == 21
    notice = client.get(response.headers["Location"])
    assert notice.status_code == 200
    page = _text(notice)
    assert "Confiscation recorded" in page and "only to a parent or carer" in page
    assert f'data-command-url="/api/v1/commands/{command.id}"' in page


def test_confiscate_to_the_safe_or_in_place_and_mistakes(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    client = login(Role.OFFICE)
    safe = client.post(
        "/confiscate", {"admission_number": "1002", "reason": "rude", "where": "safe"}
    )
    assert safe.status_code == 303
    assert _commands(instance) == []
    deposited = deposit(instance, clock, "1001")
    form = client.get("/confiscate?admission_number=1001")
    assert "Leave it where it is: locker 1" in _text(form)
    in_place = client.post(
        "/confiscate", {"admission_number": "1001", "reason": "rude", "where": "locker"}
    )
    assert in_place.status_code == 303
    assert _record(instance, deposited).state is CustodyState.CONFISCATED
    missing = client.post("/confiscate", {"admission_number": "1003", "where": "safe"})
    assert missing.status_code == 400
    assert "reason for confiscating is required" in _text(missing)
    unknown = client.post(
        "/confiscate", {"admission_number": "9999", "reason": "x", "where": "safe"}
    )
    assert unknown.status_code == 404
    assert 'value="9999"' in _text(unknown)  # the form keeps what was typed


def test_confiscate_with_an_urgent_referral_holds_the_device(
    login: Callable[..., Client], instance: Instance
) -> None:
    staff = login(Role.STAFF)
    response = staff.post(
        "/confiscate",
        {
            "admission_number": "1003",
            "reason": "found in toilets",
            "where": "safe",
            "urgent": "yes",
            "referral": "SECRET-REFERRAL",
        },
    )
    assert response.status_code == 303
    notice = _text(staff.get(response.headers["Location"]))
    assert "Designated Safeguarding Lead" in notice and "found in toilets" not in notice
    with instance.database.reader() as session:
        record = session.execute(select(CustodyRecord)).scalar_one()
    assert record.state is CustodyState.SAFEGUARDING_HOLD
    assert record.hold_reason == "SECRET-REFERRAL"
    empty = staff.post(
        "/confiscate",
        {"admission_number": "1002", "reason": "x", "where": "safe", "urgent": "yes"},
    )
    assert empty.status_code == 400


def test_staff_print_only_their_own_notices(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    theirs = confiscate(instance, clock, "1001", by=Role.STAFF)
    others = confiscate(instance, clock, "1002", by=Role.OFFICE)
    staff = login(Role.STAFF)
    assert staff.get(f"/confiscations/{theirs}/notice").status_code == 200
    assert staff.get(f"/confiscations/{others}/notice").status_code == 403
    assert login(Role.OFFICE).get(f"/confiscations/{theirs}/notice").status_code == 200


# ------------------------------------------------------------------------------ release


def test_release_to_a_contact_opens_the_compartment(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    client = login(Role.OFFICE)
    page = _text(client.get(f"/confiscations/{record_id}"))
    contact_id = re.search(r'name="collector" value="(\d+)"[^>]*> Jo Taylor', page)
    assert contact_id is not None
    refused = client.post(f"/confiscations/{record_id}/release", {"collector": contact_id.group(1)})
    assert refused.status_code == 400
    assert "ID was checked" in _text(refused)
    assert _record(instance, record_id).state is CustodyState.CONFISCATED
    assert _commands(instance) == []
    response = client.post(
        f"/confiscations/{record_id}/release",
        {"collector": contact_id.group(1), "id_checked": "yes"},
    )
    assert response.status_code == 303
    record = _record(instance, record_id)
    assert record.state is CustodyState.RELEASED_TO_PARENT
    assert (record.collector_name, record.collector_relationship) == ("Jo Taylor", "Mother")
    assert record.ended_by == "user:office"
    (command,) = _commands(instance)
    assert command.kind == "open_compartment"
    assert command.payload == {"compartment": 21, "custody_id": record_id, "purpose": "release"}
    assert command.created_by == "user:office"
    shown = _text(client.get(response.headers["Location"]))
    assert "Released to Jo Taylor" in shown and "Kiosk command" in shown


def test_release_to_another_adult_from_the_safe(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1005", into_kiosk=False)
    client = login(Role.ADMIN)
    incomplete = client.post(
        f"/confiscations/{record_id}/release", {"collector": "other", "id_checked": "yes"}
    )
    assert incomplete.status_code == 400
    response = client.post(
        f"/confiscations/{record_id}/release",
        {
            "collector": "other",
            "collector_name": "Maria Nowak",
            "relationship": "Aunt",
            "id_checked": "yes",
        },
    )
    assert response.status_code == 303
    assert _record(instance, record_id).collector_name == "Maria Nowak"
    assert _commands(instance) == []  # nothing to open: it was in the office safe
    again = client.post(
        f"/confiscations/{record_id}/release",
        {"collector": "other", "collector_name": "X", "relationship": "Y", "id_checked": "yes"},
    )
    assert again.status_code == 409 or again.status_code == 404


def test_a_hold_blocks_release_and_hides_the_reason(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001", reason="CONFISCATION-REASON")
    hold(instance, clock, record_id, "DSL-ONLY-REASON")
    office = login(Role.OFFICE)
    for path in ("/confiscations", f"/confiscations/{record_id}", "/pupils/1001", "/audit"):
        page = _text(office.get(path))
        assert "DSL-ONLY-REASON" not in page, path
        assert "CONFISCATION-REASON" not in page, path  # it may carry the concern
    assert "held: contact the DSL" in _text(office.get(f"/confiscations/{record_id}"))
    response = office.post(
        f"/confiscations/{record_id}/release",
        {"collector": "other", "collector_name": "A", "relationship": "B", "id_checked": "yes"},
    )
    assert response.status_code == 409
    assert "safeguarding hold" in _text(response)
    assert "DSL-ONLY-REASON" not in _text(response)
    assert _record(instance, record_id).state is CustodyState.SAFEGUARDING_HOLD
    assert _commands(instance) == []
    dsl = login(Role.DSL)
    assert "DSL-ONLY-REASON" in _text(dsl.get("/safeguarding"))
    assert "DSL-ONLY-REASON" in _text(dsl.get(f"/confiscations/{record_id}"))
    assert "DSL-ONLY-REASON" in _text(dsl.get("/audit"))


def test_dsl_lifts_a_hold_and_hands_another_to_the_police(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    first = confiscate(instance, clock, "1001")
    second = confiscate(instance, clock, "1002")
    hold(instance, clock, first, "r1")
    hold(instance, clock, second, "r2")
    dsl = login(Role.DSL)
    assert dsl.post(f"/safeguarding/{first}/lift", {"note": ""}).status_code == 400
    assert dsl.post(f"/safeguarding/{first}/lift", {"note": "no concern"}).status_code == 303
    assert _record(instance, first).state is CustodyState.CONFISCATED
    police = dsl.post(f"/safeguarding/{second}/police", {"reference": "MET-123"})
    assert police.status_code == 303
    record = _record(instance, second)
    assert record.state is CustodyState.HANDED_TO_POLICE
    assert record.police_reference == "MET-123"
    (command,) = _commands(instance)
    assert command.payload["custody_id"] == second
    assert "MET-123" in _text(dsl.get("/safeguarding"))


def test_staff_refer_a_pupil_by_admission_number(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = deposit(instance, clock, "1002")
    staff = login(Role.STAFF)
    nothing = staff.post("/refer", {"admission_number": "1001", "reason": "worried"})
    assert nothing.status_code == 400
    assert "confiscate it first" in _text(nothing)
    response = staff.post("/refer", {"admission_number": "1002", "reason": "worried"})
    assert response.status_code == 303
    assert "1 device now held" in _text(staff.get(response.headers["Location"]))
    assert _record(instance, record_id).state is CustodyState.SAFEGUARDING_HOLD


# ------------------------------------------------------------------------------ exemptions


def test_admin_grants_and_revokes_exemptions(
    login: Callable[..., Client], instance: Instance
) -> None:
    admin = login(Role.ADMIN)
    form = {
        "admission_number": "1005",
        "kind": "medical",
        "starts_on": "2026-09-07",
        "ends_on": "",
        "review_on": "",
        "agreement_reference": "MED-42",
        "notes": "HEALTH-NOTE",
    }
    missing_review = admin.post("/exemptions", form)
    assert missing_review.status_code == 400
    assert "review date" in _text(missing_review)
    assert admin.post("/exemptions", {**form, "review_on": "2026-12-01"}).status_code == 303
    with instance.database.reader() as session:
        exemption = session.execute(select(Exemption)).scalar_one()
    assert exemption.approved_by == "user:head"
    assert "HEALTH-NOTE" in _text(admin.get("/exemptions"))
    office_page = _text(login(Role.OFFICE).get("/exemptions"))
    assert "MED-42" in office_page and "HEALTH-NOTE" not in office_page
    assert "grant-form" not in office_page
    revoked = admin.post(f"/exemptions/{exemption.id}/revoke", {"reason": "plan ended"})
    assert revoked.status_code == 303
    again = admin.post(f"/exemptions/{exemption.id}/revoke", {"reason": "x"})
    assert again.status_code == 409  # a conflict with its state, not bad input
    assert "already revoked" in _text(again)


# ------------------------------------------------------------------------------ pupils


def test_pupils_search_show_and_enrol_a_card(
    login: Callable[..., Client], instance: Instance
) -> None:
    office = login(Role.OFFICE)
    found = _text(office.get("/pupils?q=tayl"))
    assert "/pupils/1001" in found and "/pupils/1002" not in found
    page = _text(office.get("/pupils/1001"))
    assert "Jo Taylor" in page and "No card." in page
    assert office.get("/pupils/0000").status_code == 404
    response = office.post("/pupils/1001/enrol-card", {"kiosk": "main"})
    assert response.status_code == 303
    (command,) = _commands(instance)
    assert command.kind == "enrol_next_card"
    with instance.database.reader() as session:
        assert command.payload == {"pupil_id": pupil_of(session, "1001").id}
    assert response.headers["Location"] == f"/commands/{command.id}"
    assert "tap the new card" in _text(office.get(response.headers["Location"]))


# ------------------------------------------------------------------------------ exams


def test_exam_check_lists_who_is_not_in_a_locker(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    deposit(instance, clock, "1001")
    confiscate(instance, clock, "1003")
    with instance.database.transaction() as session:
        exemptions.grant(
            session,
            Actor.for_user(user_of(session, Role.ADMIN)),
            clock,
            instance.audit,
            pupil=pupil_of(session, "1005"),
            kind=ExemptionKind.MEDICAL,
            starts_on=clock.now().date() - timedelta(days=1),
            ends_on=None,
            review_on=clock.now().date() + timedelta(days=30),
            agreement_reference="MED",
        )
    office = login(Role.OFFICE)
    upload = b"\xef\xbb\xbfAdno,Name\n1001,Sam\n1002,Amir\n1003,Chloe\n1005,Freya\n4242,Ghost\n"
    response = office.raw.post(
        "/exams",
        data={"csrf_token": office.csrf, "candidates": (io.BytesIO(upload), "sitting.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    html = _text(response)
    rows = re.findall(r'<tr class="o-([a-z-]+)"><td>([^<]+)</td>', html)
    assert rows == [
        ("not-in-a-locker", "Amir Khan"),
        ("exempt", "Freya Nowak"),
        ("in-school-custody", "Sam Taylor"),
        ("in-school-custody", "Chloé O&#39;Brien"),
    ]
    assert "4242" in html
    by_form = _text(office.get("/exams?form=7A"))
    assert by_form.count('<tr class="o-') == 2


# ------------------------------------------------------------------------------ reports


def test_reports_page_and_csv(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    deposit(instance, clock, "1001")
    first = confiscate(instance, clock, "1002", into_kiosk=False)
    with instance.database.transaction() as session:
        record = session.get(CustodyRecord, first)
        assert record is not None
        clock.advance(hours=6)
        instance.ledger.release_to_parent(
            session,
            Actor.for_user(user_of(session, Role.OFFICE)),
            clock,
            record,
            id_checked=True,
            collector_name="Nadia Khan",
            relationship="Mother",
        )
    confiscate(instance, clock, "1002", into_kiosk=False)
    with instance.database.transaction() as session:
        instance.audit.record(
            session, clock, Actor.for_kiosk("main"), "door.forced", kiosk="main", details={}
        )
    office = login(Role.OFFICE)
    html = _text(office.get("/reports?from=2026-09-01&to=2026-09-07"))
    assert "median 6.0 h" in html
    deposits = re.search(r'<svg class="chart c-ok".*?</svg>', html, re.S)
    assert deposits is not None
    assert deposits.group(0).count("<rect") == 5  # Tue 1 to Mon 7 September: 5 school days
    assert "<title>2026-09-07: 1</title>" in deposits.group(0)
    assert re.search(r"<td>Amir Khan</td>|>Amir Khan</a></td><td>7A</td><td>2</td>", html)
    assert _text(office.get("/reports/deposits.csv?from=2026-09-07&to=2026-09-07")) == (
        "day,deposits\n2026-09-07,1\n"
    )
    repeat = _text(office.get("/reports/repeat_confiscations.csv?from=2026-09-07&to=2026-09-07"))
    assert repeat == "admission_number,name,form,confiscations\n1002,Amir Khan,7A,2\n"
    alarms = _text(office.get("/reports/door_alarms.csv?from=2026-09-07&to=2026-09-07"))
    assert alarms == "day,kiosk,kind,count\n2026-09-07,main,door.forced,1\n"
    assert office.get("/reports/nothing.csv").status_code == 404
    assert office.get("/reports?from=2026-09-08&to=2026-09-01").status_code == 400


# ------------------------------------------------------------------------------ audit log


def test_audit_log_filters_pages_and_restricts(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    hold(instance, clock, record_id, "HIDDEN-FROM-OFFICE")
    with instance.database.transaction() as session:
        for n in range(60):
            instance.audit.record(
                session, clock, Actor.system("test"), "test.filler", details={"n": n}
            )
    office = login(Role.OFFICE)
    page = _text(office.get("/audit"))
    assert page.count('<td data-label="What">test.filler</td>') == 49  # and this sign-in
    assert page.count("<tr") == 1 + 50
    older = re.search(r'href="(/audit\?before=\d+)">Older', page)
    assert older is not None
    assert "test.filler" in _text(office.get(older.group(1).replace("&amp;", "&")))
    held = _text(office.get("/audit?kind=custody."))
    assert "custody.held" in held and "custody.confiscated" in held
    assert "HIDDEN-FROM-OFFICE" not in held
    assert "restricted: visible to the DSL and admin" in held
    by_pupil = _text(office.get("/audit?pupil=1001"))
    assert "test.filler" not in by_pupil and "custody.held" in by_pupil
    assert "No pupil has that admission number" in _text(office.get("/audit?pupil=0"))
    assert "HIDDEN-FROM-OFFICE" in _text(login(Role.ADMIN).get("/audit?kind=custody.held"))
    with instance.database.reader() as session:
        assert session.execute(select(AuditEvent).where(AuditEvent.restricted)).first()


# ------------------------------------------------------------------------------ kiosks


def test_open_a_compartment_and_open_all(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    hold(instance, clock, record_id, "r")
    office = login(Role.OFFICE)
    assert office.post("/kiosks/main/open", {"compartment": "3"}).status_code == 303
    held = office.post("/kiosks/main/open", {"compartment": "21"})
    assert held.status_code == 403
    assert "contact the DSL" in _text(held)
    assert office.post("/kiosks/main/open", {"compartment": "99"}).status_code == 404
    assert office.post("/kiosks/main/open", {"compartment": "x"}).status_code == 400
    assert office.post("/kiosks/nowhere/open", {"compartment": "1"}).status_code == 404
    assert login(Role.DSL).post("/kiosks/main/open", {"compartment": "21"}).status_code == 303
    admin = login(Role.ADMIN)
    assert admin.post("/kiosks/main/open-all", {}).status_code == 400
    assert admin.post("/kiosks/main/open-all", {"confirm": "yes"}).status_code == 303
    payloads = [(c.kind, c.payload) for c in _commands(instance)]
    assert payloads == [
        ("open_compartment", {"compartment": 3, "purpose": "office"}),
        ("open_compartment", {"compartment": 21, "custody_id": record_id, "purpose": "check"}),
        ("open_all", {}),
    ]


def test_error_pages_are_html_for_people(app: Flask, login: Callable[..., Client]) -> None:
    office = login(Role.OFFICE)
    missing = office.get("/confiscations/424242")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["Content-Type"]
    assert "no confiscation 424242" in _text(missing)
    assert office.get("/no/such/page").status_code == 404
    assert office.get("/confiscations/99999999999999999").status_code == 404
    assert login(Role.STAFF).get("/reports").status_code == 403


# ------------------------------------------------------------------------------ review 5


def _lift(instance: Instance, clock: ManualClock, record_id: int) -> None:
    with instance.database.transaction() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None
        instance.ledger.lift_hold(
            session,
            Actor.for_user(user_of(session, Role.DSL)),
            clock,
            record,
            note="spoke to the family; no concern",
        )


def test_a_lifted_hold_no_longer_says_contact_the_dsl(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1002", reason="REASON-WITH-A-CONCERN")
    hold(instance, clock, record_id, "HOLD-REASON")
    office = login(Role.OFFICE)
    notice = _text(office.get(f"/confiscations/{record_id}/notice"))
    assert "Designated Safeguarding Lead" in notice
    _lift(instance, clock, record_id)
    page = _text(office.get(f"/confiscations/{record_id}"))
    assert "held: contact the DSL" not in page
    assert re.search(r'id="custody-state">confiscated<', page)
    assert 'id="release-form"' in page
    # The reason may carry the concern: still only for the DSL and admin.
    assert "REASON-WITH-A-CONCERN" not in page and "HOLD-REASON" not in page
    assert "restricted: visible to the DSL and admin" in page
    notice = _text(office.get(f"/confiscations/{record_id}/notice"))
    assert "Designated Safeguarding Lead" not in notice
    assert "only to a parent or carer" in notice
    assert "REASON-WITH-A-CONCERN" not in notice
    listed = _text(office.get("/confiscations"))
    assert "held: contact the DSL" not in listed
    api = office.get(f"/api/v1/custody/{record_id}").get_json()["custody"]
    assert (api["held"], api["notice"], api["confiscation_reason"]) == (False, None, None)
    assert "REASON-WITH-A-CONCERN" in _text(login(Role.DSL).get(f"/confiscations/{record_id}"))


def test_people_are_shown_by_their_display_names(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    record_id = confiscate(instance, clock, "1001")
    with instance.database.transaction() as session:
        exemptions.grant(
            session,
            Actor.for_user(user_of(session, Role.ADMIN)),
            clock,
            instance.audit,
            pupil=pupil_of(session, "1002"),
            kind=ExemptionKind.MEDICAL,
            starts_on=clock.now().date(),
            ends_on=clock.now().date() + timedelta(days=3),
            agreement_reference="MED-9",
        )
    admin = login(Role.ADMIN)
    pages = {
        "/confiscations": "Teacher (staff)",
        f"/confiscations/{record_id}": "Teacher (staff)",
        "/exemptions": "Head (admin)",
        "/audit": "Head (admin)",
    }
    for path, name in pages.items():
        page = _text(admin.get(path))
        assert name in page, path
        assert ">user:" not in page and "by user:" not in page, path


def test_kiosk_health_shows_local_times(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    started = clock.now()  # 06:45 UTC: 07:45 in London (BST)
    publish(
        instance,
        clock,
        {
            "status": "ok",
            "started_at": started.isoformat(),
            "alarms": [{"compartment": 3, "kind": "left_open", "since": started.isoformat()}],
        },
    )
    page = _text(login(Role.OFFICE).get("/kiosks"))
    assert started.isoformat() not in page
    assert "07 Sep 2026 07:45" in page
    assert "left_open since 07 Sep 07:45:00" in page


def test_the_notice_says_confiscation_recorded_once(login: Callable[..., Client]) -> None:
    client = login(Role.STAFF)
    response = client.post(
        "/confiscate", {"admission_number": "1001", "reason": "on it in maths", "where": "safe"}
    )
    assert response.status_code == 303
    page = _text(client.get(response.headers["Location"]))
    assert page.count("Confiscation recorded.") == 1


def test_the_audit_kind_filter_is_a_prefix(
    login: Callable[..., Client], instance: Instance, clock: ManualClock
) -> None:
    confiscate(instance, clock, "1001")
    with instance.database.transaction() as session:
        instance.audit.record(session, clock, Actor.system("test"), "test.x_y", details={})
        instance.audit.record(session, clock, Actor.system("test"), "test.xzy", details={})
    office = login(Role.OFFICE)

    def kinds(query: str) -> set[str]:
        page = _text(office.get(f"/audit?kind={query}"))
        return set(re.findall(r'<td data-label="What">([^<]+)</td>', page))

    custody = kinds("custody")
    assert "custody.confiscated" in custody
    assert all(kind.startswith("custody.") for kind in custody)
    assert kinds("auth") == {"auth.login"}
    assert kinds("Auth.") == {"auth.login"}
    assert kinds("custody*") == kinds("custody")
    assert kinds("auth.login") == {"auth.login"}
    # LIKE's wildcards are plain characters here.
    assert kinds("test.x_") == {"test.x_y"}
    assert kinds("test.%") == set()
    assert kinds("nothing") == set()
