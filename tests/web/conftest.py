"""Fixtures for the web app: a real SQLite instance (migrated once per session, then copied
for each test), a manual clock, the Flask app with CSRF on, and clients signed in per role.

Argon2 costs ~0.1 s per hash: the template's four users share one hash, and each test
signs in only the roles it needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from kiosk import cabinets, migrate
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import Contact, CustodyRecord, Kiosk, Pupil, PupilStatus, Role, User
from kiosk.offline import state_file
from kiosk.users import hash_password
from web import create_app

from ..conftest import missing_part

# Monday 7 September 2026, 07:45 in London (BST): inside the default deposit window.
SCHOOL_MORNING = datetime(2026, 9, 7, 6, 45, tzinfo=UTC)
PASSWORD = "a-good-long-password"
USERS = {Role.STAFF: "teacher", Role.OFFICE: "office", Role.DSL: "dsl", Role.ADMIN: "head"}
XSS_NAME = "<script>alert(1)</script>"
XSS_SURNAME = "<img src=x onerror=alert(2)>"
# Release at once: the default policy waits until 15:15 on the day of confiscation.
OVERRIDES: dict[str, dict[str, Any]] = {"policy": {"confiscation_release_from": "00:00"}}

PUPILS = (
    # admission, forename, surname, form, contacts
    ("1001", "Sam", "Taylor", "7A", (("Jo Taylor", "Mother"), ("Alex Taylor", "Father"))),
    ("1002", "Amir", "Khan", "7A", (("Nadia Khan", "Mother"),)),
    ("1003", "Chloé", "O'Brien", "7B", (("Pat O'Brien", "Carer"),)),
    ("1004", XSS_NAME, XSS_SURNAME, "8A", (("<b>Evil</b> Parent", "<i>Father</i>"),)),
    ("1005", "Freya", "Nowak", "8A", ()),
)


def add_pupil(
    session: Session,
    when: datetime,
    admission: str,
    forename: str,
    surname: str,
    form: str,
    contacts: tuple[tuple[str, str], ...] = (),
) -> Pupil:
    pupil = Pupil(
        admission_number=admission,
        forename=forename,
        surname=surname,
        form=form,
        year_group=form[:-1],
        status=PupilStatus.ACTIVE,
        created_at=when,
        updated_at=when,
    )
    pupil.contacts = [
        Contact(position=i, name=name, relation=relation)
        for i, (name, relation) in enumerate(contacts, start=1)
    ]
    session.add(pupil)
    session.flush()
    return pupil


def _build_template(home: Path, database_url: str | None = None) -> None:
    """The seeded school: in ``home``'s SQLite file, or (with the same secret) in the
    PostgreSQL database ``database_url``."""
    instance, _ = Instance.create(home, env={})
    if database_url:
        instance.close()
        instance = Instance.open(home, env={}, overrides={"database": {"url": database_url}})
    migrate.upgrade(instance.database)
    clock = ManualClock(SCHOOL_MORNING)
    secret = hash_password(PASSWORD)
    with instance.database.transaction() as session:
        cabinets.register(
            session, Actor.system("test"), clock, instance.audit, instance.config.kiosk
        )
        for role, username in USERS.items():
            session.add(
                User(
                    username=username,
                    display_name=f"{username.title()} ({role.value})",
                    role=role,
                    password_hash=secret,
                    active=True,
                    created_at=clock.now(),
                    password_changed_at=clock.now(),
                )
            )
        for admission, forename, surname, form, contacts in PUPILS:
            add_pupil(session, clock.now(), admission, forename, surname, form, contacts)
    instance.close()


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("template") / "instance"
    _build_template(home)
    return home


def copy_instance(
    template: Path, target: Path, overrides: dict[str, Any] | None = None
) -> Instance:
    shutil.copytree(template, target)
    os.chmod(target / "secret.key", 0o600)
    return Instance.open(
        target, env={}, overrides=overrides if overrides is not None else OVERRIDES
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(SCHOOL_MORNING)


@pytest.fixture(scope="session")
def postgres_web_template(postgres_server: Any, template_home: Path) -> str:
    """A PostgreSQL database seeded like the SQLite template, with the same site secret."""
    name = "web_template"
    postgres_server.admin(f"CREATE DATABASE {name} TEMPLATE {postgres_server.template}")
    _build_template(template_home, postgres_server.url(name))
    return name


@pytest.fixture
def instance(
    template_home: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[Instance]:
    """The seeded school on this test's database (each test runs on SQLite and PostgreSQL)."""
    overrides = dict(OVERRIDES)
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("postgres_web_template")
        overrides["database"] = {"url": server.new_database(template)}
    inst = copy_instance(template_home, tmp_path / "instance", overrides)
    yield inst
    inst.close()


@pytest.fixture
def app(instance: Instance, clock: ManualClock) -> Flask:
    return create_app(instance, testing=True, config={"LOCKER_CLOCK": clock})


# ------------------------------------------------------------------------------ clients

_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@dataclass
class Client:
    """A test client that keeps its session's CSRF token and adds it to every form."""

    raw: FlaskClient
    csrf: str = ""

    def refresh_csrf(self) -> str:
        page = self.raw.get("/login", follow_redirects=True)
        match = _META.search(page.get_data(as_text=True))
        assert match, "no CSRF token on the sign-in page"
        self.csrf = match.group(1)
        return self.csrf

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.raw.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """A form POST with the CSRF token."""
        return self.raw.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)

    def post_json(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """A JSON POST with the CSRF header (session authentication)."""
        headers = {"X-CSRFToken": self.csrf, **kwargs.pop("headers", {})}
        return self.raw.post(path, json=body if body is not None else {}, headers=headers, **kwargs)


def sign_in(app: Flask, role: Role | None, address: str = "127.0.0.1") -> Client:
    """A client signed in as the template's user of ``role`` (None: signed out)."""
    client = Client(app.test_client())
    client.raw.environ_base["REMOTE_ADDR"] = address
    client.refresh_csrf()
    if role is not None:
        response = client.post("/login", {"username": USERS[role], "password": PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        client.refresh_csrf()
    return client


@pytest.fixture
def login(app: Flask) -> Callable[..., Client]:
    def make(role: Role | None, address: str = "127.0.0.1") -> Client:
        return sign_in(app, role, address)

    return make


# ------------------------------------------------------------------------------ records


def kiosk_of(session: Session, name: str = "main") -> Kiosk:
    return cabinets.get_kiosk(session, name)


def pupil_of(session: Session, admission: str) -> Pupil:
    from sqlalchemy import select

    return session.execute(select(Pupil).where(Pupil.admission_number == admission)).scalar_one()


def user_of(session: Session, role: Role) -> User:
    from sqlalchemy import select

    return session.execute(select(User).where(User.username == USERS[role])).scalar_one()


def deposit(instance: Instance, clock: ManualClock, admission: str) -> int:
    """A pupil's device goes into a locker, as the kiosk would record it; its id."""
    with instance.database.transaction() as session:
        pupil = pupil_of(session, admission)
        record = instance.ledger.start_deposit(
            session,
            Actor.for_pupil(pupil, "main"),
            clock,
            pupil=pupil,
            kiosk=kiosk_of(session),
            timeout_s=30,
        )
        instance.ledger.confirm_deposit(session, Actor.for_kiosk("main"), clock, record)
        return record.id


def confiscate(
    instance: Instance,
    clock: ManualClock,
    admission: str,
    *,
    into_kiosk: bool = True,
    reason: str = "used in a lesson",
    by: Role = Role.STAFF,
) -> int:
    """Staff confiscate a device into a secure compartment (or the safe); its id."""
    with instance.database.transaction() as session:
        record = instance.ledger.confiscate(
            session,
            Actor.for_user(user_of(session, by)),
            clock,
            pupil=pupil_of(session, admission),
            reason=reason,
            device="phone",
            kiosk=kiosk_of(session) if into_kiosk else None,
        )
        if into_kiosk:
            instance.ledger.mark_stored(session, Actor.for_kiosk("main"), clock, record)
        return record.id


def hold(instance: Instance, clock: ManualClock, record_id: int, reason: str) -> None:
    with instance.database.transaction() as session:
        record = session.get(CustodyRecord, record_id)
        assert record is not None
        instance.ledger.hold(
            session, Actor.for_user(user_of(session, Role.STAFF)), clock, record, reason=reason
        )


def publish(
    instance: Instance, clock: ManualClock, state: dict[str, Any], name: str = "main"
) -> None:
    """Write what the kiosk controller publishes (heartbeat and state)."""
    with instance.database.transaction() as session:
        kiosk = kiosk_of(session, name)
        kiosk.heartbeat_at = clock.now()
        kiosk.state = state


def write_state_file(instance: Instance, heartbeat_at: datetime, state: dict) -> None:
    """What a kiosk on a shared database writes next to its instance (kiosk.controller)."""
    data = {"kiosk": "main", "label": "Form room 7", "heartbeat_at": heartbeat_at.isoformat()}
    state_file(instance.home, "main").write_text(json.dumps({**data, "state": state}), "utf-8")


# ------------------------------------------------------------------------------ browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One Debian chromium for the whole session, driven by Playwright (never downloaded)."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing: apt-get install chromium"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:  # pragma: no cover - part of the test extras
            missing = "playwright is not installed: pip install -e '.[test]'"
    if missing:
        missing_part(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class LiveServer:
    url: str
    app: Flask
    instance: Instance
    clock: ManualClock


@pytest.fixture
def live(instance: Instance, clock: ManualClock) -> Iterator[LiveServer]:
    """The app served by a real threaded HTTP server on 127.0.0.1 (a free port)."""
    import threading

    from werkzeug.serving import make_server

    app = create_app(
        instance,
        testing=True,
        config={"LOCKER_CLOCK": clock, "LOCKER_GRID_POLL_MS": 250},
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", app, instance, clock)
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def new_page(browser: Any, live: LiveServer) -> Iterator[Callable[..., Any]]:
    """Pages in fresh browser contexts (each its own cookies); dialogs are recorded."""
    contexts = []

    def make(width: int = 1280, height: int = 800) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(5000)
        contexts.append(context)
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        return page

    yield make
    for context in contexts:
        context.close()


def browser_sign_in(page: Any, live: LiveServer, role: Role, password: str = PASSWORD) -> Any:
    page.goto(f"{live.url}/login")
    page.fill("input[name=username]", USERS[role])
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page
