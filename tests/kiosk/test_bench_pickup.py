"""The command pick-up benchmark runs, briefly, on both databases, and every command it
queues is carried out (its figures are measured by running it in full: see the README)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULT = re.compile(
    r"RESULT database=(sqlite|postgresql) commands=(\d+) p50_ms=([\d.]+) p95_ms=([\d.]+) "
    r"max_ms=([\d.]+)"
)


def run_bench(*args: str) -> tuple[str, re.Match[str]]:
    result = subprocess.run(
        [sys.executable, "bench/command_pickup.py", "--commands", "8", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = RESULT.fullmatch(last)
    assert match, last
    return result.stdout, match


def test_on_a_sqlite_file(tmp_path: pathlib.Path) -> None:
    output, match = run_bench("--database-url", f"sqlite:///{tmp_path / 'school.db'}")
    assert match[1] == "sqlite" and int(match[2]) == 8
    assert float(match[3]) <= float(match[4]) <= float(match[5])
    assert "finished 8, unfinished 0" in output


def test_on_postgresql(postgres_server) -> None:
    output, match = run_bench("--database-url", postgres_server.url("postgres"))
    assert match[1] == "postgresql" and int(match[2]) == 8
    assert "LISTEN/NOTIFY" in output and "unfinished 0" in output
