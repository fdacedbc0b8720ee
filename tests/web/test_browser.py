"""Browser tests: Debian's chromium driven by Playwright against the app on a real server.

Records that the kiosk controller would write (deposits, the published screen) are written
here through the ledger, as the kiosk process would. The end-to-end flows through the real
controller and the simulator panel are in test_browser_demo.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from kiosk.actors import Actor
from kiosk.models import Command, CustodyRecord, CustodyState, Role

from .conftest import (
    PASSWORD,
    XSS_NAME,
    LiveServer,
    browser_sign_in,
    confiscate,
    deposit,
    publish,
    write_state_file,
)


def _cell(page: Any, number: int) -> Any:
    return page.locator("ol.grid li.cell", has=page.locator(f"span.num:text-is('{number}')"))


def test_sign_in_and_every_page_is_one_click_from_the_dashboard(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    page = browser_sign_in(new_page(), live, Role.ADMIN)
    assert page.url == f"{live.url}/"
    assert page.locator("h1").first.inner_text() == "Lockers"
    links = page.locator("header nav a")
    labels = links.all_inner_texts()
    assert len(labels) == 12
    for label in labels:
        page.goto(f"{live.url}/")
        with page.expect_navigation() as navigation:
            page.locator("header nav a", has_text=re.compile(f"^{re.escape(label)}$")).click()
        assert navigation.value.status == 200, label
        assert page.locator("h1").count() >= 1, label
    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url.startswith(f"{live.url}/login")
    page.goto(f"{live.url}/register")
    assert "/login?next=/register" in page.url


def test_grid_updates_without_a_reload(new_page: Callable[..., Any], live: LiveServer) -> None:
    page = browser_sign_in(new_page(), live, Role.OFFICE)
    cell = _cell(page, 1)
    assert "s-free" in cell.get_attribute("class")
    page.evaluate("window.__marker = 'same page'")
    custody_id = deposit(live.instance, live.clock, "1001")  # the kiosk writes at the door
    page.wait_for_function(
        "() => document.querySelector('#grid li.cell').classList.contains('s-in_locker')"
    )
    assert cell.locator(".who").inner_text() == "Sam Taylor"
    assert page.locator("[data-count=in_locker]").inner_text() == "1"
    with live.instance.database.transaction() as session:
        record = session.get(CustodyRecord, custody_id)
        live.instance.ledger.flag(
            session,
            Actor.for_kiosk("main"),
            live.clock,
            record,
            flag="offline_conflict",
            detail="collected offline, confiscated centrally",
        )
    page.wait_for_function(
        "() => document.querySelector('#grid li.cell').classList.contains('flagged')"
    )
    flags = cell.locator(".flags")
    assert flags.inner_text() == "to check: offline conflict"
    assert flags.get_attribute("title") == "collected offline, confiscated centrally"
    publish(live.instance, live.clock, {"status": "fault", "faults": ["reader not answering"]})
    page.wait_for_function(
        "() => document.querySelector('[data-kiosk-faults]').textContent.includes('reader')"
    )
    assert page.evaluate("window.__marker") == "same page"  # no reload happened


def test_confiscate_and_release_to_a_parent(new_page: Callable[..., Any], live: LiveServer) -> None:
    page = browser_sign_in(new_page(), live, Role.OFFICE)
    page.goto(f"{live.url}/confiscate?q=Taylor")
    page.click("ul.choices a")
    page.fill("textarea[name=reason]", "Using it in a lesson")
    page.fill("input[name=device]", "blue phone")
    page.check("input[value='kiosk:main']")
    with page.expect_navigation():
        page.click("#confiscate-form button[type=submit]")
    assert "Confiscation recorded" in page.content()
    assert "secure compartment is opening" in page.inner_text("main")
    assert page.locator("article.notice").inner_text().count("Sam Taylor") == 1

    page.goto(f"{live.url}/confiscations")
    with page.expect_navigation():
        page.click("text=Release…")
    page.check("label:has-text('Jo Taylor') input")
    page.check("input[name=id_checked]")
    with page.expect_navigation():
        page.click("#release-form button[type=submit]")
    assert "Released to Jo Taylor" in page.inner_text("main")
    with live.instance.database.reader() as session:
        record = session.execute(select(CustodyRecord)).scalar_one()
        commands = session.execute(select(Command).order_by(Command.id)).scalars().all()
    assert record.state is CustodyState.RELEASED_TO_PARENT
    assert (record.collector_name, record.ended_by) == ("Jo Taylor", "user:office")
    assert [(c.kind, c.payload["purpose"]) for c in commands] == [
        ("open_compartment", "confiscation"),
        ("open_compartment", "release"),
    ]
    assert commands[1].payload == {
        "compartment": 21,
        "custody_id": record.id,
        "purpose": "release",
    }
    assert page.locator(".command [data-command-status]").inner_text() == "pending"


def test_a_dsl_hold_blocks_the_release_for_the_office(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    record_id = confiscate(live.instance, live.clock, "1002")
    office = browser_sign_in(new_page(), live, Role.OFFICE)
    office.goto(f"{live.url}/confiscations/{record_id}")
    assert office.locator("#release-form").count() == 1

    dsl = browser_sign_in(new_page(), live, Role.DSL)
    dsl.goto(f"{live.url}/confiscations/{record_id}")
    dsl.fill("textarea[name=reason]", "DSL-EYES-ONLY concern")
    with dsl.expect_navigation():
        dsl.click("text=Hold for the DSL")
    assert "Held for the DSL" in dsl.inner_text("main")

    # The office still has the form open from before the hold: the release is refused.
    office.check("label:has-text('Nadia Khan') input")
    office.check("input[name=id_checked]")
    with office.expect_navigation() as navigation:
        office.click("#release-form button[type=submit]")
    assert navigation.value.status == 409
    text = office.inner_text("main")
    assert "safeguarding hold" in text
    assert "DSL-EYES-ONLY" not in office.content()
    office.goto(f"{live.url}/confiscations/{record_id}")
    assert office.locator("#release-form").count() == 0
    assert "held: contact the DSL" in office.inner_text("#custody-state")
    with live.instance.database.reader() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None and record.state is CustodyState.SAFEGUARDING_HOLD
        assert session.execute(select(Command)).first() is None


def test_a_pupils_name_never_runs_as_script(new_page: Callable[..., Any], live: LiveServer) -> None:
    deposit(live.instance, live.clock, "1004")
    record_id = confiscate(live.instance, live.clock, "1004")
    page = browser_sign_in(new_page(), live, Role.ADMIN)
    for path in ("/", "/confiscations", f"/confiscations/{record_id}", "/pupils/1004"):
        page.goto(f"{live.url}{path}")
        assert XSS_NAME in page.inner_text("main"), path
    # The live grid writes names with textContent: still text after an update.
    page.goto(f"{live.url}/")
    page.wait_for_function("() => Number(document.getElementById('grid').dataset.version) >= 1")
    assert XSS_NAME in page.inner_text("#grid")
    assert page.evaluate("document.querySelectorAll('main script, #grid img').length") == 0
    assert page.dialogs == []


def test_kiosk_screen_follows_the_published_state(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    """Each state the kiosk publishes reaches the screen, readable at both touchscreen sizes.
    (How fast, from a card on the reader to the screen: ``bench/kiosk_screen.py``.)"""
    for width, height in ((800, 480), (1024, 600)):
        publish(live.instance, live.clock, {"status": "ok", "screen": None})
        page = new_page(width, height)
        page.goto(f"{live.url}/kiosk/main")
        assert page.locator("#title").inner_text() == "Tap your card"
        for n in range(1, 6):
            screen = {
                "seq": n + 10 * width,
                "tone": "ok",
                "title": f"Locker {n} is open",
                "message": "Put your phone in and close the door",
                "name": "Sam T.",
                "compartment": n,
                "at": live.clock.now().isoformat(),
            }
            publish(live.instance, live.clock, {"status": "ok", "screen": screen})
            page.wait_for_function(f"() => document.body.dataset.seq === '{screen['seq']}'")
            assert page.locator("#title").inner_text() == f"Locker {n} is open"
            assert page.locator("#compartment-number").inner_text() == str(n)
        assert page.locator("#name").inner_text() == "Sam T."
        # Readable: the title fits the screen without scrolling.
        box = page.locator("#title").bounding_box()
        assert box is not None and box["width"] <= width and box["y"] + box["height"] <= height
        assert page.evaluate("document.documentElement.scrollHeight") <= height


def test_kiosk_screen_says_when_the_kiosk_works_offline(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    screen = {"seq": 3, "tone": "ok", "title": "Locked away", "message": "Locker 2."}
    publish(live.instance, live.clock, {"status": "ok", "screen": screen, "network": "online"})
    page = new_page(800, 480)
    page.goto(f"{live.url}/kiosk/main")
    assert page.locator("#title").inner_text() == "Locked away"
    assert not page.locator("#network").is_visible()
    # The kiosk loses the database: it goes on, and says so through its state file.
    offline = {"status": "ok", "screen": {**screen, "seq": 4}, "network": "offline"}
    write_state_file(live.instance, live.clock.now(), offline)
    page.wait_for_function("() => document.body.dataset.seq === '4'", timeout=2000)
    assert page.locator("#network").is_visible()
    assert "Working offline" in page.locator("#network").inner_text()
    assert not page.locator("#overlay").is_visible()  # still in service, not out of order
    back = {**offline, "screen": {**screen, "seq": 5}, "network": "online"}
    write_state_file(live.instance, live.clock.now(), back)
    publish(live.instance, live.clock, back)
    page.wait_for_function("() => document.body.dataset.seq === '5'", timeout=2000)
    assert not page.locator("#network").is_visible()


def test_sign_in_is_throttled(new_page: Callable[..., Any], live: LiveServer) -> None:
    live.app.config["LOCKER_LOGIN_ATTEMPTS"] = 3
    page = new_page()
    statuses = []
    for _ in range(3):
        page.goto(f"{live.url}/login")
        page.fill("input[name=username]", "office")
        page.fill("input[name=password]", "not the password")
        with page.expect_navigation() as navigation:
            page.click("button[type=submit]")
        statuses.append(navigation.value.status)
    assert statuses == [401, 401, 429]
    assert "Too many sign-in attempts" in page.inner_text("main")
    browser_sign_in(page, live, Role.OFFICE, PASSWORD)
    assert "Too many sign-in attempts" in page.inner_text("main")
    assert page.url.startswith(f"{live.url}/login")
