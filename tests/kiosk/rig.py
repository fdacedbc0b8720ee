"""A kiosk controller on simulated hardware for tests: the unmodified mfrc522 library reads
cards from the chip emulator, gpiozero's mock pins carry the locks and doors, and time is
simulated (no sleeping)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from hardware import CabinetSpec, open_cabinet
from hardware.cabinet import Cabinet
from kiosk import cards, commands
from kiosk.actors import Actor
from kiosk.cabinet_clock import SimulatedClock
from kiosk.controller import Controller
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Command, Compartment, CustodyRecord, Kiosk, Pupil, Role

from .conftest import SCHOOL_MORNING, add_pupil, add_user, make_instance

CABINET = {
    "kiosk": {
        "compartments": 8,
        "secure_compartments": [7, 8],
        "door_open_alarm_s": 60,
        "out_of_service_after": 3,
    }
}
SAM, ALEX, KIM = bytes.fromhex("A1000001"), bytes.fromhex("A1000002"), bytes.fromhex("A1000003")
TEACHER = bytes.fromhex("5E000001")
STRANGER = bytes.fromhex("DEADBEEF")
AFTERNOON = datetime(2026, 9, 7, 14, 30, tzinfo=UTC)  # 15:30 London


@dataclass
class Rig:
    instance: Instance
    clock: SimulatedClock
    cabinet: Cabinet
    controller: Controller

    @property
    def sim(self):
        return self.cabinet.sim

    def pump(self) -> None:
        self.controller.pump()

    def tap(self, uid: bytes) -> None:
        self.sim.tap(uid)
        self.pump()

    def open(self, number: int) -> bool:
        opened = self.sim.open_door(number)
        self.pump()
        return opened

    def close(self, number: int) -> None:
        self.sim.close_door(number)
        self.pump()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()

    def at(self, when: datetime) -> None:
        self.clock.set(when)
        self.pump()

    def record(self, admission: str = "S1") -> CustodyRecord | None:
        with self.instance.database.reader() as session:
            return session.execute(
                select(CustodyRecord)
                .join(Pupil)
                .where(Pupil.admission_number == admission)
                .options(joinedload(CustodyRecord.compartment))
                .order_by(CustodyRecord.id.desc())
                .limit(1)
            ).scalar_one_or_none()

    def compartment(self, number: int) -> Compartment:
        with self.instance.database.reader() as session:
            return session.execute(
                select(Compartment).where(Compartment.number == number)
            ).scalar_one()

    def events(self, kind: str) -> list[dict]:
        with self.instance.database.reader() as session:
            rows = (
                session.execute(
                    select(AuditEvent.details)
                    .where(AuditEvent.kind == kind)
                    .order_by(AuditEvent.seq)
                )
                .scalars()
                .all()
            )
        return [json.loads(row) for row in rows]

    def state(self) -> dict:
        with self.instance.database.reader() as session:
            return session.execute(select(Kiosk.state)).scalar_one()

    def submit(self, kind: str, **payload) -> int:
        with self.instance.database.transaction() as session:
            kiosk = session.execute(select(Kiosk)).scalar_one()
            return commands.submit(
                session,
                Actor.system("test"),
                self.clock,
                self.instance.audit,
                kiosk=kiosk,
                kind=kind,
                payload=payload,
            ).id

    def command(self, command_id: int) -> Command:
        with self.instance.database.reader() as session:
            return session.get(Command, command_id)

    def verify(self) -> None:
        with self.instance.database.reader() as session:
            self.instance.audit.verify(session)


def build(
    tmp_path: Path,
    database_url: str | None = None,
    *,
    auto_open: bool = False,
    auto_close_s: float | None = None,
    overrides: dict | None = None,
    **spec,
) -> Rig:
    config = {**CABINET, **(overrides or {})}
    instance = make_instance(tmp_path / "instance", config, database_url=database_url)
    clock = SimulatedClock(SCHOOL_MORNING)
    with instance.database.transaction() as session:
        actor = Actor.system("test")
        for admission, uid, name in (("S1", SAM, "Sam"), ("S2", ALEX, "Alex"), ("S3", KIM, "Kim")):
            pupil = add_pupil(session, clock, admission, forename=name, surname="Taylor")
            cards.enrol(
                session, actor, clock, instance.audit, instance.card_key, uid=uid, pupil=pupil
            )
        teacher = add_user(session, clock, "teacher", Role.STAFF)
        cards.enrol(
            session, actor, clock, instance.audit, instance.card_key, uid=TEACHER, user=teacher
        )
    spec.setdefault("debounce_s", 0.0)
    cabinet = open_cabinet(
        CabinetSpec.simulated(config["kiosk"].get("compartments", 8), **spec),
        "sim",
        clock=clock,
        auto_open=auto_open,
        auto_close_s=auto_close_s,
    )
    controller = Controller(instance, cabinet, clock)
    controller.start(reader_thread=False)
    return Rig(instance, clock, cabinet, controller)


def rigs(tmp_path: Path, database_url: str | None) -> Iterator[Callable[..., Rig]]:
    """For a ``make_rig`` fixture: yields ``make(**options)``, which builds a rig on this
    test's database; every rig built is closed at the end whatever happens."""
    built: list[Rig] = []

    def make(**options) -> Rig:
        rig = build(tmp_path / f"rig{len(built)}", database_url, **options)
        built.append(rig)
        return rig

    yield make
    for rig in built:
        rig.controller.shutdown()
        rig.cabinet.close()
        rig.instance.close()
