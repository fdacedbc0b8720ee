"""``locker kiosk``: open the cabinet named by the configuration and run the controller.

This module (with :mod:`kiosk.controller`) is the only part of the application that opens
hardware. It never imports Flask: the web app runs in its own process.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hardware.cabinet import Cabinet, open_cabinet
from hardware.errors import HardwareError
from hardware.spec import CabinetSpec
from kiosk.cabinet_clock import LiveClock
from kiosk.config import Config
from kiosk.controller import Controller, unreachable
from kiosk.demo import DEMO_POLICY, prepare_demo, run_demo  # locker demo (kiosk.cli imports here)
from kiosk.errors import ConfigError, LockerError
from kiosk.instance import Instance
from kiosk.migrate import ensure_current
from kiosk.offline import mirror_path
from kiosk.systemd import Notifier

log = logging.getLogger(__name__)


def cabinet_spec(config: Config, *, simulate: bool = False) -> CabinetSpec:
    """The cabinet described by ``[hardware]`` (``simulate`` forces the simulator).

    A simulated cabinet needs no pin map: ``[kiosk] compartments`` compartments are laid out
    on simulated pins and expanders. ConfigError names the bad key.
    """
    raw: dict[str, Any] = dict(config.hardware)
    if simulate:
        raw["backend"] = "sim"
    backend = str(raw.get("backend", "gpio")).strip().lower()
    count = config.kiosk.compartments
    if backend == "sim" and "compartments" not in raw:
        raw["compartments"] = count
    try:
        spec = CabinetSpec.from_mapping(raw)
    except HardwareError as exc:  # named where it was set: the file or an environment variable
        raise ConfigError(f"{config.hardware_source(getattr(exc, 'key', None))}: {exc}") from None
    if len(spec.compartments) != count or set(spec.compartments) != set(range(1, count + 1)):
        raise ConfigError(
            f"[hardware] compartments describes {len(spec.compartments)} compartments but "
            f"[kiosk] compartments is {count}: they must match (numbered 1..{count})"
        )
    return spec


def check_schema(instance: Instance) -> None:
    """InstanceError unless the database's schema is current. A kiosk on a shared database
    that cannot be reached starts anyway when it has an offline copy (it works from that,
    and its controller checks the schema again when the database answers)."""
    try:
        ensure_current(instance.database)
    except SQLAlchemyError as exc:
        copy = mirror_path(instance.home, instance.config.kiosk.name)
        if instance.database.dialect != "postgresql" or not unreachable(exc) or not copy.exists():
            raise
        log.warning("the database is out of reach (%s): the schema is checked later", exc)


def run_kiosk(instance: Instance, *, simulate: bool = False, auto_open: bool = True) -> None:
    """Run the kiosk until SIGTERM or SIGINT; every lock is left de-energised on the way out."""
    check_schema(instance)
    spec = cabinet_spec(instance.config, simulate=simulate)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    clock = LiveClock()
    cabinet: Cabinet | None = None
    try:
        cabinet = open_cabinet(spec, clock=clock, auto_open=auto_open and spec.backend == "sim")
        controller = Controller(instance, cabinet, clock, notifier=Notifier())
        controller.start()
        controller.run(stop)
    except HardwareError as exc:
        raise LockerError(f"the cabinet could not be opened: {exc}") from None
    finally:
        if cabinet is not None:
            cabinet.close()
        clock.close()


__all__ = [
    "DEMO_POLICY",
    "cabinet_spec",
    "check_schema",
    "prepare_demo",
    "run_demo",
    "run_kiosk",
]
