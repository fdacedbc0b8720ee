"""Kiosks that keep working when the school's PostgreSQL server cannot be reached.

The kiosk reaches the server through a TCP link that the tests cut and restore (between
flows, and in the middle of one: at a chosen statement, or at the commit); the office works
on the server directly meanwhile. Then: the offline work is replayed once and in order, what
the office did centrally wins, nothing is lost or doubled, and the audit chain verifies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import joinedload

from kiosk import cabinets, cards
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.controller import RECONNECT_S, Controller
from kiosk.db import Database
from kiosk.models import (
    ACTIVE_STATES,
    AuditEvent,
    Card,
    Compartment,
    CustodyRecord,
    CustodyState,
    Kiosk,
    OfflineReplay,
    Pupil,
    Role,
)
from kiosk.offline import REFRESH_S, mirror_path, state_file

from .conftest import add_pupil, add_user
from .netlink import NetworkLink
from .rig import AFTERNOON, ALEX, KIM, SAM, TEACHER, Rig, build

pytestmark = pytest.mark.usefixtures("postgres_server")


@dataclass
class School:
    """A kiosk on the school's PostgreSQL server through ``link``; ``office`` is the
    server reached directly (the office's web app, which the cut does not affect)."""

    rig: Rig
    link: NetworkLink
    office: Database

    @property
    def controller(self) -> Controller:
        return self.rig.controller

    def reconnect(self) -> None:
        """Let the kiosk's next attempt to reach the server happen."""
        self.rig.advance(RECONNECT_S + 0.1)

    def records(self, admission: str | None = None) -> list[CustodyRecord]:
        with self.office.reader() as session:
            query = (
                select(CustodyRecord)
                .options(joinedload(CustodyRecord.compartment), joinedload(CustodyRecord.pupil))
                .order_by(CustodyRecord.id)
            )
            if admission is not None:
                query = query.join(Pupil).where(Pupil.admission_number == admission)
            return list(session.execute(query).scalars().unique())

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.office.reader() as session:
            rows = session.execute(
                select(AuditEvent.details).where(AuditEvent.kind == kind).order_by(AuditEvent.seq)
            ).scalars()
            return [json.loads(row) for row in rows]

    def kinds(self) -> list[str]:
        with self.office.reader() as session:
            return list(session.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars())

    def verify(self) -> None:
        with self.office.reader() as session:
            report = self.rig.instance.audit.verify(session)  # raises naming a bad event
        assert report.events == len(self.kinds())

    def central_state(self) -> dict[str, Any]:
        with self.office.reader() as session:
            return session.execute(select(Kiosk.state)).scalar_one()

    def local_state(self) -> dict[str, Any]:
        path = state_file(self.rig.instance.home, "main")
        return json.loads(path.read_text(encoding="utf-8"))["state"]

    def deposit(self, uid: bytes) -> int:
        """A pupil taps, opens the compartment that unlocked, and closes it."""
        before = set(self.rig.sim.energised())
        self.rig.tap(uid)
        (number,) = set(self.rig.sim.energised()) - before
        assert self.rig.open(number)
        self.rig.close(number)
        return number

    def cut_at(self, predicate: Callable[[str], bool], *, after: int = 1) -> list[str]:
        """Cut the link when the kiosk's ``after``-th statement matching ``predicate`` is
        about to run (it then fails, as on a real outage). Returns the statements seen."""
        seen: list[str] = []

        def before_execute(_conn, _cursor, statement, _params, _context, _many) -> None:
            if self.link.up and predicate(statement):
                seen.append(statement)
                if len(seen) == after:
                    self.link.cut()

        event.listen(self.controller.central.engine, "before_cursor_execute", before_execute)
        return seen

    def cut_at_commit(self) -> None:
        """Cut the link just before the kiosk's next commit reaches the server (once)."""
        fired: list[bool] = []

        def on_commit(_conn) -> None:
            if self.link.up and not fired:
                fired.append(True)
                self.link.cut()

        event.listen(self.controller.central.engine, "commit", on_commit)


@pytest.fixture
def school(tmp_path: Path, postgres_server) -> Iterator[School]:
    direct = postgres_server.new_database()
    link = NetworkLink.to(direct)
    rig = build(tmp_path, link.url(direct))
    office = Database(direct)
    try:
        yield School(rig, link, office)
    finally:
        link.restore()
        rig.controller.shutdown()
        rig.cabinet.close()
        rig.instance.close()
        office.dispose()
        link.close()


def active(records: list[CustodyRecord]) -> list[CustodyRecord]:
    return [record for record in records if record.state in ACTIVE_STATES]


# ------------------------------------------------------------------------------ tests


def test_deposits_while_offline_are_replayed_once_in_order(school: School) -> None:
    school.link.cut()
    sam = school.deposit(SAM)  # the first statement fails: the tap is served offline
    assert not school.controller.online
    alex = school.deposit(ALEX)
    assert sam != alex
    assert school.records() == []  # nothing reached the server yet
    state = school.local_state()
    assert state["network"] == "offline" and state["status"] == "ok"
    assert "OFFLINE" in school.controller._status_line()

    school.reconnect()  # still cut: stays offline, keeps working
    assert not school.controller.online
    school.link.restore()
    school.reconnect()
    assert school.controller.online

    records = school.records()
    assert [(r.pupil.admission_number, r.state, r.compartment.number) for r in records] == [
        ("S1", CustodyState.IN_LOCKER, sam),
        ("S2", CustodyState.IN_LOCKER, alex),
    ]
    kinds = school.kinds()
    replayed = kinds[kinds.index("kiosk.offline") :]
    assert [k for k in replayed if k.startswith("custody.")] == [
        "custody.deposit_started",
        "custody.deposit_confirmed",
        "custody.deposit_started",
        "custody.deposit_confirmed",
    ]
    (summary,) = school.events("kiosk.offline_replayed")
    assert summary["conflicts"] == [] and summary["applied"] == 4
    with school.office.reader() as session:
        replays = session.execute(select(OfflineReplay)).scalars().all()
    assert len(replays) == summary["events"] == len({r.local_seq for r in replays})
    assert [tap["offline"] for tap in school.events("tap")] == [True, True]
    assert school.events("kiosk.online")[0]["offline_s"] > 0
    assert school.central_state()["network"] == "online"
    school.verify()

    # Online again, from the central records: Sam collects in the afternoon.
    school.rig.at(AFTERNOON)
    school.rig.tap(SAM)
    assert school.rig.open(sam)
    assert school.records("S1")[0].state is CustodyState.COLLECTED
    assert school.controller._replay() == {}  # nothing left to replay


def test_a_cut_in_the_middle_of_a_tap_is_finished_offline(school: School) -> None:
    seen = school.cut_at(lambda sql: sql.startswith("INSERT INTO custody_records"))
    number = school.deposit(SAM)
    assert seen and not school.controller.online
    school.link.restore()
    school.reconnect()
    (record,) = school.records()
    assert record.state is CustodyState.IN_LOCKER and record.compartment.number == number
    assert len(school.events("custody.deposit_started")) == 1
    school.verify()


def test_a_cut_at_the_commit_of_a_door_close_is_finished_offline(school: School) -> None:
    school.rig.tap(SAM)  # online: PENDING_DEPOSIT on the server, copied to the mirror
    (number,) = school.rig.sim.energised()
    assert school.rig.open(number)
    school.rig.advance(0.2)  # the opening is written (online)
    school.cut_at_commit()
    school.rig.close(number)  # the confirmation's commit never reaches the server
    assert not school.controller.online
    assert school.records("S1")[0].state is CustodyState.PENDING_DEPOSIT
    school.link.restore()
    school.reconnect()
    (record,) = school.records("S1")
    assert record.state is CustodyState.IN_LOCKER
    assert len(school.events("custody.deposit_confirmed")) == 1
    school.verify()


def test_a_hold_placed_centrally_meanwhile_wins(school: School) -> None:
    number = school.deposit(SAM)  # online
    school.controller.pump()
    school.link.cut()
    with school.office.transaction() as session:
        dsl = Actor.for_user(add_user(session, school.rig.clock, "dsl", Role.DSL))
        record = session.execute(select(CustodyRecord)).scalar_one()
        school.rig.instance.ledger.hold(
            session, dsl, school.rig.clock, record, reason="urgent referral"
        )
    school.rig.at(AFTERNOON)
    school.rig.tap(SAM)  # offline, the kiosk still believes the device is in the locker
    assert not school.controller.online
    assert school.rig.open(number)
    school.rig.close(number)
    school.link.restore()
    school.reconnect()
    (record,) = school.records("S1")
    assert record.state is CustodyState.SAFEGUARDING_HOLD  # the centre wins
    assert record.flag == "offline_conflict"
    assert "collected the device while the kiosk was offline" in record.flag_detail
    (conflict,) = school.events("kiosk.offline_conflict")
    assert conflict["kind"] == "custody.collected" and conflict["compartment"] == number
    (summary,) = school.events("kiosk.offline_replayed")
    assert len(summary["conflicts"]) == 1
    school.verify()


def test_the_offline_copy_follows_what_the_office_did_while_online(school: School) -> None:
    """A hold placed centrally reaches the kiosk's copy with its next unit of work, and a
    compartment released by the office is given out again without a stale copy in the way."""
    sam = school.deposit(SAM)
    alex = school.deposit(ALEX)
    with school.office.transaction() as session:
        ledger, clock = school.rig.instance.ledger, school.rig.clock
        dsl = Actor.for_user(add_user(session, clock, "dsl", Role.DSL))
        records = {
            r.pupil.admission_number: r for r in session.execute(select(CustodyRecord)).scalars()
        }
        ledger.hold(session, dsl, clock, records["S1"], reason="urgent referral")
        ledger.lift_hold(session, dsl, clock, records["S1"], note="checked")
        ledger.release_to_parent(  # at the end of the day, by the rules
            session,
            dsl,
            ManualClock(AFTERNOON),
            records["S1"],
            id_checked=True,
            collector_name="A Parent",
            relationship="father",
        )
        ledger.hold(session, dsl, clock, records["S2"], reason="urgent referral")
    school.rig.advance(1)  # a moment later (a lock rests between two pulses)
    kim = school.deposit(KIM)  # a unit of work: the copy catches up
    assert kim == sam  # the released compartment is free again (nothing open there)
    with school.controller.mirror.database.reader() as session:
        copied = {r.id: r.state for r in session.execute(select(CustodyRecord)).scalars()}
    assert sorted(copied.values()) == sorted(
        [CustodyState.RELEASED_TO_PARENT, CustodyState.SAFEGUARDING_HOLD, CustodyState.IN_LOCKER]
    )
    school.link.cut()
    school.rig.at(AFTERNOON)
    school.rig.tap(ALEX)  # offline: the copy knows the device is held
    assert not school.controller.online
    assert alex not in school.rig.sim.energised()
    assert school.controller.screen["tone"] == "refused"


def test_a_deposit_made_elsewhere_meanwhile_takes_no_second_compartment(school: School) -> None:
    """Sam's device went into another kiosk while this one was offline; the offline deposit
    here cannot be recorded, so its compartment is taken out of service to be checked."""
    school.link.cut()
    number = school.deposit(SAM)
    with school.office.transaction() as session:
        other, _ = cabinets.register(
            session,
            Actor.system("test"),
            school.rig.clock,
            school.rig.instance.audit,
            replace(school.rig.instance.config.kiosk, name="hall", label="Hall"),
        )
        pupil = session.execute(select(Pupil).where(Pupil.admission_number == "S1")).scalar_one()
        school.rig.instance.ledger.start_deposit(
            session,
            Actor.for_pupil(pupil, "hall"),
            school.rig.clock,
            pupil=pupil,
            kiosk=other,
            timeout_s=30,
        )
    school.link.restore()
    school.reconnect()
    assert len(active(school.records("S1"))) == 1  # only the hall's
    with school.office.reader() as session:
        compartment = session.execute(
            select(Compartment)
            .join(Kiosk)
            .where(Kiosk.name == "main", Compartment.number == number)
        ).scalar_one()
    assert compartment.out_of_service
    assert "offline" in compartment.out_of_service_reason
    school.verify()


def test_an_interrupted_replay_resumes_without_doing_anything_twice(school: School) -> None:
    school.link.cut()
    sam, _, _ = (school.deposit(uid) for uid in (SAM, ALEX, KIM))
    school.link.restore()
    seen = school.cut_at(lambda sql: sql.startswith("INSERT INTO offline_replays"), after=4)
    school.reconnect()  # the replay stops after three events
    assert len(seen) == 4 and not school.controller.online
    with school.office.reader() as session:
        assert session.execute(select(func.count()).select_from(OfflineReplay)).scalar() == 3
    school.rig.at(AFTERNOON)
    school.rig.tap(SAM)  # still offline: Sam collects meanwhile
    assert school.rig.open(sam)
    school.link.restore()
    school.reconnect()
    assert school.controller.online
    by_pupil = {r.pupil.admission_number: r.state for r in school.records()}
    assert by_pupil == {
        "S1": CustodyState.COLLECTED,
        "S2": CustodyState.IN_LOCKER,
        "S3": CustodyState.IN_LOCKER,
    }
    assert len(school.events("custody.deposit_started")) == 3
    with school.office.reader() as session:
        seqs = session.execute(select(OfflineReplay.local_seq)).scalars().all()
    assert len(seqs) == len(set(seqs))
    summaries = school.events("kiosk.offline_replayed")
    assert summaries[-1]["already_done"] == 3
    school.verify()


def test_staff_actions_wait_for_the_network(school: School) -> None:
    school.link.cut()
    school.rig.tap(TEACHER)
    assert not school.controller.online
    assert school.controller.mode.name == "pupil"
    assert school.local_state()["screen"]["title"] == "Staff actions need the network"
    school.rig.tap(SAM)  # a pupil's tap after it is an ordinary deposit, not a confiscation
    assert school.controller.unlocks[next(iter(school.controller.unlocks))].purpose == "deposit"


def test_a_kiosk_starts_offline_from_its_mirror(school: School) -> None:
    school.controller.shutdown()
    school.link.cut()
    controller = Controller(school.rig.instance, school.rig.cabinet, school.rig.clock)
    school.rig.controller = controller
    controller.start(reader_thread=False)
    assert not controller.online
    number = school.deposit(ALEX)
    school.link.restore()
    school.reconnect()
    assert controller.online
    (record,) = school.records("S2")
    assert record.state is CustodyState.IN_LOCKER and record.compartment.number == number
    kinds = school.kinds()
    assert kinds.count("kiosk.started") == 2 and "kiosk.offline" in kinds
    school.verify()


def test_without_a_mirror_a_kiosk_cannot_start_offline(school: School) -> None:
    school.controller.shutdown()
    mirror_path(school.rig.instance.home, "main").unlink()
    school.link.cut()
    controller = Controller(school.rig.instance, school.rig.cabinet, school.rig.clock)
    with pytest.raises(OperationalError):
        controller.start(reader_thread=False, listen=False)


def test_a_pending_deposit_follows_its_record_to_the_centre(school: School) -> None:
    """The link comes back while a door opened offline is still open: the deposit is
    replayed as pending and confirmed centrally when the door closes."""
    school.link.cut()
    school.rig.tap(SAM)
    (number,) = school.rig.sim.energised()
    assert school.rig.open(number)
    school.link.restore()
    school.reconnect()
    assert school.controller.online
    assert school.records("S1")[0].state is CustodyState.PENDING_DEPOSIT
    school.rig.close(number)
    assert school.records("S1")[0].state is CustodyState.IN_LOCKER
    school.rig.advance(timedelta(minutes=2).total_seconds())
    assert school.records("S1")[0].state is CustodyState.IN_LOCKER
    school.verify()


# ------------------------------------------------------------------------------ in doubt


def test_a_deposit_whose_commit_reply_was_lost_is_recorded_once(school: School) -> None:
    """The tap's commit reaches the server but its reply never comes back: the kiosk does
    the deposit again on its copy (the pupil is at the door), and the replay sees that the
    centre has it already: one record, in the locker, no conflict, no compartment lost."""
    school.link.lose_next_commit_reply()
    school.rig.tap(SAM)
    assert school.link.commits_lost == 1 and not school.controller.online
    assert school.records("S1")[0].state is CustodyState.PENDING_DEPOSIT  # it did commit
    (number,) = school.rig.sim.energised()
    assert school.rig.open(number)
    school.rig.close(number)
    school.link.restore()
    school.reconnect()
    assert school.controller.online
    (record,) = school.records("S1")
    assert record.state is CustodyState.IN_LOCKER and record.compartment.number == number
    assert school.events("kiosk.offline_conflict") == []
    (summary,) = school.events("kiosk.offline_replayed")
    assert summary["conflicts"] == [] and summary["already_central"] >= 2
    assert len(school.events("custody.deposit_started")) == 1
    assert len(school.events("tap")) == 1
    with school.office.reader() as session:
        assert not session.execute(
            select(func.count()).where(Compartment.out_of_service)
        ).scalar_one()
    school.rig.advance(120)  # no deadline left behind cancels it
    assert school.records("S1")[0].state is CustodyState.IN_LOCKER
    school.rig.at(AFTERNOON)
    school.rig.tap(SAM)
    assert school.rig.open(number)
    assert school.records("S1")[0].state is CustodyState.COLLECTED
    school.verify()


def test_a_collection_tap_whose_commit_reply_was_lost_is_not_a_conflict(school: School) -> None:
    number = school.deposit(SAM)
    school.controller.pump()
    school.rig.at(AFTERNOON)
    school.link.lose_next_commit_reply()
    school.rig.tap(SAM)  # the tap's unit commits, its reply is lost
    assert not school.controller.online
    assert school.rig.open(number)
    school.rig.close(number)
    school.link.restore()
    school.reconnect()
    assert school.controller.online
    (record,) = school.records("S1")
    assert record.state is CustodyState.COLLECTED and record.flag is None
    assert school.events("kiosk.offline_conflict") == []
    assert len(school.events("tap")) == 2  # the collection's tap is not doubled
    assert [tap["outcome"] for tap in school.events("tap")] == ["deposit", "collect"]
    school.verify()


def test_a_collection_whose_door_commit_reply_was_lost_is_not_a_conflict(school: School) -> None:
    number = school.deposit(SAM)
    school.controller.pump()
    school.rig.at(AFTERNOON)
    school.rig.tap(SAM)
    school.link.lose_next_commit_reply()
    assert school.rig.open(number)  # the collection's unit commits, its reply is lost
    assert not school.controller.online
    school.rig.close(number)
    school.link.restore()
    school.reconnect()
    assert school.controller.online
    (record,) = school.records("S1")
    assert record.state is CustodyState.COLLECTED and record.flag is None
    assert school.events("kiosk.offline_conflict") == []
    assert len(school.events("custody.collected")) == 1
    assert len([e for e in school.events("door.opened") if e["compartment"] == number]) == 2
    school.verify()


def test_a_unit_that_never_reached_the_server_is_replayed(school: School) -> None:
    """The opposite case: the link goes at the commit, before the server has it."""
    school.cut_at_commit()
    number = school.deposit(SAM)
    school.link.restore()
    school.reconnect()
    (record,) = school.records("S1")
    assert record.state is CustodyState.IN_LOCKER and record.compartment.number == number
    (summary,) = school.events("kiosk.offline_replayed")
    assert summary["already_central"] == 0 and summary["conflicts"] == []
    school.verify()


# ------------------------------------------------------------------------------ the copy


def test_after_a_restart_with_offline_work_the_copy_is_refreshed_again(school: School) -> None:
    """The kiosk stops while offline and starts online: its offline work is replayed, the
    offline session ends, and from then on the copy follows the centre again."""
    school.link.cut()
    school.deposit(SAM)
    school.controller.shutdown()
    school.link.restore()
    controller = Controller(school.rig.instance, school.rig.cabinet, school.rig.clock)
    school.rig.controller = controller
    controller.start(reader_thread=False, listen=False)
    assert controller.online and controller.mirror.session() is None
    assert school.records("S1")[0].state is CustodyState.IN_LOCKER
    with school.office.transaction() as session:
        pupil = add_pupil(session, school.rig.clock, "S9", forename="New", surname="Pupil")
        cards.enrol(
            session,
            Actor.system("test"),
            school.rig.clock,
            school.rig.instance.audit,
            school.rig.instance.card_key,
            uid=bytes.fromhex("A1000009"),
            pupil=pupil,
        )
    school.rig.advance(REFRESH_S + 1)
    with controller.mirror.database.reader() as session:
        assert session.execute(select(func.count()).select_from(Card)).scalar_one() == 5
    school.link.cut()
    school.rig.tap(bytes.fromhex("A1000009"))  # offline: the new pupil's card is known
    assert not controller.online
    assert school.controller.screen["title"] == "Your locker is open"


def test_the_copy_is_taken_in_one_snapshot(school: School) -> None:
    """A pupil and their card committed by the office while the copy is being read: the
    copy has both or neither (never a card whose pupil it lacks)."""
    fired: list[bool] = []

    def before_execute(_conn, _cursor, statement, _params, _context, _many) -> None:
        if statement.startswith("SELECT") and "FROM cards" in statement and not fired:
            fired.append(True)
            with school.office.transaction() as session:
                pupil = add_pupil(session, school.rig.clock, "S8", forename="Late", surname="Comer")
                cards.enrol(
                    session,
                    Actor.system("test"),
                    school.rig.clock,
                    school.rig.instance.audit,
                    school.rig.instance.card_key,
                    uid=bytes.fromhex("A1000008"),
                    pupil=pupil,
                )

    engine = school.controller.central.engine
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        school.controller._refresh_mirror()
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)
    assert fired
    with school.controller.mirror.database.reader() as session:
        pupils = session.execute(select(func.count()).select_from(Pupil)).scalar_one()
        copied = session.execute(select(func.count()).select_from(Card)).scalar_one()
    assert (pupils, copied) == (3, 4)  # as they were when the copy began
    school.rig.advance(REFRESH_S + 1)  # the next copy has them
    with school.controller.mirror.database.reader() as session:
        assert session.execute(select(func.count()).select_from(Card)).scalar_one() == 5
