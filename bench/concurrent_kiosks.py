"""Many kiosks and the office on one database, all at full speed; then every invariant.

``--kiosks`` kiosk processes (default 4), each a real controller on simulated hardware (the
unmodified mfrc522 library against the chip emulator, emulated I/O expanders; the simulated
clock follows the wall clock), share one roster: pupils tap at random kiosks, open the
compartment that unlocks and close it again (deposits and collections), so the same pupil
often taps at two kiosks at once. Meanwhile the office works through the JSON API of the
real web app, from two threads (two web workers): it confiscates devices that are in
lockers, places and lifts safeguarding holds, releases confiscated devices to parents
(their compartment opens by a command the kiosk must pick up), and confiscates into secure
compartments (opened by command too) - racing the pupils' collections.

Then it checks, on the database:

- ``double_allocations``: compartments with two active records, and pupils with two active
  daily deposits (the database constraints forbid both: a non-zero figure is a bug);
- ``lost``: flows a kiosk completed (a deposit it saw confirmed, a collection it saw
  recorded) or the office was told succeeded, that the database does not hold;
- records that ended twice (a release and a collection both recorded), commands never
  picked up, errors in a kiosk or the web, and the audit chain.

On PostgreSQL the benchmark creates a database of its own on the server named by
``--database-url`` (which needs the CREATEDB right) and drops it at the end; on SQLite it
uses a new file (a temporary one by default).

Run: ``.venv/bin/python bench/concurrent_kiosks.py [--database-url URL] [--kiosks N]
[--seconds S]``. Exit status 1 when an invariant is broken. Last line:
``RESULT kiosks=N flows=N flows_per_s=N double_allocations=N lost=N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scratch_database import drop_database, prepare_database

COMPARTMENTS = 24  # per kiosk
SECURE = 4  # the last four of each kiosk
POLICY = {
    "deposit_window": "00:00-24:00",
    "collection_window": "00:00-24:00",
    "end_of_day": "24:00",
    "confiscation_release_from": "00:00",
}
DRAIN_S = 5.0  # after the run, the kiosks keep serving commands this long
#: A pupil waits this long (seconds) for the lock to click, as a person would: a solenoid
#: pulsed a moment ago rests first (``[hardware] lock_rest_s``), and the kiosk retries.
PUPIL_PATIENCE_S = 1.0
PUPIL_PURPOSES = ("deposit", "collect", "reconfirm")
TERMINAL_EVENTS = (
    "custody.deposit_cancelled",
    "custody.collected",
    "custody.released_to_parent",
    "custody.handed_to_police",
    "custody.returned_to_pupil",
)
# What the office was told succeeded -> the event the database must hold for the record.
OFFICE_EVENTS = {
    "confiscate": "custody.confiscated",
    "confiscate_secure": "custody.confiscated",
    "hold": "custody.held",
    "lift_hold": "custody.hold_lifted",
    "release": "custody.released_to_parent",
}


def uid_of(index: int) -> bytes:
    return bytes([0x20, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF])


def kiosk_name(number: int) -> str:
    return f"k{number}"


def overrides(url: str, name: str | None = None) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {"database": {"url": url}, "policy": POLICY}
    if name is not None:
        settings["kiosk"] = {
            "name": name,
            "label": f"Cabinet {name}",
            "compartments": COMPARTMENTS,
            "secure_compartments": f"{COMPARTMENTS - SECURE + 1}-{COMPARTMENTS}",
            "door_open_alarm_s": 600,
        }
    return settings


# ------------------------------------------------------------------------------ setup


@dataclass
class School:
    office_home: Path
    kiosk_homes: list[Path]
    admissions: list[str]
    office_token: str
    dsl_token: str


def setup(workdir: Path, url: str, kiosks: int, pupils: int) -> School:
    """Schema, kiosks, pupils with cards, an office and a DSL account with API tokens."""
    from sqlalchemy import insert, select

    from kiosk import cabinets, migrate, users
    from kiosk.actors import Actor
    from kiosk.cards import uid_hash
    from kiosk.clock import SystemClock
    from kiosk.instance import SECRET_FILENAME, Instance
    from kiosk.models import Card, Pupil, PupilStatus, Role

    office_home = workdir / "office"
    Instance.create(office_home, env={})
    instance = Instance.open(office_home, env={}, overrides=overrides(url))
    migrate.upgrade(instance.database)
    clock, actor = SystemClock(), Actor.system("bench")
    now = clock.now()
    kiosk_homes = []
    for number in range(1, kiosks + 1):
        home = workdir / kiosk_name(number)
        home.mkdir()
        shutil.copy2(office_home / SECRET_FILENAME, home / SECRET_FILENAME)  # one school
        kiosk_homes.append(home)
        config = Instance.open(home, env={}, overrides=overrides(url, kiosk_name(number))).config
        with instance.database.transaction() as session:
            cabinets.register(session, actor, clock, instance.audit, config.kiosk)
    admissions = [f"C{i:05d}" for i in range(pupils)]
    with instance.database.transaction() as session:
        session.execute(
            insert(Pupil),
            [
                {
                    "admission_number": admission,
                    "forename": f"Pupil{i}",
                    "surname": "Bench",
                    "form": f"{7 + i % 5}{'ABCDEF'[i % 6]}",
                    "year_group": str(7 + i % 5),
                    "status": PupilStatus.ACTIVE,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, admission in enumerate(admissions)
            ],
        )
        ids = dict(session.execute(select(Pupil.admission_number, Pupil.id)).all())
        session.execute(
            insert(Card),
            [
                {
                    "uid_hash": uid_hash(instance.card_key, uid_of(i)),
                    "pupil_id": ids[admission],
                    "enrolled_at": now,
                    "enrolled_by": "system:bench",
                }
                for i, admission in enumerate(admissions)
            ],
        )
        tokens = {}
        for username, role in (("office", Role.OFFICE), ("dsl", Role.DSL)):
            user = users.add_user(
                session,
                actor,
                clock,
                instance.audit,
                username=username,
                role=role,
                password=f"Bench-{uuid.uuid4().hex}",
            )
            tokens[role] = users.create_token(session, actor, clock, instance.audit, user, "bench")
    instance.close()
    return School(office_home, kiosk_homes, admissions, tokens[Role.OFFICE], tokens[Role.DSL])


# ------------------------------------------------------------------------------ kiosks


class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


def run_kiosk(
    number: int,
    home: str,
    url: str,
    pupils: int,
    start_at: float,
    end_at: float,
    seed: int,
    result_path: str,
) -> None:
    """One kiosk process: pupils tap, open and close until ``end_at``; then serve what the
    office still asks for a while, stop, and write what was done to ``result_path``."""
    from hardware import CabinetSpec, open_cabinet
    from kiosk.controller import Controller, SimulatedClock

    class BenchClock(SimulatedClock):
        """Records are stamped with the wall clock; hardware time is simulated (the card
        reader's waits take no time) and moves on by the real time elapsed at every pump."""

        def __init__(self) -> None:
            super().__init__(datetime.now(UTC))
            self._last = time.monotonic()

        def now(self) -> datetime:
            return datetime.now(UTC)

        def catch_up(self) -> None:
            now = time.monotonic()
            self.advance(max(0.0, now - self._last))
            self._last = now

    from kiosk.instance import Instance
    from kiosk.models import CustodyState

    errors = ErrorCounter()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger().addHandler(errors)
    rng = random.Random(seed)
    name = kiosk_name(number)
    instance = Instance.open(home, env={}, overrides=overrides(url, name))
    clock = BenchClock()
    spec = CabinetSpec.simulated(COMPARTMENTS, debounce_s=0.0)
    cabinet = open_cabinet(spec, "sim", clock=clock)
    controller = Controller(instance, cabinet, clock)
    controller.start(reader_thread=False)
    sim = cabinet.sim

    def pump() -> None:  # what the controller's loop does, without waiting
        clock.catch_up()
        controller.pump(poll_commands=False)

    flows: list[dict[str, Any]] = []
    opened_for_office: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    holding: list[int] = []  # pupils whose device this kiosk locked away
    taps = refused = waits = 0
    waited_s = 0.0

    def serve_office() -> None:
        """Compartments the office opened by command: open the door, take or put, close."""
        for opened in sim.energised():
            unlock = controller.unlocks.get(opened)
            if unlock is None or unlock.purpose in ("deposit", "collect", "reconfirm"):
                continue
            if sim.open_door(opened):
                pump()
                sim.close_door(opened)
                pump()
                opened_for_office[unlock.purpose] += 1

    while time.time() < start_at:
        time.sleep(0.01)
    while time.time() < end_at:
        pump()
        serve_office()
        # Half the taps are pupils whose device this kiosk holds (collections), half any
        # pupil of the school (deposits, and taps at the wrong cabinet or twice at once).
        index = rng.choice(holding) if holding and rng.random() < 0.5 else rng.randrange(pupils)
        before = dict(controller.unlocks)
        sim.tap(uid_of(index))
        pump()
        taps += 1
        unlock = next(
            (
                started
                for number, started in controller.unlocks.items()
                if before.get(number) is not started and started.purpose in PUPIL_PURPOSES
            ),
            None,
        )
        if unlock is None or unlock.record is None:
            refused += 1
            reasons[re.sub(r"\d+|k\d", "N", controller.screen.get("message", ""))[:50]] += 1
            continue
        waiting_since = time.monotonic()
        if not unlock.energised:
            waits += 1
        while not unlock.energised and time.monotonic() < waiting_since + PUPIL_PATIENCE_S:
            time.sleep(0.002)
            pump()
        waited_s += time.monotonic() - waiting_since
        if not unlock.energised:
            refused += 1
            reasons["the lock did not open"] += 1
            continue
        record, door = unlock.record, unlock.number
        if sim.open_door(door):
            pump()
        collected = unlock.purpose == "collect" and record.state is CustodyState.COLLECTED
        sim.close_door(door)
        pump()
        if unlock.purpose == "deposit" and record.state is CustodyState.IN_LOCKER:
            flows.append({"kind": "deposit", "custody_id": record.id, "pupil": index})
            holding.append(index)
        elif collected:
            flows.append({"kind": "collect", "custody_id": record.id, "pupil": index})
        if unlock.purpose == "collect" and index in holding:
            holding.remove(index)  # collected, or taken by the office meanwhile
    drain_until = time.time() + DRAIN_S
    while time.time() < drain_until:
        pump()
        serve_office()
        time.sleep(0.01)
    in_flight = len(controller.unlocks) + len(controller.awaiting_close)
    controller.shutdown()
    cabinet.close()
    instance.close()
    Path(result_path).write_text(
        json.dumps(
            {
                "kiosk": name,
                "taps": taps,
                "refused": refused,
                "waits": waits,
                "waited_s": waited_s,
                "flows": flows,
                "opened_for_office": dict(opened_for_office),
                "in_flight_at_stop": in_flight,
                "refusals": dict(reasons),
                "errors": errors.messages,
            }
        ),
        encoding="utf-8",
    )


# ------------------------------------------------------------------------------ the office


@dataclass
class OfficeLog:
    calls: Counter[str] = field(default_factory=Counter)
    done: list[tuple[str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def reporting_crashes(log: OfficeLog, work: Callable[..., None], *args: Any) -> None:
    """Run ``work``; a crash (of the web app, say) is a failure the benchmark reports."""
    try:
        work(*args)
    except Exception as exc:
        with log.lock:
            log.failures.append(f"office worker crashed: {exc!r}")


def office_actions(
    school: School,
    app: Any,
    kiosks: int,
    end_at: float,
    interval_s: float,
    seed: int,
    log: OfficeLog,
) -> None:
    """One web worker of the office's web app (``app``, shared by the workers as under
    waitress), through the JSON API: an action every ``interval_s`` seconds (0: flat out)."""
    rng = random.Random(seed)
    client = app.test_client()
    headers = {
        "office": {"Authorization": f"Bearer {school.office_token}"},
        "dsl": {"Authorization": f"Bearer {school.dsl_token}"},
    }

    def call(action: str, who: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if body is None:
            response = client.get(f"/api/v1{path}", headers=headers[who])
        else:
            response = client.post(f"/api/v1{path}", json=body, headers=headers[who])
        data = response.get_json(silent=True) or {}
        with log.lock:
            log.calls[f"{action} {response.status_code}"] += 1
            if response.status_code >= 500 or response.status_code in (401, 403, 404):
                log.failures.append(f"{action} {path}: {response.status_code} {data}")
            elif response.status_code in (200, 201) and action in OFFICE_EVENTS:
                log.done.append((action, data["custody"]["id"]))
        return data if response.status_code in (200, 201) else None

    def pick(state: str) -> dict[str, Any] | None:
        listed = call("list", "dsl", f"/custody?state={state}&limit=500")
        records = listed["custody"] if listed else []
        return rng.choice(records) if records else None

    next_at = time.time()
    while time.time() < end_at:
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.time()))
        action = rng.choice(
            ["confiscate", "hold", "lift_hold", "release", "release", "confiscate_secure"]
        )
        if action == "confiscate":
            record = pick("IN_LOCKER")
            if record:
                body = {"admission_number": record["pupil"]["admission_number"]}
                call(
                    action,
                    "office",
                    "/confiscations",
                    {**body, "reason": "bench", "where": "locker"},
                )
        elif action == "hold":
            record = pick("IN_LOCKER")
            if record:
                call(action, "dsl", f"/custody/{record['id']}/hold", {"reason": "bench referral"})
        elif action == "lift_hold":
            record = pick("SAFEGUARDING_HOLD")
            if record:
                call(action, "dsl", f"/custody/{record['id']}/lift-hold", {"note": "bench"})
        elif action == "release":
            record = pick("CONFISCATED")
            if record:
                body = {
                    "id_checked": True,
                    "collector_name": "A Parent",
                    "relationship": "mother",
                }
                call(action, "office", f"/custody/{record['id']}/release", body)
        else:
            admission = rng.choice(school.admissions)
            where = f"kiosk:{kiosk_name(rng.randint(1, kiosks))}"
            body = {"admission_number": admission, "reason": "bench", "where": where}
            call(action, "office", "/confiscations", body)


# ------------------------------------------------------------------------------ checks


def check(
    url: str, office_home: Path, results: list[dict[str, Any]], office: OfficeLog
) -> dict[str, Any]:
    from sqlalchemy import func, select

    from kiosk.instance import Instance
    from kiosk.models import (
        ACTIVE_STATES,
        DAILY_ACTIVE_STATES,
        AuditEvent,
        Command,
        CommandStatus,
        CustodyKind,
        CustodyRecord,
    )

    instance = Instance.open(office_home, env={}, overrides=overrides(url))
    try:
        with instance.database.reader() as session:
            active = CustodyRecord.state.in_(ACTIVE_STATES)
            doubled_compartments = session.execute(
                select(func.count()).select_from(
                    select(CustodyRecord.compartment_id)
                    .where(active, CustodyRecord.compartment_id.is_not(None))
                    .group_by(CustodyRecord.compartment_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            ).scalar_one()
            doubled_pupils = session.execute(
                select(func.count()).select_from(
                    select(CustodyRecord.pupil_id)
                    .where(
                        CustodyRecord.state.in_(DAILY_ACTIVE_STATES),
                        CustodyRecord.kind == CustodyKind.DAILY,
                    )
                    .group_by(CustodyRecord.pupil_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            ).scalar_one()
            events = set(
                session.execute(
                    select(AuditEvent.kind, AuditEvent.custody_id).where(
                        AuditEvent.custody_id.is_not(None)
                    )
                ).all()
            )
            endings = Counter(
                session.execute(
                    select(AuditEvent.custody_id).where(AuditEvent.kind.in_(TERMINAL_EVENTS))
                ).scalars()
            )
            commands = session.execute(
                select(Command.status, Command.created_at, Command.picked_at, Command.error)
            ).all()
            report = instance.audit.verify(session)
            records = session.execute(select(func.count()).select_from(CustodyRecord)).scalar_one()
    finally:
        instance.close()
    expected = {"deposit": "custody.deposit_confirmed", "collect": "custody.collected"}
    kiosk_lost = [
        flow
        for result in results
        for flow in result["flows"]
        if (expected[flow["kind"]], flow["custody_id"]) not in events
    ]
    office_lost = [
        (action, custody_id)
        for action, custody_id in office.done
        if (OFFICE_EVENTS[action], custody_id) not in events
    ]
    waits = [
        (picked - created).total_seconds() * 1000
        for _, created, picked, _ in commands
        if picked is not None
    ]
    unfinished = (CommandStatus.PENDING, CommandStatus.RUNNING)
    return {
        "double_allocations": doubled_compartments + doubled_pupils,
        "doubled_compartments": doubled_compartments,
        "doubled_pupils": doubled_pupils,
        "lost": len(kiosk_lost) + len(office_lost),
        "lost_examples": (kiosk_lost + office_lost)[:5],
        "ended_twice": sum(1 for count in endings.values() if count > 1),
        "commands": len(commands),
        "commands_unfinished": sum(1 for row in commands if row[0] in unfinished),
        "commands_failed": Counter(
            re.sub(r"\d+", "N", row[3] or "")[:60]
            for row in commands
            if row[0] is CommandStatus.FAILED
        ),
        "command_p95_ms": round(sorted(waits)[int(0.95 * (len(waits) - 1))], 1) if waits else 0,
        "command_median_ms": round(statistics.median(waits), 1) if waits else 0,
        "audit_events": report.events,
        "records": records,
    }


# ------------------------------------------------------------------------------ main


def main() -> int:
    import web
    from kiosk.instance import Instance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server or new SQLite file")
    parser.add_argument("--kiosks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pupils", type=int, default=150)
    parser.add_argument(
        "--office-rate",
        type=float,
        default=10.0,
        help="office actions per second, over two web workers (0: as fast as they go)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database and files")
    args = parser.parse_args()
    if args.kiosks < 1 or args.pupils < 1 or args.seconds <= 0:
        parser.error("--kiosks and --pupils must be at least 1, --seconds positive")

    workdir = Path(tempfile.mkdtemp(prefix="locker-bench-"))
    url, created_database = prepare_database(args.database_url, workdir)
    try:
        school = setup(workdir, url, args.kiosks, args.pupils)
        context = multiprocessing.get_context("spawn")
        start_at = time.time() + 4.0  # the kiosk processes start meanwhile
        end_at = start_at + args.seconds
        processes = []
        for number, home in enumerate(school.kiosk_homes, start=1):
            process = context.Process(
                target=run_kiosk,
                args=(
                    number,
                    str(home),
                    url,
                    args.pupils,
                    start_at,
                    end_at,
                    args.seed * 100 + number,
                    str(workdir / f"result-{number}.json"),
                ),
                name=kiosk_name(number),
            )
            process.start()
            processes.append(process)
        office = OfficeLog()
        office_instance = Instance.open(school.office_home, env={}, overrides=overrides(url))
        app = web.create_app(office_instance)
        while time.time() < start_at:
            time.sleep(0.01)
        workers = [
            threading.Thread(
                target=reporting_crashes,
                args=(
                    office,
                    office_actions,
                    school,
                    app,
                    args.kiosks,
                    end_at,
                    2 / args.office_rate if args.office_rate > 0 else 0.0,
                    args.seed * 1000 + n,
                    office,
                ),
                name=f"office-{n}",
            )
            for n in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        office_instance.close()
        for process in processes:
            process.join(timeout=args.seconds + 120)
        broken = [p.name for p in processes if p.exitcode != 0]
        if broken:
            print(f"kiosk processes failed: {broken}", file=sys.stderr)
            return 1
        results = [
            json.loads((workdir / f"result-{n}.json").read_text(encoding="utf-8"))
            for n in range(1, args.kiosks + 1)
        ]
        figures = check(url, school.office_home, results, office)
    finally:
        if created_database and not args.keep:
            drop_database(url, created_database)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    flows = sum(len(result["flows"]) for result in results)
    kinds = Counter(flow["kind"] for result in results for flow in result["flows"])
    kiosk_errors = [message for result in results for message in result["errors"]]
    backend = "postgresql" if created_database else "sqlite"
    print(
        f"database: {backend}; {args.kiosks} kiosks x {COMPARTMENTS} compartments, "
        f"{args.pupils} pupils, {args.seconds:g} s"
    )
    print(
        f"kiosk flows: {dict(kinds)}; taps {sum(r['taps'] for r in results)}, "
        f"refused {sum(r['refused'] for r in results)}"
    )
    opened = Counter()
    for result in results:
        opened.update(result["opened_for_office"])
    in_flight = sum(result["in_flight_at_stop"] for result in results)
    refusals: Counter[str] = Counter()
    for result in results:
        refusals.update(result["refusals"])
    print(f"refused because: {dict(refusals.most_common(4))}")
    waits = sum(result["waits"] for result in results)
    waited = sum(result["waited_s"] for result in results)
    print(f"pupils who waited for a resting lock: {waits}, {waited:.1f} s in all")
    print(f"compartments opened for the office: {dict(opened)}; still open at stop {in_flight}")
    print(f"office API calls: {dict(sorted(office.calls.items()))}")
    print(
        f"commands: {figures['commands']}, never finished {figures['commands_unfinished']}, "
        f"failed {dict(figures['commands_failed'])},\n  "
        f"pick-up median {figures['command_median_ms']} ms, p95 {figures['command_p95_ms']} ms"
    )
    print(f"records {figures['records']}, audit events {figures['audit_events']} (chain verified)")
    print(
        f"doubled compartments {figures['doubled_compartments']}, doubled pupils "
        f"{figures['doubled_pupils']}, ended twice {figures['ended_twice']}, "
        f"lost {figures['lost']} {figures['lost_examples']}"
    )
    for message in (kiosk_errors + office.failures)[:10]:
        print(f"error: {message}")
    print(f"errors: kiosks {len(kiosk_errors)}, office {len(office.failures)}")
    flows_per_s = flows / args.seconds
    print(
        f"RESULT kiosks={args.kiosks} flows={flows} flows_per_s={flows_per_s:.1f} "
        f"double_allocations={figures['double_allocations']} lost={figures['lost']}"
    )
    bad = (
        figures["double_allocations"]
        or figures["lost"]
        or figures["ended_twice"]
        or figures["commands_unfinished"]
        or kiosk_errors
        or office.failures
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
