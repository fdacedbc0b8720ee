"""``locker selftest`` (kiosk.selftest.run_selftest) and ``locker safe-state`` on the
simulator: real drivers, emulated chips, a simulated person who opens each unlocked door."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hardware.cabinet import Cabinet
from kiosk import cabinets, migrate
from kiosk.actors import Actor, ActorRole
from kiosk.clock import SystemClock
from kiosk.errors import ValidationError
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Kiosk, Pupil, PupilStatus
from kiosk.selftest import SIM_CARD, run_selftest, safe_state

from .conftest import clean_env, run

CARD = "04A1B2C3"
FAST = {"pulse_s": 0.1, "door_wait_s": 2.0, "show_s": 0.02}
LED = {"red": 16, "green": 20, "blue": 21}


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    home = tmp_path / "instance"
    home.mkdir()
    (home / "config.toml").write_text(
        "[kiosk]\ncompartments = 4\nsecure_compartments = [4]\n[hardware]\ncompartments = 4\n",
        encoding="utf-8",
    )
    created, _ = Instance.create(home, env={})
    migrate.upgrade(created.database)
    with created.database.transaction() as session:
        cabinets.register(
            session, Actor.system("test"), SystemClock(), created.audit, created.config.kiosk
        )
    yield created
    created.close()


class Bench:
    """The technician: watches the output, holds a card on the reader when asked."""

    def __init__(
        self, *, card: str | None = CARD, prepare: Callable[[Cabinet], None] | None = None
    ) -> None:
        self.lines: list[str] = []
        self.card = card
        self.prepare = prepare
        self.cabinet: Cabinet | None = None
        self.unlocked: list[int] = []
        self.most_energised = 0

    def on_open(self, cabinet: Cabinet) -> None:
        self.cabinet = cabinet

        def lock_changed(number: int, energised: bool) -> None:
            if energised:
                self.unlocked.append(number)
            self.most_energised = max(self.most_energised, len(cabinet.sim.energised()))

        cabinet.sim.on_lock_change = lock_changed
        if self.prepare is not None:
            self.prepare(cabinet)

    def out(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("card: hold a card") and self.card and self.cabinet is not None:
            self.cabinet.sim.present_card(self.card)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def selftest(instance: Instance, bench: Bench, **options) -> bool:
    """The self-test with the bench's technician, who holds a card (or not) when asked; the
    simulator's own test card stays out of it."""
    settings = {**FAST, "card_wait_s": 3.0, "sim_card": None, **options}
    return run_selftest(instance, simulate=True, out=bench.out, on_open=bench.on_open, **settings)


def audit_events(instance: Instance) -> list[AuditEvent]:
    with instance.database.reader() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.kind.like("kiosk.selftest%"))
                .order_by(AuditEvent.seq)
            ).scalars()
        )


def test_a_good_cabinet_passes(instance: Instance) -> None:
    bench = Bench()
    assert selftest(instance, bench), bench.text
    assert bench.unlocked == [1, 2, 3, 4]  # each lock once, in turn
    assert bench.most_energised == 1  # never two at once
    assert "reader: ok, the RC522 answers on SPI (VersionReg 0x92)" in bench.lines
    for number in (1, 2, 3, 4):
        assert f"compartment {number}: ok (unlocked, door opened and shut)" in bench.lines
    assert f"card: ok, UID {CARD}" in bench.text
    assert bench.lines[-1] == "selftest passed"
    assert bench.cabinet is not None and bench.cabinet.closed
    assert bench.cabinet.sim.energised() == ()
    for colour, pin in LED.items():
        history = [state.state for state in bench.cabinet.sim.pi_pin(pin).states]
        assert True in history, f"the {colour} LED was never lit"
    buzzer = [state.state for state in bench.cabinet.sim.pi_pin(12).states]
    assert buzzer.count(True) >= 3  # one beep, then two
    started, finished = audit_events(instance)
    assert started.kind == "kiosk.selftest_started" and finished.kind == "kiosk.selftest"
    assert '"passed":true' in finished.details.replace(" ", "")
    assert CARD not in started.details + finished.details  # never a card UID
    with instance.database.reader() as session:
        instance.audit.verify(session)


def test_a_jammed_lock_fails_and_is_named(instance: Instance) -> None:
    bench = Bench(prepare=lambda cabinet: cabinet.sim.jam_lock(2))
    assert not selftest(instance, bench, card_wait_s=0)
    failures = [line for line in bench.lines if line.startswith("FAIL")]
    assert len(failures) == 1 and failures[0].startswith("FAIL compartment 2: the door did not")
    assert "compartment 3: ok (unlocked, door opened and shut)" in bench.lines
    assert "selftest FAILED (1 problem(s)):" in bench.lines
    finished = audit_events(instance)[-1]
    assert '"passed":false' in finished.details.replace(" ", "")


def test_no_card_fails(instance: Instance) -> None:
    bench = Bench(card=None)
    assert not selftest(instance, bench, card_wait_s=0.3, compartments=[1])
    assert "FAIL card: no card was read in 0.3 s" in bench.lines


def test_on_the_simulator_a_test_card_is_held_when_asked_for(instance: Instance) -> None:
    """`locker selftest --sim` with its defaults passes: nobody taps a simulated reader, so
    the simulator holds its own test card on it when the self-test asks for one."""
    bench = Bench(card=None)
    options = {**FAST, "card_wait_s": 5.0, "compartments": [1]}
    assert run_selftest(instance, simulate=True, out=bench.out, on_open=bench.on_open, **options)
    assert f"card: (simulator) a test card, UID {SIM_CARD}, is held on the reader" in bench.lines
    assert f"card: ok, UID {SIM_CARD}" in bench.text
    assert bench.lines[-1] == "selftest passed"


def test_selftest_sim_from_the_command_line(instance: Instance) -> None:
    home = str(instance.home)
    instance.close()
    command = [sys.executable, "-m", "kiosk", "--home", home, "selftest", "--sim"]
    result = run([*command, "--compartment", "2", "--pulse", "0.2"], env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "compartment 2: unlocked for 0.2 s: pull the door open" in lines
    assert "compartment 1: unlocked" not in result.stdout
    assert f"card: ok, UID {SIM_CARD}" in result.stdout
    assert lines[-1] == "selftest passed"


def test_a_door_switch_stuck_open_fails(instance: Instance) -> None:
    bench = Bench(prepare=lambda cabinet: cabinet.sim.stick_door_open(3))
    assert not selftest(instance, bench, door_wait_s=0.3, compartments=[2, 3], card_wait_s=0)
    assert "doors: 3 read open." in bench.text
    assert any(
        line.startswith("FAIL compartment 3: the door switch reads open") for line in bench.lines
    )
    assert 3 not in bench.unlocked  # its lock was not pulsed


def test_a_dead_reader_fails(instance: Instance) -> None:
    bench = Bench(prepare=lambda cabinet: cabinet.sim.reader_fault("vanish"))
    assert not selftest(instance, bench, card_wait_s=0.3, compartments=[1])
    assert any(line.startswith("FAIL reader:") for line in bench.lines)
    assert any(line.startswith("FAIL card: no card was read") for line in bench.lines)


def test_a_compartment_holding_a_device_is_never_opened(instance: Instance) -> None:
    clock = SystemClock()
    with instance.database.transaction() as session:
        now = clock.now()
        pupil = Pupil(
            admission_number="1001",
            forename="Sam",
            surname="Taylor",
            form="7A",
            year_group="7",
            status=PupilStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        session.add(pupil)
        session.flush()
        kiosk = session.execute(select(Kiosk)).scalar_one()
        record = instance.ledger.confiscate(
            session,
            Actor(ActorRole.STAFF, "user:teacher"),
            clock,
            pupil=pupil,
            reason="used in a lesson",
            kiosk=kiosk,
        )
        assert record.compartment is not None and record.compartment.number == 4
    bench = Bench()
    assert selftest(instance, bench), bench.text
    assert bench.unlocked == [1, 2, 3]
    assert "not unlocking compartment(s) 4: they hold a device" in bench.text


def test_only_the_compartments_asked_for(instance: Instance) -> None:
    bench = Bench()
    assert selftest(instance, bench, compartments=[3], card_wait_s=0), bench.text
    assert bench.unlocked == [3]
    assert "card: skipped (--card-wait 0)" in bench.lines


def test_refuses_while_the_kiosk_service_runs(instance: Instance) -> None:
    with instance.database.transaction() as session:
        session.execute(
            update(Kiosk).values(heartbeat_at=datetime.now(UTC), state={"status": "ok"})
        )
    lines: list[str] = []
    assert not run_selftest(instance, simulate=False, out=lines.append, card_wait_s=0)
    assert len(lines) == 1 and "sudo systemctl stop locker-kiosk" in lines[0]
    assert audit_events(instance) == []  # nothing was unlocked, nothing recorded
    with instance.database.transaction() as session:
        session.execute(update(Kiosk).values(state={"status": "stopped"}))
    bench = Bench()
    assert selftest(instance, bench, compartments=[1]), bench.text


def test_safe_state_switches_every_lock_off(instance: Instance) -> None:
    lines: list[str] = []
    assert safe_state(instance, simulate=True, out=lines.append)
    assert lines == ["every lock of kiosk main is de-energised"]


def test_an_unknown_compartment_is_refused(instance: Instance) -> None:
    with pytest.raises(ValidationError, match="compartment 9 is not in this cabinet"):
        run_selftest(instance, simulate=True, out=print, compartments=[2, 9])
    assert audit_events(instance) == []
