"""Benchmark: the office dashboard, the grid JSON and the register on a school year of data.

Builds (or reuses, with ``--home``) a SQLite instance with 1,500 pupils in 50 forms, 400
compartments over 16 kiosks, a school year (190 days) of deposits, collections,
confiscations, holds and door alarms (custody records through the real states, with the
database's transition guards on) and well over 500,000 audit events with a valid hash chain
(:meth:`kiosk.audit.AuditTrail.event_hash`), inserted in bulk. Then it times, through the
real app (Flask test client, signed in as the office), ``GET /`` (the dashboard with every
kiosk's grid), ``GET /api/v1/compartments`` (the grid JSON the dashboard polls) and
``GET /register``, each over ``--requests`` requests (default 300) after a warm-up.

Usage (from the repository root)::

    .venv/bin/python bench/dashboard.py [--home DIR] [--requests N] [--verify]

The last line is ``RESULT p95_ms=N api_p95_ms=N register_p95_ms=N``.
Goal: every p95 at most 100 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from figures import percentile
from sqlalchemy import text

from kiosk import cabinets, migrate
from kiosk.actors import Actor
from kiosk.audit import GENESIS_HASH, canonical_json
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.users import hash_password
from web import create_app, tune_for_serving

KIOSKS = 16
COMPARTMENTS = 25
SECURE = (24, 25)
YEARS = ("7", "8", "9", "10", "11")
FORMS_PER_YEAR = 10
PUPILS_PER_FORM = 30  # 1,500 pupils
DAYS = 190
DEPOSITS_PER_DAY = 340
CONFISCATIONS_PER_DAY = 8
PASSWORD = "bench-office-passphrase"
# The benchmark's "now": Friday 17 July 2026, 10:30 in London (BST).
NOW = datetime(2026, 7, 17, 9, 30, tzinfo=UTC)
READY = "bench-ready"

SQL_TIME = "%Y-%m-%d %H:%M:%S.%f"


def sql_time(when: datetime) -> str:
    return when.astimezone(UTC).replace(tzinfo=None).strftime(SQL_TIME)


def school_days(last: date, count: int) -> list[date]:
    days: list[date] = []
    day = last
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return sorted(days)


class Chain:
    """Audit events in bulk: seq, time, hash chained to the one before."""

    def __init__(self, instance: Instance) -> None:
        self.audit = instance.audit
        self.seq = 0
        self.prev = GENESIS_HASH
        self.rows: list[tuple[Any, ...]] = []
        self.total = 0

    def add(
        self,
        when: datetime,
        kind: str,
        actor: str,
        kiosk: str | None = None,
        custody_id: int | None = None,
        pupil_id: int | None = None,
        details: dict[str, Any] | None = None,
        restricted: bool = False,
    ) -> None:
        self.seq += 1
        body = canonical_json(details)
        digest = self.audit.event_hash(
            self.prev, self.seq, when, kind, actor, kiosk, custody_id, pupil_id, restricted, body
        )
        self.rows.append(
            (
                self.seq,
                sql_time(when),
                kind,
                actor,
                kiosk,
                custody_id,
                pupil_id,
                int(restricted),
                body,
                self.prev,
                digest,
            )
        )
        self.prev = digest

    def flush(self, connection: Any) -> None:
        if self.rows:
            connection.exec_driver_sql(
                "INSERT INTO audit_events (seq, occurred_at, kind, actor, kiosk, custody_id, "
                "pupil_id, restricted, details, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.rows,
            )
            self.total += len(self.rows)
            self.rows = []

    def close(self, connection: Any, when: datetime) -> None:
        self.flush(connection)
        connection.exec_driver_sql(
            "UPDATE audit_head SET seq = ?, hash = ?, updated_at = ? WHERE id = 1",
            (self.seq, self.prev, sql_time(when)),
        )


def build(home: Path, seed: int = 7) -> dict[str, Any]:
    """Create the instance and fill it; returns what the timing needs."""
    started = time.perf_counter()
    rng = random.Random(seed)
    instance, _ = Instance.create(home, env={})
    migrate.upgrade(instance.database)
    clock = ManualClock(NOW - timedelta(days=330))
    base = instance.config.kiosk
    with instance.database.transaction() as session:
        for k in range(1, KIOSKS + 1):
            cabinets.register(
                session,
                Actor.system("bench"),
                clock,
                instance.audit,
                replace(
                    base,
                    name=f"k{k:02d}",
                    label=f"Form room cabinet {k}",
                    compartments=COMPARTMENTS,
                    secure_compartments=SECURE,
                ),
            )
    # The chain continues from the registration events just written.
    chain = Chain(instance)
    with instance.database.engine.begin() as connection:
        head = connection.exec_driver_sql("SELECT seq, hash FROM audit_head").one()
        chain.seq, chain.prev = head[0], head[1]
        kiosks = connection.exec_driver_sql("SELECT id, name FROM kiosks ORDER BY name").all()
        compartments = connection.exec_driver_sql(
            "SELECT id, kiosk_id, number, kind FROM compartments ORDER BY kiosk_id, number"
        ).all()
        kiosk_name: dict[int, str] = dict(kiosks)
        pupil_slots = [(cid, kid, n) for cid, kid, n, kind in compartments if kind == "pupil"]
        secure_slots = [(cid, kid, n) for cid, kid, n, kind in compartments if kind == "secure"]

        # People ---------------------------------------------------------------
        created = sql_time(clock.now())
        pupils = []
        contacts = []
        cards = []
        pid = 0
        first_names = ("Amelia", "Oliver", "Zoë", "Mohammed", "Siobhán", "Jack", "Aisha", "Łukasz")
        surnames = ("Smith", "Jones", "O'Brien", "Khan", "Williams", "Nowak", "Taylor", "Okafor")
        for year in YEARS:
            for f in range(FORMS_PER_YEAR):
                form = f"{year}{'ABCDEFGHIJ'[f]}"
                for _ in range(PUPILS_PER_FORM):
                    pid += 1
                    surname = surnames[pid % len(surnames)] + f"-{pid}"
                    pupils.append(
                        (
                            pid,
                            f"{2019 + int(year) - 7}{pid:05d}",
                            first_names[pid % len(first_names)],
                            None,
                            surname,
                            year,
                            form,
                            "active",
                            created,
                            created,
                        )
                    )
                    contacts.append((pid, 1, f"Parent {surname}", "Mother"))
                    contacts.append((pid, 2, f"Carer {surname}", "Father"))
                    cards.append(
                        (hashlib.sha256(f"card{pid}".encode()).hexdigest(), pid, created, "bench")
                    )
        connection.exec_driver_sql(
            "INSERT INTO pupils (id, admission_number, forename, preferred_forename, surname, "
            "year_group, form, status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            pupils,
        )
        connection.exec_driver_sql(
            "INSERT INTO contacts (pupil_id, position, name, relationship) VALUES (?,?,?,?)",
            contacts,
        )
        connection.exec_driver_sql(
            "INSERT INTO cards (uid_hash, pupil_id, enrolled_at, enrolled_by) VALUES (?,?,?,?)",
            cards,
        )
        connection.exec_driver_sql(
            "INSERT INTO users (username, display_name, role, password_hash, active, created_at, "
            "password_changed_at) VALUES (?,?,?,?,?,?,?)",
            [("office", "Office", "office", hash_password(PASSWORD), 1, created, created)],
        )
        exempt = rng.sample(range(1, pid + 1), 30)
        connection.exec_driver_sql(
            "INSERT INTO exemptions (pupil_id, kind, starts_on, ends_on, review_on, "
            "agreement_reference, notes, approved_by, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    p,
                    "medical",
                    "2025-09-01",
                    None,
                    "2026-12-01",
                    f"MED-{p}",
                    "",
                    "user:head",
                    created,
                )
                for p in exempt
            ],
        )

        # The school year -------------------------------------------------------
        days = school_days(NOW.date(), DAYS)
        custody_id = 0
        all_pupils = [row[0] for row in pupils]
        admission = {row[0]: row[1] for row in pupils}
        insert_daily = (
            "INSERT INTO custody_records (id, pupil_id, kind, state, compartment_id, kiosk_id, "
            "started_at, started_by, updated_at, pending_until, ever_held, id_checked, version) "
            "VALUES (?, ?, 'daily', 'PENDING_DEPOSIT', ?, ?, ?, ?, ?, ?, 0, 0, 1)"
        )
        to_in_locker = (
            "UPDATE custody_records SET state = 'IN_LOCKER', stored_at = ?, updated_at = ? "
            "WHERE id = ?"
        )
        to_collected = (
            "UPDATE custody_records SET state = 'COLLECTED', ended_at = ?, ended_by = ?, "
            "updated_at = ? WHERE id = ?"
        )
        insert_confiscation = (
            "INSERT INTO custody_records (id, pupil_id, kind, state, compartment_id, kiosk_id, "
            "device, started_at, started_by, updated_at, stored_at, confiscated_at, "
            "confiscated_by, confiscation_reason, release_not_before, ever_held, id_checked, "
            "version) VALUES (?, ?, 'confiscation', 'CONFISCATED', ?, ?, 'phone', ?, ?, ?, ?, ?, "
            "?, 'used in a lesson', ?, 0, 0, 1)"
        )
        for index, day in enumerate(days):
            today = day == NOW.date()
            morning = datetime(day.year, day.month, day.day, 6, 30, tzinfo=UTC)
            deposits = rng.sample(all_pupils, DEPOSITS_PER_DAY)
            slots = rng.sample(pupil_slots, DEPOSITS_PER_DAY)
            # (when, kind, actor, kiosk, custody_id, pupil_id, details[, restricted])
            timeline: list[tuple[Any, ...]] = []
            inserted, stored, collected = [], [], []
            for pupil_id, (cid, kid, number) in zip(deposits, slots, strict=True):
                custody_id += 1
                name = kiosk_name[kid]
                machine = f"kiosk:{name}"
                tap = morning + timedelta(seconds=rng.randrange(0, 6300))
                start = tap + timedelta(milliseconds=150)
                shut = start + timedelta(seconds=rng.randrange(5, 25))
                actor = f"pupil:{admission[pupil_id]}"
                inserted.append(
                    (
                        custody_id,
                        pupil_id,
                        cid,
                        kid,
                        sql_time(start),
                        actor,
                        sql_time(start),
                        sql_time(start + timedelta(seconds=30)),
                    )
                )
                stored.append((sql_time(shut), sql_time(shut), custody_id))
                ref = {"uid_ref": f"{pupil_id:012x}"}
                door = {"compartment": number}
                moved = {"kind": "daily", "compartment": number}
                timeline += [
                    (tap, "tap", machine, name, None, pupil_id, ref),
                    (
                        start,
                        "custody.deposit_started",
                        actor,
                        name,
                        custody_id,
                        pupil_id,
                        {**moved, "from": None, "to": "PENDING_DEPOSIT"},
                    ),
                    (start + timedelta(seconds=2), "door.opened", machine, name, None, None, door),
                    (shut, "door.closed", machine, name, None, None, door),
                    (
                        shut + timedelta(milliseconds=5),
                        "custody.deposit_confirmed",
                        machine,
                        name,
                        custody_id,
                        pupil_id,
                        {**moved, "from": "PENDING_DEPOSIT", "to": "IN_LOCKER"},
                    ),
                ]
                if today:
                    continue
                back = datetime(day.year, day.month, day.day, 14, 0, tzinfo=UTC) + timedelta(
                    seconds=rng.randrange(0, 5400)
                )
                opened = back + timedelta(seconds=1)
                closed = opened + timedelta(seconds=rng.randrange(4, 20))
                collected.append((sql_time(opened), actor, sql_time(opened), custody_id))
                timeline += [
                    (back, "tap", machine, name, None, pupil_id, ref),
                    (opened, "door.opened", machine, name, None, None, door),
                    (
                        opened + timedelta(milliseconds=5),
                        "custody.collected",
                        actor,
                        name,
                        custody_id,
                        pupil_id,
                        {**moved, "from": "IN_LOCKER", "to": "COLLECTED"},
                    ),
                    (closed, "door.closed", machine, name, None, None, door),
                ]
            connection.exec_driver_sql(insert_daily, inserted)
            connection.exec_driver_sql(to_in_locker, stored)
            if collected:
                connection.exec_driver_sql(to_collected, collected)

            # Confiscations: to the office safe on past days, secure compartments today.
            taken = rng.sample(all_pupils, CONFISCATIONS_PER_DAY * (3 if today else 1))
            for n, pupil_id in enumerate(taken):
                custody_id += 1
                at = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC) + timedelta(
                    minutes=rng.randrange(0, 25 if today else 300)
                )
                release_from = datetime(day.year, day.month, day.day, 14, 15, tzinfo=UTC)
                slot = secure_slots[n] if today else None
                connection.exec_driver_sql(
                    insert_confiscation,
                    (
                        custody_id,
                        pupil_id,
                        slot[0] if slot else None,
                        slot[1] if slot else None,
                        sql_time(at),
                        "user:teacher",
                        sql_time(at),
                        sql_time(at),
                        sql_time(at),
                        "user:teacher",
                        sql_time(release_from),
                    ),
                )
                where = kiosk_name[slot[1]] if slot else None
                details = {"kind": "confiscation", "to": "CONFISCATED", "reason": "lesson"}
                timeline.append(
                    (
                        at,
                        "custody.confiscated",
                        "user:teacher",
                        where,
                        custody_id,
                        pupil_id,
                        details,
                    )
                )
                held = (index * 7 + n) % 41 == 0
                if held:
                    hold_at = at + timedelta(minutes=20)
                    connection.exec_driver_sql(
                        "UPDATE custody_records SET state = 'SAFEGUARDING_HOLD', ever_held = 1, "
                        "held_at = ?, held_by = 'user:teacher', "
                        "hold_reason = 'referred to the DSL', updated_at = ? WHERE id = ?",
                        (sql_time(hold_at), sql_time(hold_at), custody_id),
                    )
                    reason = {"reason": "referred to the DSL"}
                    timeline.append(
                        (hold_at, "custody.held", "user:teacher", where, custody_id, pupil_id,
                         reason, True)
                    )  # fmt: skip
                if today:
                    continue
                if held:
                    done = at + timedelta(days=1)
                    connection.exec_driver_sql(
                        "UPDATE custody_records SET state = 'HANDED_TO_POLICE', police_reference = "
                        "'REF', ended_at = ?, ended_by = 'user:dsl', updated_at = ? WHERE id = ?",
                        (sql_time(done), sql_time(done), custody_id),
                    )
                    timeline.append(
                        (done, "custody.handed_to_police", "user:dsl", None, custody_id,
                         pupil_id, {"police_reference": "REF"}, True)
                    )  # fmt: skip
                    continue
                done = release_from + timedelta(minutes=rng.randrange(0, 60 * 24 * 3))
                connection.exec_driver_sql(
                    "UPDATE custody_records SET state = 'RELEASED_TO_PARENT', collector_name = ?, "
                    "collector_relationship = 'Mother', id_checked = 1, ended_at = ?, "
                    "ended_by = 'user:office', updated_at = ? WHERE id = ?",
                    (f"Parent of {pupil_id}", sql_time(done), sql_time(done), custody_id),
                )
                released = {"collector": "a parent", "id_checked": True}
                timeline.append(
                    (done, "custody.released_to_parent", "user:office", None, custody_id,
                     pupil_id, released)
                )  # fmt: skip
            # A door alarm most days.
            if rng.random() < 0.7:
                _cid, kid, number = rng.choice(pupil_slots)
                at = datetime(day.year, day.month, day.day, 11, 0, tzinfo=UTC)
                kind = rng.choice(("door.left_open", "door.forced"))
                name = kiosk_name[kid]
                timeline.append(
                    (at, kind, f"kiosk:{name}", name, None, None, {"compartment": number})
                )
            timeline.sort(key=lambda event: event[0])
            for event in timeline:
                chain.add(*event)
            if len(chain.rows) > 50_000:
                chain.flush(connection)

        # Today: kiosks' heartbeats and faults, a few compartments out of service.
        for kid, _name in kiosks:
            state = {
                "status": "fault" if kid % 7 == 0 else "ok",
                "faults": ["reader not answering"] if kid % 7 == 0 else [],
                "mode": "pupil",
                "hardware": "gpio",
                "started_at": "2026-07-17T06:00:00+00:00",
                "screen": {
                    "seq": 1,
                    "tone": "idle",
                    "title": "Tap your card",
                    "message": "",
                    "name": None,
                    "compartment": None,
                    "at": None,
                },
                "alarms": [],
            }
            age = 400 if kid == KIOSKS else 3
            connection.execute(
                text("UPDATE kiosks SET heartbeat_at = :at, state = :state WHERE id = :id"),
                {
                    "at": sql_time(NOW - timedelta(seconds=age)),
                    "state": json.dumps(state),
                    "id": kid,
                },
            )
        for cid, _kid, _n in rng.sample(pupil_slots, 6):
            connection.exec_driver_sql(
                "UPDATE compartments SET out_of_service = 1, out_of_service_reason = "
                "'lock jammed' WHERE id = ? AND id NOT IN (SELECT compartment_id FROM "
                "custody_records WHERE state IN ('PENDING_DEPOSIT', 'IN_LOCKER', 'CONFISCATED', "
                "'SAFEGUARDING_HOLD') AND compartment_id IS NOT NULL)",
                (cid,),
            )
        connection.exec_driver_sql("UPDATE compartments SET door_open = 0")
        connection.exec_driver_sql(
            "UPDATE compartments SET door_open = 1, alarm = 'door_open' WHERE id IN (3, 57)"
        )
        chain.close(connection, NOW)
    with instance.database.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
        counts = {
            table: connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in ("pupils", "kiosks", "compartments", "custody_records", "audit_events")
        }
    instance.close()
    (home / READY).write_text(json.dumps(counts))
    counts["build_s"] = round(time.perf_counter() - started, 1)
    return counts


def time_requests(client: Any, path: str, count: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        assert client.get(path).status_code == 200, path
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, f"{path}: {response.status_code}"
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="instance directory (kept; reused if built)")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per page")
    parser.add_argument("--verify", action="store_true", help="verify the audit chain too")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="skip web.tune_for_serving() (which web.serve runs) to see its effect",
    )
    args = parser.parse_args()
    if args.requests < 200:
        parser.error("--requests must be at least 200")

    temporary = args.home is None
    home = Path(tempfile.mkdtemp(prefix="locker-bench-")) / "instance" if temporary else args.home
    try:
        if (home / READY).exists():
            counts = json.loads((home / READY).read_text())
            print(f"reusing {home}")
        else:
            if home.exists():
                shutil.rmtree(home)
            counts = build(home)
            print(f"built {home} in {counts.pop('build_s')} s")
        print("data: " + ", ".join(f"{table} {n:,}" for table, n in counts.items()))

        instance = Instance.open(home, env={})
        if args.verify:
            started = time.perf_counter()
            with instance.database.reader() as session:
                report = instance.audit.verify(session)
            print(
                f"audit chain verified: {report.events:,} events in "
                f"{time.perf_counter() - started:.1f} s"
            )
        app = create_app(instance, config={"LOCKER_CLOCK": ManualClock(NOW)})
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert token is not None
        signed_in = client.post(
            "/login",
            data={"username": "office", "password": PASSWORD, "csrf_token": token.group(1)},
        )
        assert signed_in.status_code == 302, signed_in.status_code
        if not args.no_gc_freeze:
            tune_for_serving()  # as web.serve does after start-up
        dashboard = client.get("/").get_data(as_text=True)
        cells = dashboard.count('class="cell ')
        api = client.get("/api/v1/compartments").get_json()
        print(
            f"dashboard: {cells} cells, {len(dashboard) // 1024} KiB; grid JSON: "
            f"{len(api['compartments'])} compartments; "
            f"{sum(1 for c in api['compartments'] if c['custody'])} with a device"
        )
        results = {}
        for key, path in (
            ("p95_ms", "/"),
            ("api_p95_ms", "/api/v1/compartments"),
            ("register_p95_ms", "/register"),
        ):
            timings = time_requests(client, path, args.requests)
            p95 = percentile(timings, 0.95)
            results[key] = p95
            print(
                f"{path:<24} n={len(timings)} min {min(timings):6.1f} ms  median "
                f"{statistics.median(timings):6.1f} ms  p95 {p95:6.1f} ms  max "
                f"{max(timings):6.1f} ms"
            )
        instance.close()
    finally:
        if temporary:
            shutil.rmtree(home.parent, ignore_errors=True)
    print("RESULT " + " ".join(f"{key}={value:.1f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
