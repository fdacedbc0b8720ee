"""``locker kiosk --sim`` as a real process: systemd notifications, command pick-up time,
SIGTERM leaving every lock safe, and SIGKILL at random moments losing nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk import cards
from kiosk.actors import Actor
from kiosk.clock import SystemClock
from kiosk.custody import allowed_edges
from kiosk.models import CustodyState, Role

from .conftest import add_pupil, add_user, make_instance

PUPILS = 12
STAFF_UID = "5E0000FF"


def uid_of(number: int) -> str:
    return f"C0FFEE{number:02X}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An instance whose config opens the windows all day, with pupils and cards."""
    instance = make_instance(tmp_path / "instance")
    (instance.home / "config.toml").write_text(
        '[policy]\ndeposit_window = "00:00-24:00"\ncollection_window = "00:00-24:00"\n'
        'end_of_day = "24:00"\n[kiosk]\ncompartments = 16\nsecure_compartments = [16]\n',
        encoding="utf-8",
    )
    clock = SystemClock()
    with instance.database.transaction() as session:
        for number in range(PUPILS):
            pupil = add_pupil(session, clock, f"K{number:02d}")
            cards.enrol(
                session,
                Actor.system("test"),
                clock,
                instance.audit,
                instance.card_key,
                uid=bytes.fromhex(uid_of(number)),
                pupil=pupil,
            )
        teacher = add_user(session, clock, "teacher", Role.STAFF)
        cards.enrol(
            session,
            Actor.system("test"),
            clock,
            instance.audit,
            instance.card_key,
            uid=bytes.fromhex(STAFF_UID),
            user=teacher,
        )
    instance.close()
    return instance.home


def start_kiosk(home: Path, *options: str, **env: str) -> subprocess.Popen:
    """`locker --home HOME [OPTIONS] kiosk --sim` as a real process (stderr piped)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCKER_", "NOTIFY_", "WATCHDOG_"))
    }
    environment.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "kiosk", "--home", str(home), *options, "kiosk", "--sim"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def db(home: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(home / "locker.db", timeout=10, isolation_level=None)
    connection.row_factory = sqlite3.Row
    return connection


def started_count(home: Path) -> int:
    with db(home) as connection:
        return connection.execute(
            "SELECT COUNT(*) FROM audit_events WHERE kind = 'kiosk.started'"
        ).fetchone()[0]


def wait_ready(home: Path, process: subprocess.Popen, starts: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the kiosk exited: {process.stderr.read()}")
        if started_count(home) > starts:
            return
        time.sleep(0.05)
    raise AssertionError("the kiosk did not start in time")


def submit(home: Path, kind: str, payload: dict) -> int:
    """Queue a command the way the web does (a row in the commands table)."""
    with db(home) as connection:
        kiosk_id = connection.execute("SELECT id FROM kiosks").fetchone()[0]
        cursor = connection.execute(
            "INSERT INTO commands (kiosk_id, kind, payload, status, created_at, created_by) "
            "VALUES (?, ?, ?, 'pending', strftime('%Y-%m-%d %H:%M:%f', 'now'), 'test')",
            (kiosk_id, kind, json.dumps(payload)),
        )
        return cursor.lastrowid


def wait_command(home: Path, command_id: int, timeout: float = 10) -> sqlite3.Row:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db(home) as connection:
            row = connection.execute(
                "SELECT * FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
        if row["status"] in ("done", "failed", "cancelled"):
            return row
        time.sleep(0.02)
    raise AssertionError(f"command {command_id} was not finished in time")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield sock, path
    sock.close()


def test_systemd_ready_watchdog_and_stopping_with_every_lock_safe(home, notify_socket):
    sock, path = notify_socket
    process = start_kiosk(home, "-v", NOTIFY_SOCKET=path, WATCHDOG_USEC="600000")
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        pings = 0
        while pings < 3:  # from the event loop, every WatchdogSec/3 = 0.2 s
            pings += "WATCHDOG=1" in sock.recv(4096).decode()
        command = submit(home, "sim.tap", {"uid": uid_of(0)})
        wait_command(home, command)
        time.sleep(0.5)  # the deposit unlocks a compartment (auto-open pulls the door)
        process.send_signal(signal.SIGTERM)
        while True:
            message = sock.recv(4096).decode()
            if "STOPPING=1" in message:
                break
        assert process.wait(timeout=10) == 0
        log = process.stderr.read()
    finally:
        stop(process)
    with db(home) as connection:
        state = json.loads(connection.execute("SELECT state FROM kiosks").fetchone()[0])
        kinds = [row[0] for row in connection.execute("SELECT kind FROM audit_events ORDER BY seq")]
    assert state["status"] == "stopped"
    assert kinds[-1] == "kiosk.stopped"
    # Checked on the cabinet's own locks at the end of the shutdown, not merely announced.
    assert "every lock is de-energised" in log and "still energised" not in log


def test_commands_are_picked_up_and_answered(home):
    """Commands queued the way the web does are picked up, carried out and answered, in order.
    (How soon: ``bench/command_pickup.py``.)"""
    process = start_kiosk(home)
    try:
        wait_ready(home, process, 0)
        rows = []
        for number in (1, 2, 3, 4, 5):
            command = submit(home, "sim.door", {"compartment": number, "open": False})
            rows.append(wait_command(home, command))
            time.sleep(random.uniform(0, 0.2))
        bad = submit(home, "sim.door", {"compartment": 99, "open": False})
        refused = wait_command(home, bad)
    finally:
        stop(process)
    assert [row["status"] for row in rows] == ["done"] * 5
    for row in rows:
        assert row["created_at"] <= row["picked_at"] <= row["finished_at"]
        assert json.loads(row["result"]) == {
            "compartment": json.loads(row["payload"])["compartment"],
            "open": False,
        }
    assert [row["picked_at"] for row in rows] == sorted(row["picked_at"] for row in rows)
    assert refused["status"] == "failed"
    assert "no compartment 99" in refused["error"]


def check_invariants(home: Path, seen: dict[int, str]) -> None:
    """No compartment or pupil with two active records; no record lost or moved backwards;
    the audit chain verifies (via the real CLI)."""
    with db(home) as connection:
        records = {
            row["id"]: row["state"]
            for row in connection.execute("SELECT id, state FROM custody_records")
        }
        doubled = connection.execute(
            "SELECT compartment_id FROM custody_records WHERE state IN ('PENDING_DEPOSIT', "
            "'IN_LOCKER', 'CONFISCATED', 'SAFEGUARDING_HOLD') AND compartment_id IS NOT NULL "
            "GROUP BY compartment_id HAVING COUNT(*) > 1"
        ).fetchall()
        twice = connection.execute(
            "SELECT pupil_id FROM custody_records WHERE kind = 'daily' AND state IN "
            "('PENDING_DEPOSIT', 'IN_LOCKER') GROUP BY pupil_id HAVING COUNT(*) > 1"
        ).fetchall()
    assert not doubled and not twice
    edges = {(a.value, b.value) for a, b in allowed_edges()}
    for record_id, state in seen.items():
        assert record_id in records, f"committed record {record_id} was lost"
        now = records[record_id]
        assert now == state or (state, now) in edges or _reachable(state, now, edges), (
            f"record {record_id} went from {state} to {now}"
        )
    seen.update(records)
    verify = subprocess.run(
        [sys.executable, "-m", "kiosk", "--home", str(home), "audit", "verify"],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def check_reconciled(home: Path) -> None:
    """Just after a restart (its kiosk.started event): no deposit from before it is left
    pending (each was confirmed and flagged, the doors being shut), and every confiscation
    that never reached its secure compartment's closed door is flagged for the office."""
    with db(home) as connection:
        started = connection.execute(
            "SELECT MAX(occurred_at) FROM audit_events WHERE kind = 'kiosk.started'"
        ).fetchone()[0]
        pending = connection.execute(
            "SELECT id FROM custody_records WHERE state = 'PENDING_DEPOSIT' AND started_at < ?",
            (started,),
        ).fetchall()
        unflagged = connection.execute(
            "SELECT id FROM custody_records WHERE state IN ('CONFISCATED', "
            "'SAFEGUARDING_HOLD') AND stored_at IS NULL AND flag IS NULL AND started_at < ?",
            (started,),
        ).fetchall()
    assert not pending, f"deposits left pending after the restart: {pending}"
    assert not unflagged, f"unstored confiscations not flagged: {unflagged}"


def _reachable(start: str, end: str, edges: set[tuple[str, str]]) -> bool:
    frontier, seen = {start}, set()
    while frontier:
        state = frontier.pop()
        seen.add(state)
        for a, b in edges:
            if a == state and b not in seen:
                if b == end:
                    return True
                frontier.add(b)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(home):
    """Scripted flows (tap, door open, door closed; a teacher confiscating now and then)
    driven through the commands table, with the kiosk killed by SIGKILL at a random moment,
    restarted, and checked, many times: after each restart nothing is left unreconciled."""
    rng = random.Random(20261122)
    seen: dict[int, str] = {}
    starts = 0
    kills = 15
    confiscations = 0
    for _ in range(kills):
        process = start_kiosk(home)
        try:
            wait_ready(home, process, starts)
            starts = started_count(home)
            check_reconciled(home)
            deadline = time.monotonic() + rng.uniform(0.3, 2.5)
            while time.monotonic() < deadline:
                pupil = rng.randrange(PUPILS)
                if rng.random() < 0.15:  # staff mode, then the pupil's card: confiscation
                    submit(home, "sim.tap", {"uid": STAFF_UID})
                    confiscations += 1
                submit(home, "sim.tap", {"uid": uid_of(pupil)})
                time.sleep(rng.uniform(0.0, 0.15))
                if rng.random() < 0.3:  # the secure compartment's door is shut
                    submit(home, "sim.door", {"compartment": 16, "open": False})
                with db(home) as connection:
                    row = connection.execute(
                        "SELECT c.number FROM custody_records r JOIN compartments c "
                        "ON c.id = r.compartment_id WHERE r.state = 'PENDING_DEPOSIT' "
                        "ORDER BY r.id DESC LIMIT 1"
                    ).fetchone()
                if row is not None:
                    submit(home, "sim.door", {"compartment": row[0], "open": False})
                time.sleep(rng.uniform(0.0, 0.1))
        finally:
            process.kill()  # SIGKILL: no clean-up at all
            process.wait()
        check_invariants(home, seen)
    process = start_kiosk(home)
    try:
        wait_ready(home, process, starts)
        check_reconciled(home)
    finally:
        stop(process)
    check_invariants(home, seen)
    with db(home) as connection:
        confiscated = connection.execute(
            "SELECT COUNT(*) FROM custody_records WHERE kind = 'confiscation'"
        ).fetchone()[0]
    assert confiscations and confiscated  # the secure compartment's flow was exercised too
    states = {CustodyState(state) for state in seen.values()}
    assert CustodyState.IN_LOCKER in states or CustodyState.COLLECTED in states
    assert len(seen) >= kills
    print(f"{len(seen)} records over {kills} kills")


def test_commands_reach_the_kiosk_on_postgresql(tmp_path, postgres_server):
    """On PostgreSQL the web's commands reach the kiosk and are carried out (the NOTIFY that
    wakes it: test_listener.py; how soon: ``bench/command_pickup.py``)."""
    from sqlalchemy import func, select

    from kiosk import commands
    from kiosk.instance import Instance
    from kiosk.models import AuditEvent, Command, CommandStatus, Kiosk

    url = postgres_server.new_database()
    instance = make_instance(tmp_path / "instance", database_url=url)
    (instance.home / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[kiosk]\ncompartments = 8\nsecure_compartments = [8]\n',
        encoding="utf-8",
    )
    instance.close()
    instance = Instance.open(tmp_path / "instance", env={})
    process = start_kiosk(instance.home)
    clock = SystemClock()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with instance.database.reader() as session:
                started = session.execute(
                    select(func.count()).where(AuditEvent.kind == "kiosk.started")
                ).scalar_one()
            if started:
                break
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        finished = []
        for number in range(1, 6):
            with instance.database.transaction() as session:
                kiosk = session.execute(select(Kiosk)).scalar_one()
                command_id = commands.submit(
                    session,
                    Actor.system("test"),
                    clock,
                    instance.audit,
                    kiosk=kiosk,
                    kind="sim.door",
                    payload={"compartment": number, "open": False},
                ).id
            deadline = time.monotonic() + 10
            while True:
                with instance.database.reader() as session:
                    command = session.get(Command, command_id)
                if command.status is not CommandStatus.PENDING and command.finished_at:
                    break
                assert time.monotonic() < deadline, f"command {command_id} not finished"
                time.sleep(0.01)
            finished.append(command)
            time.sleep(random.uniform(0.05, 0.3))
    finally:
        stop(process)
        instance.close()
    assert [command.result for command in finished] == [
        {"compartment": number, "open": False} for number in range(1, 6)
    ]
    assert all(c.created_at <= c.picked_at <= c.finished_at for c in finished)


def test_a_kiosk_starts_offline_from_its_copy_and_catches_up(tmp_path, postgres_server):
    """`locker kiosk` on a PostgreSQL server it cannot reach: with an offline copy from its
    last run it starts and serves from the copy; when the server answers it replays."""
    from sqlalchemy import select

    from kiosk.instance import Instance
    from kiosk.models import AuditEvent
    from kiosk.offline import mirror_path, state_file

    from .netlink import NetworkLink

    direct = postgres_server.new_database()
    link = NetworkLink.to(direct)
    url = link.url(direct)
    instance = make_instance(tmp_path / "instance", database_url=direct)
    (instance.home / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n[kiosk]\ncompartments = 8\nsecure_compartments = [8]\n',
        encoding="utf-8",
    )
    home = instance.home
    instance.close()
    office = Instance.open(home, env={"LOCKER_DATABASE_URL": direct})

    def kinds() -> list[str]:
        with office.database.reader() as session:
            return list(session.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars())

    def network() -> str | None:
        try:
            data = json.loads(state_file(home, "main").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data["state"].get("network")

    def wait_for(condition, process, what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, f"not in time: {what}"
            time.sleep(0.05)

    try:
        # The first run, online, leaves an offline copy behind.
        process = start_kiosk(home)
        try:
            wait_for(lambda: "kiosk.started" in kinds(), process, "started online")
            wait_for(lambda: network() == "online", process, "state file")
        finally:
            stop(process)
        assert process.returncode == 0 and mirror_path(home, "main").exists()

        link.cut()  # the server is out of reach when the Pi boots
        process = start_kiosk(home)
        try:
            wait_for(lambda: network() == "offline", process, "started offline")
            link.restore()  # it reconnects by itself (every few seconds)
            wait_for(lambda: network() == "online", process, "back online")
        finally:
            stop(process)
        assert process.returncode == 0, process.stderr.read()
        replayed = kinds()
        assert "kiosk.offline_replayed" in replayed and "kiosk.online" in replayed
        assert replayed.count("kiosk.started") == 2
        with office.database.reader() as session:
            office.audit.verify(session)

        # Without an offline copy there is nothing to work from: a clear refusal.
        mirror_path(home, "main").unlink()
        link.cut()
        refused = subprocess.run(
            [sys.executable, "-m", "kiosk", "--home", str(home), "kiosk", "--sim"],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("LOCKER_")},
        )
        assert refused.returncode == 75, refused.stderr  # EX_TEMPFAIL: systemd tries again
        assert refused.stderr.startswith("error: the database cannot be used (")
        assert "Traceback" not in refused.stderr
    finally:
        link.close()
        office.close()


def test_a_kiosk_with_another_secret_exits_with_the_reason(home: Path, tmp_path: Path) -> None:
    """`locker kiosk` on a database written with another secret.key: a clear error and a
    non-zero exit (not a traceback, nothing written)."""
    from kiosk.instance import Instance

    other, _ = Instance.create(tmp_path / "other", env={})
    other.close()
    (other.home / "config.toml").write_text(
        f'[database]\nurl = "sqlite:///{home / "locker.db"}"\n', encoding="utf-8"
    )
    refused = subprocess.run(
        [sys.executable, "-m", "kiosk", "--home", str(other.home), "kiosk", "--sim"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOCKER_")},
    )
    assert refused.returncode == 78, refused.stderr
    assert "secret.key is not the one its database was written with" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert started_count(home) == 0
