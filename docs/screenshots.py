"""Take the README's screenshots from a real ``locker demo`` (Debian's chromium, Playwright).

Run from the repository root: ``.venv/bin/python docs/screenshots.py``. It starts the demo in
a temporary instance, drives a few flows through the simulator endpoints (deposits, one
confiscation at the kiosk, a door left open), and writes PNGs into ``docs/screenshots/``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from kiosk.cards import format_uid
from kiosk.demo import demo_uid

OUT = Path(__file__).parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def screen(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/kiosk/main/screen.json", timeout=5) as response:
        return json.load(response)["screen"]


def tap(url: str, holder: str) -> dict:
    post(f"{url}/sim/tap", {"uid": format_uid(demo_uid(holder))})
    time.sleep(0.6)
    return screen(url)


def door(url: str, number: int, open_: bool) -> None:
    post(f"{url}/sim/doors/{number}", {"open": open_})
    time.sleep(0.4)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        demo = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("locker")),
                "--home",
                home,
                "demo",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            passwords: dict[str, str] = {}
            assert demo.stdout is not None
            for line in demo.stdout:
                match = re.match(r"^\s+(\w+)\s+(staff|office|dsl|admin)\s+(\S+)$", line)
                if match:
                    passwords[match[1]] = match[3]
                if line.startswith("stop with"):
                    break
            time.sleep(1.5)
            for number in range(1, 12):  # pupils deposit
                shown = tap(url, f"2020{number:04d}")
                if shown.get("compartment"):
                    door(url, shown["compartment"], False)
            tap(url, "staff:teacher")  # staff mode, then a confiscation
            shown = tap(url, "20200020")
            door(url, shown["compartment"], False)
            shown = tap(url, "20200015")  # a deposit in progress, for the kiosk screen
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{url}/login")
                page.fill("input[name=username]", "office")
                page.fill("input[name=password]", passwords["office"])
                with page.expect_navigation():
                    page.click("button[type=submit]")
                page.wait_for_timeout(800)
                page.screenshot(path=str(OUT / "dashboard.png"), full_page=False)
                page.goto(f"{url}/register")
                page.screenshot(path=str(OUT / "register.png"))
                for width, height in ((800, 480), (1024, 600)):
                    kiosk = browser.new_page(viewport={"width": width, "height": height})
                    kiosk.goto(f"{url}/kiosk/main")
                    kiosk.wait_for_timeout(600)
                    kiosk.screenshot(path=str(OUT / f"kiosk-{width}x{height}.png"))
                browser.close()
        finally:
            demo.terminate()
            demo.wait(timeout=10)
    print(f"screenshots written to {OUT}")


if __name__ == "__main__":
    main()
