"""Shared test settings, and the databases every ledger test runs on.

A test that asks for the ``backend`` fixture (directly, or through ``instance`` and the
like) runs twice: on a SQLite file and on PostgreSQL. PostgreSQL is a throw-away server
started once per session from Debian's ``postgresql`` package (``initdb`` + ``pg_ctl`` in
a temporary directory; as the ``postgres`` user when the tests run as root). Each test gets
a fresh database cloned from a migrated template. Without PostgreSQL installed those runs
fail when ``CI=true`` and are skipped elsewhere with the command that installs it. Tests
that inspect the SQLite file itself are marked ``sqlite_only``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    max_examples=100,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

BACKENDS = ("sqlite", "postgresql")
INSTALL_POSTGRES = "apt-get install postgresql"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: the test inspects the SQLite file itself (runs on SQLite only)"
    )
    config.addinivalue_line("markers", f"{ON_POSTGRES}: runs on the PostgreSQL server (set here)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize(
            "backend", ["sqlite"] if sqlite_only else list(BACKENDS), indirect=True
        )


ON_POSTGRES = "on_postgres"  # the keyword of a test that runs on the PostgreSQL server
_POSTGRES_OUTCOMES: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgresql"
        if on_postgres or "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(ON_POSTGRES)  # travels with its reports (pytest-xdist workers too)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if ON_POSTGRES in report.keywords and (report.when == "call" or report.outcome != "passed"):
        _POSTGRES_OUTCOMES[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line that says how much of the suite ran on a real PostgreSQL server (CI's
    output shows the PostgreSQL half ran, not only that nothing failed)."""
    if not _POSTGRES_OUTCOMES:
        return
    counts = dict.fromkeys(("passed", "failed", "skipped"), 0)
    for outcome in _POSTGRES_OUTCOMES.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    bindir = _postgres_bin()
    terminalreporter.write_line(
        f"PostgreSQL ({bindir or 'not installed'}): {counts['passed']} tests passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped"
    )


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, trust authentication."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="locker-pg-"))
        self.data = self.root / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count()
        self.template = "locker_template"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True)

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(sql)

    def prepare_template(self) -> None:
        """A database migrated to the head revision, cloned for every test."""
        from kiosk import migrate
        from kiosk.db import Database

        self.admin(f"CREATE DATABASE {self.template}")
        database = Database(self.url(self.template))
        migrate.upgrade(database)
        database.dispose()

    def new_database(self, template: str | None = None) -> str:
        """A fresh database cloned from ``template`` (default: the migrated template)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        for attempt in range(50):
            try:
                self.admin(f"CREATE DATABASE {name} TEMPLATE {template or self.template}")
                return self.url(name)
            except Exception as exc:  # the template is busy for a moment after use
                if "being accessed by other users" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")


def missing_part(message: str) -> NoReturn:
    """A system part a test needs is missing (``message`` says how to install it): the test
    fails in CI (``CI=true``), and is skipped with that message elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bin()
    if bindir is None:
        missing_part(f"PostgreSQL is not installed: {INSTALL_POSTGRES}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install -e '.[test]'")
    server = PostgresServer(bindir)
    server.start()
    try:
        server.prepare_template()
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql`` (every test using it runs on both)."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The database of this test: None for the instance's SQLite file, else a fresh
    PostgreSQL database migrated to the head revision."""
    if backend == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()
