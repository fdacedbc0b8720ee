"""The tap latency benchmark runs, briefly, and prints its figures; the kiosk it measures
(a real controller on simulated hardware, in the benchmark's own process) never imports
Flask. Its figures are measured by running it in full: see the README."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULT = re.compile(r"RESULT p50_ms=([\d.]+) p99_ms=([\d.]+) flows_per_s=(\d+) rss_mb=([\d.]+)")


def test_one_round() -> None:
    result = subprocess.run(
        [sys.executable, "bench/tap_latency.py", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    match = RESULT.fullmatch(lines[-1])
    assert match, lines[-1]
    p50, p99, flows, rss = (float(value) for value in match.groups())
    assert 0 < p50 <= p99 and flows > 0 and rss > 0
    assert "Flask imported: no" in result.stdout
    taps = re.search(r"taps measured:\s+(\d+)", result.stdout)
    assert taps and int(taps[1]) > 0
