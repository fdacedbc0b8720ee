"""The many-kiosks benchmark runs, briefly, on both databases and finds every invariant
kept (its figures are measured by running it in full: see the README)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULT = re.compile(
    r"RESULT kiosks=(\d+) flows=(\d+) flows_per_s=([\d.]+) double_allocations=(\d+) lost=(\d+)"
)


def run_bench(*args: str) -> tuple[str, list[int | float]]:
    result = subprocess.run(
        [sys.executable, "bench/concurrent_kiosks.py", "--kiosks", "2", "--seconds", "3", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = RESULT.fullmatch(last)
    assert match, last
    return result.stdout, [float(value) for value in match.groups()]


def test_on_a_sqlite_file(tmp_path: pathlib.Path) -> None:
    output, (kiosks, flows, per_s, doubled, lost) = run_bench(
        "--database-url", f"sqlite:///{tmp_path / 'school.db'}"
    )
    assert kiosks == 2 and flows > 0 and per_s > 0
    assert doubled == 0 and lost == 0
    assert "database: sqlite" in output and "chain verified" in output


@pytest.mark.usefixtures("postgres_server")
def test_on_postgresql(postgres_server) -> None:
    output, (kiosks, flows, _, doubled, lost) = run_bench(
        "--database-url", postgres_server.url("postgres")
    )
    assert kiosks == 2 and flows > 0 and doubled == 0 and lost == 0
    assert "database: postgresql" in output


def test_a_database_in_use_is_refused(tmp_path: pathlib.Path) -> None:
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "bench/concurrent_kiosks.py", "--database-url", f"sqlite:///{taken}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "give the name of a new SQLite file" in result.stderr
