"""How soon a command from the web reaches a running kiosk.

A real ``locker kiosk --sim`` process runs on a new database; this process plays the web app
and queues commands through ``kiosk.commands.submit`` (the web's own path: on PostgreSQL it
sends the NOTIFY that wakes the kiosk; on SQLite the kiosk finds the command by polling every
``[kiosk] command_poll_s``). For each command it measures the time from the command's
``created_at`` to the kiosk's ``picked_at`` (both stamped by the same wall clock) and checks
that every command finished. Commands are spaced at random so they land anywhere in the
kiosk's poll cycle.

Run: ``.venv/bin/python bench/command_pickup.py [--database-url URL] [--commands N]``. With no
URL, a new SQLite file; a PostgreSQL URL names a server on which the benchmark creates (and
then drops) a database of its own. Exit status 1 when a command was not finished. Last line:
``RESULT database=... commands=N p50_ms=... p95_ms=... max_ms=...``. Goals: every pick-up
within 500 ms on SQLite and within 200 ms on PostgreSQL (max_ms).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import percentile
from scratch_database import drop_database, prepare_database
from sqlalchemy import func, select

from kiosk import cabinets, commands, migrate
from kiosk.actors import Actor
from kiosk.clock import SystemClock
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Command, CommandStatus, Kiosk

COMPARTMENTS = 8
START_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 10.0


def setup(home: Path, url: str) -> None:
    """A migrated instance on ``url`` with its kiosk registered."""
    instance, _ = Instance.create(home, env={})
    instance.close()
    (home / "config.toml").write_text(
        f'[database]\nurl = "{url}"\n'
        f"[kiosk]\ncompartments = {COMPARTMENTS}\nsecure_compartments = [{COMPARTMENTS}]\n",
        encoding="utf-8",
    )
    instance = Instance.open(home, env={})
    migrate.upgrade(instance.database)
    with instance.database.transaction() as session:
        cabinets.register(
            session, Actor.system("bench"), SystemClock(), instance.audit, instance.config.kiosk
        )
    instance.close()


def start_kiosk(home: Path) -> subprocess.Popen[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCKER_", "NOTIFY_", "WATCHDOG_"))
    }
    return subprocess.Popen(
        [sys.executable, "-m", "kiosk", "--home", str(home), "kiosk", "--sim"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_started(instance: Instance, process: subprocess.Popen[str]) -> None:
    """Until the kiosk has written its start event (and, on PostgreSQL, has had a moment to
    connect its listener)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the kiosk exited: {process.stderr.read() if process.stderr else ''}")
        with instance.database.reader() as session:
            started = session.execute(
                select(func.count()).where(AuditEvent.kind == "kiosk.started")
            ).scalar_one()
        if started:
            time.sleep(1.0)  # the command listener connects (PostgreSQL)
            return
        time.sleep(0.05)
    raise SystemExit(f"the kiosk did not start within {START_TIMEOUT_S:g} s")


def measure(instance: Instance, count: int, rng: random.Random) -> tuple[list[float], int]:
    """Queue ``count`` commands one after another; their pick-up delays (ms) and how many
    did not finish in time."""
    clock, actor = SystemClock(), Actor.system("bench")
    delays: list[float] = []
    unfinished = 0
    for n in range(count):
        with instance.database.transaction() as session:
            kiosk = session.execute(select(Kiosk)).scalar_one()
            command_id = commands.submit(
                session,
                actor,
                clock,
                instance.audit,
                kiosk=kiosk,
                kind="sim.door",
                payload={"compartment": 1 + n % COMPARTMENTS, "open": False},
            ).id
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while True:
            with instance.database.reader() as session:
                command = session.get(Command, command_id)
                status, created, picked = command.status, command.created_at, command.picked_at
            if status is CommandStatus.DONE and picked is not None:
                delays.append((picked - created).total_seconds() * 1000)
                break
            if status in (CommandStatus.FAILED, CommandStatus.CANCELLED):
                unfinished += 1
                break
            if time.monotonic() > deadline:
                unfinished += 1
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.02, 0.4))  # land anywhere in the poll cycle
    return delays, unfinished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server or new SQLite file")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.commands < 1:
        parser.error("--commands must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="locker-bench-"))
    url, created_database = prepare_database(args.database_url, workdir)
    backend = "postgresql" if created_database else "sqlite"
    process = None
    try:
        home = workdir / "instance"
        setup(home, url)
        instance = Instance.open(home, env={})
        poll_s = instance.config.kiosk.command_poll_s
        process = start_kiosk(home)
        try:
            wait_started(instance, process)
            delays, unfinished = measure(instance, args.commands, random.Random(args.seed))
        finally:
            instance.close()
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        if created_database:
            drop_database(url, created_database)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"database: {backend}; kiosk polls every {poll_s * 1000:.0f} ms"
        + ("; LISTEN/NOTIFY wakes it at once" if backend == "postgresql" else "")
    )
    print(f"commands {args.commands}, finished {len(delays)}, unfinished {unfinished}")
    if not delays:
        print(f"RESULT database={backend} commands=0 p50_ms=0 p95_ms=0 max_ms=0")
        return 1
    print(
        f"pick-up: median {percentile(delays, 0.5):.1f} ms, p95 {percentile(delays, 0.95):.1f} "
        f"ms, max {max(delays):.1f} ms"
    )
    print(
        f"RESULT database={backend} commands={len(delays)} p50_ms={percentile(delays, 0.5):.1f} "
        f"p95_ms={percentile(delays, 0.95):.1f} max_ms={max(delays):.1f}"
    )
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
