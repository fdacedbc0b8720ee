"""The kiosk controller: the one process that owns the cabinet's hardware.

Taps, door edges, lock pulses ending, reader faults and the web's commands all become events
on one queue; one loop takes them in order and makes every decision. Hardware callbacks only
enqueue. Time comes from one injectable clock (wall time for the ledger, monotonic time and
timers for the hardware), so every flow is tested without sleeping.

Crash safety: the intent (a PENDING_DEPOSIT record, a confiscation placed in a compartment)
is committed before a lock opens; on start every pending record and every door is reconciled
with the database, and whatever cannot be proven is flagged for the office, never forgotten
and never given to a second owner.

Offline (PostgreSQL only): when the school's database goes out of reach, the work in hand is
done again on the kiosk's local mirror (``kiosk.offline``) and the kiosk goes on serving
deposits and collections from it; staff actions wait for the network. Every heartbeat tries
the database again; on success the offline events are replayed there, once and in order,
and the kiosk is online again.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from hardware.cabinet import Cabinet
from hardware.clock import ManualClock as HardwareManualClock
from hardware.clock import SystemClock as HardwareSystemClock
from hardware.errors import HardwareError, LockBusy
from hardware.interfaces import DoorEvent, PulseEnd, Tap
from kiosk import cabinets, cards, commands
from kiosk.actors import Actor
from kiosk.custody import RecordRef
from kiosk.db import Database
from kiosk.errors import InstanceError, LockerError
from kiosk.instance import Instance
from kiosk.listener import CommandListener
from kiosk.migrate import ensure_current
from kiosk.models import (
    Command,
    CommandStatus,
    Compartment,
    CustodyRecord,
    CustodyState,
    Kiosk,
    Pupil,
    PupilStatus,
    User,
)
from kiosk.offline import REFRESH_S, LocalMirror, Replayer, state_file
from kiosk.pupils import PupilRef
from kiosk.systemd import Notifier
from kiosk.users import StaffRef

log = logging.getLogger(__name__)

_COMPARTMENT_UPDATES: dict[tuple[str, ...], Any] = {}
_PUBLISH_STATE = (
    update(Kiosk.__table__)
    .where(Kiosk.__table__.c.id == bindparam("kiosk_id"))
    .values(state=bindparam("state"))
)

FLAG_UNVERIFIED = "unverified"
FLAG_CHECK = "check"
FLAG_DOOR_LEFT_OPEN = "door_left_open"
SCREEN_HOLD_S = 6.0
ENROL_WAIT_S = 60.0
UNLOCK_RETRY_S = 0.25
UNLOCK_RETRIES = 40
#: Longest a door-open observation waits to share a commit with other work (seconds).
OBSERVATION_DELAY_S = 0.1
COMMAND_RESULT_PURPOSES = ("office", "release", "confiscation", "police", "check", "return")
#: How often an offline kiosk tries the database again (seconds).
RECONNECT_S = 5.0
MIRROR_OVERLAP = timedelta(seconds=1)  # for other writers: their commits may land late
OFFLINE_STAFF = ("Staff actions need the network", "Please use the office page meanwhile.")


def unreachable(exc: BaseException) -> bool:
    """Whether a database error means the server is out of reach (not a bad statement)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


# ------------------------------------------------------------------------------ clocks


class LiveClock(HardwareSystemClock):
    """Real time: wall clock for the ledger, monotonic time and a timer thread for the
    hardware."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock(HardwareManualClock):
    """Time that moves only when told (tests and benchmarks): ``now()`` follows
    ``monotonic()``, and timers run inside :meth:`advance`."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start=1000.0)
        self._epoch = start.astimezone(UTC) - timedelta(seconds=1000.0)

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self.monotonic())

    def set(self, when: datetime) -> None:
        """Jump forward to ``when`` (running every timer due on the way)."""
        seconds = (when.astimezone(UTC) - self.now()).total_seconds()
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self.advance(seconds)


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class ReaderFault:
    error: Exception


@dataclass(frozen=True)
class ReaderRecovered:
    pass


@dataclass(frozen=True)
class HardwareFault:
    error: HardwareError


@dataclass(frozen=True)
class Wake:
    """Nudge the loop (a command may be waiting; stop requested)."""


@dataclass
class Unlock:
    """A compartment being opened, and why: the record it is for (as the kiosk last knew
    it), who asked, and what the door has done since."""

    number: int
    purpose: str  # deposit, reconfirm, collect, confiscation, release, office, check, open_all
    record: RecordRef | None = None
    command_id: int | None = None
    name: str = ""
    actor: Actor | None = None
    custody_id: int | None = None  # a record named by a command (not loaded)
    door_opened: bool = False
    attempts: int = 0
    energised: bool = False

    def __post_init__(self) -> None:
        if self.record is not None:
            self.custody_id = self.record.id


@dataclass
class OpenAll:
    command_id: int | None
    waiting: deque[int]
    opened: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    in_flight: set[int] = field(default_factory=set)


@dataclass
class Mode:
    name: str = "pupil"  # pupil, staff, enrol
    until: float = 0.0
    staff_user_id: int | None = None
    staff_name: str = ""
    enrol_pupil_id: int | None = None
    enrol_user_id: int | None = None
    enrol_label: str = ""
    command_id: int | None = None


class Work:
    """One unit of work of the kiosk: ``connection`` (the kiosk's own, in a transaction) for
    the plain statements of the tap-to-unlock path, and ``orm``, a session joined to the same
    transaction, made only when a rarer path needs objects."""

    __slots__ = ("_orm", "connection")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._orm: Session | None = None

    @property
    def orm(self) -> Session:
        if self._orm is None:
            self._orm = Session(bind=self.connection, expire_on_commit=False)
        return self._orm

    def flush(self) -> None:
        if self._orm is not None:
            self._orm.flush()

    def close(self) -> None:
        if self._orm is not None:
            self._orm.close()
            self._orm = None


class Controller:
    """Turns taps, door edges and commands into custody, for one cabinet.

    ``run(stop)`` is the daemon's loop; tests call :meth:`start` once and then :meth:`pump`
    after moving the simulated clock, which handles everything that is due, synchronously.
    """

    def __init__(
        self,
        instance: Instance,
        cabinet: Cabinet,
        clock: LiveClock | SimulatedClock,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.instance = instance
        self.config = instance.config.kiosk
        self.central: Database = instance.database
        self.db: Database = self.central  # the mirror's while offline
        self.ledger = instance.ledger
        self.audit = instance.audit
        self.policy = instance.policy
        self.cabinet = cabinet
        self.clock = clock
        self.notifier = notifier or Notifier(environ={})
        self.actor = Actor.for_kiosk(self.config.name)
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.unlocks: dict[int, Unlock] = {}
        self.awaiting_close: dict[int, Unlock] = {}
        self.open_all: OpenAll | None = None
        self.mode = Mode()
        self.faults: dict[str, str] = {}
        self.alarms: dict[int, dict[str, Any]] = {}
        self.screen: dict[str, Any] = {}
        self._screen_seq = 0
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = itertools.count()
        self._timer_keys: dict[tuple[str, Any], int] = {}
        self._next_command_poll = 0.0
        self._next_heartbeat = 0.0
        self._swept_day: date | None = None
        self._started_at = clock.now()
        self.kiosk_id = 0
        self._kiosk: Kiosk | None = None
        self._published: dict[str, Any] | None = None
        self.failed_unlocks: dict[int, int] = {}
        self.compartment_ids: dict[int, int] = {}
        self._connection: Connection | None = None
        self._observations: list[tuple[int, bool, datetime]] = []
        self._listener: CommandListener | None = None
        self.mirror: LocalMirror | None = None
        self.online = True
        self.offline_since: datetime | None = None
        # The mirror has this kiosk's records as they were at _mirror_since (less an overlap
        # for clocks that differ); _mirror_dirty: a unit of work committed since.
        self._mirror_since: datetime | None = None
        self._mirror_dirty = False
        self._next_refresh = 0.0
        self._next_reconnect = 0.0
        self._unfinished: dict[int, dict[str, Any]] = {}  # command results made offline
        self.stopped = False

    # ======================================================================== lifecycle

    def start(self, *, reader_thread: bool = True, listen: bool = True) -> None:
        """Register the cabinet, reconcile with the database, and start listening (to the
        reader, the doors, and on PostgreSQL to command notifications).

        On PostgreSQL the local mirror is opened too: an offline session left by the last
        run is replayed first, and if the database is out of reach but the mirror holds a
        copy, the kiosk starts offline. Raises SQLAlchemyError when neither works."""
        if self.central.dialect == "postgresql":
            self.mirror = LocalMirror(self.instance.home, self.config.name)
        try:
            self._register(self.central)
            if self.mirror is not None:
                if self.mirror.session() is not None:
                    self._replay()
                self._refresh_mirror()
        except SQLAlchemyError as exc:
            if not (self.mirror is not None and unreachable(exc) and self.mirror.ready):
                raise
            log.warning("the database is out of reach at start (%s): starting offline", exc)
            self._switch_to_mirror()
            self._register(self.mirror.database)
            with self._unit() as work:
                self._record_offline(work, exc)
        missing = sorted(set(self.compartment_ids) - set(self.cabinet.locks))
        if missing:
            self._set_fault("wiring", f"compartments {missing} have no lock in [hardware]")
        self.cabinet.on_door = self.events.put
        self.cabinet.on_pulse_end = self.events.put
        self.cabinet.on_fault = lambda error: self.events.put(HardwareFault(error))
        self._reconcile()
        self._show_idle()
        self.cabinet.reader.start(
            self.events.put,
            lambda error: self.events.put(ReaderFault(error)),
            lambda: self.events.put(ReaderRecovered()),
            thread=reader_thread,
        )
        if self.central.dialect == "postgresql" and listen:
            self._listener = CommandListener(
                self.central.url, self.kiosk_id, lambda: self.events.put(Wake())
            )
            self._listener.start()
        self._heartbeat()
        self.notifier.ready(f"kiosk {self.config.name}: ready")
        log.info("kiosk %s ready (%d compartments)", self.config.name, len(self.compartment_ids))

    def _register(self, database: Database) -> None:
        with database.transaction() as session:
            kiosk, _ = cabinets.register(session, self.actor, self.clock, self.audit, self.config)
            self.kiosk_id = kiosk.id
            self._kiosk = kiosk
            self.compartment_ids = dict(
                session.execute(
                    select(Compartment.number, Compartment.id).where(
                        Compartment.kiosk_id == kiosk.id,
                        Compartment.number <= self.config.compartments,
                    )
                ).all()
            )
            self.failed_unlocks = dict(
                session.execute(
                    select(Compartment.number, Compartment.failed_unlocks).where(
                        Compartment.kiosk_id == kiosk.id, Compartment.failed_unlocks > 0
                    )
                ).all()
            )

    def run(self, stop: threading.Event) -> None:
        """The daemon's loop, until ``stop`` is set."""
        while not stop.is_set():
            timeout = max(0.0, min(self._next_due() - self.clock.monotonic(), 0.5))
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None:
                self._dispatch(event)
            self._drain()
            self._tick()
            self._copy_to_mirror()  # off the tap's path: the lock is already open
            self.notifier.watchdog()
        self.shutdown()

    def pump(self, *, poll_commands: bool = True) -> None:
        """Handle every queued event and due timer now (tests, benchmarks)."""
        self._drain()
        self._tick(force_commands=poll_commands)
        self._drain()
        self._copy_to_mirror()

    def shutdown(self) -> None:
        """Every lock left safe, indicators off, the office told we stopped."""
        if self.stopped:
            return
        self.stopped = True
        self.notifier.stopping()
        if self._listener is not None:
            self._listener.stop()
        try:
            self.cabinet.reader.stop()
        except HardwareError:
            log.exception("stopping the reader failed")
        self.cabinet.lock_all()
        if self._observations:
            try:
                self._timer_observations(None)
            except SQLAlchemyError:
                log.exception("could not record the last door openings")
        try:
            self.cabinet.indicators.off()
        except HardwareError:
            log.exception("switching the indicators off failed")
        self._guarded("recording the shutdown", self._record_stopped)
        self._drop_connection()
        if self.mirror is not None:
            self._copy_to_mirror()
            self.mirror.close()
        log.info("kiosk %s stopped; every lock is de-energised", self.config.name)

    def _record_stopped(self) -> None:
        with self._unit() as work:
            self.audit.record(work.connection, self.clock, self.actor, "kiosk.stopped")

    # ======================================================================== event plumbing

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._dispatch(event)

    def _dispatch(self, event: Any) -> None:
        self._guarded(f"handling {event!r}", self._handle, event)

    def _guarded(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        """Run ``action``; if the database went out of reach during it, go offline and run it
        again on the mirror (each unit of work commits all or nothing, and handlers put back
        what they took from memory when their unit fails). Any other error is logged: the
        loop never dies."""
        refs = self._record_refs()
        for attempt in (1, 2):
            try:
                action(*args)
                return
            except SQLAlchemyError as exc:
                for ref, saved in refs:  # the ledger moved them in a unit that failed
                    vars(ref).update(saved)
                if attempt == 1 and self._offline_instead(exc):
                    continue
                log.exception("database error while %s", what)
                self._database_fault(exc)
                return
            except Exception:
                log.exception("unexpected error while %s", what)
                return

    def _record_refs(self) -> list[tuple[RecordRef, dict[str, Any]]]:
        """The records of the open compartments as they are now (to put back after a unit
        of work that failed: the ledger updates a ``RecordRef`` as it writes the change)."""
        unlocks = (*self.unlocks.values(), *self.awaiting_close.values())
        return [(u.record, dict(vars(u.record))) for u in unlocks if u.record is not None]

    def _handle(self, event: Any) -> None:
        if isinstance(event, Tap):
            self._on_tap(event)
        elif isinstance(event, DoorEvent):
            self._on_door(event)
        elif isinstance(event, PulseEnd):
            self._on_pulse_end(event)
        elif isinstance(event, ReaderFault):
            self._set_fault("reader", f"card reader: {event.error}")
        elif isinstance(event, ReaderRecovered):
            self._clear_fault("reader")
        elif isinstance(event, HardwareFault):
            self._set_fault("hardware", str(event.error))
        elif isinstance(event, Wake):
            self._next_command_poll = 0.0  # a command was submitted: look now

    def _tick(self, *, force_commands: bool = False) -> None:
        now = self.clock.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, seq, name, key = heapq.heappop(self._timers)
            if self._timer_keys.get((name, key)) != seq:
                continue  # replaced or cancelled
            del self._timer_keys[(name, key)]
            self._guarded(f"timer {name}", getattr(self, f"_timer_{name}"), key)
        if self.online and (force_commands or now >= self._next_command_poll):
            self._next_command_poll = now + self.config.command_poll_s
            self._guarded("polling commands", self._poll_commands)
        if not self.online and now >= self._next_reconnect:
            self._next_reconnect = now + RECONNECT_S
            self._guarded("reconnecting", self._try_reconnect)
        if now >= self._next_heartbeat:
            self._guarded("the heartbeat", self._heartbeat)
        if self.online and self.mirror is not None and now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S  # also when it fails
            self._guarded("refreshing the offline copy", self._refresh_mirror)

    def _next_due(self) -> float:
        if self.online:
            due = min(self._next_command_poll, self._next_heartbeat)
        else:
            due = min(self._next_reconnect, self._next_heartbeat)
        while (
            self._timers
            and self._timer_keys.get((self._timers[0][2], self._timers[0][3])) != self._timers[0][1]
        ):
            heapq.heappop(self._timers)
        if self._timers:
            due = min(due, self._timers[0][0])
        return due

    def _after(self, seconds: float, name: str, key: Any = None) -> None:
        """Run ``_timer_<name>(key)`` in ``seconds``; replaces a timer of the same name/key."""
        seq = next(self._timer_seq)
        self._timer_keys[(name, key)] = seq
        heapq.heappush(self._timers, (self.clock.monotonic() + seconds, seq, name, key))

    def _cancel(self, name: str, key: Any = None) -> None:
        self._timer_keys.pop((name, key), None)

    def _kiosk_in(self, session: Session) -> Kiosk:
        """This kiosk's row, attached to ``session`` without a query."""
        assert self._kiosk is not None
        return session.merge(self._kiosk, load=False)

    @contextmanager
    def _unit(self) -> Iterator[Work]:
        """One unit of work on the kiosk's connection, publishing the kiosk's state (screen,
        alarms) with it; everything in it commits together or not at all. On an error the
        door observations it took are put back; a connection to an unreachable server is
        dropped (the caller decides whether to go offline)."""
        observations, self._observations = self._observations, []
        started = self.clock.now()
        published = self._published
        work: Work | None = None
        try:
            if self._connection is None:
                self._connection = self.db.writer_connection()
            work = Work(self._connection)
            with self._connection.begin():
                for observation in observations:
                    self._observe_door_opened(work, *observation)
                yield work
                work.flush()
                self._write_state(work.connection)
        except BaseException as exc:
            self._observations[:0] = observations
            self._published = published
            if isinstance(exc, SQLAlchemyError) and unreachable(exc):
                self._drop_connection()
            raise
        finally:
            if work is not None:
                work.close()
        self.faults.pop("database", None)
        if self.online and self.mirror is not None:
            self._mirror_dirty = True
            if self._mirror_since is None:
                self._mirror_since = started - MIRROR_OVERLAP

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError:
                log.debug("closing a broken connection failed", exc_info=True)
            self._connection = None

    # ======================================================================== taps

    def _on_tap(self, tap: Tap) -> None:
        """A card arrived: decide, commit the decision (intent first), then unlock."""
        mode = self.mode
        try:
            self._tap_unit(tap, mode)
        except BaseException:
            self.mode = mode  # the tap is handled again (offline) in the mode it came in
            raise

    def _tap_unit(self, tap: Tap, mode: Mode) -> None:
        unlock: Unlock | None = None
        tone = "refused"
        with self._unit() as work:
            card = cards.holder_of(work.connection, self.instance.card_key, tap.uid)
            holder = "unknown"
            if self.mode.name == "enrol" and card is None:
                tone = self._enrol_card(work, tap)
                holder = "new card"
            elif card is None:
                self._show("refused", "Card not recognised", "Please see the school office.")
            elif card.user is not None:
                tone = self._staff_tap(work, card.user)
                holder = f"staff:{card.user.username}"
            else:
                assert card.pupil is not None
                holder = f"pupil:{card.pupil.admission_number}"
                if self.mode.name == "staff":
                    unlock, tone = self._confiscate_at_kiosk(work, card.pupil)
                else:
                    unlock, tone = self._pupil_tap(work, card.pupil)
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "tap",
                pupil_id=card.pupil.id if card and card.pupil else None,
                details={
                    "card": holder,
                    "uid_ref": cards.uid_reference(cards.uid_hash(self.instance.card_key, tap.uid)),
                    "outcome": self.screen.get("title", ""),
                    "mode": mode.name,
                },
            )
        if unlock is not None:
            self._guarded("opening a compartment", self._start_unlock, unlock)
        self._signal(tone)

    def _pupil_tap(self, work: Work, pupil: PupilRef) -> tuple[Unlock | None, str]:
        """A pupil's card in pupil mode: collect, deposit, or say why not."""
        name = self.policy.display_name(pupil)
        who = Actor.for_pupil(pupil, self.config.name)
        if pupil.status is not PupilStatus.ACTIVE:
            self._show("refused", "Card not active", "Please see the school office.")
            return None, "refused"
        now = self.clock.now()
        daily = self.ledger.daily_ref(work.connection, pupil.id)
        if daily is not None and daily.kiosk != self.config.name:
            self._show(
                "refused",
                f"Hello {name}",
                f"Your device is in another cabinet ({daily.kiosk}).",
                name=name,
            )
            return None, "refused"
        if daily is not None:
            number = daily.compartment
            assert number is not None
            if number in self.unlocks or number in self.awaiting_close:
                self._show(
                    "info",
                    "Your locker is open",
                    "It is open for you.",
                    name=name,
                    compartment=number,
                )
                return None, "ok"
            if daily.state is CustodyState.PENDING_DEPOSIT or (
                daily.flag == FLAG_UNVERIFIED and self.policy.in_deposit_window(now)
            ):
                purpose = "deposit" if daily.state is CustodyState.PENDING_DEPOSIT else "reconfirm"
                self._show(
                    "ok",
                    "Your locker is open",
                    "Put your device in and close the door.",
                    name=name,
                    compartment=number,
                )
                return Unlock(number, purpose, daily, name=name, actor=who), "ok"
            try:
                self.ledger.check_collect(work.connection, who, self.clock, daily)
            except LockerError as exc:
                self._show("refused", f"Hello {name}", str(exc).capitalize() + ".", name=name)
                return None, "refused"
            self._show(
                "ok",
                "Your locker is open",
                "Take your device and close the door.",
                name=name,
                compartment=number,
            )
            return Unlock(number, "collect", daily, name=name, actor=who), "ok"
        if not self.policy.in_deposit_window(now) and any(
            record.state in (CustodyState.CONFISCATED, CustodyState.SAFEGUARDING_HOLD)
            for record in self.ledger.active_records(work.orm, pupil.id)
        ):
            self._show(
                "refused",
                f"Hello {name}",
                "Your device is with the office: a parent or carer must collect it.",
                name=name,
            )
            return None, "refused"
        if "wiring" in self.faults or "hardware" in self.faults:
            self._show("refused", "Kiosk fault", "Please see the school office.")
            return None, "refused"
        try:  # start_deposit checks everything before it writes anything
            record = self.ledger.start_deposit(
                work.connection,
                who,
                self.clock,
                pupil=pupil,
                kiosk=self._kiosk,
                timeout_s=self.config.deposit_timeout_s,
                busy=self._busy(),
            )
        except LockerError as exc:
            self._show("refused", f"Hello {name}", str(exc).capitalize() + ".", name=name)
            return None, "refused"
        number = record.compartment
        assert number is not None and record.pending_until is not None
        self._show(
            "ok",
            "Your locker is open",
            "Put your device in and close the door.",
            name=name,
            compartment=number,
        )
        self._after(max(0.0, (record.pending_until - now).total_seconds()), "pending", record.id)
        return Unlock(number, "deposit", record, name=name, actor=who), "ok"

    def _busy(self) -> set[int]:
        """Compartments opening or open now: not to be given out, even if their record
        ended (the device released to a parent may still be inside)."""
        return {*self.unlocks, *self.awaiting_close}

    def _staff_tap(self, work: Work, user: StaffRef) -> str:
        if not user.active:
            self._show("refused", "Card not active", "Please see the school office.")
            return "refused"
        if not self.online:
            self._end_mode()
            self._show("refused", *OFFLINE_STAFF)
            return "refused"
        if self.mode.name == "staff" and self.mode.staff_user_id == user.id:
            self._end_mode()
            self._show("info", "Staff mode ended", "")
            return "ok"
        self.mode = Mode(
            "staff",
            self.clock.monotonic() + self.config.staff_mode_s,
            staff_user_id=user.id,
            staff_name=user.display_name,
        )
        self._after(self.config.staff_mode_s, "mode_end")
        self._show(
            "info",
            "Staff mode",
            "Tap the pupil's card to confiscate their device, or your card to finish.",
            hold_s=self.config.staff_mode_s,
        )
        self.audit.record(
            work.connection, self.clock, Actor.for_user(user, self.config.name), "kiosk.staff_mode"
        )
        return "ok"

    def _confiscate_at_kiosk(self, work: Work, pupil: PupilRef) -> tuple[Unlock | None, str]:
        staff = work.orm.get(User, self.mode.staff_user_id)
        self._end_mode()
        if not self.online:
            self._show("refused", *OFFLINE_STAFF)
            return None, "refused"
        if staff is None or not staff.active:
            self._show("refused", "Staff mode ended", "Tap your staff card again.")
            return None, "refused"
        name = self.policy.display_name(pupil)
        try:
            with work.orm.begin_nested():
                record = self.ledger.confiscate(
                    work.orm,
                    Actor.for_user(staff, self.config.name),
                    self.clock,
                    pupil=pupil,
                    reason=f"confiscated at kiosk {self.config.name} by {staff.display_name}",
                    kiosk=self._kiosk_in(work.orm),
                    busy=self._busy(),
                )
        except LockerError as exc:
            self._show("refused", "Cannot confiscate", str(exc).capitalize() + ".")
            return None, "refused"
        number = record.compartment.number
        self._show(
            "ok",
            f"Secure compartment {number}",
            f"Put {name}'s device in and close the door.",
            compartment=number,
        )
        return Unlock(number, "confiscation", RecordRef.of(record), name=name), "ok"

    def _enrol_card(self, work: Work, tap: Tap) -> str:
        pupil = work.orm.get(Pupil, self.mode.enrol_pupil_id) if self.mode.enrol_pupil_id else None
        user = work.orm.get(User, self.mode.enrol_user_id) if self.mode.enrol_user_id else None
        command_id = self.mode.command_id
        self._end_mode()
        if not self.online:
            self._show("refused", "Card not enrolled", "Enrolling a card needs the network.")
            self._finish_command(work, command_id, error="the kiosk went offline")
            return "refused"
        try:
            with work.orm.begin_nested():
                card = cards.enrol(
                    work.orm,
                    self.actor,
                    self.clock,
                    self.audit,
                    self.instance.card_key,
                    uid=tap.uid,
                    pupil=pupil,
                    user=user,
                )
        except LockerError as exc:
            self._show("refused", "Card not enrolled", str(exc))
            self._finish_command(work, command_id, error=str(exc))
            return "refused"
        self._show("ok", "Card enrolled", self.mode.enrol_label or "")
        self._finish_command(work, command_id, result={"card": card.id})
        return "ok"

    def _end_mode(self) -> None:
        self.mode = Mode()
        self._cancel("mode_end")

    def _timer_mode_end(self, _key: Any) -> None:
        if self.mode.name == "enrol" and self.mode.command_id:
            with self._unit() as work:
                self._finish_command(
                    work, self.mode.command_id, error="no new card was tapped in time"
                )
                self._end_mode()
                self._show_idle()
            return
        self._end_mode()
        with self._unit():
            self._show_idle()

    # ======================================================================== unlocking

    def _start_unlock(self, unlock: Unlock) -> None:
        """Energise the lock (the intent is already committed)."""
        self.unlocks[unlock.number] = unlock
        try:
            self.cabinet.locks[unlock.number].pulse()
            unlock.energised = True
        except LockBusy:
            unlock.attempts += 1
            if unlock.attempts <= UNLOCK_RETRIES:
                self._after(UNLOCK_RETRY_S, "unlock_retry", unlock.number)
            else:
                self._unlock_failed(unlock, "too many compartments were opening at once")
        except (HardwareError, KeyError) as exc:
            self._set_fault("hardware", f"lock {unlock.number}: {exc}")
            self._unlock_failed(unlock, f"the lock did not work ({exc})")

    def _timer_unlock_retry(self, number: int) -> None:
        unlock = self.unlocks.get(number)
        if unlock is not None and not unlock.energised:
            self._start_unlock(unlock)

    def _on_pulse_end(self, event: PulseEnd) -> None:
        unlock = self.unlocks.pop(event.number, None)
        if unlock is None:
            return
        try:
            self._pulse_ended(event, unlock)
        except BaseException:
            self.unlocks.setdefault(event.number, unlock)  # handled again (offline)
            raise

    def _pulse_ended(self, event: PulseEnd, unlock: Unlock) -> None:
        opened = event.door_opened or unlock.door_opened or event.number in self.awaiting_close
        if opened:
            if self.failed_unlocks.get(event.number) or unlock.command_id is not None:
                with self._unit() as work:
                    if self.failed_unlocks.get(event.number):
                        self._compartment(work, event.number, failed_unlocks=0)
                    self._finish_command(
                        work,
                        unlock.command_id,
                        result={"compartment": event.number, "opened": True},
                    )
                self.failed_unlocks.pop(event.number, None)
            self._open_all_next(event.number, opened=True)
        else:
            self._unlock_failed(unlock, "the door was not opened")

    def _unlock_failed(self, unlock: Unlock, why: str) -> None:
        """The door never opened: undo what was waiting for it, count the failure."""
        if self.unlocks.get(unlock.number) is unlock:
            del self.unlocks[unlock.number]
        try:
            self._unlock_failed_unit(unlock, why)
        except BaseException:
            self.unlocks.setdefault(unlock.number, unlock)
            raise
        self._open_all_next(unlock.number, opened=False)
        self._signal("refused")

    def _unlock_failed_unit(self, unlock: Unlock, why: str) -> None:
        with self._unit() as work:
            compartment = work.orm.get(Compartment, self.compartment_ids[unlock.number])
            compartment.failed_unlocks += 1
            self.failed_unlocks[unlock.number] = compartment.failed_unlocks
            compartment.updated_at = self.clock.now()
            if (
                compartment.failed_unlocks >= self.config.out_of_service_after
                and not compartment.out_of_service
            ):
                compartment.out_of_service = True
                compartment.out_of_service_reason = (
                    f"the door did not open after {compartment.failed_unlocks} unlocks "
                    "(jammed lock?)"
                )
                self.audit.record(
                    work.connection,
                    self.clock,
                    self.actor,
                    "compartment.out_of_service",
                    details={
                        "compartment": unlock.number,
                        "reason": compartment.out_of_service_reason,
                    },
                )
            record = work.orm.get(CustodyRecord, unlock.custody_id) if unlock.custody_id else None
            if (
                unlock.purpose == "deposit"
                and record is not None
                and record.state is CustodyState.PENDING_DEPOSIT
            ):
                self.ledger.cancel_deposit(
                    work.orm, self.actor, self.clock, record, reason=f"{why}; nothing was deposited"
                )
                self._cancel("pending", record.id)
                self._show(
                    "refused",
                    "The door did not open",
                    "Please tap your card again.",
                    name=unlock.name,
                )
            elif unlock.purpose == "confiscation" and record is not None:
                self._confiscation_not_stored(work, record, unlock.number, why)
                self._show(
                    "refused", "The door did not open", "Take the device to the school office."
                )
            elif unlock.purpose in ("collect", "reconfirm"):
                self._show(
                    "refused",
                    "The door did not open",
                    "Please tap your card again.",
                    name=unlock.name,
                )
            self._finish_command(
                work, unlock.command_id, error=f"compartment {unlock.number}: {why}"
            )

    def _confiscation_not_stored(
        self, work: Work, record: CustodyRecord, number: int, why: str
    ) -> None:
        """The secure compartment never opened: the device is still in a member of staff's
        hand, so the record moves to the office safe and is flagged."""
        if (
            record.state in (CustodyState.CONFISCATED, CustodyState.SAFEGUARDING_HOLD)
            and record.stored_at is None
        ):
            record.compartment_id = None
            self.ledger.flag(
                work.orm,
                self.actor,
                self.clock,
                record,
                flag=FLAG_CHECK,
                detail=f"secure compartment {number}: {why}; the device should "
                "be in the office safe",
            )

    # ======================================================================== doors

    def _on_door(self, event: DoorEvent) -> None:
        number = event.number
        if number not in self.compartment_ids:
            return
        if event.is_open:
            self._door_opened(number, event.forced)
        else:
            self._door_closed(number)

    def _door_opened(self, number: int, forced: bool) -> None:
        unlock = self.unlocks.get(number)
        expected = unlock is not None
        if unlock is not None:
            unlock.door_opened = True
            self.awaiting_close[number] = unlock
        if forced or (unlock is not None and unlock.purpose == "collect"):
            with self._unit() as work:  # an alarm, or custody changes: commit it now
                self._observe_door_opened(work, number, expected, self.clock.now())
                if forced:
                    self._raise_alarm(work, number, "forced")
                else:
                    self._collected(work, unlock)
        else:
            # A plain observation: written with the next unit of work, or within
            # OBSERVATION_DELAY_S, with the time it happened (group commit).
            self._observations.append((number, expected, self.clock.now()))
            self._after(OBSERVATION_DELAY_S, "observations")
        if unlock is not None:
            try:
                self.cabinet.locks[number].lock()  # the latch has done its job
            except HardwareError as exc:
                self._set_fault("hardware", f"lock {number}: {exc}")
        self._after(self.config.door_open_alarm_s, "door_alarm", number)

    def _observe_door_opened(self, work: Work, number: int, expected: bool, at: datetime) -> None:
        self._compartment(work, number, door_open=True)
        self.audit.record(
            work.connection,
            self.clock,
            self.actor,
            "door.opened",
            details={"compartment": number, "expected": expected},
            at=at,
        )

    def _timer_observations(self, _key: Any) -> None:
        if self._observations:
            with self._unit():
                pass  # the unit writes them

    def _collected(self, work: Work, unlock: Unlock) -> None:
        """The door opened for a collection: the device is the pupil's again."""
        record = unlock.record
        if record is None or record.state is not CustodyState.IN_LOCKER:
            return
        try:
            with work.connection.begin_nested():
                self.ledger.collect(work.connection, unlock.actor or self.actor, self.clock, record)
        except LockerError as exc:  # the window closed, or the office acted, meanwhile
            log.warning("collection of record %s not recorded: %s", record.id, exc)
            self.ledger.flag(
                work.connection,
                self.actor,
                self.clock,
                record,
                flag=FLAG_CHECK,
                detail=f"door opened for collection but not recorded: {exc}",
            )
            return
        self._show(
            "ok",
            "Your locker is open",
            "Take your device and close the door. See you tomorrow!",
            name=unlock.name,
            compartment=unlock.number,
        )

    def _door_closed(self, number: int) -> None:
        self._cancel("door_alarm", number)
        unlock = self.awaiting_close.pop(number, None)
        alarm = self.alarms.get(number)
        try:
            self._door_closed_unit(number, unlock)
        except BaseException:
            if unlock is not None:
                self.awaiting_close.setdefault(number, unlock)
            if alarm is not None:
                self.alarms.setdefault(number, alarm)
            raise
        if unlock is not None and unlock.purpose in ("deposit", "reconfirm", "confiscation"):
            self._signal("ok")
        elif not self.alarms:
            self._indicate("idle")

    def _door_closed_unit(self, number: int, unlock: Unlock | None) -> None:
        with self._unit() as work:
            self._compartment(work, number, door_open=False)
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "door.closed",
                details={"compartment": number},
            )
            if number in self.alarms:
                alarm = self.alarms.pop(number)
                self._compartment(work, number, alarm=None)
                self.audit.record(
                    work.connection,
                    self.clock,
                    self.actor,
                    "door.alarm_cleared",
                    details={"compartment": number, "alarm": alarm["kind"]},
                )
                if not self.alarms:
                    self._show_idle()
            if unlock is not None:
                self._door_closed_after_unlock(work, unlock)

    def _door_closed_after_unlock(self, work: Work, unlock: Unlock) -> None:
        record = unlock.record
        if record is None and unlock.custody_id is not None:  # opened by a command
            loaded = work.orm.get(CustodyRecord, unlock.custody_id)
            record = RecordRef.of(loaded) if loaded is not None else None
        locked_away = ("Locked away", f"Locker {unlock.number}. Have a good day!")
        try:
            if (
                unlock.purpose == "deposit"
                and record is not None
                and record.state is CustodyState.PENDING_DEPOSIT
            ):
                self.ledger.confirm_deposit(work.connection, self.actor, self.clock, record)
                self._cancel("pending", record.id)
                self._show("ok", *locked_away, name=unlock.name, compartment=unlock.number)
            elif unlock.purpose == "reconfirm" and record is not None and record.flag:
                self.ledger.clear_flag(
                    work.connection,
                    self.actor,
                    self.clock,
                    record,
                    note="the pupil opened and closed the compartment again",
                )
                self._show("ok", *locked_away, name=unlock.name, compartment=unlock.number)
            elif (
                unlock.purpose == "confiscation"
                and record is not None
                and record.state in (CustodyState.CONFISCATED, CustodyState.SAFEGUARDING_HOLD)
            ):
                self.ledger.mark_stored(work.connection, self.actor, self.clock, record)
                self._show(
                    "ok",
                    "Device secured",
                    f"Secure compartment {unlock.number} is locked.",
                    compartment=unlock.number,
                )
            elif unlock.purpose == "collect":
                self._show("ok", "Thank you", "See you tomorrow!", name=unlock.name)
        except LockerError as exc:  # the office changed the record while the door was open
            log.warning("compartment %d closed but record not updated: %s", unlock.number, exc)

    def _timer_door_alarm(self, number: int) -> None:
        if not self.cabinet.doors[number].is_open or number in self.alarms:
            return
        unlock = self.awaiting_close.get(number)
        with self._unit() as work:
            self._raise_alarm(work, number, "door_open")
            record = unlock.record if unlock is not None else None
            if record is not None and record.state is CustodyState.PENDING_DEPOSIT:
                # The device is most likely inside: keep it, and tell the office.
                self.ledger.confirm_deposit(
                    work.connection, self.actor, self.clock, record, how="door left open"
                )
                self.ledger.flag(
                    work.connection,
                    self.actor,
                    self.clock,
                    record,
                    flag=FLAG_DOOR_LEFT_OPEN,
                    detail=f"compartment {number} was left open after the deposit",
                )
                self._cancel("pending", record.id)
        if unlock is not None and unlock.purpose == "deposit" and number in self.alarms:
            unlock.purpose = "left_open"

    def _raise_alarm(self, work: Work, number: int, kind: str) -> None:
        self.alarms[number] = {
            "compartment": number,
            "kind": kind,
            "since": self.clock.now().isoformat(),
        }
        self._compartment(work, number, alarm=kind)
        event = "door.forced" if kind == "forced" else "door.left_open"
        self.audit.record(
            work.connection, self.clock, self.actor, event, details={"compartment": number}
        )
        title = "Door forced open" if kind == "forced" else "Please close the door"
        self._show("alarm", title, f"Locker {number}.", compartment=number, hold_s=0)
        self._indicate("alarm", beep="alarm")

    # ======================================================================== deadlines

    def _timer_pending(self, record_id: int) -> None:
        """A deposit's deadline passed: settle it if the pulse-end did not."""
        with self._unit() as work:
            record = work.orm.get(CustodyRecord, record_id)
            if record is None or record.state is not CustodyState.PENDING_DEPOSIT:
                return
            number = record.compartment.number
            if number in self.awaiting_close or number in self.unlocks:
                return  # the door is open or opening: its close or alarm settles it
            self.ledger.cancel_deposit(
                work.orm, self.actor, self.clock, record, reason="the door was not opened in time"
            )

    # ======================================================================== commands

    def _poll_commands(self) -> None:
        with self.db.reader() as session:
            if not commands.has_pending(session, self.kiosk_id):
                return
        while True:
            with self.db.transaction() as session:
                command = commands.claim_next(session, self.kiosk_id, self.clock)
                if command is None:
                    return
                command_id, kind, payload = command.id, command.kind, dict(command.payload)
            self._run_command(command_id, kind, payload)

    def _run_command(self, command_id: int, kind: str, payload: dict[str, Any]) -> None:
        """Execute a claimed command; every path ends in a result or an error."""
        try:
            handler: Callable[[int, dict[str, Any]], dict[str, Any] | None] = getattr(
                self, f"_command_{kind.replace('.', '_')}"
            )
            result = handler(command_id, payload)
        except (LockerError, HardwareError, KeyError, ValueError) as exc:
            with self._unit() as work:
                self._finish_command(work, command_id, error=str(exc) or type(exc).__name__)
            return
        if result is not None:  # finished at once; otherwise later (door, card)
            with self._unit() as work:
                self._finish_command(work, command_id, result=result)

    def _finish_command(
        self,
        work: Work,
        command_id: int | None,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if command_id is None:
            return
        if not self.online:  # the command lives in the central database: finish it there
            self._unfinished[command_id] = {"result": result, "error": error}
            return
        command = work.orm.get(Command, command_id)
        if command is not None and command.status is CommandStatus.RUNNING:
            commands.finish(
                work.orm, self.actor, self.clock, self.audit, command, result=result, error=error
            )

    def _command_open_compartment(self, command_id: int, payload: dict[str, Any]) -> None:
        number = payload["compartment"]
        if number not in self.compartment_ids:
            raise ValueError(f"this kiosk has no compartment {number}")
        if number in self.unlocks:
            raise ValueError(f"compartment {number} is already opening")
        self._start_unlock(
            Unlock(
                number,
                payload.get("purpose", "office"),
                custody_id=payload.get("custody_id"),
                command_id=command_id,
            )
        )
        return None

    def _command_open_all(self, command_id: int, _payload: dict[str, Any]) -> None:
        if self.open_all is not None:
            raise ValueError("open all is already running")
        numbers = deque(sorted(self.compartment_ids))
        self.open_all = OpenAll(command_id, numbers)
        with self._unit() as work:
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "emergency.open_all",
                details={"compartments": len(numbers), "command": command_id},
            )
            self._show("alarm", "Opening every compartment", "Please stand back.", hold_s=0)
        self._open_all_next(None, opened=True)
        return None

    def _open_all_next(self, finished: int | None, *, opened: bool) -> None:
        batch = self.open_all
        if batch is None:
            return
        if finished is not None and finished in batch.in_flight:
            batch.in_flight.discard(finished)
            (batch.opened if opened else batch.failed).append(finished)
        limit = max(1, self.cabinet.spec.max_concurrent_unlocks)
        while batch.waiting and len(batch.in_flight) < limit:
            number = batch.waiting.popleft()
            if number in self.unlocks or number not in self.cabinet.locks:
                batch.failed.append(number)
                continue
            batch.in_flight.add(number)
            self._start_unlock(Unlock(number, "open_all"))
        if not batch.waiting and not batch.in_flight:
            with self._unit() as work:
                self._finish_command(
                    work,
                    batch.command_id,
                    result={"opened": sorted(batch.opened), "failed": sorted(batch.failed)},
                )
                self.open_all = None
                self._show_idle()

    def _command_enrol_next_card(self, command_id: int, payload: dict[str, Any]) -> None:
        with self.db.reader() as session:
            if "pupil_id" in payload:
                pupil = session.get(Pupil, payload["pupil_id"])
                if pupil is None:
                    raise ValueError(f"no pupil {payload['pupil_id']}")
                label = self.policy.display_name(pupil)
            else:
                user = session.get(User, payload["user_id"])
                if user is None:
                    raise ValueError(f"no user {payload['user_id']}")
                label = user.display_name
        self.mode = Mode(
            "enrol",
            self.clock.monotonic() + ENROL_WAIT_S,
            enrol_pupil_id=payload.get("pupil_id"),
            enrol_user_id=payload.get("user_id"),
            enrol_label=label,
            command_id=command_id,
        )
        self._after(ENROL_WAIT_S, "mode_end")
        with self._unit():
            self._show("info", "Tap the new card", f"For {label}.", hold_s=ENROL_WAIT_S)
        return None

    def _simulator(self) -> Any:
        if self.cabinet.sim is None:
            raise ValueError("this kiosk has real hardware, not a simulator")
        return self.cabinet.sim

    def _command_sim_tap(self, _command_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        self._simulator().tap(payload["uid"].replace(":", ""))
        return {"tapped": payload["uid"]}

    def _command_sim_door(self, _command_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        sim, number = self._simulator(), payload["compartment"]
        if number not in self.compartment_ids:
            raise ValueError(f"this kiosk has no compartment {number}")
        if payload["open"]:
            sim.open_door(number)
        else:
            sim.close_door(number)
        return {"compartment": number, "open": sim.door_is_open(number)}

    def _command_sim_fault(self, _command_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        sim, fault, on = self._simulator(), payload["fault"], payload["on"]
        if fault.startswith("reader_"):
            sim.reader_fault(fault.removeprefix("reader_") if on else None)
        elif fault == "jam_lock":
            sim.jam_lock(payload["compartment"], on)
        elif fault == "stick_door_open":
            sim.stick_door_open(payload["compartment"], on)
        return {"fault": fault, "on": on}

    # ======================================================================== reconciliation

    def _reconcile(self) -> None:
        """Bring the database and the cabinet into agreement after a (re)start."""
        summary: dict[str, int] = {
            "abandoned_commands": 0,
            "confirmed_open": 0,
            "flagged": 0,
            "doors_open": 0,
        }
        with self._unit() as work:
            summary["abandoned_commands"] = commands.fail_abandoned(
                work.orm, self.clock, self.kiosk_id, "the kiosk restarted during this command"
            )
            open_doors = {
                number
                for number, door in self.cabinet.doors.items()
                if door.is_open and number in self.compartment_ids
            }
            for number, compartment_id in self.compartment_ids.items():
                work.orm.execute(
                    update(Compartment)
                    .where(Compartment.id == compartment_id)
                    .values(door_open=number in open_doors, alarm=None)
                )
            records = (
                work.orm.execute(
                    select(CustodyRecord)
                    .join(Compartment, Compartment.id == CustodyRecord.compartment_id)
                    .where(
                        Compartment.kiosk_id == self.kiosk_id,
                        CustodyRecord.state.in_(
                            [
                                CustodyState.PENDING_DEPOSIT,
                                CustodyState.CONFISCATED,
                                CustodyState.SAFEGUARDING_HOLD,
                            ]
                        ),
                    )
                )
                .scalars()
                .all()
            )
            waiting = set()
            for record in records:
                number = record.compartment.number
                if record.state is CustodyState.PENDING_DEPOSIT:
                    if number in open_doors:
                        self.awaiting_close[number] = Unlock(
                            number,
                            "deposit",
                            RecordRef.of(record),
                            door_opened=True,
                            name=self.policy.display_name(record.pupil),
                        )
                        waiting.add(number)
                        summary["confirmed_open"] += 1
                    else:
                        self.ledger.confirm_deposit(
                            work.orm,
                            self.actor,
                            self.clock,
                            record,
                            how="kiosk restart: unverified",
                        )
                        self.ledger.flag(
                            work.orm,
                            self.actor,
                            self.clock,
                            record,
                            flag=FLAG_UNVERIFIED,
                            detail=f"the kiosk restarted before compartment {number} was seen "
                            "to close; the pupil can re-tap to confirm, or the office "
                            "can open it to check",
                        )
                        summary["flagged"] += 1
                elif record.stored_at is None:
                    if number in open_doors:
                        self.awaiting_close[number] = Unlock(
                            number, "confiscation", RecordRef.of(record), door_opened=True
                        )
                        waiting.add(number)
                    elif record.flag is None:
                        self.ledger.flag(
                            work.orm,
                            self.actor,
                            self.clock,
                            record,
                            flag=FLAG_CHECK,
                            detail=f"the kiosk restarted before secure compartment {number} "
                            "was seen to close: check the device is inside",
                        )
                        summary["flagged"] += 1
            for number in sorted(open_doors - waiting):
                self._raise_alarm(work, number, "door_open")
            for number in open_doors:
                self._after(self.config.door_open_alarm_s, "door_alarm", number)
            summary["doors_open"] = len(open_doors)
            commands.cancel_stale(work.orm, self.clock, self.kiosk_id)
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "kiosk.started",
                details={"hardware": self.cabinet.backend, **summary},
            )
        log.info("reconciled at start: %s", summary)

    # ======================================================================== heartbeat

    def _heartbeat(self) -> None:
        self._next_heartbeat = self.clock.monotonic() + self.config.heartbeat_s
        now = self.clock.now()
        with self._unit() as work:
            work.connection.execute(
                update(Kiosk).where(Kiosk.id == self.kiosk_id).values(heartbeat_at=now)
            )
            commands.cancel_stale(work.orm, self.clock, self.kiosk_id)
            today = self.policy.school_day(now)
            if self._swept_day != today and now >= self.policy.end_of_day(today):
                self.ledger.flag_uncollected(work.orm, self.actor, self.clock)
                self._swept_day = today
        self._write_state_file(now)
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        faults = "; ".join(self.faults.values())
        network = "" if self.online else " (OFFLINE: working from the local copy)"
        return f"kiosk {self.config.name}: " + (f"FAULT {faults}" if faults else "ok") + network

    # ======================================================================== screen, state

    def _show(
        self,
        tone: str,
        title: str,
        message: str = "",
        *,
        name: str | None = None,
        compartment: int | None = None,
        hold_s: float | None = None,
    ) -> None:
        self._screen_seq += 1
        self.screen = {
            "seq": self._screen_seq,
            "tone": tone,
            "title": title,
            "message": message,
            "name": name or None,
            "compartment": compartment,
            "at": self.clock.now().isoformat(),
        }
        hold = SCREEN_HOLD_S if hold_s is None else hold_s
        if hold > 0:
            self._after(hold, "screen_idle", self._screen_seq)

    def _show_idle(self) -> None:
        if self.faults:
            self._show("alarm", "Out of order", "Please see the school office.", hold_s=0)
        elif self.alarms:
            number = next(iter(self.alarms))
            self._show(
                "alarm",
                "Please close the door",
                f"Locker {number}.",
                hold_s=0,
                compartment=number,
            )
        else:
            self._show("idle", "Tap your card", "", hold_s=0)

    def _timer_screen_idle(self, seq: int) -> None:
        if seq == self._screen_seq and self.mode.name == "pupil":
            with self._unit():
                self._show_idle()

    def _state(self) -> dict[str, Any]:
        return {
            "status": "stopped" if self.stopped else "fault" if self.faults else "ok",
            "faults": list(self.faults.values()),
            "mode": self.mode.name,
            "hardware": self.cabinet.backend,
            "started_at": self._started_at.isoformat(),
            "screen": self.screen,
            "alarms": list(self.alarms.values()),
            "network": "online" if self.online else "offline",
            "offline_since": self.offline_since.isoformat() if self.offline_since else None,
        }

    def _write_state(self, connection: Connection) -> None:
        """Publish the kiosk's state (screen, alarms, faults) if it changed."""
        state = self._state()
        if state != self._published:
            connection.execute(_PUBLISH_STATE, {"kiosk_id": self.kiosk_id, "state": state})
            self._published = state
            # Online the screen reads the database; the heartbeat keeps the file recent.
            if not self.online:
                self._write_state_file(self.clock.now())

    def _write_state_file(self, heartbeat_at: datetime) -> None:
        """On a shared database, also publish the state in a file next to the instance, for
        this kiosk's own screen while the database is out of reach (best effort): at every
        heartbeat, and at every change while offline."""
        if self.mirror is None or self._published is None:
            return
        path = state_file(self.instance.home, self.config.name)
        data = {
            "kiosk": self.config.name,
            "label": self.config.label,
            "heartbeat_at": heartbeat_at.isoformat(),
            "state": self._published,
        }
        try:
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)

    def _compartment(self, work: Work, number: int, **values: Any) -> None:
        """Update columns of one compartment (door, alarm, failures) with a pre-built
        statement: this runs on every door edge."""
        names = tuple(sorted(values))
        statement = _COMPARTMENT_UPDATES.get(names)
        if statement is None:
            table = Compartment.__table__
            statement = (
                update(table)
                .where(table.c.id == bindparam("compartment_id"))
                .values({name: bindparam(f"new_{name}") for name in (*names, "updated_at")})
            )
            _COMPARTMENT_UPDATES[names] = statement
        params = {f"new_{name}": value for name, value in values.items()}
        params["new_updated_at"] = self.clock.now()
        params["compartment_id"] = self.compartment_ids[number]
        work.connection.execute(statement, params)

    # ======================================================================== offline

    def _offline_instead(self, exc: SQLAlchemyError) -> bool:
        """Go offline when ``exc`` says the database is out of reach and the mirror can take
        over; True when the work in hand should be done again (on the mirror)."""
        if not (self.online and self.mirror is not None and unreachable(exc)):
            return False
        try:
            if not self.mirror.ready:
                log.error("the database is out of reach and the offline copy is empty")
                return False
            self._switch_to_mirror()
            with self._unit() as work:
                self._record_offline(work, exc)
        except SQLAlchemyError:
            log.exception("the offline copy cannot be used either")
            return False
        return True

    def _switch_to_mirror(self) -> None:
        assert self.mirror is not None
        self._drop_connection()
        self.mirror.begin_session()
        self.online = False
        self.offline_since = self.clock.now()
        self.db = self.mirror.database
        self._published = None
        self._mirror_since, self._mirror_dirty = None, False
        self._next_reconnect = self.clock.monotonic() + RECONNECT_S
        self.faults.pop("database", None)
        log.warning("kiosk %s: working OFFLINE from the local copy", self.config.name)

    def _record_offline(self, work: Work, exc: BaseException) -> None:
        cause = getattr(exc, "orig", None) or exc
        self.audit.record(
            work.connection,
            self.clock,
            self.actor,
            "kiosk.offline",
            details={"error": type(cause).__name__},
        )

    def _try_reconnect(self) -> None:
        """Offline: if the database answers, replay the offline events and go online."""
        assert self.mirror is not None
        try:
            ensure_current(self.central)  # also the first question after starting offline
        except SQLAlchemyError as exc:
            log.debug("the database is still out of reach: %s", exc)
            return
        except InstanceError as exc:
            log.error("the database answers but cannot be used: %s; staying offline", exc)
            return
        try:
            created = self._replay()
            self._refresh_mirror(end_session=True)
        except SQLAlchemyError as exc:
            if unreachable(exc):
                log.warning("replay interrupted (%s); it resumes on the next attempt", exc)
            else:
                log.exception("replaying the offline events failed; staying offline")
            return
        self._go_online(created)

    def _replay(self) -> dict[int, int | None]:
        """Replay the mirror's offline session; local record ids -> central ones."""
        assert self.mirror is not None
        summary = Replayer(self.instance, self.mirror, self.config.name, self.clock).replay()
        return summary.created if summary is not None else {}

    def _go_online(self, created: dict[int, int | None]) -> None:
        self._drop_connection()
        self.db = self.central
        self.online = True
        since, self.offline_since = self.offline_since, None
        self._published = None
        self._adopt(created)
        with self._unit() as work:
            for number in self.compartment_ids:  # what the doors did meanwhile
                door = self.cabinet.doors.get(number)
                self._compartment(
                    work,
                    number,
                    door_open=door is not None and door.is_open,
                    alarm=self.alarms.get(number, {}).get("kind"),
                )
            for command_id, outcome in self._unfinished.items():
                self._finish_command(work, command_id, **outcome)
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "kiosk.online",
                details={
                    "offline_since": since.isoformat() if since else None,
                    "offline_s": round((self.clock.now() - since).total_seconds(), 1)
                    if since
                    else None,
                },
            )
        self._unfinished.clear()
        self._write_state_file(self.clock.now())  # the screen stops saying "offline" now
        self._next_command_poll = 0.0
        self._next_refresh = self.clock.monotonic() + REFRESH_S
        log.warning("kiosk %s: back ONLINE; offline events replayed", self.config.name)

    def _adopt(self, created: dict[int, int | None]) -> None:
        """After a replay: the open compartments and pending deadlines follow their records
        to their central ids (and their central state)."""
        with self.central.reader() as session:
            for unlock in (*self.unlocks.values(), *self.awaiting_close.values()):
                if unlock.custody_id is None:
                    continue
                central_id = created.get(unlock.custody_id, unlock.custody_id)
                record = session.get(CustodyRecord, central_id) if central_id else None
                unlock.record = RecordRef.of(record) if record is not None else None
                unlock.custody_id = record.id if record is not None else None
        now = self.clock.monotonic()
        due = {seq: at for at, seq, _, _ in self._timers}
        for (name, key), seq in list(self._timer_keys.items()):
            if name == "pending" and key in created:
                self._cancel(name, key)
                if created[key] is not None:
                    self._after(max(0.0, due.get(seq, now) - now), name, created[key])

    def _copy_to_mirror(self) -> None:
        """After units of work (between events, online): copy this kiosk's records changed
        since the last copy, by this kiosk or by anyone else, to the mirror."""
        if not self._mirror_dirty or not self.online or self.mirror is None:
            return
        began = self.clock.now()
        since = self._mirror_since or began - MIRROR_OVERLAP
        try:
            self.mirror.sync_records(self.central, self.kiosk_id, since)
        except SQLAlchemyError as exc:
            log.warning("could not update the offline copy: %s", exc)
            return
        self._mirror_since, self._mirror_dirty = began - MIRROR_OVERLAP, False

    def _refresh_mirror(self, *, end_session: bool = False) -> None:
        """Copy everything again (every REFRESH_S online; after a replay, ending it)."""
        assert self.mirror is not None
        began = self.clock.now()
        if self.mirror.refresh(self.central, end_session=end_session):
            self._mirror_since, self._mirror_dirty = began - MIRROR_OVERLAP, False
        self._next_refresh = self.clock.monotonic() + REFRESH_S

    # ======================================================================== faults, signals

    def _set_fault(self, key: str, message: str) -> None:
        first = key not in self.faults
        self.faults[key] = message
        if not first:
            return
        log.error("kiosk fault: %s", message)
        self._guarded("recording a fault", self._record_fault, key, message)
        self._indicate("error")

    def _record_fault(self, key: str, message: str) -> None:
        with self._unit() as work:
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "kiosk.fault",
                details={"fault": key, "message": message},
            )
            self._show_idle()

    def _clear_fault(self, key: str) -> None:
        message = self.faults.pop(key, None)
        if message is None:
            return
        log.info("kiosk fault cleared: %s", key)
        try:
            with self._unit() as work:
                self.audit.record(
                    work.connection,
                    self.clock,
                    self.actor,
                    "kiosk.fault_cleared",
                    details={"fault": key},
                )
                self._show_idle()
        except BaseException:
            self.faults.setdefault(key, message)
            raise
        self._indicate("idle")

    def _database_fault(self, exc: Exception) -> None:
        self.faults["database"] = f"database: {type(exc).__name__}"
        self._show("alarm", "Out of order", "Please see the school office.", hold_s=0)
        self._indicate("error", beep="refused")

    def _signal(self, tone: str) -> None:
        if tone == "ok":
            self._indicate("ok", beep="ok")
        elif tone == "refused":
            self._indicate("refused", beep="refused")

    def _indicate(self, state: str, beep: str | None = None) -> None:
        try:
            self.cabinet.indicators.status(state)
            if beep:
                self.cabinet.indicators.beep(beep)
        except HardwareError as exc:
            log.warning("indicators: %s", exc)
