"""END-TO-END THROUGH THE REAL KIOSK CONTROLLER: `locker demo` + the simulator panel.

This is the place for the browser flows that need the kiosk controller (issue 5, item 6):
deposit and collect through the simulator panel and watch the grid change, and the kiosk
screen following a tap. It runs ``locker --home TMP demo --port N`` as a subprocess (the
public surface) and drives it with chromium.

What it relies on:
- ``locker demo`` prints each staff account as ``  USERNAME  ROLE  PASSWORD`` (as
  ``locker init --demo`` does) and serves on 127.0.0.1:N with ``[web] secure_cookies`` on
  or off (chromium accepts Secure cookies on http://127.0.0.1 either way);
- the demo's policy windows are open all day, so a tap deposits and a second tap collects;
- on a deposit the controller publishes a screen whose ``compartment`` is the open locker,
  marks the record IN_LOCKER once that door was opened and shut, and COLLECTED when the
  door opens after the second tap.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.cards import format_uid
from kiosk.demo import demo_uid

ACCOUNT = re.compile(r"^\s+([a-z0-9._-]+)\s+(staff|office|dsl|admin)\s+(\S{12,})\s*$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``locker demo`` running on a free port; its URL and the printed passwords by role."""
    port = _free_port()
    locker = Path(sys.executable).with_name("locker")
    process = subprocess.Popen(
        [str(locker), "--home", str(tmp_path / "demo"), "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    passwords: dict[str, str] = {}
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        while time.monotonic() < deadline:
            for line in iter(process.stdout.readline, ""):
                lines.append(line)
                match = ACCOUNT.match(line)
                if match:
                    passwords[match.group(2)] = match.group(3)
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    if response.status in (200, 503) and passwords:
                        break
            except OSError:
                pass
            assert process.poll() is None, "locker demo exited:\n" + "".join(lines)
            time.sleep(0.2)
        else:
            pytest.fail("locker demo did not come up in 30 s:\n" + "".join(lines))
        yield url, passwords
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _sign_in(page: Any, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_deposit_and_collect_through_the_simulator_panel(
    browser: Any, demo: tuple[str, dict[str, str]]
) -> None:
    url, passwords = demo
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    office = context.new_page()
    _sign_in(office, url, "office", passwords["office"])
    assert office.locator("#sim-panel").count() == 1
    screen = context.new_page()
    screen.set_viewport_size({"width": 800, "height": 480})
    screen.goto(f"{url}/kiosk/main")

    # The second demo pupil (the first has a medical exemption): tap, the kiosk opens a locker.
    button = office.locator(f"#sim-panel button.tap[data-uid='{format_uid(demo_uid('20200001'))}']")
    detail = button.locator("small").inner_text()
    pupil = button.inner_text().replace(detail, "").strip()  # the name, without form and number
    first_name = pupil.split()[0]
    button.click()
    screen.wait_for_function("() => document.getElementById('compartment-number').textContent")
    assert first_name in screen.locator("#name").inner_text()
    number = int(screen.locator("#compartment-number").inner_text())

    cell = office.locator("ol.grid li.cell", has=office.locator(f"span.num:text-is('{number}')"))
    office.fill("#sim-door", str(number))
    office.click("#sim-door-form button[data-door=true]")
    office.click("#sim-door-form button[data-door=false]")
    office.wait_for_function(
        "(n) => [...document.querySelectorAll('ol.grid li.cell')].some(li =>"
        " li.querySelector('.num').textContent.trim().startsWith(String(n))"
        " && li.classList.contains('s-in_locker'))",
        arg=number,
    )
    assert pupil in cell.locator(".who").inner_text()

    # Tap again to collect: the door opens and the grid shows the compartment free.
    button.click()
    office.fill("#sim-door", str(number))
    office.click("#sim-door-form button[data-door=true]")
    office.click("#sim-door-form button[data-door=false]")
    office.wait_for_function(
        "(n) => [...document.querySelectorAll('ol.grid li.cell')].some(li =>"
        " li.querySelector('.num').textContent.trim().startsWith(String(n))"
        " && li.classList.contains('s-free'))",
        arg=number,
    )
    context.close()
