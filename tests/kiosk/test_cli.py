"""The `locker` command line (kiosk.cli.main), in-process and as the installed console script.

Every command of DESIGN.md's public surface: the happy path, and that a user's mistake gives
one line on stderr starting with "error:", a non-zero exit status and no traceback.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kiosk import cards, reports, roster, users
from kiosk.actors import Actor
from kiosk.cli import describe_os_error, main
from kiosk.clock import ManualClock
from kiosk.db import Database
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Card, CustodyState, Pupil, Role

from .conftest import SCHOOL_MORNING, deposit, staff_actor

LOCKER = Path(sys.executable).with_name("locker")
ROSTER_HEADER = ["Adno", "Legal Forename", "Legal Surname", "Reg Group", "Year", "Date of Birth"]
ROSTER_ROWS = [
    ["3001", "Zoë", "O'Brien", "7A", "Year 7", "2014-01-02"],
    ["3002", "Siobhán", "Ní Bhriain, Jr", "7B", "Year 7", "2014-03-04"],
    ["3003", "Łukasz", "Wróbel", "10A", "Year 10", "2011-05-06"],
    ["3004", "محمد", "王", "10A", "10", "2011-07-08"],
]
UID = "04:A1:B2:C3:D4:E5:F6"
STRONG = "lantern-quokka-harbour"


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LOCKER_* variable of the machine running the tests; logging restored after."""
    for name in list(os.environ):
        if name.startswith("LOCKER_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, stdin=...)``: `locker ARGS` in-process."""

    def _run(*args: object, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        with pytest.raises(SystemExit) as caught:
            main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        code = caught.value.code
        return Result(code if isinstance(code, int) else int(code is not None), out, err)

    return _run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def locker(run: Run, home: Path) -> Run:
    """`locker --home HOME ARGS` on an initialised instance."""
    assert run("--home", home, "init").code == 0
    return lambda *args, stdin="": run("--home", home, *args, stdin=stdin)


def assert_user_error(result: Result, *, problem_lines: bool = False) -> str:
    """A user's mistake: non-zero, 'error: ...' on one line of stderr, no traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines and lines[0].startswith("error: "), result.err
    if problem_lines:
        assert all(line.startswith("  ") and line.strip() for line in lines[1:]), result.err
    else:
        assert len(lines) == 1, result.err
    return lines[0]


def write_roster(path: Path, rows: list[list[str]], header: list[str] = ROSTER_HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def dump(path: Path) -> list[str]:
    """The whole database as SQL text, for before/after comparisons."""
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def open_instance(home: Path) -> Instance:
    return Instance.open(home, env={})


def pupils_of(database: Path) -> list[tuple[str, str, str, str, str]]:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(
            "SELECT admission_number, forename, surname, form, status FROM pupils ORDER BY 1"
        ).fetchall()
    finally:
        connection.close()


# ------------------------------------------------------------------------------ init


def test_init_creates_the_instance(run: Run, home: Path) -> None:
    result = run("--home", home, "init")
    assert result.code == 0, result.err
    assert "created site secret" in result.out and "schema new" in result.out
    secret = home / "secret.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) >= 32
    assert (home / "config.toml").exists() and (home / "locker.db").exists()
    assert run("--home", home, "audit", "verify").code == 0


def test_init_twice_changes_nothing_the_second_time(run: Run, home: Path) -> None:
    assert run("--home", home, "init").code == 0
    files = {name: (home / name).read_bytes() for name in ("secret.key", "config.toml")}
    before = dump(home / "locker.db")
    again = run("--home", home, "init")
    assert again.code == 0, again.err
    assert "created" not in again.out and "up to date" in again.out
    assert {name: (home / name).read_bytes() for name in files} == files
    assert dump(home / "locker.db") == before


def test_init_demo_seeds_once(run: Run, home: Path) -> None:
    result = run("--home", home, "init", "--demo")
    assert result.code == 0, result.err
    assert "demo school seeded" in result.out
    pupils = pupils_of(home / "locker.db")
    assert pupils
    # The printed staff passwords are the real ones.
    account = next(line.split() for line in result.out.splitlines() if line.startswith("  "))
    username, password = account[0], account[-1]
    instance = open_instance(home)
    try:
        with instance.database.reader() as session:
            assert users.authenticate(session, username, password) is not None
    finally:
        instance.close()
    before = dump(home / "locker.db")
    again = run("--home", home, "init", "--demo")
    assert again.code == 0 and "nothing seeded" in again.out
    assert dump(home / "locker.db") == before


@pytest.mark.parametrize("directory", ["cabinet #2", "what?", "100%25 sure"])
def test_init_keeps_the_database_inside_an_oddly_named_instance(
    run: Run, tmp_path: Path, directory: str
) -> None:
    """The database belongs in the instance directory whatever the directory is called."""
    home = tmp_path / directory / "instance"
    result = run("--home", home, "init")
    assert result.code == 0, result.err
    assert (home / "locker.db").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == [directory]


def test_home_from_locker_home_or_the_current_directory(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("init").code == 0
    assert (tmp_path / "instance" / "locker.db").is_file()
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("LOCKER_HOME", str(elsewhere))
    assert str(elsewhere) in assert_user_error(run("audit", "verify"))
    assert run("init").code == 0
    assert (elsewhere / "locker.db").is_file()
    # --home wins over LOCKER_HOME.
    assert run("--home", tmp_path / "instance", "audit", "verify").code == 0


# ------------------------------------------------------------------------------ mistakes


def test_missing_instance(run: Run, tmp_path: Path) -> None:
    line = assert_user_error(run("--home", tmp_path / "nowhere", "audit", "verify"))
    assert "locker init" in line


def test_directory_that_was_never_initialised(run: Run, tmp_path: Path) -> None:
    line = assert_user_error(run("--home", tmp_path, "roster", "import", "x.csv"))
    assert "locker init" in line or "cannot read" in line
    line = assert_user_error(run("--home", tmp_path, "audit", "verify"))
    assert "locker init" in line


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda text: text + "\n[policy\n", "not valid TOML"),
        (
            lambda text: text.replace(
                '# deposit_window = "07:30-09:15"', 'deposit_window = "7.30"'
            ),
            "deposit_window",
        ),
        (
            lambda text: text.replace("[policy]", "[policy]\nretention_dayz = 30", 1),
            "retention_dayz",
        ),
        (
            lambda text: text.replace("[policy]", '[policy]\ntimezone = "Mars/Olympus"', 1),
            "timezone",
        ),
    ],
    ids=["toml", "bad value", "unknown key", "bad timezone"],
)
def test_broken_config_toml(
    locker: Run, home: Path, edit: Callable[[str], str], named: str
) -> None:
    config = home / "config.toml"
    edited = edit(config.read_text())
    assert edited != config.read_text()
    config.write_text(edited)
    line = assert_user_error(locker("audit", "verify"))
    assert named in line


def test_database_missing_from_an_initialised_instance(locker: Run, home: Path) -> None:
    """The database file deleted (or never created): one line that says what to do."""
    (home / "locker.db").unlink()
    line = assert_user_error(locker("audit", "verify"))
    assert "locker init" in line


def test_unexpected_error_names_the_home_in_use(
    locker: Run, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint of an unexpected failure (a bug) names the --home directory, not ./instance."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(reports, "daily_register", broken)
    result = locker("report", "daily")
    assert result.code == 70 and "Traceback" not in result.err
    assert result.err.startswith("error: unexpected RuntimeError: a bug; re-run with --debug")
    assert str(home) in result.err


def test_unknown_command_and_usage_errors(locker: Run) -> None:
    assert_user_error(locker("nonsense"))
    assert_user_error(locker("card", "enrol", "3001"))  # the UID is missing
    assert_user_error(locker("user", "add", "kate"))  # --role is required


# ------------------------------------------------------------------------------ roster


def test_roster_import(locker: Run, home: Path, tmp_path: Path) -> None:
    result = locker("roster", "import", write_roster(tmp_path / "r.csv", ROSTER_ROWS))
    assert result.code == 0, result.err
    assert "4 pupils in the file" in result.out and "4 added" in result.out
    assert "Date of Birth" in result.out  # reported as ignored
    stored = pupils_of(home / "locker.db")
    assert [row[:4] for row in stored] == [
        (row[0], row[1], row[2], row[3]) for row in sorted(ROSTER_ROWS)
    ]
    assert b"2014-01-02" not in (home / "locker.db").read_bytes()
    again = locker("roster", "import", tmp_path / "r.csv")
    assert again.code == 0 and "4 unchanged" in again.out


def _on_a_terminal(*args: object) -> tuple[int, str, str]:
    """`locker ARGS` as a real process whose stderr is a terminal (a pseudo-terminal): its
    exit status, stdout and what the terminal showed."""
    import pty
    import threading

    master, slave = pty.openpty()
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process ended and closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [str(LOCKER), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
            env={**os.environ, "COLUMNS": "80"},
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return done.returncode, done.stdout.decode(), shown.decode(errors="replace")


def test_a_large_roster_shows_a_progress_bar_on_a_terminal(
    locker: Run, home: Path, tmp_path: Path
) -> None:
    from kiosk.cli import PROGRESS_THRESHOLD

    many = [
        [str(5000 + n), f"Pupil{n}", "Example", "8C", "Year 8", "2013-01-01"]
        for n in range(PROGRESS_THRESHOLD)
    ]
    code, out, terminal = _on_a_terminal(
        "--home", home, "roster", "import", "--partial", write_roster(tmp_path / "big.csv", many)
    )
    assert code == 0, terminal
    assert f"{PROGRESS_THRESHOLD} added" in out
    assert "importing" in terminal and "100%" in terminal
    few = write_roster(tmp_path / "few.csv", many[: PROGRESS_THRESHOLD - 1])
    code, out, terminal = _on_a_terminal("--home", home, "roster", "import", "--partial", few)
    assert code == 0 and "unchanged" in out
    assert "importing" not in terminal  # a small file: no bar
    piped = locker("roster", "import", "--partial", tmp_path / "big.csv")
    assert piped.code == 0 and "importing" not in piped.err  # not a terminal: no bar


def test_roster_import_rejects_a_bad_file_and_names_every_line(
    locker: Run, home: Path, tmp_path: Path
) -> None:
    locker("roster", "import", write_roster(tmp_path / "good.csv", ROSTER_ROWS))
    before = dump(home / "locker.db")
    rows = [
        ROSTER_ROWS[0],
        ["3005", "", "Empty", "7A", "7", ""],  # line 3: no forename
        ROSTER_ROWS[0],  # line 4: duplicate of line 2
        ["3006", "Too", "Few"],  # line 5
    ]
    result = locker("roster", "import", write_roster(tmp_path / "bad.csv", rows))
    assert_user_error(result, problem_lines=True)
    problems = result.err.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in problems] == ["line 3", "line 4", "line 5"]
    assert "line 2" in problems[1]
    assert dump(home / "locker.db") == before


def test_roster_import_user_mistakes(locker: Run, tmp_path: Path) -> None:
    assert "cannot read" in assert_user_error(locker("roster", "import", tmp_path / "nope.csv"))
    assert_user_error(locker("roster", "import", tmp_path))  # a directory
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Adno,Forename,Surname,Form\n1,Zoë,A,7A\n".encode("latin-1"))
    result = locker("roster", "import", latin)
    assert_user_error(result, problem_lines=True)
    assert "line 2" in result.err
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert_user_error(locker("roster", "import", empty), problem_lines=True)


def test_roster_import_partial_dry_run_and_mass_leave(
    locker: Run, home: Path, tmp_path: Path
) -> None:
    many = [[f"M{n:03d}", "Amy", f"Ng{n}", "7A", "7", ""] for n in range(20)]
    locker("roster", "import", write_roster(tmp_path / "all.csv", many))
    few = write_roster(tmp_path / "few.csv", many[:5])

    before = dump(home / "locker.db")
    dry = locker("roster", "import", "--dry-run", few, "--allow-mass-leave")
    assert dry.code == 0 and "dry run" in dry.out and "15 marked as left" in dry.out
    assert dump(home / "locker.db") == before

    line = assert_user_error(locker("roster", "import", few))
    assert "--allow-mass-leave" in line
    assert dump(home / "locker.db") == before

    partial = locker("roster", "import", "--partial", few)
    assert partial.code == 0 and "0 marked as left" in partial.out
    assert {row[4] for row in pupils_of(home / "locker.db")} == {"active"}

    allowed = locker("roster", "import", "--allow-mass-leave", few)
    assert allowed.code == 0 and "15 marked as left" in allowed.out
    statuses = [row[4] for row in pupils_of(home / "locker.db")]
    assert statuses.count("left") == 15


# ------------------------------------------------------------------------------ cards


@pytest.fixture
def with_roster(locker: Run, tmp_path: Path) -> Run:
    assert locker("roster", "import", write_roster(tmp_path / "r.csv", ROSTER_ROWS)).code == 0
    return locker


def test_card_enrol_and_revoke(with_roster: Run, home: Path) -> None:
    locker = with_roster
    result = locker("card", "enrol", "3001", "04a1b2c3d4e5f6")
    assert result.code == 0, result.err
    assert UID in result.out
    line = assert_user_error(locker("card", "enrol", "3002", UID))
    assert "3001" in line and "revoke" in line
    assert locker("card", "revoke", "04-a1-b2-c3-d4-e5-f6").code == 0
    assert "no active card" in assert_user_error(locker("card", "revoke", UID))
    assert locker("card", "enrol", "3002", UID).code == 0
    instance = open_instance(home)
    try:
        with instance.database.reader() as session:
            card = cards.find_active(session, instance.card_key, cards.normalise_uid(UID))
            assert card is not None and card.pupil is not None
            assert card.pupil.admission_number == "3002"
            assert session.execute(select(func.count()).select_from(Card)).scalar_one() == 2
    finally:
        instance.close()


def test_card_enrol_user_mistakes(with_roster: Run) -> None:
    locker = with_roster
    assert "9999" in assert_user_error(locker("card", "enrol", "9999", UID))
    assert "UID" in assert_user_error(locker("card", "enrol", "3001", "not-a-uid"))
    assert_user_error(locker("card", "enrol", "3001", "DE:AD:BE"))
    assert_user_error(locker("card", "enrol", "--staff", "nobody", UID))
    assert_user_error(locker("card", "revoke", "zz"))


def test_staff_card(with_roster: Run) -> None:
    locker = with_roster
    assert (
        locker("user", "add", "kate", "--role", "staff", "--password-stdin", stdin=STRONG).code == 0
    )
    result = locker("card", "enrol", "--staff", "kate", "01:02:03:04")
    assert result.code == 0 and "staff member kate" in result.out
    assert "kate" in assert_user_error(locker("card", "enrol", "3001", "01020304"))


def test_the_uid_never_reaches_the_database_file(with_roster: Run, home: Path) -> None:
    assert with_roster("card", "enrol", "3003", UID).code == 0
    uid = cards.normalise_uid(UID)
    content = b"".join(
        path.read_bytes() for path in home.iterdir() if path.name.startswith("locker.db")
    )
    assert "Wróbel".encode() in content
    for form in (
        uid,
        uid.hex().encode(),
        uid.hex().upper().encode(),
        UID.encode(),
        UID.lower().encode(),
    ):
        assert form not in content


# ------------------------------------------------------------------------------ users and tokens


def test_user_add_with_password_on_stdin(locker: Run, home: Path) -> None:
    result = locker(
        "user", "add", "Kate.Lovell", "--role", "dsl", "--password-stdin", stdin=STRONG + "\n"
    )
    assert result.code == 0, result.err
    assert "kate.lovell" in result.out and STRONG not in result.out
    instance = open_instance(home)
    try:
        with instance.database.reader() as session:
            user = users.authenticate(session, "kate.lovell", STRONG)
            assert user is not None and user.role.value == "dsl"
    finally:
        instance.close()
    assert STRONG.encode() not in b"".join(
        path.read_bytes() for path in home.iterdir() if path.name.startswith("locker.db")
    )
    assert "already exists" in assert_user_error(
        locker("user", "add", "kate.lovell", "--role", "dsl", "--password-stdin", stdin=STRONG)
    )


def test_user_add_generates_a_password_without_a_terminal(locker: Run, home: Path) -> None:
    result = locker("user", "add", "office1", "--role", "office")
    assert result.code == 0, result.err
    password = result.out.strip().splitlines()[-1].split(": ", 1)[1]
    users.check_password(password, "office1")
    instance = open_instance(home)
    try:
        with instance.database.reader() as session:
            assert users.authenticate(session, "office1", password) is not None
    finally:
        instance.close()


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["--role", "admin", "--password-stdin"], "Password1234", "too easy"),
        (["--role", "admin", "--password-stdin"], "short", "too short"),
        (["--role", "admin", "--password-stdin"], "kate-rules-the-school", "user name"),
        (["--role", "admin", "--password-stdin"], "", "no password"),
        (["--role", "superuser", "--password-stdin"], STRONG, "unknown role"),
        (["--role", "", "--password-stdin"], STRONG, "unknown role"),
    ],
    ids=["common", "short", "username", "empty", "superuser", "blank role"],
)
def test_user_add_mistakes(locker: Run, home: Path, args: list[str], stdin: str, says: str) -> None:
    before = dump(home / "locker.db")
    assert says in assert_user_error(locker("user", "add", "kate", *args, stdin=stdin))
    assert dump(home / "locker.db") == before


def test_user_add_refuses_a_bad_user_name(locker: Run) -> None:
    assert "user name" in assert_user_error(
        locker("user", "add", "Kate Lovell!", "--role", "office", "--password-stdin", stdin=STRONG)
    )


def test_token_create(locker: Run, home: Path) -> None:
    locker("user", "add", "kate", "--role", "office", "--password-stdin", stdin=STRONG)
    result = locker("token", "create", "kate", "--name", "dashboard")
    assert result.code == 0, result.err
    token = result.out.strip()
    instance = open_instance(home)
    try:
        with instance.database.reader() as session:
            user = users.user_for_token(session, token, datetime.now(UTC))
            assert user is not None and user.username == "kate"
    finally:
        instance.close()
    assert token.encode() not in (home / "locker.db").read_bytes()
    assert "nobody" in assert_user_error(locker("token", "create", "nobody"))


# ------------------------------------------------------------------------------ audit


def test_audit_verify_ok(with_roster: Run) -> None:
    result = with_roster("audit", "verify")
    assert result.code == 0 and "audit chain ok" in result.out


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit_events SET details = '{\"rows\":1}' WHERE seq = :seq",
        "UPDATE audit_events SET actor = 'user:nobody' WHERE seq = :seq",
        "UPDATE audit_events SET occurred_at = '2020-01-01 00:00:00.000000' WHERE seq = :seq",
        "DELETE FROM audit_events WHERE seq = :seq",
    ],
    ids=["details", "actor", "time", "removed"],
)
def test_editing_an_audit_event_makes_verify_fail(
    with_roster: Run, home: Path, tamper: str
) -> None:
    locker = with_roster
    locker("card", "enrol", "3001", UID)
    locker("card", "enrol", "3002", "01:02:03:04")
    connection = sqlite3.connect(home / "locker.db")
    try:
        # The database's own guard against editing an event (migration 0004) goes first, as
        # it does for anyone who can write the file: `audit verify` must still catch them.
        connection.execute("DROP TRIGGER IF EXISTS trg_audit_events_append_only")
        seqs = [row[0] for row in connection.execute("SELECT seq FROM audit_events ORDER BY seq")]
        seq = seqs[len(seqs) // 2]
        with connection:
            assert connection.execute(tamper, {"seq": seq}).rowcount == 1
    finally:
        connection.close()
    result = locker("audit", "verify")
    line = assert_user_error(result)
    if tamper.startswith("DELETE"):  # named by the event after the gap
        assert f"seq {seq + 1} " in line and "removed" in line
    else:
        assert f"seq {seq} " in line


# ------------------------------------------------------------------------------ reports


def _school_day(home: Path) -> str:
    """Three pupils; one deposits on the test's school day (through the ledger)."""
    instance = open_instance(home)
    clock = ManualClock(SCHOOL_MORNING)
    try:
        data = io.StringIO()
        rows = [["Adno", "Forename", "Surname", "Form"], ["D1", "=cmd", "Ng", "10A"]]
        rows += [["D2", "Ben", "Ode", "7A"], ["D3", "Cat", "Lee", "7B"]]
        csv.writer(data).writerows(rows)
        parsed = roster.parse_roster(data.getvalue().encode())
        with instance.database.transaction() as session:
            roster.import_roster(session, Actor.system("test"), clock, instance.audit, parsed)
        with instance.database.transaction() as session:
            pupil = session.execute(
                select(Pupil).where(Pupil.admission_number == "D2")
            ).scalar_one()
            deposit(instance.ledger, session, clock, pupil)
        return instance.policy.school_day(clock.now()).isoformat()
    finally:
        instance.close()


def test_report_daily(locker: Run, home: Path, tmp_path: Path) -> None:
    day = _school_day(home)
    result = locker("report", "daily", "--date", day)
    assert result.code == 0, result.err
    table = list(csv.DictReader(io.StringIO(result.out)))
    assert [row["form"] for row in table] == ["7A", "7B", "10A"]
    assert [(row["pupils"], row["deposited"], row["nothing_recorded"]) for row in table] == [
        ("1", "1", "0"),
        ("1", "0", "1"),
        ("1", "0", "1"),
    ]
    per_pupil = locker("report", "daily", "--date", day, "--pupils")
    rows = list(csv.DictReader(io.StringIO(per_pupil.out)))
    assert {row["admission_number"]: row["status"] for row in rows} == {
        "D1": "nothing recorded",
        "D2": "deposited",
        "D3": "nothing recorded",
    }
    assert next(row["forename"] for row in rows if row["admission_number"] == "D1") == "'=cmd"
    output = tmp_path / "out.csv"
    written = locker("report", "daily", "--date", day, "-o", output)
    assert written.code == 0 and output.read_text(encoding="utf-8") == result.out
    # The next day nobody has deposited yet.
    later = locker("report", "daily", "--date", (datetime.fromisoformat(day) + timedelta(1)).date())
    assert [row["deposited"] for row in csv.DictReader(io.StringIO(later.out))] == ["0"] * 3


@pytest.mark.parametrize("value", ["2026-13-01", "yesterday", "07/09/2026", ""])
def test_report_daily_bad_date(locker: Run, value: str) -> None:
    assert "--date" in assert_user_error(locker("report", "daily", "--date", value))


def test_report_daily_without_a_date_uses_today(locker: Run) -> None:
    result = locker("report", "daily")
    assert result.code == 0 and result.out.startswith("form,pupils,")


# ------------------------------------------------------------------------------ retention


def test_retention_purge(locker: Run, home: Path) -> None:
    instance = open_instance(home)
    try:
        days = instance.policy.config.retention_days + 30
        old_day = (datetime.now(UTC) - timedelta(days=days)).date()
        old_day -= timedelta(days=old_day.weekday())  # a Monday
        clock = ManualClock(instance.policy.at_local(old_day, time(7, 45)))
        with instance.database.transaction() as session:
            pupil = Pupil(
                admission_number="OLD1",
                forename="Amy",
                surname="Ng",
                form="7A",
                created_at=clock.now(),
                updated_at=clock.now(),
            )
            session.add(pupil)
            session.flush()
            record = deposit(instance.ledger, session, clock, pupil, confirm=False)
            instance.ledger.cancel_deposit(
                session, Actor.for_kiosk("main"), clock, record, reason="door never opened"
            )
    finally:
        instance.close()
    before = dump(home / "locker.db")
    dry = locker("retention", "purge", "--dry-run")
    assert dry.code == 0, dry.err
    assert "would delete 1 custody records" in dry.out
    assert dump(home / "locker.db") == before
    purge = locker("retention", "purge")
    assert purge.code == 0 and "deleted 1 custody records" in purge.out
    connection = sqlite3.connect(home / "locker.db")
    try:
        assert connection.execute("SELECT count(*) FROM custody_records").fetchone() == (0,)
    finally:
        connection.close()
    assert locker("audit", "verify").code == 0


# ------------------------------------------------------------------------------ export


def test_export_pupil(with_roster: Run, home: Path, tmp_path: Path) -> None:
    locker = with_roster
    locker("card", "enrol", "3002", UID)
    result = locker("export", "pupil", "3002")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["pupil"]["admission_number"] == "3002"
    assert data["pupil"]["surname"] == "Ní Bhriain, Jr"
    assert len(data["cards"]) == 1 and data["cards"][0]["uid_ref"]
    assert any(event["kind"] == "card.enrolled" for event in data["audit_events"])
    uid = cards.normalise_uid(UID)
    text = result.out.lower()
    for form in (
        uid.hex(),
        UID.lower(),
        "-".join(f"{b:02x}" for b in uid),
        str(int(uid.hex(), 16)),
    ):
        assert form not in text
    instance = open_instance(home)
    try:
        assert cards.uid_hash(instance.card_key, uid) not in text
    finally:
        instance.close()
    output = tmp_path / "sar.json"
    assert locker("export", "pupil", "3002", "-o", output).code == 0
    assert json.loads(output.read_text())["pupil"] == data["pupil"]
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert "9999" in assert_user_error(locker("export", "pupil", "9999"))


def test_export_into_an_existing_file_is_private(with_roster: Run, tmp_path: Path) -> None:
    """The export holds a child's data: the file is 0600 even when it existed before."""
    output = tmp_path / "sar.json"
    output.write_text("old")
    output.chmod(0o644)
    result = with_roster("export", "pupil", "3001", "-o", output)
    assert result.code == 0 and "0600" in result.out
    assert json.loads(output.read_text())["pupil"]["admission_number"] == "3001"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------ backup


def check_backup(copy: Path, instance_home: Path) -> int:
    """The copy opens, passes integrity_check, holds the same pupils, and its audit chain
    verifies with the instance's key; returns its number of audit events."""
    connection = sqlite3.connect(copy)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    assert pupils_of(copy) == pupils_of(instance_home / "locker.db")
    instance = open_instance(instance_home)
    database = Database(f"sqlite:///{copy}")
    try:
        with database.reader() as session:
            return instance.audit.verify(session).events
    finally:
        database.dispose()
        instance.close()


def test_backup(with_roster: Run, home: Path, tmp_path: Path) -> None:
    locker = with_roster
    dest = tmp_path / "backup.db"
    result = locker("backup", dest)
    assert result.code == 0, result.err
    assert check_backup(dest, home) > 0
    assert pupils_of(dest)
    # A directory gets a dated file; an existing file is never overwritten.
    folder = tmp_path / "usb"
    folder.mkdir()
    assert locker("backup", folder).code == 0
    assert len(list(folder.glob("locker-*.db"))) == 1
    assert "already exists" in assert_user_error(locker("backup", dest))
    assert_user_error(locker("backup", tmp_path / "not-mounted" / "b.db"))


def test_backup_with_secret(with_roster: Run, home: Path, tmp_path: Path) -> None:
    result = with_roster("backup", tmp_path / "b.db", "--include-secret")
    assert result.code == 0, result.err
    secret = tmp_path / "b.secret.key"
    assert secret.read_bytes() == (home / "secret.key").read_bytes()
    for name in ("b.db", "b.secret.key", "b.config.toml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_backup_while_the_ledger_writes(with_roster: Run, home: Path, tmp_path: Path) -> None:
    """A backup taken while another thread keeps writing custody events is consistent."""
    stop, started = threading.Event(), threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        instance = open_instance(home)
        clock = ManualClock(SCHOOL_MORNING)
        try:
            while not stop.is_set():
                with instance.database.transaction() as session:
                    pupil = session.execute(
                        select(Pupil).where(Pupil.admission_number == "3001")
                    ).scalar_one()
                    record = deposit(instance.ledger, session, clock, pupil, confirm=False)
                    instance.ledger.cancel_deposit(
                        session, Actor.for_kiosk("main"), clock, record, reason="test"
                    )
                clock.advance(seconds=1)
                written.append(record.id)
                if len(written) >= 5:
                    started.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            started.set()
        finally:
            instance.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    copies: list[Path] = []
    try:
        assert started.wait(30)
        first = len(written)
        # Back up until the writer has committed more while the backups ran.
        while len(copies) < 3 or (len(written) < first + 5 and len(copies) < 50):
            dest = tmp_path / f"live-{len(copies)}.db"
            result = with_roster("backup", dest)
            assert result.code == 0, result.err
            copies.append(dest)
        during = len(written)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert during >= first + 5, "the writer did not run during the backups"
    events = [check_backup(copy, home) for copy in copies]
    assert events == sorted(events) and events[0] < events[-1]
    with sqlite3.connect(home / "locker.db") as connection:
        total = connection.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    assert events[-1] <= total


def test_backup_of_an_instance_whose_path_has_a_hash(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "cabinet #2" / "instance"
    assert run("--home", home, "init").code == 0
    roster_file = write_roster(tmp_path / "r.csv", ROSTER_ROWS)
    assert run("--home", home, "roster", "import", roster_file).code == 0
    dest = tmp_path / "backup.db"
    result = run("--home", home, "backup", dest)
    assert result.code == 0, result.err
    assert len(pupils_of(dest)) == len(ROSTER_ROWS)
    assert check_backup(dest, home) > 0


# ------------------------------------------------------------------------------ cabinet


def _compartment_row(home: Path, number: int) -> tuple[int, str | None, int]:
    connection = sqlite3.connect(home / "locker.db")
    try:
        return connection.execute(
            "SELECT out_of_service, out_of_service_reason, failed_unlocks FROM compartments "
            "WHERE number = ?",
            (number,),
        ).fetchone()
    finally:
        connection.close()


def test_compartment_back_in_service(locker: Run, home: Path) -> None:
    connection = sqlite3.connect(home / "locker.db")
    with connection:
        connection.execute(
            "UPDATE compartments SET out_of_service = 1, failed_unlocks = 3, "
            "out_of_service_reason = 'the door did not open after 3 unlocks' WHERE number = 4"
        )
    connection.close()
    result = locker("compartment", "in-service", "4")
    assert result.code == 0, result
    assert "back in service (was: the door did not open after 3 unlocks)" in result.out
    assert _compartment_row(home, 4) == (0, None, 0)
    assert locker("audit", "verify").code == 0
    with open_instance(home).database.reader() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.kind == "compartment.in_service")
        ).scalar_one()
        assert json.loads(event.details) == {
            "compartment": 4,
            "was": "the door did not open after 3 unlocks",
        }
    again = locker("compartment", "in-service", "4")
    assert again.code == 0 and "already in service" in again.out


def test_compartment_in_service_mistakes(locker: Run, home: Path) -> None:
    assert "no compartment 99" in assert_user_error(locker("compartment", "in-service", "99"))
    assert "no kiosk 'hall'" in assert_user_error(
        locker("compartment", "in-service", "1", "--kiosk", "hall")
    )
    connection = sqlite3.connect(home / "locker.db")
    with connection:
        connection.execute(
            "UPDATE compartments SET out_of_service = 1, "
            "out_of_service_reason = 'not in the configuration' WHERE number = 2"
        )
    connection.close()
    message = assert_user_error(locker("compartment", "in-service", "2"))
    assert "[kiosk] compartments" in message
    assert _compartment_row(home, 2)[0] == 1


def test_safe_state_and_selftest_on_the_simulator(locker: Run) -> None:
    safe = locker("safe-state", "--sim")
    assert safe.code == 0, safe
    test = locker("selftest", "--sim", "--card-wait", "0", "--compartment", "1")
    assert test.code == 0, test  # the simulated pupil pulls each unlocked door open
    assert "compartment 1: ok" in test.out and test.out.rstrip().endswith("selftest passed")


# ------------------------------------------------------------------------------ console script


def console(*args: object, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOCKER_")}
    return subprocess.run(
        [str(LOCKER), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_console_script(tmp_path: Path) -> None:
    """The installed `locker` script, with a real stdin (each run costs ~0.8 s of imports)."""
    home = tmp_path / "instance"
    assert LOCKER.exists()
    assert console("--home", home, "init").returncode == 0
    roster_file = write_roster(tmp_path / "r.csv", ROSTER_ROWS)
    imported = console("--home", home, "roster", "import", roster_file)
    assert imported.returncode == 0 and "4 added" in imported.stdout
    added = console(
        "--home", home, "user", "add", "kate", "--role", "admin", "--password-stdin", stdin=STRONG
    )
    assert added.returncode == 0, added.stderr
    verified = console("--home", home, "audit", "verify")
    assert verified.returncode == 0 and "audit chain ok" in verified.stdout
    with sqlite3.connect(home / "locker.db") as connection:
        assert connection.execute("SELECT count(*) FROM pupils").fetchone() == (4,)
        assert connection.execute("SELECT username FROM users").fetchall() == [("kate",)]


def test_console_script_mistake(tmp_path: Path) -> None:
    result = console("--home", tmp_path / "missing", "audit", "verify")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""


# ------------------------------------------------------------------------------ review fixes


def test_a_fresh_instance_passes_its_own_config_check(run: Run, home: Path) -> None:
    assert run("--home", home, "init").code == 0
    assert "# compartments = 24" in (home / "config.toml").read_text()
    result = run("--home", home, "config", "check")
    assert result.code == 0, result.err
    assert result.out.startswith(f"{home / 'config.toml'}: ok (24 compartments, gpio hardware")
    assert "default layout" in result.out


def test_the_config_example_is_a_config_that_checks_out(run: Run, tmp_path: Path) -> None:
    example = run("config", "example")
    assert example.code == 0
    home = tmp_path / "from-example"
    home.mkdir()
    (home / "config.toml").write_text(example.out, encoding="utf-8")
    assert run("--home", home, "init").code == 0
    result = run("--home", home, "config", "check")
    assert result.code == 0, result.err
    assert "ok (24 compartments" in result.out


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("LOCKER_POLICY_RETENTION_DAYZ", "45", "did you mean LOCKER_POLICY_RETENTION_DAYS?"),
        ("LOCKER_HARDWARE_BACKND", "sim", "did you mean LOCKER_HARDWARE_BACKEND?"),
        ("LOCKER_HARDWARE_COMPARTMENTS", "abc", "'abc' is not a whole number"),
        ("LOCKER_POLICY_RETENTION_DAYS", "five", "expected an integer"),
    ],
)
def test_environment_mistakes_name_the_variable(
    locker: Run, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = locker("config", "check")
    assert result.code == 78
    line = assert_user_error(result)
    assert line.startswith(f"error: environment {variable}") and named in line
    assert "config.toml" not in line


def test_the_deployments_own_variables_are_not_mistakes(
    locker: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "LOCKER_BACKUP_DIR": "/var/backups/locker",
        "LOCKER_BACKUP_KEEP": "14",
        "LOCKER_BACKUP_REQUIRE_MOUNT": "no",
        "LOCKER_BIN": "/opt/locker/venv/bin/locker",
        "LOCKER_HARDWARE_BACKEND": "sim",
    }.items():
        monkeypatch.setenv(name, value)
    result = locker("config", "check")
    assert result.code == 0, result.err
    assert "sim hardware" in result.out


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("qwertyuiopas", "a run of keys along the keyboard"),
        ("abcdefghijkl", "a run of the alphabet"),
        ("password password", "the same word or characters repeated"),
        ("OurSchool-2026", "the school's name"),  # [site] name is "Our School"
    ],
)
def test_user_add_refuses_guessable_passwords(
    locker: Run, home: Path, password: str, says: str
) -> None:
    result = locker("user", "add", "kate", "--role", "admin", "--password-stdin", stdin=password)
    line = assert_user_error(result)
    assert "too easy to guess" in line and says in line
    assert "three or four random words" in line  # what to do
    assert password not in line
    assert result.code == 1
    with sqlite3.connect(home / "locker.db") as connection:
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (0,)


@pytest.mark.parametrize("command", [["export", "pupil", "3001"], ["report", "daily"]])
def test_an_output_file_in_a_missing_directory(
    with_roster: Run, tmp_path: Path, command: list[str]
) -> None:
    target = tmp_path / "nonexistent" / "out.file"
    result = with_roster(*command, "-o", target)
    line = assert_user_error(result)
    assert result.code == 74
    assert "unexpected" not in line
    assert f"the directory {tmp_path / 'nonexistent'} does not exist" in line
    # Under a regular file, not a directory.
    (tmp_path / "plain").write_text("x")
    result = with_roster(*command, "-o", tmp_path / "plain" / "out.file")
    line = assert_user_error(result)
    assert result.code == 74 and f"{tmp_path / 'plain'} is a file, not a directory" in line


def test_an_output_file_that_may_not_be_written(
    locker: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied (the tests may run as root, where nothing is denied: the refusal
    is simulated where the CLI writes)."""
    target = tmp_path / "register.csv"

    def denied(self: Path, *_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", denied)
    result = locker("report", "daily", "-o", target)
    line = assert_user_error(result)
    assert result.code == 74 and f"cannot use {target}: permission denied" in line


def test_os_errors_become_one_line_saying_what_to_do(tmp_path: Path) -> None:
    assert describe_os_error(IsADirectoryError(21, "Is a directory", str(tmp_path))) == (
        f"{tmp_path} is a directory: give a file name"
    )
    missing = tmp_path / "gone.csv"
    assert describe_os_error(FileNotFoundError(2, "No such file", str(missing))) == (
        f"{missing} does not exist"
    )
    assert "No space left" in describe_os_error(OSError(28, "No space left on device"))


def test_home_that_is_a_regular_file(run: Run, tmp_path: Path) -> None:
    plain = tmp_path / "afile"
    plain.write_text("not a directory")
    for args in (["init"], ["audit", "verify"]):
        result = run("--home", plain, *args)
        line = assert_user_error(result)
        assert result.code == 78 and f"{plain} is a file, not an instance directory" in line
    line = assert_user_error(run("--home", plain / "instance", "init"))
    assert f"{plain} is a file, not a directory" in line
    assert plain.read_text() == "not a directory"


def test_config_toml_that_is_not_utf8(locker: Run, home: Path) -> None:
    (home / "config.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    for args in (["config", "check"], ["audit", "verify"]):
        result = locker(*args)
        line = assert_user_error(result)
        assert result.code == 78
        assert line.startswith(f"error: {home / 'config.toml'}: not UTF-8 text")


@pytest.mark.parametrize("command", [["audit", "verify"], ["init"], ["backup", "x.db"]])
def test_a_database_that_is_not_one(
    locker: Run, home: Path, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for suffix in ("-wal", "-shm"):
        (home / f"locker.db{suffix}").unlink(missing_ok=True)
    damaged = b"this is not a database" * 200
    (home / "locker.db").write_bytes(damaged)
    result = locker(*command)
    line = assert_user_error(result)
    assert result.code == 65
    assert f"the database {home / 'locker.db'} is damaged" in line
    assert "restore it from the latest backup" in line
    assert (home / "locker.db").read_bytes() == damaged
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", [["audit", "verify"], ["init"], ["config", "check"]])
def test_a_database_from_a_newer_version(locker: Run, home: Path, command: list[str]) -> None:
    with sqlite3.connect(home / "locker.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0999_from_the_future'")
    connection.close()
    before = dump(home / "locker.db")
    result = locker(*command)
    line = assert_user_error(result)
    assert result.code == 78
    assert "was written by a newer version of the phone locker software" in line
    assert "0999_from_the_future" in line and "upgrade the software" in line
    assert "run `locker init`" not in line
    assert dump(home / "locker.db") == before


def test_the_database_is_private_from_the_start(run: Run, home: Path, tmp_path: Path) -> None:
    result = run("--home", home, "init")
    assert result.code == 0
    assert f"created database file {home / 'locker.db'} (mode 0600)" in result.out
    assert run("--home", home, "roster", "import", write_roster(tmp_path / "r.csv", ROSTER_ROWS))
    instance = open_instance(home)  # WAL mode: -wal and -shm exist while it is open
    try:
        with instance.database.transaction() as session:
            session.execute(select(func.count()).select_from(Pupil))
        files = sorted(home.glob("locker.db*"))
        assert {path.name for path in files} >= {"locker.db"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        instance.close()
    # An instance made before this was fixed gets other users' access taken away by `init`;
    # the group keeps its own (on a Pi the web app's user reads and writes through it).
    (home / "locker.db").chmod(0o664)
    again = run("--home", home, "init")
    assert again.code == 0 and "made the database private" in again.out
    assert stat.S_IMODE((home / "locker.db").stat().st_mode) == 0o660
    (home / "locker.db").chmod(0o660)
    assert "made the database private" not in run("--home", home, "init").out


@pytest.mark.parametrize("dest", ["{tmp}/missing/", "{tmp}/missing/deeper/", "{tmp}/missing/b.db"])
def test_backup_into_a_directory_that_does_not_exist(
    with_roster: Run, tmp_path: Path, dest: str
) -> None:
    result = with_roster("backup", dest.format(tmp=tmp_path))
    line = assert_user_error(result)
    assert f"the directory {tmp_path / 'missing'}" in line and "does not exist" in line
    assert not (tmp_path / "missing").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["instance", "r.csv"]


def test_backup_to_an_empty_destination(
    with_roster: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = assert_user_error(with_roster("backup", ""))
    assert "the backup destination is empty" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["instance", "r.csv"]


def test_backup_into_a_directory_with_a_slash_is_private(
    with_roster: Run, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "usb"
    folder.mkdir()
    result = with_roster("backup", f"{folder}/")
    assert result.code == 0, result.err
    (copy,) = folder.glob("locker-*.db")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert check_backup(copy, home) > 0


def test_roster_import_lists_leavers_whose_device_is_in_custody(
    with_roster: Run, home: Path, tmp_path: Path
) -> None:
    instance = open_instance(home)
    clock = ManualClock(SCHOOL_MORNING)
    try:
        with instance.database.transaction() as session:
            by_number = {p.admission_number: p for p in session.execute(select(Pupil)).scalars()}
            in_locker = deposit(instance.ledger, session, clock, by_number["3001"]).id
            staff = staff_actor(session, clock, Role.STAFF)
            held = instance.ledger.confiscate(
                session, staff, clock, pupil=by_number["3002"], reason="in a lesson"
            )
            dsl = staff_actor(session, clock, Role.DSL)
            held = instance.ledger.hold(session, dsl, clock, held, reason="referral").id
    finally:
        instance.close()
    # 3001 and 3002 have left; 3003 and 3004 are still on roll.
    result = with_roster("roster", "import", write_roster(tmp_path / "r2.csv", ROSTER_ROWS[2:]))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("imported: 2 pupils in the file") and "2 marked as left" in lines[0]
    warning = lines.index(next(line for line in lines if line.startswith("warning: ")))
    assert "2 pupils marked as left still have a device in the school's care" in lines[warning]
    assert lines[warning + 1].startswith("  3001 Zoë O'Brien (7A): ")
    assert f"custody record {in_locker} is {CustodyState.IN_LOCKER.value}" in lines[warning + 1]
    assert lines[warning + 2].startswith("  3002 Siobhán Ní Bhriain, Jr (7B): ")
    assert f"custody record {held} is SAFEGUARDING_HOLD" in lines[warning + 2]
    assert [row[0] for row in pupils_of(home / "locker.db") if row[4] == "left"] == [
        "3001",
        "3002",
    ]


def test_the_cli_logs_under_its_module_name() -> None:
    from kiosk import cli

    assert cli.log.name == cli.__name__ == "kiosk.cli"


def test_init_refuses_a_shared_database_written_with_another_secret(
    run: Run, home: Path, tmp_path: Path
) -> None:
    """A second cabinet pointed at the school's database with a secret.key of its own: its
    events would break the chain for everyone and its cards would never match."""
    assert run("--home", home, "init").code == 0
    second = tmp_path / "second"
    second.mkdir()
    (second / "config.toml").write_text(
        f'[database]\nurl = "sqlite:///{home / "locker.db"}"\n[kiosk]\nname = "room7"\n',
        encoding="utf-8",
    )
    before = dump(home / "locker.db")
    result = run("--home", second, "init")
    line = assert_user_error(result)
    assert result.code == 78 and "secret.key" in line and "copy it" in line
    assert dump(home / "locker.db") == before
    # With the first machine's secret it joins.
    (second / "secret.key").write_bytes((home / "secret.key").read_bytes())
    assert run("--home", second, "init").code == 0
    assert run("--home", home, "audit", "verify").code == 0


def test_init_seals_a_database_upgraded_from_before_seals(run: Run, home: Path) -> None:
    from alembic import command

    from kiosk import migrate

    assert run("--home", home, "init").code == 0
    instance = open_instance(home)
    config = migrate.alembic_config()
    with instance.database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    instance.close()
    result = run("--home", home, "init")
    assert result.code == 0 and "-> 0004" in result.out
    verified = run("--home", home, "audit", "verify")
    assert verified.code == 0, verified.err
    instance = open_instance(home)
    with instance.database.reader() as session:
        kinds = session.execute(select(AuditEvent.kind).order_by(AuditEvent.seq)).scalars().all()
    instance.close()
    assert kinds[0] == "database.created" and kinds[-1] == "database.upgraded"


def test_config_check_can_require_the_cabinet_to_be_described(run: Run, home: Path) -> None:
    """A fresh instance passes its check on the default layout; the installer asks more
    before it starts the kiosk: that the cabinet was described on purpose."""
    assert run("--home", home, "init").code == 0
    assert "the default layout" in run("--home", home, "config", "check").out
    refused = run("--home", home, "config", "check", "--require-cabinet")
    line = assert_user_error(refused)
    assert refused.code == 78 and "set [hardware] compartments" in line
    config = home / "config.toml"
    text = config.read_text("utf-8")
    hardware = text.index("[hardware]")  # its commented default, written out on purpose
    text = text[:hardware] + text[hardware:].replace("# compartments = 24", "compartments = 24", 1)
    config.write_text(text, "utf-8")
    assert run("--home", home, "config", "check", "--require-cabinet").code == 0


def test_a_bad_hardware_value_from_the_environment_is_blamed_on_the_variable(
    run: Run, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("--home", home, "init").code == 0
    monkeypatch.setenv("LOCKER_HARDWARE_BUZZER_PIN", "9")  # SPI0 MISO: the reader's
    result = run("--home", home, "config", "check")
    line = assert_user_error(result)
    assert result.code == 78 and "LOCKER_HARDWARE_BUZZER_PIN" in line and "reserved" in line
