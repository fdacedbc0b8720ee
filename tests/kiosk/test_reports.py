"""Reports (kiosk.reports): the daily register built from real deposits, confiscations,
exemptions and roster imports; CSV per form and per pupil; spreadsheet-safe cells."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiosk import exemptions, reports, roster
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import CustodyRecord, ExemptionKind, Pupil, Role

from .conftest import SCHOOL_MORNING, main_kiosk, staff_actor

ACTOR = Actor.system("test")


@dataclass(frozen=True)
class Someone:
    admission: str
    forename: str
    surname: str
    form: str


PEOPLE = {
    "deposited": Someone("R01", "Amy", "Ng", "7A"),
    "exempt": Someone("R02", "Ben", "Ode", "7A"),
    "exempt_and_deposited": Someone("R03", "Cat", "Lee", "7B"),
    "cancelled": Someone("R04", "Dan", "Moe", "7B"),
    "confiscated_from_locker": Someone("R05", "Eve", "Ash", "10A"),
    "confiscated_in_class": Someone("R06", "Fay", "Bee", "10A"),
    "exemption_ended": Someone("R07", "Gus", "Cox", "10A"),
    "left_today": Someone("R08", "Hal", "Day", "10A"),
    "deposits_next_day": Someone("R09", "Ivy", "Eck", "10A"),
    "left_before": Someone("R10", "Jo", "Fox", "7A"),
}
JOINER = Someone("R11", "Kit", "Gee", "7A")  # joins the day after
EXPECTED = {  # the register of the school day, for everyone on roll that day
    "deposited": reports.DEPOSITED,
    "exempt": reports.EXEMPT,
    "exempt_and_deposited": reports.DEPOSITED,
    "cancelled": reports.NOTHING,
    "confiscated_from_locker": reports.DEPOSITED,
    "confiscated_in_class": reports.NOTHING,
    "exemption_ended": reports.NOTHING,
    "left_today": reports.NOTHING,
    "deposits_next_day": reports.NOTHING,
}


def roster_csv(people: list[Someone]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Adno", "Forename", "Surname", "Reg Group"])
    writer.writerows([p.admission, p.forename, p.surname, p.form] for p in people)
    return out.getvalue().encode()


def import_roster(
    instance: Instance, clock: ManualClock, people: list[Someone], **kw: bool
) -> None:
    parsed = roster.parse_roster(roster_csv(people))
    with instance.database.transaction() as session:
        roster.import_roster(session, ACTOR, clock, instance.audit, parsed, **kw)


def pupil(session: Session, who: Someone) -> Pupil:
    return session.execute(
        select(Pupil).where(Pupil.admission_number == who.admission)
    ).scalar_one()


def deposit(
    instance: Instance, session: Session, clock: ManualClock, who: Someone
) -> CustodyRecord:
    """A pupil's card at the kiosk: PENDING_DEPOSIT, through the ledger."""
    p = pupil(session, who)
    actor = Actor.for_pupil(p, "main")
    kiosk = main_kiosk(session)
    return instance.ledger.start_deposit(session, actor, clock, pupil=p, kiosk=kiosk, timeout_s=30)


@pytest.fixture
def school_day(instance: Instance, clock: ManualClock) -> date:
    """A week of a small school, through the roster importer, the ledger and exemptions."""
    day = instance.policy.school_day(SCHOOL_MORNING)
    everyone = list(PEOPLE.values())
    clock.set(SCHOOL_MORNING - timedelta(days=3))
    import_roster(instance, clock, everyone)
    clock.set(SCHOOL_MORNING - timedelta(days=1))
    import_roster(instance, clock, [p for p in everyone if p is not PEOPLE["left_before"]])

    clock.set(SCHOOL_MORNING)
    with instance.database.transaction() as session:
        admin = staff_actor(session, clock, Role.ADMIN, "head")
        teacher = staff_actor(session, clock, Role.STAFF, "teacher")
        for name, starts, ends in (
            ("exempt", day - timedelta(days=6), day + timedelta(days=30)),
            ("exempt_and_deposited", day, day),
            ("exemption_ended", day - timedelta(days=6), day - timedelta(days=1)),
        ):
            exemptions.grant(
                session,
                admin,
                clock,
                instance.audit,
                pupil=pupil(session, PEOPLE[name]),
                kind=ExemptionKind.MEDICAL,
                starts_on=starts,
                ends_on=ends,
                agreement_reference=f"MED-{name}",
            )
        kiosk = Actor.for_kiosk("main")
        for name in ("deposited", "exempt_and_deposited", "confiscated_from_locker"):
            record = deposit(instance, session, clock, PEOPLE[name])
            instance.ledger.confirm_deposit(session, kiosk, clock, record)
            if name == "confiscated_from_locker":
                clock.advance(minutes=1)
                instance.ledger.confiscate(
                    session,
                    teacher,
                    clock,
                    pupil=pupil(session, PEOPLE[name]),
                    reason="used in the toilets",
                    record=record,
                )
        record = deposit(instance, session, clock, PEOPLE["cancelled"])
        instance.ledger.cancel_deposit(session, kiosk, clock, record, reason="door never opened")
        instance.ledger.confiscate(
            session,
            teacher,
            clock,
            pupil=pupil(session, PEOPLE["confiscated_in_class"]),
            reason="phone out in maths",
        )
    clock.advance(hours=4)
    import_roster(instance, clock, [p for p in everyone if p.admission not in ("R08", "R10")])

    clock.set(SCHOOL_MORNING + timedelta(days=1))
    import_roster(instance, clock, [JOINER], full=False)
    with instance.database.transaction() as session:
        record = deposit(instance, session, clock, PEOPLE["deposits_next_day"])
        instance.ledger.confirm_deposit(session, Actor.for_kiosk("main"), clock, record)
    return day


def register(instance: Instance, day: date) -> list[reports.RegisterRow]:
    with instance.database.reader() as session:
        return reports.daily_register(session, instance.policy, day)


def test_daily_register_statuses(instance: Instance, school_day: date) -> None:
    by_number = {row.admission_number: row for row in register(instance, school_day)}
    listed = {name: who for name, who in PEOPLE.items() if who.admission in by_number}
    assert {name: by_number[who.admission].status for name, who in listed.items()} == EXPECTED
    confiscated = {name for name, who in listed.items() if by_number[who.admission].confiscated}
    assert confiscated == {"confiscated_from_locker", "confiscated_in_class"}


def test_pupils_not_on_roll_that_day_are_not_listed(instance: Instance, school_day: date) -> None:
    listed = {row.admission_number for row in register(instance, school_day)}
    assert PEOPLE["left_before"].admission not in listed
    assert JOINER.admission not in listed
    assert PEOPLE["left_today"].admission in listed
    assert listed == {PEOPLE[name].admission for name in EXPECTED}


def test_the_next_day_has_its_own_register(instance: Instance, school_day: date) -> None:
    rows = {row.admission_number: row for row in register(instance, school_day + timedelta(1))}
    assert rows[PEOPLE["deposits_next_day"].admission].status == reports.DEPOSITED
    assert rows[PEOPLE["deposited"].admission].status == reports.NOTHING
    assert rows[PEOPLE["exempt"].admission].status == reports.EXEMPT
    assert rows[PEOPLE["exempt_and_deposited"].admission].status == reports.NOTHING
    assert rows[JOINER.admission].status == reports.NOTHING
    assert PEOPLE["left_today"].admission not in rows
    assert not any(row.confiscated for row in rows.values())


def test_register_is_in_natural_form_order_then_surname(
    instance: Instance, school_day: date
) -> None:
    rows = register(instance, school_day)
    forms = list(dict.fromkeys(row.form for row in rows))
    assert forms == ["7A", "7B", "10A"]
    for form in forms:
        surnames = [row.surname for row in rows if row.form == form]
        assert surnames == sorted(surnames, key=str.lower)


def test_form_sort_key_is_natural() -> None:
    forms = ["10A", "7B", "Y11 Blue", "7A", "11C", "9", "Y9 Red", "12/Sixth"]
    assert sorted(forms, key=reports.form_sort_key) == [
        "7A",
        "7B",
        "9",
        "10A",
        "11C",
        "12/Sixth",
        "Y9 Red",
        "Y11 Blue",
    ]


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_per_form(instance: Instance, school_day: date) -> None:
    rows = register(instance, school_day)
    table = parse_csv(reports.register_csv(rows, per_pupil=False))
    assert [line["form"] for line in table] == ["7A", "7B", "10A"]
    for line in table:
        members = [row for row in rows if row.form == line["form"]]
        assert int(line["pupils"]) == len(members)
        for column, status in (
            ("deposited", reports.DEPOSITED),
            ("exempt", reports.EXEMPT),
            ("nothing_recorded", reports.NOTHING),
        ):
            assert int(line[column]) == sum(row.status == status for row in members)
        assert int(line["confiscations"]) == sum(row.confiscated for row in members)
    assert sum(int(line["pupils"]) for line in table) == len(EXPECTED)
    statuses = list(EXPECTED.values())
    assert sum(int(line["deposited"]) for line in table) == statuses.count(reports.DEPOSITED)
    assert sum(int(line["exempt"]) for line in table) == statuses.count(reports.EXEMPT)
    assert sum(int(line["nothing_recorded"]) for line in table) == statuses.count(reports.NOTHING)


def test_csv_per_pupil(instance: Instance, school_day: date) -> None:
    rows = register(instance, school_day)
    table = parse_csv(reports.register_csv(rows, per_pupil=True))
    assert [line["admission_number"] for line in table] == [row.admission_number for row in rows]
    eve = next(line for line in table if line["admission_number"] == "R05")
    assert eve == {
        "form": "10A",
        "admission_number": "R05",
        "surname": "Ash",
        "forename": "Eve",
        "status": reports.DEPOSITED,
        "confiscated": "yes",
    }


FORMULAS = ['=HYPERLINK("http://evil","x")', "+SUM(A1:A9)", "-2+3", "@cmd", "=1+1"]


def test_formula_names_are_neutralised_in_the_csv(instance: Instance, clock: ManualClock) -> None:
    people = [
        Someone(f"F{i}", formula, f"{formula}x", "7A" if i else "=FORM()")
        for i, formula in enumerate(FORMULAS)
    ]
    people.append(Someone("F9", "Seán", "O'Brien", "7A"))
    import_roster(instance, clock, people)
    rows = register(instance, instance.policy.school_day(clock.now()))
    for per_pupil in (True, False):
        text = reports.register_csv(rows, per_pupil=per_pupil)
        cells = [cell for line in csv.reader(io.StringIO(text)) for cell in line]
        assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
        if per_pupil:
            for formula in FORMULAS:
                assert "'" + formula in cells
            assert "O'Brien" in cells and "Seán" in cells
        else:
            assert "'=FORM()" in cells
