"""The reader benchmark runs and meets its goals."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_reader_benchmark_meets_its_goals() -> None:
    result = subprocess.run(
        [sys.executable, "bench/reader_poll.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"RESULT library_idle_spi=(\d+) ours_idle_spi=(\d+) ours_read_spi=(\d+) held_taps=(\d+)",
        last,
    )
    assert match, last
    library_idle, ours_idle, ours_read, held = map(int, match.groups())
    assert library_idle > 1000
    assert ours_idle <= 25
    assert 0 < ours_read < 100
    assert held == 1
