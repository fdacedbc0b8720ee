"""A demo school: forms, pupils with contacts and cards, staff, one exemption.

Seeded only into an instance with no pupils, so ``locker init --demo`` and ``locker demo``
never touch a real school's data. Demo card UIDs are derived from the admission number
(:func:`demo_uid`), so the simulator panel can tap any demo pupil's card without the
database ever holding a UID in clear.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk import cards, exemptions, users
from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.models import Contact, ExemptionKind, Pupil, PupilStatus, Role, User

if TYPE_CHECKING:
    from kiosk.instance import Instance

log = logging.getLogger(__name__)

FORMS = ("7A", "7B", "8A", "8B", "9A", "10A", "11A")
FORENAMES = (
    "Amelia",
    "Oliver",
    "Zoë",
    "Mohammed",
    "Siobhán",
    "Jack",
    "Aisha",
    "Łukasz",
    "Freya",
    "Kwame",
    "Isla",
    "Harry",
    "Priya",
    "Noah",
    "Chloé",
    "Ethan",
    "Maryam",
    "Oscar",
    "Ffion",
    "Tomasz",
    "Grace",
    "Yusuf",
    "Evie",
    "Dylan",
    "Nia",
    "Leo",
    "Sofia",
    "Callum",
    "Amara",
    "Rhys",
    "Ella",
    "Arjun",
    "Mia",
    "Finn",
    "Hana",
)
SURNAMES = (
    "Smith",
    "Jones",
    "O'Brien",
    "Khan",
    "Williams",
    "Nowak",
    "Taylor",
    "Okafor",
    "Brown",
    "Patel",
    "Davies",
    "Murphy",
    "Evans",
    "Ahmed",
    "Wilson",
    "Kowalski",
    "Thomas",
    "Mensah",
    "Roberts",
    "Singh",
    "Hughes",
    "MacLeod",
    "Clarke",
    "Ali",
    "Walker",
)
RELATIONS = ("Mother", "Father", "Carer", "Grandmother", "Step-father", "Aunt")
PUPILS_PER_FORM = 6
STAFF = (
    ("head", "Mrs A. Emmett (Head)", Role.ADMIN),
    ("dsl", "Ms K. Lovell (DSL)", Role.DSL),
    ("office", "Mr J. Patel (Office)", Role.OFFICE),
    ("teacher", "Mr G. Harris (Teacher)", Role.STAFF),
)


def demo_uid(holder: str) -> bytes:
    """The demo card UID of a pupil (admission number) or staff member (``staff:NAME``)."""
    uid = hashlib.sha256(f"demo-card:{holder}".encode()).digest()[:4]
    return uid if uid[0] != 0x88 else b"\x08" + uid[1:]


@dataclass(frozen=True)
class DemoAccount:
    username: str
    role: Role
    password: str


def seed(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, card_key: bytes
) -> list[DemoAccount] | None:
    """Seed the demo school; None (and nothing written) when the instance has pupils."""
    if session.execute(select(func.count()).select_from(Pupil)).scalar_one():
        return None
    now = clock.now()
    index = 0
    first: Pupil | None = None
    for form in FORMS:
        year = form.rstrip("AB")
        for _ in range(PUPILS_PER_FORM):
            forename = FORENAMES[index % len(FORENAMES)]
            surname = SURNAMES[(index * 7) % len(SURNAMES)]
            admission = f"{2020 + index // 40}{index:04d}"
            pupil = Pupil(
                admission_number=admission,
                forename=forename,
                surname=surname,
                year_group=year,
                form=form,
                status=PupilStatus.ACTIVE,
                created_at=now,
                updated_at=now,
            )
            pupil.contacts = [
                Contact(
                    position=1,
                    name=f"{FORENAMES[(index + 11) % len(FORENAMES)]} {surname}",
                    relation=RELATIONS[index % len(RELATIONS)],
                ),
                Contact(
                    position=2,
                    name=f"{FORENAMES[(index + 17) % len(FORENAMES)]} {surname}",
                    relation=RELATIONS[(index + 1) % len(RELATIONS)],
                ),
            ]
            session.add(pupil)
            session.flush()
            cards.enrol(
                session, actor, clock, audit, card_key, uid=demo_uid(admission), pupil=pupil
            )
            first = first or pupil
            index += 1
    accounts: list[DemoAccount] = []
    admin: User | None = None
    for username, display, role in STAFF:
        password = users.generate_password()
        user = users.add_user(
            session,
            actor,
            clock,
            audit,
            username=username,
            role=role,
            password=password,
            display_name=display,
        )
        cards.enrol(
            session, actor, clock, audit, card_key, uid=demo_uid(f"staff:{username}"), user=user
        )
        accounts.append(DemoAccount(username, role, password))
        admin = admin or (user if role is Role.ADMIN else None)
    assert first is not None and admin is not None
    today = now.date()
    exemptions.grant(
        session,
        Actor.for_user(admin),
        clock,
        audit,
        pupil=first,
        kind=ExemptionKind.MEDICAL,
        starts_on=today - timedelta(days=30),
        ends_on=None,
        review_on=today + timedelta(days=90),
        agreement_reference="MED-2026-001 (glucose monitoring plan)",
    )
    audit.record(session, clock, actor, "demo.seeded", details={"pupils": index})
    return accounts


# ------------------------------------------------------------------------------ locker demo

#: The demo's policy: windows open all day, so every flow can be tried at any hour.
DEMO_POLICY = {
    "deposit_window": "00:00-24:00",
    "collection_window": "00:00-24:00",
    "end_of_day": "24:00",
    "confiscation_release_from": "00:00",
}


def prepare_demo(home: str | None) -> tuple[Instance, list[Any] | None]:
    """Create (or upgrade) the demo instance and seed the demo school if it has no pupils.

    Returns the instance opened with the demo's settings (policy windows open all day,
    cookies allowed over plain HTTP on 127.0.0.1) and the new staff accounts, or None when
    the instance already had pupils (its data is kept as it is)."""
    from kiosk import cabinets, migrate
    from kiosk.clock import SystemClock
    from kiosk.instance import Instance

    created, _ = Instance.create(home)
    migrate.upgrade(created.database)
    created.close()
    instance = Instance.open(
        home, overrides={"policy": DEMO_POLICY, "web": {"secure_cookies": False}}
    )
    clock, actor = SystemClock(), Actor.system("demo")
    with instance.database.transaction() as session:
        cabinets.register(session, actor, clock, instance.audit, instance.config.kiosk)
        accounts = seed(session, actor, clock, instance.audit, instance.card_key)
    return instance, accounts


def run_demo(instance: Instance, *, port: int) -> None:
    """The kiosk controller on simulated hardware (in a thread) and the web app on
    127.0.0.1:``port`` (in this thread), until Ctrl-C or SIGTERM.

    The one process that runs both halves: the hardware layer and the web app are imported
    here only, so neither ``web`` (which uses :func:`demo_uid`) nor the kiosk process
    imports the other half."""
    import web
    from hardware.cabinet import open_cabinet
    from kiosk.cabinet_clock import LiveClock
    from kiosk.controller import Controller
    from kiosk.daemon import cabinet_spec

    spec = cabinet_spec(instance.config, simulate=True)
    stop = threading.Event()
    clock = LiveClock()
    cabinet = open_cabinet(spec, clock=clock, auto_open=True)
    controller = Controller(instance, cabinet, clock)
    controller.start()
    kiosk_thread = threading.Thread(target=controller.run, args=(stop,), name="kiosk-loop")
    kiosk_thread.start()

    def request_stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, request_stop)
    try:
        app = web.create_app(instance, simulated=True)
        web.serve(app, "127.0.0.1", port)
    except KeyboardInterrupt:
        log.info("demo stopping")
    finally:
        stop.set()
        kiosk_thread.join(timeout=10)
        cabinet.close()
        clock.close()
