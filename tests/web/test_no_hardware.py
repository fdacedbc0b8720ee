"""The web process never imports the hardware layer (nor GPIO/SPI libraries)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("hardware", "gpiozero", "spidev", "RPi", "smbus2", "mfrc522", "fake_rpi", "lgpio")

SCRIPT = """
import json, sys
from kiosk.instance import Instance
import web
instance = Instance.open(sys.argv[1], env={})
app = web.create_app(instance, simulated=True)
client = app.test_client()
statuses = [client.get(path).status_code for path in ("/login", "/healthz", "/kiosk/main")]
forbidden = sys.argv[2].split(",")
loaded = sorted(name for name in sys.modules if name.split(".")[0] in forbidden)
print(json.dumps({"loaded": loaded, "statuses": statuses}))
"""


def test_web_imports_no_hardware(template_home: Path, tmp_path: Path) -> None:
    from .conftest import copy_instance

    copy_instance(template_home, tmp_path / "instance").close()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "instance"), ",".join(FORBIDDEN)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 200]
    assert report["loaded"] == []
