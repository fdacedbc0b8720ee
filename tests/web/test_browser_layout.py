"""Browser tests of the layout: every page fits a tablet held upright (768x1024) with no
sideways scrolling, the kiosk screen hides what it should, no page logs a console error
(the favicon), and the dashboard's counts follow the records without a reload."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from kiosk import commands, exemptions
from kiosk.actors import Actor
from kiosk.models import ExemptionKind, Role

from .conftest import (
    LiveServer,
    browser_sign_in,
    confiscate,
    deposit,
    hold,
    kiosk_of,
    publish,
    pupil_of,
    user_of,
)

TABLET = (768, 1024)
LONG_FAULT = (
    "card reader: no RC522 answers on SPI 0.0 (VersionReg 0x00): check that it is connected "
    "and powered (3.3 V), and the SDA/SCK/MOSI/MISO wiring to GPIO8/11/10/9"
)
# What overflows sideways, ignoring what sits inside a box that scrolls by itself.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const element of document.querySelectorAll('body *')) {
    const box = element.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let parent = element.parentElement, scrolls = false;
    while (parent) {
      const style = getComputedStyle(parent);
      if (['auto', 'scroll', 'hidden'].includes(style.overflowX)
          && parent.scrollWidth > parent.clientWidth) { scrolls = true; break; }
      parent = parent.parentElement;
    }
    if (!scrolls) out.push(element.tagName + '.' + element.className + ' ' + Math.round(box.right));
  }
  return {width, scroll: document.documentElement.scrollWidth, elements: out.slice(0, 5)};
}"""


def _seed(live: LiveServer) -> dict[str, Any]:
    """A record of every kind, so that every table has rows (and long ones)."""
    instance, clock = live.instance, live.clock
    deposit(instance, clock, "1001")
    confiscated = confiscate(instance, clock, "1002", reason="Using it in a lesson " * 6)
    held = confiscate(instance, clock, "1003", into_kiosk=False)
    hold(instance, clock, held, "A concern the DSL must see " * 4)
    publish(
        instance,
        clock,
        {
            "status": "fault",
            "faults": [LONG_FAULT],
            "started_at": clock.now().isoformat(),
            "alarms": [{"compartment": 3, "kind": "left_open", "since": clock.now().isoformat()}],
        },
    )
    with instance.database.transaction() as session:
        admin = Actor.for_user(user_of(session, Role.ADMIN))
        for admission, ends in (("1004", 5), ("1005", None)):
            exemptions.grant(
                session,
                admin,
                clock,
                instance.audit,
                pupil=pupil_of(session, admission),
                kind=ExemptionKind.MEDICAL,
                starts_on=clock.now().date(),
                ends_on=clock.now().date() + timedelta(days=ends) if ends else None,
                review_on=clock.now().date() + timedelta(days=60),
                agreement_reference="MED-2026-000123-GLUCOSE-MONITORING",
                notes="Glucose monitoring app on the phone; see the care plan " * 3,
            )
        command = commands.submit(
            session,
            admin,
            clock,
            instance.audit,
            kiosk=kiosk_of(session),
            kind="open_compartment",
            payload={"compartment": 2, "purpose": "office"},
        )
        instance.audit.record(
            session,
            clock,
            Actor.for_kiosk("main"),
            "kiosk.fault",
            kiosk="main",
            details={"fault": "reader", "message": LONG_FAULT},
        )
        command_id = command.id
    return {"confiscated": confiscated, "held": held, "command": command_id}


def _pages(page: Any, live: LiveServer, seeded: dict[str, Any]) -> list[str]:
    """Every page one click from the dashboard, and the pages one click from those that
    show a record (a confiscation, its notice, a pupil, a command, a report range)."""
    page.goto(f"{live.url}/")
    found = {f"{live.url}/"}
    for href in page.eval_on_selector_all("header nav a", "els => els.map(e => e.href)"):
        found.add(href)
    extra = [
        f"/confiscations/{seeded['confiscated']}",
        f"/confiscations/{seeded['confiscated']}/notice",
        f"/confiscations/{seeded['held']}",
        "/pupils/1002",
        f"/commands/{seeded['command']}",
        "/register?form=7A",
        "/audit?kind=kiosk",
    ]
    found.update(urljoin(live.url, path) for path in extra)
    return sorted(url for url in found if urlsplit(url).netloc == urlsplit(live.url).netloc)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OFFICE], ids=lambda r: r.value)
def test_every_page_fits_a_tablet_held_upright(
    new_page: Callable[..., Any], live: LiveServer, role: Role
) -> None:
    seeded = _seed(live)
    page = browser_sign_in(new_page(*TABLET), live, role)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    wrong = {}
    pages = _pages(page, live, seeded)
    assert len(pages) >= 15
    for url in pages:
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        found = page.evaluate(OVERFLOW)
        if found["scroll"] > found["width"] or found["elements"]:
            wrong[url[len(live.url) :]] = found
    assert wrong == {}
    assert errors == []


def test_the_audit_details_are_readable_on_a_tablet(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    """The details of an event read as lines of text, not one word per line."""
    _seed(live)
    page = browser_sign_in(new_page(*TABLET), live, Role.ADMIN)
    page.goto(f"{live.url}/audit?kind=kiosk.fault")
    cell = page.locator("table.audit td.details").first
    box = cell.bounding_box()
    assert box is not None and box["width"] >= TABLET[0] / 2
    assert LONG_FAULT in cell.inner_text()


def test_the_favicon_is_served(new_page: Callable[..., Any], live: LiveServer) -> None:
    page = new_page()
    response = page.goto(f"{live.url}/favicon.ico")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    page.goto(f"{live.url}/login")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(urljoin(live.url, icon)).status == 200


@pytest.mark.parametrize(
    "screen",
    [
        None,  # idle: "Tap your card"
        {"seq": 2, "tone": "refused", "title": "Card not known", "message": "See the office"},
        {"seq": 3, "tone": "info", "title": "Staff mode", "message": "Tap a pupil's card"},
    ],
    ids=["idle", "refused", "staff"],
)
def test_the_kiosk_screen_shows_no_locker_caption_without_a_number(
    new_page: Callable[..., Any], live: LiveServer, screen: dict[str, Any] | None
) -> None:
    publish(live.instance, live.clock, {"status": "ok", "screen": screen})
    page = new_page(800, 480)
    page.goto(f"{live.url}/kiosk/main")
    assert page.locator("#compartment").get_attribute("hidden") is not None
    assert not page.locator("#compartment").is_visible()
    assert not page.get_by_text("Locker", exact=True).is_visible()
    # And once a number is published, the caption and the number show.
    publish(
        live.instance,
        live.clock,
        {
            "status": "ok",
            "screen": {"seq": 9, "tone": "ok", "title": "Open", "message": "", "compartment": 4},
        },
    )
    page.wait_for_function("() => document.body.dataset.seq === '9'")
    assert page.locator("#compartment").is_visible()
    assert page.locator("#compartment-number").inner_text() == "4"


def test_the_awaiting_collection_count_updates_without_a_reload(
    new_page: Callable[..., Any], live: LiveServer
) -> None:
    page = browser_sign_in(new_page(), live, Role.OFFICE)
    count = page.locator("[data-count=awaiting_collection]")
    assert count.inner_text() == "0"
    page.evaluate("window.__marker = 'same page'")
    confiscate(live.instance, live.clock, "1001", into_kiosk=False)  # into the office safe
    page.wait_for_function(
        "() => document.querySelector('[data-count=awaiting_collection]').textContent === '1'"
    )
    assert page.evaluate("window.__marker") == "same page"
