"""``locker selftest`` and ``locker safe-state``: the cabinet on the day it is built, and
every lock switched off after the kiosk stopped.

:func:`run_selftest` opens the cabinet described by ``[hardware]`` and checks one part at a
time, saying on ``out`` what to look at or do:

1. the RC522 reader answers on SPI (its VersionReg);
2. the status LED shows red, green and blue, and the buzzer beeps (the technician watches
   and listens: software cannot see a LED);
3. every door switch is read (all doors should be shut);
4. each lock in turn, one at a time, is energised for ``pulse_s`` seconds: the technician
   pulls that door open (a door with a kick-out spring opens by itself) and shuts it again;
   a door that did not open while its lock was energised is a failure (a jammed latch, no
   power to the solenoid, a loose wire, the wrong ``lock_active_high``, or a reed switch
   that does not see its magnet);
5. a card held on the reader is read and its UID printed (for ``locker card enrol``); on
   the simulator, a simulated person holds a test card (:data:`SIM_CARD`) on the reader
   after a moment, so ``locker selftest --sim`` passes from end to end.

It never opens a compartment that holds a device (an active custody record: a pupil's
phone, a confiscated device, a safeguarding hold): those are skipped and named. It refuses
to run while the kiosk service is running, because only one process may drive the cabinet.
The start and the result are written to the audit trail (never a card UID).

:func:`safe_state` opens the cabinet, de-energises every lock output and closes it again:
systemd runs it after every stop of the kiosk (``ExecStopPost``), so that a kiosk that
crashed or was killed by the watchdog cannot leave a solenoid energised.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from hardware.cabinet import Cabinet, open_cabinet
from hardware.errors import HardwareError
from hardware.gpio import PATTERNS
from hardware.interfaces import PulseEnd
from hardware.spec import CabinetSpec
from kiosk.actors import Actor
from kiosk.clock import SystemClock
from kiosk.daemon import cabinet_spec
from kiosk.errors import ValidationError
from kiosk.instance import Instance
from kiosk.models import ACTIVE_STATES, Compartment, CustodyRecord, Kiosk

log = logging.getLogger(__name__)

Out = Callable[[str], None]

#: The LED colours shown one after the other.
LED_COLOURS = ("red", "green", "blue")
#: Extra seconds allowed for a pulse to end after the time it was granted.
PULSE_GRACE_S = 2.0
#: The card the simulated person holds on the simulated reader when asked for one.
SIM_CARD = "04C0FFEE"
#: How long the simulated person takes to hold it there.
SIM_CARD_DELAY_S = 0.5


def run_selftest(
    instance: Instance,
    *,
    simulate: bool,
    out: Out,
    card_wait_s: float = 10.0,
    pulse_s: float | None = None,
    door_wait_s: float = 10.0,
    show_s: float = 0.8,
    compartments: Iterable[int] | None = None,
    on_open: Callable[[Cabinet], None] | None = None,
    sim_card: str | None = SIM_CARD,
) -> bool:
    """Check the cabinet of ``instance`` part by part; True when everything worked.

    ``simulate`` uses the simulator (a simulated person opens each door when it unlocks and
    shuts it shortly after). ``card_wait_s`` is how long to wait for a card (0: skip that
    step). ``pulse_s`` is how long each lock is energised (default ``[hardware] unlock_s``,
    at most ``max_unlock_s``); ``door_wait_s`` how long to wait for a door to be shut;
    ``show_s`` how long each LED colour is shown. ``compartments`` limits the lock test to
    those numbers (default: all). ``on_open`` is called with the opened cabinet before the
    checks (tests use it to reach ``cabinet.sim``). ``sim_card`` is the card the simulated
    person holds on the simulated reader when the card is asked for (None: nobody does).

    Raises ConfigError for a bad ``[hardware]`` table; every hardware failure is reported
    on ``out`` and makes the result False.
    """
    config = instance.config
    kiosk = config.kiosk
    spec = cabinet_spec(config, simulate=simulate)
    wanted = _chosen(spec, compartments)
    occupied, running = _cabinet_state(instance)
    if running and spec.backend != "sim":
        out(
            f"the kiosk service is running ({running}): it owns the cabinet. Stop it first "
            "(sudo systemctl stop locker-kiosk; if it stopped just now, try again in "
            f"{3 * kiosk.heartbeat_s:g} s), and start it again afterwards."
        )
        return False
    skipped = sorted(occupied & set(wanted))
    to_pulse = [number for number in wanted if number not in occupied]
    hardware = "simulated hardware" if spec.backend == "sim" else "the Pi's GPIO"
    out(
        f"selftest of kiosk {kiosk.name} ({kiosk.label}): {len(spec.compartments)} "
        f"compartments, {len(spec.expanders)} expander(s), {hardware}"
    )
    if skipped:
        out(
            f"not unlocking compartment(s) {_numbers(skipped)}: they hold a device "
            "(empty them through the dashboard first to test them)"
        )
    run = _Run(out, show_s)
    _audit(
        instance,
        "kiosk.selftest_started",
        {"compartments": to_pulse, "skipped": skipped, "simulated": spec.backend == "sim"},
    )
    cabinet: Cabinet | None = None
    try:
        try:
            cabinet = open_cabinet(
                spec,
                auto_open=spec.backend == "sim",
                auto_close_s=max(0.2, 4 * spec.debounce_s) if spec.backend == "sim" else None,
            )
        except HardwareError as exc:
            run.fail(f"the cabinet could not be opened: {exc}")
            return run.finish(None)
        if on_open is not None:
            on_open(cabinet)
        _check_reader(cabinet, run)
        _check_indicators(cabinet, run, show_s)
        _check_doors(cabinet, run)
        for number in to_pulse:
            _check_lock(cabinet, run, number, pulse_s, door_wait_s)
        if card_wait_s > 0:
            _check_card(cabinet, run, card_wait_s, sim_card if cabinet.sim is not None else None)
        else:
            out("card: skipped (--card-wait 0)")
        return run.finish(cabinet)
    finally:
        if cabinet is not None:
            cabinet.close()
        _audit(
            instance,
            "kiosk.selftest",
            {
                "passed": run.passed,
                "failures": run.failures,
                "compartments": to_pulse,
                "skipped": skipped,
                "simulated": spec.backend == "sim",
            },
        )


def safe_state(instance: Instance, *, simulate: bool = False, out: Out) -> bool:
    """Open the cabinet, switch every lock (and the LED and buzzer) off, close it again.

    For systemd's ``ExecStopPost`` of the kiosk: after a crash or a watchdog kill the
    outputs may still hold whatever the dead process left (the Pi's pins and the MCP23017
    latches keep their level). Returns False (and says why) when the cabinet cannot be
    opened, e.g. while another process still holds the pins.
    """
    spec = cabinet_spec(instance.config, simulate=simulate)
    try:
        cabinet = open_cabinet(spec)
    except HardwareError as exc:
        out(f"could not open the cabinet to switch the locks off: {exc}")
        return False
    try:
        cabinet.lock_all()
        still = cabinet.energised()
    finally:
        cabinet.close()
    if still:
        out(f"lock(s) {_numbers(still)} could not be switched off")
        return False
    out(f"every lock of kiosk {instance.config.kiosk.name} is de-energised")
    return True


# ------------------------------------------------------------------------------ steps


class _Run:
    """The failures found so far, and how to report them."""

    def __init__(self, out: Out, show_s: float) -> None:
        self.out = out
        self.show_s = show_s
        self.failures: list[str] = []
        self.finished = False

    @property
    def passed(self) -> bool:
        return self.finished and not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.out(f"FAIL {message}")

    def finish(self, cabinet: Cabinet | None) -> bool:
        self.finished = True
        if cabinet is not None:
            try:
                cabinet.indicators.status("error" if self.failures else "ok")
                cabinet.indicators.beep("refused" if self.failures else "ok")
                time.sleep(self.show_s)
            except HardwareError as exc:
                log.warning("could not show the result on the LED: %s", exc)
        if self.failures:
            self.out(f"selftest FAILED ({len(self.failures)} problem(s)):")
            for failure in self.failures:
                self.out(f"  - {failure}")
            return False
        self.out("selftest passed")
        return True


def _check_reader(cabinet: Cabinet, run: _Run) -> None:
    try:
        version = cabinet.reader.check()
    except HardwareError as exc:
        run.fail(f"reader: {exc}")
        return
    run.out(f"reader: ok, the RC522 answers on SPI (VersionReg {version:#04x})")


def _check_indicators(cabinet: Cabinet, run: _Run, show_s: float) -> None:
    indicators = cabinet.indicators
    try:
        for colour in LED_COLOURS:
            run.out(f"LED: {colour} (check that the status LED shows {colour})")
            indicators.status(colour)
            time.sleep(show_s)
        indicators.status("off")
        run.out("buzzer: one short beep, then two (check that you hear them)")
        for pattern in ("ok", "refused"):
            indicators.beep(pattern)
            time.sleep(max(show_s, _pattern_s(pattern) + 0.05))
    except HardwareError as exc:
        run.fail(f"LED or buzzer: {exc}")


def _check_doors(cabinet: Cabinet, run: _Run) -> None:
    open_now = [number for number, door in sorted(cabinet.doors.items()) if door.is_open]
    if not open_now:
        run.out(f"doors: all {len(cabinet.doors)} read shut")
    else:
        run.out(
            f"doors: {_numbers(open_now)} read open. Shut them; a door that reads open while "
            "it is shut has its magnet too far from the reed switch, or a broken wire"
        )


def _check_lock(
    cabinet: Cabinet, run: _Run, number: int, pulse_s: float | None, door_wait_s: float
) -> None:
    door = cabinet.doors[number]
    lock = cabinet.locks[number]
    if door.is_open:
        run.out(f"compartment {number}: the door reads open; shut it (waiting {door_wait_s:g} s)")
        if not _wait_for(lambda: not door.is_open, door_wait_s):
            run.fail(
                f"compartment {number}: the door switch reads open although the door should "
                "be shut (magnet too far from the reed switch, a broken wire, or the wrong "
                "door_open_high); the lock was not tested"
            )
            return
    ended: queue.Queue[PulseEnd] = queue.Queue()

    def pulse_ended(event: PulseEnd) -> None:
        if event.number == number:
            ended.put(event)

    cabinet.on_pulse_end = pulse_ended
    try:
        seconds = pulse_s if pulse_s is not None else cabinet.spec.unlock_s
        run.out(f"compartment {number}: unlocked for {seconds:g} s: pull the door open")
        granted = lock.pulse(seconds)
        try:
            event = ended.get(timeout=granted + PULSE_GRACE_S)
        except queue.Empty:
            event = None
        lock.lock()
    except HardwareError as exc:
        run.fail(f"compartment {number}: the lock could not be switched: {exc}")
        return
    finally:
        cabinet.on_pulse_end = None
    if cabinet.energised():
        run.fail(
            f"compartment {number}: lock(s) {_numbers(cabinet.energised())} still energised "
            "after the pulse"
        )
        return
    if event is None or not event.door_opened:
        run.fail(
            f"compartment {number}: the door did not open while the lock was energised "
            "(a jammed latch, no power to the solenoid, a loose wire, the wrong "
            "lock_active_high, or a reed switch that does not see its magnet)"
        )
        return
    if door.is_open:
        run.out(f"compartment {number}: the door opened; shut it (waiting {door_wait_s:g} s)")
        if not _wait_for(lambda: not door.is_open, door_wait_s):
            run.fail(
                f"compartment {number}: the door still reads open {door_wait_s:g} s later "
                "(not shut, or the reed switch does not see its magnet)"
            )
            return
    run.out(f"compartment {number}: ok (unlocked, door opened and shut)")


def _check_card(cabinet: Cabinet, run: _Run, wait_s: float, sim_card: str | None) -> None:
    reader = cabinet.reader
    run.out(f"card: hold a card on the reader (waiting {wait_s:g} s)")
    started = time.monotonic()
    deadline = started + wait_s
    last_error: str | None = None
    presented: str | None = None
    while time.monotonic() < deadline:
        if sim_card is not None and time.monotonic() - started >= SIM_CARD_DELAY_S:
            run.out(f"card: (simulator) a test card, UID {sim_card}, is held on the reader")
            cabinet.sim.present_card(sim_card)
            presented, sim_card = sim_card, None
        try:
            tap = reader.poll_once()
        except HardwareError as exc:
            if str(exc) != last_error:
                last_error = str(exc)
                run.out(f"card: reader error: {exc} (retrying)")
            tap = None
        if tap is not None:
            run.out(
                f"card: ok, UID {tap.uid_hex} (to give it to a pupil: "
                f"locker card enrol ADMISSION_NO {tap.uid_hex}; to staff: add --staff)"
            )
            if presented is not None:
                cabinet.sim.remove_card(presented)  # the simulated person takes it back
            return
        time.sleep(cabinet.spec.reader.poll_s)
    reason = f"; the last reader error: {last_error}" if last_error else ""
    run.fail(f"card: no card was read in {wait_s:g} s{reason}")


# ------------------------------------------------------------------------------ helpers


def _chosen(spec: CabinetSpec, compartments: Iterable[int] | None) -> list[int]:
    if compartments is None:
        return sorted(spec.compartments)
    chosen = sorted(set(compartments))
    unknown = [number for number in chosen if number not in spec.compartments]
    if unknown:
        raise ValidationError(
            f"compartment {unknown[0]} is not in this cabinet (it has 1..{max(spec.compartments)})"
        )
    return chosen


def _cabinet_state(instance: Instance) -> tuple[set[int], str | None]:
    """The compartments of this kiosk that hold a device, and why the kiosk seems to run
    (None when it does not: no heartbeat for three periods, or it said it stopped)."""
    config = instance.config.kiosk
    with instance.database.reader() as session:
        kiosk = session.execute(select(Kiosk).where(Kiosk.name == config.name)).scalar_one_or_none()
        if kiosk is None:
            return set(), None
        occupied = set(
            session.execute(
                select(Compartment.number)
                .join(CustodyRecord, CustodyRecord.compartment_id == Compartment.id)
                .where(Compartment.kiosk_id == kiosk.id, CustodyRecord.state.in_(ACTIVE_STATES))
            ).scalars()
        )
        heartbeat, state = kiosk.heartbeat_at, kiosk.state
    running = None
    if heartbeat is not None:
        age = (datetime.now(UTC) - heartbeat).total_seconds()
        stopped = isinstance(state, dict) and state.get("status") == "stopped"
        if age <= 3 * config.heartbeat_s and not stopped:
            running = f"its last heartbeat was {max(age, 0):.0f} s ago"
    return occupied, running


def _audit(instance: Instance, kind: str, details: dict[str, Any]) -> None:
    name = instance.config.kiosk.name
    with instance.database.transaction() as session:
        instance.audit.record(
            session, SystemClock(), Actor.system("selftest"), kind, kiosk=name, details=details
        )


def _wait_for(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


def _pattern_s(name: str) -> float:
    """How long buzzer pattern ``name`` sounds (once)."""
    steps, _repeat = PATTERNS[name]
    return sum(on_s + off_s for on_s, off_s in steps)


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(str(number) for number in numbers)


__all__ = ["run_selftest", "safe_state"]
