"""The kiosk-screen benchmark runs, briefly, in Debian's chromium, and every tap gets its
answer on the screen (its figures are measured by running it in full: see the README)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from ..conftest import missing_part
from .conftest import CHROMIUM

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_tap_reaches_the_screen() -> None:
    if not pathlib.Path(CHROMIUM).exists():
        missing_part(f"{CHROMIUM} is missing: apt-get install chromium")
    result = subprocess.run(
        [sys.executable, "bench/kiosk_screen.py", "--rounds", "1", "--pupils", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"RESULT taps=(\d+) p50_ms=(\d+) p95_ms=(\d+) max_ms=(\d+)", last)
    assert match, last
    taps, p50, p95, most = map(int, match.groups())
    assert taps == 6  # three deposits, three collections
    assert 0 < p50 <= p95 <= most
    assert "answered 6 (ok 6), unanswered 0" in result.stdout
