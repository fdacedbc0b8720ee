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
and the kiosk is online again. Each unit of work online carries a key, written with the
kiosk's state: work done again offline because a commit's reply was lost is recognised at
replay, and not done twice.

Around the loop, in their own modules: the clocks (``kiosk.cabinet_clock``), the timers
(``kiosk.scheduler``), the screen, its wording and the published state (``kiosk.screen``),
faults and what they stop (``kiosk.faults``), reconciliation at start (``kiosk.reconcile``),
the simulator's commands (``kiosk.sim_commands``), the jammed-lock rule (``kiosk.cabinets``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from hardware.cabinet import Cabinet
from hardware.errors import HardwareError, LockBusy
from hardware.interfaces import DoorEvent, PulseEnd, Tap
from kiosk import cabinets, cards, commands, config_changes, sim_commands
from kiosk import screen as say
from kiosk.actors import Actor
from kiosk.cabinet_clock import LiveClock, SimulatedClock
from kiosk.custody import FLAG_CHECK, FLAG_DOOR_LEFT_OPEN, FLAG_UNVERIFIED, RecordRef
from kiosk.db import Database
from kiosk.errors import InstanceError, LockerError
from kiosk.faults import FaultBook, lock_source, scope_of, source_of
from kiosk.instance import Instance
from kiosk.listener import CommandListener
from kiosk.migrate import ensure_current
from kiosk.models import (
    ACTIVE_STATES,
    DAILY_ACTIVE_STATES,
    Command,
    CommandStatus,
    Compartment,
    CustodyKind,
    CustodyRecord,
    CustodyState,
    Kiosk,
    Pupil,
    PupilStatus,
    User,
    sql_in,
)
from kiosk.offline import REFRESH_S, LocalMirror, Replayer
from kiosk.pupils import PupilRef
from kiosk.reconcile import Reconciler
from kiosk.scheduler import Timers
from kiosk.screen import SCREEN_HOLD_S, Screen, StatePublisher
from kiosk.systemd import Notifier
from kiosk.users import StaffRef

log = logging.getLogger(__name__)

_COMPARTMENT_UPDATES: dict[tuple[str, ...], Any] = {}

# Every active record of a pupil, as the kiosk needs them (one query per tap): their deposit,
# and whether the office holds a device of theirs.
_RECORDS = CustodyRecord.__table__
_COMPARTMENTS = Compartment.__table__
_KIOSKS = Kiosk.__table__
_PUPIL_ACTIVE = (
    select(
        _RECORDS.c.id,
        _RECORDS.c.state,
        _RECORDS.c.kind,
        _RECORDS.c.pupil_id,
        _COMPARTMENTS.c.number,
        _KIOSKS.c.name,
        _RECORDS.c.stored_at,
        _RECORDS.c.flag,
        _RECORDS.c.pending_until,
    )
    .select_from(
        _RECORDS.outerjoin(
            _COMPARTMENTS, _COMPARTMENTS.c.id == _RECORDS.c.compartment_id
        ).outerjoin(_KIOSKS, _KIOSKS.c.id == _COMPARTMENTS.c.kiosk_id)
    )
    .where(
        _RECORDS.c.pupil_id == bindparam("pupil_id"),
        text(f"custody_records.state IN {sql_in(ACTIVE_STATES)}"),
    )
)
_WITH_THE_OFFICE = frozenset({CustodyState.CONFISCATED, CustodyState.SAFEGUARDING_HOLD})

ENROL_WAIT_S = 60.0
#: A lock refused as busy (too many energised, or resting) is tried again this soon...
UNLOCK_RETRY_S = 0.25
#: ...until this long after the first try.
UNLOCK_GIVE_UP_S = 10.0
#: A lock that failed (its output could not be driven) is not used for new deposits for this
#: long, unless the hardware reports it working again first.
LOCK_RETRY_S = 60.0
#: While a door stays open past door_open_alarm_s, the alarm sounds again this often (a
#: burst of the buzzer's alarm pattern, ``[hardware] alarm_s`` long); the LED stays on alarm.
ALARM_REPEAT_S = 120.0
#: Unlocks whose door never opening counts toward ``out_of_service_after``: a pupil or a
#: member of staff meant to open it. Nobody has to pull the door of an office open or an
#: "open all".
COUNTED_PURPOSES = frozenset({"deposit", "reconfirm", "collect", "confiscation"})
#: Longest a door-open observation waits to share a commit with other work (seconds).
OBSERVATION_DELAY_S = 0.1
COMMAND_RESULT_PURPOSES = ("office", "release", "confiscation", "police", "check", "return")
#: How often an offline kiosk tries the database again (seconds).
RECONNECT_S = 5.0
MIRROR_OVERLAP = timedelta(seconds=1)  # for other writers: their commits may land late


def unreachable(exc: BaseException) -> bool:
    """Whether a database error means the server is out of reach (not a bad statement)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class ReaderFault:
    error: Exception


@dataclass(frozen=True)
class ReaderRecovered:
    pass


@dataclass(frozen=True)
class HardwareFault:
    """A part of the cabinet started failing (``source`` as the hardware names it, e.g.
    ``"expander mcp1"``, ``"compartment 3 lock"``)."""

    error: HardwareError
    source: str = "hardware"


@dataclass(frozen=True)
class HardwareRecovered:
    """That part works again."""

    source: str


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
    first_try: float | None = None  # when the lock was first asked to open (monotonic)
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
    kept_locked: list[int] = field(default_factory=list)  # safeguarding holds


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

    __slots__ = ("_orm", "connection", "opened_and_shut")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._orm: Session | None = None
        # Doors whose opening this unit records although they are shut again: their row
        # says shut already (the opening's door_open=True is not written, nor the closing's
        # door_open=False).
        self.opened_and_shut: set[int] = set()

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
        # What is wrong now (kiosk.faults); ``faults`` is its key -> message, as published.
        self.fault_book = FaultBook()
        self.faults = self.fault_book.messages
        self.alarms: dict[int, dict[str, Any]] = {}
        self.open_doors: set[int] = set()  # doors standing open now, as last seen
        self._led: str | None = None  # the LED state last set (not set again for nothing)
        self._screen = Screen(clock)
        self.timers = Timers(clock.monotonic)
        self._next_command_poll = 0.0
        self._next_heartbeat = 0.0
        self._swept_day: date | None = None
        self._started_at = clock.now()
        self.kiosk_id = 0
        self._kiosk: Kiosk | None = None
        self.publisher = StatePublisher(
            instance.home,
            self.config.name,
            self.config.label,
            to_file=self.central.dialect == "postgresql",
        )
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
        # Units of work and the replay (see _unit and _guarded): a key per unit online, the
        # keys committed by the action in hand, the key of the unit that failed, and what
        # the units of an action done again offline were.
        self._unit_prefix = uuid.uuid4().hex[:12]
        self._unit_counter = itertools.count(1)
        self._action: list[str] | None = None
        self._failed_unit: str | None = None
        self._redo: deque[tuple[str, str]] = deque()
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
            self._check_key(self.central)
            self._register(self.central)
            if self.mirror is not None:
                # Work done offline by the last run is replayed first; the copy is then
                # made again and the offline session ends with it.
                replayed = self.mirror.session() is not None
                if replayed:
                    self._replay()
                self._refresh_mirror(end_session=replayed)
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
        self.cabinet.on_fault = lambda error: self.events.put(
            HardwareFault(error, self._source_of(error))
        )
        self.cabinet.on_fault_cleared = lambda source: self.events.put(HardwareRecovered(source))
        self._reconcile()
        for source, message in self.cabinet.faults.items():  # failing before we listened
            self._hardware_fault(source, message)
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

    def _check_key(self, database: Database) -> None:
        """InstanceError when this instance's secret is not the one the database was written
        with (a kiosk given its own secret.key on a school's shared database)."""
        with database.reader() as session:
            self.audit.check_key(session)

    def _register(self, database: Database) -> None:
        with database.transaction() as session:
            kiosk, _ = cabinets.register(session, self.actor, self.clock, self.audit, self.config)
            config_changes.record_changes(
                session, self.audit, self.clock, self.instance.config, process="kiosk"
            )
            self.kiosk_id = self.publisher.kiosk_id = kiosk.id
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
            self._led = None
            self.cabinet.indicators.off()
        except HardwareError:
            log.exception("switching the indicators off failed")
        self._guarded("recording the shutdown", self._record_stopped)
        self._drop_connection()
        if self.mirror is not None:
            self._copy_to_mirror()
            self.mirror.close()
        still = sorted(number for number, lock in self.cabinet.locks.items() if lock.is_energised)
        if still:  # a switch-off failed (an output fault): the hardware keeps retrying
            log.critical(
                "kiosk %s stopped with the locks of compartments %s still energised: "
                "switch the cabinet's lock supply off",
                self.config.name,
                ", ".join(map(str, still)),
            )
        else:
            log.info("kiosk %s stopped; every lock is de-energised", self.config.name)

    def _record_stopped(self) -> None:
        """The last unit of work: every command still waiting for a door or a card ends."""
        with self._unit() as work:
            why = "the kiosk stopped before it was finished"
            for unlock in (*self.unlocks.values(), *self.awaiting_close.values()):
                self._finish_command(work, unlock.command_id, error=why)
            if self.open_all is not None:
                self._finish_command(work, self.open_all.command_id, error=why)
            self._finish_command(work, self.mode.command_id, error=why)
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
        loop never dies.

        Done again on the mirror, the action's units are marked for the replay (see
        :meth:`_unit`): those that had committed centrally before the failure, and the one
        that failed, whose commit may have reached the server with its reply lost."""
        refs = self._record_refs()
        outermost = self._action is None
        if outermost:
            self._action = []
        assert self._action is not None
        start = len(self._action)
        try:
            for attempt in (1, 2):
                self._failed_unit = None
                try:
                    action(*args)
                    return
                except SQLAlchemyError as exc:
                    for ref, saved in refs:  # the ledger moved them in a unit that failed
                        vars(ref).update(saved)
                    if attempt == 1:
                        plan = [("done", key) for key in self._action[start:]]
                        if self._failed_unit is not None:
                            plan.append(("doubt", self._failed_unit))
                        if self._offline_instead(exc):
                            self._redo.extend(plan)
                            continue
                    log.exception("database error while %s", what)
                    self._database_fault(exc)
                    return
                except Exception:
                    log.exception("unexpected error while %s", what)
                    return
                finally:
                    if attempt == 2:
                        self._redo.clear()
        finally:
            if outermost:
                self._action = None

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
            self._hardware_fault(event.source, str(event.error))
        elif isinstance(event, HardwareRecovered):
            self._clear_fault(event.source)
        elif isinstance(event, Wake):
            self._next_command_poll = 0.0  # a command was submitted: look now

    def _tick(self, *, force_commands: bool = False) -> None:
        now = self.clock.monotonic()
        while (due := self.timers.pop_due()) is not None:
            name, key = due
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
        timer = self.timers.next_at()
        return due if timer is None else min(due, timer)

    def _after(self, seconds: float, name: str, key: Any = None) -> None:
        """Run ``_timer_<name>(key)`` in ``seconds``; replaces a timer of the same name/key."""
        self.timers.after(seconds, name, key)

    def _cancel(self, name: str, key: Any = None) -> None:
        self.timers.cancel(name, key)

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
        published = self.publisher.published
        work: Work | None = None
        # On a shared database each unit has a key, written centrally with the kiosk's
        # state: if a commit's reply is lost, the replay can tell whether it happened.
        # Offline, a unit doing again one of those is noted in the mirror with its key.
        key = redo = None
        if self.mirror is not None:
            if self.online:
                key = f"{self._unit_prefix}-{next(self._unit_counter)}"
            elif self._redo:
                redo = self._redo.popleft()
        try:
            if self._connection is None:
                self._connection = self.db.writer_connection()
            work = Work(self._connection)
            with self._connection.begin():
                before = self.mirror.head_seq(work.connection) if redo and self.mirror else 0
                for number, expected, at in observations:
                    still_open = number in self.open_doors
                    if not still_open:
                        work.opened_and_shut.add(number)
                    self._observe_door_opened(work, number, expected, at, door=still_open)
                yield work
                work.flush()
                self._write_state(work.connection, unit=key)
                if redo is not None and self.mirror is not None:
                    self.mirror.note_redo(work.connection, before, *redo)
        except BaseException as exc:
            self._observations[:0] = observations
            self.publisher.published = published
            if key is not None:
                self._failed_unit = key
            if isinstance(exc, SQLAlchemyError) and unreachable(exc):
                self._drop_connection()
            raise
        finally:
            if work is not None:
                work.close()
        if key is not None and self._action is not None:
            self._action.append(key)
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
        with self._unit() as work:
            card = cards.holder_of(work.connection, self.instance.card_key, tap.uid)
            holder = "unknown"
            if self.mode.name == "enrol" and card is None:
                tone, outcome = self._enrol_card(work, tap)
                holder = "new card"
            elif card is None:
                self._show("refused", *say.NOT_RECOGNISED)
                tone, outcome = "refused", "unknown_card"
            elif card.user is not None:
                tone, outcome = self._staff_tap(work, card.user)
                holder = f"staff:{card.user.username}"
            else:
                assert card.pupil is not None
                holder = f"pupil:{card.pupil.admission_number}"
                if self.mode.name == "staff":
                    unlock, tone, outcome = self._confiscate_at_kiosk(work, card.pupil)
                else:
                    unlock, tone, outcome = self._pupil_tap(work, card.pupil)
            # The outcome is a stable reason code, never screen text (which names the pupil).
            # A tap refused because of a safeguarding hold is for the DSL's eyes only.
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "tap",
                pupil_id=card.pupil.id if card and card.pupil else None,
                details={
                    "card": holder,
                    "uid_ref": cards.uid_reference(cards.uid_hash(self.instance.card_key, tap.uid)),
                    "outcome": outcome,
                    "mode": mode.name,
                },
                restricted=outcome == "held",
            )
        if unlock is not None:
            self._guarded("opening a compartment", self._start_unlock, unlock)
        self._signal(tone)

    def _refuse(
        self, outcome: str, title: str, message: str, *, name: str | None = None
    ) -> tuple[None, str, str]:
        self._show("refused", title, message, name=name)
        return None, "refused", outcome

    def _pupil_tap(self, work: Work, pupil: PupilRef) -> tuple[Unlock | None, str, str]:
        """A pupil's card in pupil mode: collect, deposit, or say why not. Returns the unlock
        to start (if any), the tone, and the tap's outcome (a reason code)."""
        name = self.policy.display_name(pupil)
        who = Actor.for_pupil(pupil, self.config.name)
        now = self.clock.now()
        daily, held = self._records_of(work, pupil.id)
        on_roll = pupil.status is PupilStatus.ACTIVE
        if not on_roll and (daily is None or daily.state is not CustodyState.IN_LOCKER):
            # A pupil who left may still take their device home; nothing else.
            return self._refuse("card_not_active", *say.NOT_ACTIVE)
        if daily is not None and daily.kiosk != self.config.name:
            return self._refuse(
                "other_cabinet",
                say.hello(name),
                say.other_cabinet(daily.kiosk),
                name=name,
            )
        if daily is not None:
            return self._daily_tap(work, who, name, daily, now, on_roll=on_roll)
        if held is not None:
            # Confiscated, or held for the DSL: the same words either way (a hold is not
            # for the pupil to learn of at a kiosk), and no second device is taken meanwhile.
            return self._refuse(
                "held" if held == CustodyState.SAFEGUARDING_HOLD else "confiscated",
                say.hello(name),
                say.WITH_THE_OFFICE,
                name=name,
            )
        if self._hardware_out_of_order() or self._no_pupil_compartment_works():
            return self._refuse("fault", *say.KIOSK_FAULT)
        try:  # start_deposit checks everything before it writes anything
            record = self.ledger.start_deposit(
                work.connection,
                who,
                self.clock,
                pupil=pupil,
                kiosk=self._kiosk,
                timeout_s=self.config.deposit_timeout_s,
                busy=self._busy(),
                has_no_deposit=True,  # _records_of just found none, in this transaction
            )
        except LockerError as exc:
            return self._refuse(say.reason_of(exc), say.hello(name), say.refusal(exc), name=name)
        number = record.compartment
        assert number is not None and record.pending_until is not None
        self._show(
            "ok",
            say.LOCKER_OPEN,
            say.PUT_IT_IN,
            name=name,
            compartment=number,
        )
        self._after(max(0.0, (record.pending_until - now).total_seconds()), "pending", record.id)
        return Unlock(number, "deposit", record, name=name, actor=who), "ok", "deposit"

    @staticmethod
    def _records_of(work: Work, pupil_id: int) -> tuple[RecordRef | None, CustodyState | None]:
        """The pupil's active deposit (as ``CustodyLedger.daily_ref`` gives it), and the state
        of a device of theirs the office holds (a hold before a confiscation), if any."""
        daily = held = None
        for row in work.connection.execute(_PUPIL_ACTIVE, {"pupil_id": pupil_id}):
            state = row[1]
            if row[2] is CustodyKind.DAILY and state in DAILY_ACTIVE_STATES:
                daily = RecordRef(*row)
            elif state in _WITH_THE_OFFICE and held is not CustodyState.SAFEGUARDING_HOLD:
                held = state
        return daily, held

    def _daily_tap(
        self,
        work: Work,
        who: Actor,
        name: str,
        daily: RecordRef,
        now: datetime,
        *,
        on_roll: bool,
    ) -> tuple[Unlock | None, str, str]:
        """A pupil whose deposit is in this cabinet: open it again (to finish or confirm
        the deposit), or to collect."""
        number = daily.compartment
        assert number is not None
        if number in self.unlocks or number in self.awaiting_close:
            self._show("info", say.LOCKER_OPEN, say.OPEN_FOR_YOU, name=name, compartment=number)
            return None, "ok", "already_open"
        if number in self._faulty():
            return self._refuse(
                "fault",
                say.hello(name),
                say.CANNOT_OPEN_NOW,
                name=name,
            )
        if daily.state is CustodyState.PENDING_DEPOSIT or (
            on_roll and daily.flag == FLAG_UNVERIFIED and self.policy.in_deposit_window(now)
        ):
            purpose = "deposit" if daily.state is CustodyState.PENDING_DEPOSIT else "reconfirm"
            self._show(
                "ok",
                say.LOCKER_OPEN,
                say.PUT_IT_IN,
                name=name,
                compartment=number,
            )
            return Unlock(number, purpose, daily, name=name, actor=who), "ok", purpose
        try:
            self.ledger.check_collect(work.connection, who, self.clock, daily)
        except LockerError as exc:
            return self._refuse(say.reason_of(exc), say.hello(name), say.refusal(exc), name=name)
        self._show(
            "ok",
            say.LOCKER_OPEN,
            say.TAKE_IT,
            name=name,
            compartment=number,
        )
        return Unlock(number, "collect", daily, name=name, actor=who), "ok", "collect"

    def _busy(self) -> set[int]:
        """Compartments not to be given out now, whatever the records say: opening or open
        (a device just released may still be inside), a door standing open (forced, stuck
        switch, found open at start), or a part failing."""
        busy = {*self.unlocks, *self.awaiting_close, *self.open_doors}
        busy.update(self._faulty())
        return busy

    def _staff_tap(self, work: Work, user: StaffRef) -> tuple[str, str]:
        if not user.active:
            self._show("refused", *say.NOT_ACTIVE)
            return "refused", "card_not_active"
        if not self.online:
            self._end_mode(work, finish="the kiosk went offline")
            self._show("refused", *say.OFFLINE_STAFF)
            return "refused", "offline"
        if self.mode.name == "enrol":
            # The dashboard asked for a new card: a staff card does not take that over.
            self._show(
                "refused",
                say.TAP_THE_NEW_CARD,
                say.ENROLLING,
            )
            return "refused", "enrolling"
        if self.mode.name == "staff" and self.mode.staff_user_id == user.id:
            self._end_mode(work)
            self._show("info", say.STAFF_MODE_ENDED, "")
            return "ok", "staff_mode_ended"
        self._set_mode(
            work,
            Mode(
                "staff",
                self.clock.monotonic() + self.config.staff_mode_s,
                staff_user_id=user.id,
                staff_name=user.display_name,
            ),
            self.config.staff_mode_s,
        )
        self._show_mode(self.config.staff_mode_s)
        self.audit.record(
            work.connection, self.clock, Actor.for_user(user, self.config.name), "kiosk.staff_mode"
        )
        return "ok", "staff_mode"

    def _confiscate_at_kiosk(self, work: Work, pupil: PupilRef) -> tuple[Unlock | None, str, str]:
        staff = work.orm.get(User, self.mode.staff_user_id)
        self._end_mode(work)
        if not self.online:
            self._show("refused", *say.OFFLINE_STAFF)
            return None, "refused", "offline"
        if staff is None or not staff.active:
            return self._refuse("staff_mode_ended", say.STAFF_MODE_ENDED, say.TAP_STAFF_CARD_AGAIN)
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
            self._show("refused", say.CANNOT_CONFISCATE, say.refusal(exc))
            return None, "refused", say.reason_of(exc)
        number = record.compartment.number
        self._show(
            "ok",
            say.secure_compartment(number),
            say.put_their_device_in(name),
            compartment=number,
        )
        return Unlock(number, "confiscation", RecordRef.of(record), name=name), "ok", "confiscation"

    def _enrol_card(self, work: Work, tap: Tap) -> tuple[str, str]:
        mode = self.mode
        pupil = work.orm.get(Pupil, mode.enrol_pupil_id) if mode.enrol_pupil_id else None
        user = work.orm.get(User, mode.enrol_user_id) if mode.enrol_user_id else None
        self._end_mode(work)
        if not self.online:
            self._show("refused", say.NOT_ENROLLED, say.ENROLLING_OFFLINE)
            self._finish_command(work, mode.command_id, error="the kiosk went offline")
            return "refused", "offline"
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
            self._show("refused", say.NOT_ENROLLED, str(exc))
            self._finish_command(work, mode.command_id, error=str(exc))
            return "refused", "not_enrolled"
        self._show("ok", say.ENROLLED, say.for_whom(mode.enrol_label))
        self._finish_command(work, mode.command_id, result={"card": card.id})
        return "ok", "enrolled"

    def _set_mode(self, work: Work, mode: Mode, seconds: float) -> None:
        """Enter ``mode`` for ``seconds``; a command waiting in the mode it replaces is
        finished (failed, with why)."""
        self._end_mode(work, finish=f"replaced: the kiosk went into {mode.name} mode")
        self.mode = mode
        self._after(seconds, "mode_end")

    def _end_mode(self, work: Work | None = None, *, finish: str | None = None) -> None:
        """Back to pupil mode. With ``finish``, a command the mode was waiting for fails
        with that error (in ``work``)."""
        mode, self.mode = self.mode, Mode()
        self._cancel("mode_end")
        if finish is not None and mode.command_id is not None and work is not None:
            self._finish_command(work, mode.command_id, error=finish)

    def _timer_mode_end(self, _key: Any) -> None:
        mode = self.mode
        try:
            with self._unit() as work:
                self._end_mode(work, finish="no new card was tapped in time")
                self._show_idle()
        except BaseException:
            self.mode = mode
            raise

    # ======================================================================== unlocking

    def _start_unlock(self, unlock: Unlock) -> None:
        """Energise the lock (the intent is already committed)."""
        number = unlock.number
        self.unlocks[number] = unlock
        if unlock.first_try is None:
            unlock.first_try = self.clock.monotonic()
        if number in self.open_doors and not unlock.energised:
            # The door stands open already (forced, a stuck switch, found open at start):
            # there is no latch to release and no opening to wait for.
            self._door_opened(number, forced=False, already_open=True)
            self.unlocks.pop(number, None)
            self._pulse_ended(unlock)
            return
        try:
            self.cabinet.locks[number].pulse()
        except LockBusy as exc:
            if self.clock.monotonic() - unlock.first_try < UNLOCK_GIVE_UP_S:
                wait = exc.retry_after if exc.retry_after > 0 else UNLOCK_RETRY_S
                self._after(min(UNLOCK_RETRY_S, wait), "unlock_retry", number)
            else:
                reason = (
                    "its solenoid was still resting after the last pulse"
                    if exc.resting
                    else "too many compartments were opening at once"
                )
                self._unlock_failed(unlock, reason, counts=False)
            return
        except (HardwareError, KeyError) as exc:
            self._lock_fault(number, exc)
            self._unlock_failed(unlock, f"the lock did not work ({exc})")
            return
        unlock.energised = True
        if lock_source(number) in self.faults:
            self._lock_works(number)

    def _timer_unlock_retry(self, number: int) -> None:
        unlock = self.unlocks.get(number)
        if unlock is not None and not unlock.energised:
            self._start_unlock(unlock)

    def _on_pulse_end(self, event: PulseEnd) -> None:
        unlock = self.unlocks.pop(event.number, None)
        if unlock is None:
            return
        # A door standing open at the end of the pulse was not kept shut by the lock.
        opened = (
            event.door_opened
            or unlock.door_opened
            or event.number in self.awaiting_close
            or event.number in self.open_doors
        )
        try:
            if opened:
                self._pulse_ended(unlock)
            else:
                self._unlock_failed(unlock, "the door was not opened")
        except BaseException:
            self.unlocks.setdefault(event.number, unlock)  # handled again (offline)
            raise

    def _pulse_ended(self, unlock: Unlock) -> None:
        """The compartment opened: the lock works, and a command asking for it is done."""
        number = unlock.number
        if self.failed_unlocks.get(number) or unlock.command_id is not None:
            with self._unit() as work:
                if self.failed_unlocks.get(number):
                    self._compartment(work, number, failed_unlocks=0)
                self._finish_command(
                    work, unlock.command_id, result={"compartment": number, "opened": True}
                )
            self.failed_unlocks.pop(number, None)
        self._open_all_next(number, opened=True)

    def _unlock_failed(self, unlock: Unlock, why: str, *, counts: bool = True) -> None:
        """The door never opened: undo what was waiting for it, and count the failure when
        someone at the kiosk meant to open it (``counts``, and a pupil's or staff purpose)."""
        if self.unlocks.get(unlock.number) is unlock:
            del self.unlocks[unlock.number]
        attended = unlock.purpose in COUNTED_PURPOSES
        try:
            self._unlock_failed_unit(unlock, why, counts=counts and attended)
        except BaseException:
            self.unlocks.setdefault(unlock.number, unlock)
            raise
        self._open_all_next(unlock.number, opened=False)
        if attended:
            self._signal("refused")

    def _unlock_failed_unit(self, unlock: Unlock, why: str, *, counts: bool) -> None:
        with self._unit() as work:
            if counts:
                self.failed_unlocks[unlock.number] = cabinets.count_failed_unlock(
                    work.orm,
                    self.actor,
                    self.clock,
                    self.audit,
                    self.compartment_ids[unlock.number],
                    out_of_service_after=self.config.out_of_service_after,
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
                    say.DOOR_DID_NOT_OPEN,
                    say.TAP_AGAIN,
                    name=unlock.name,
                )
            elif unlock.purpose == "confiscation" and record is not None:
                self._confiscation_not_stored(work, record, unlock.number, why)
                self._show("refused", say.DOOR_DID_NOT_OPEN, say.TO_THE_OFFICE)
            elif unlock.purpose in ("collect", "reconfirm"):
                self._show(
                    "refused",
                    say.DOOR_DID_NOT_OPEN,
                    say.TAP_AGAIN,
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
            self.ledger.to_office_safe(
                work.orm,
                self.actor,
                self.clock,
                record,
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

    def _door_opened(self, number: int, forced: bool, *, already_open: bool = False) -> None:
        """A door opened (``already_open``: it stood open when its unlock began, and counts
        as opening now, without a new observation)."""
        self.open_doors.add(number)
        unlock = self.unlocks.get(number)
        expected = unlock is not None
        if unlock is not None:
            unlock.door_opened = True
            self.awaiting_close[number] = unlock
        if forced or (unlock is not None and unlock.purpose == "collect"):
            with self._unit() as work:  # an alarm, or custody changes: commit it now
                if not already_open:
                    self._observe_door_opened(work, number, expected, self.clock.now())
                if forced:
                    self._raise_alarm(work, number, "forced")
                else:
                    self._collected(work, unlock)
        elif not already_open:
            # A plain observation: written with the next unit of work, or within
            # OBSERVATION_DELAY_S, with the time it happened (group commit).
            self._observations.append((number, expected, self.clock.now()))
            self._after(OBSERVATION_DELAY_S, "observations")
        if already_open:
            return  # its alarm timer runs from when it was first seen open
        if unlock is not None:
            try:
                self.cabinet.locks[number].lock()  # the latch has done its job
            except HardwareError as exc:  # the lock reports its own switch-off failures
                log.warning("compartment %d: relocking failed: %s", number, exc)
        self._after(self.config.door_open_alarm_s, "door_alarm", number)

    def _observe_door_opened(
        self, work: Work, number: int, expected: bool, at: datetime, *, door: bool = True
    ) -> None:
        if door:
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
            say.LOCKER_OPEN,
            say.TAKE_IT_BYE,
            name=unlock.name,
            compartment=unlock.number,
        )

    def _door_closed(self, number: int) -> None:
        self._cancel("door_alarm", number)
        self.open_doors.discard(number)
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
        if alarm is not None and not self.alarms:
            self._silence_alarm()  # the last alarmed door is shut
        if unlock is not None and unlock.purpose in ("deposit", "reconfirm", "confiscation"):
            self._signal("ok")
        else:
            self._idle_indication()

    def _door_closed_unit(self, number: int, unlock: Unlock | None) -> None:
        with self._unit() as work:
            if number not in work.opened_and_shut:
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
                self._show_idle()  # the alarms left, if any (a closing deposit says more)
            if unlock is not None:
                self._door_closed_after_unlock(work, unlock)

    def _door_closed_after_unlock(self, work: Work, unlock: Unlock) -> None:
        record = unlock.record
        if record is None and unlock.custody_id is not None:  # opened by a command
            loaded = work.orm.get(CustodyRecord, unlock.custody_id)
            record = RecordRef.of(loaded) if loaded is not None else None
        locked_away = say.locked_away(unlock.number)
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
                    *say.secured(unlock.number),
                    compartment=unlock.number,
                )
            elif unlock.purpose == "collect":
                self._show("ok", *say.THANK_YOU, name=unlock.name)
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
        title = say.DOOR_FORCED if kind == "forced" else say.CLOSE_THE_DOOR
        self._show("alarm", title, say.locker(number), compartment=number, hold_s=0)
        self._indicate("alarm", beep="alarm")
        self._after(self._alarm_repeat_s(), "alarm_repeat")

    def _alarm_repeat_s(self) -> float:
        burst = float(getattr(self.cabinet.indicators, "alarm_s", 30.0))
        return max(ALARM_REPEAT_S, burst + 10.0)

    def _timer_alarm_repeat(self, _key: Any) -> None:
        """An alarm lasts until its door is closed: the LED stays on alarm, and the buzzer
        sounds its alarm burst again every so often (not for ever without a pause)."""
        if not self.alarms:
            return
        self._indicate("alarm", beep="alarm")
        self._after(self._alarm_repeat_s(), "alarm_repeat")

    def _silence_alarm(self) -> None:
        self._cancel("alarm_repeat")
        self._led = None
        try:
            self.cabinet.indicators.off()  # the buzzer may be in the middle of a burst
        except HardwareError as exc:
            log.warning("indicators: %s", exc)

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
        """Execute a claimed command; every path ends in a result or an error, and the loop
        goes on whatever the handler raised. When the database goes out of reach meanwhile,
        the command fails when the kiosk is back online (unless its door finishes it
        first)."""
        try:
            if kind in sim_commands.HANDLERS:
                result = sim_commands.run(self.cabinet.sim, kind, payload, self.compartment_ids)
            else:
                handler: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = getattr(
                    self, f"_command_{kind}", None
                )
                if handler is None:
                    raise ValueError(f"this kiosk does not know the command {kind!r}")
                result = handler(command_id, payload)
        except SQLAlchemyError as exc:
            if unreachable(exc):
                self._unfinished.setdefault(
                    command_id, {"result": None, "error": "the kiosk lost the database meanwhile"}
                )
                raise  # the loop goes offline
            log.exception("command %d (%s) failed", command_id, kind)
            self._fail_command(command_id, f"database error: {type(exc).__name__}")
            return
        except Exception as exc:
            if not isinstance(exc, (LockerError, HardwareError, KeyError, ValueError)):
                log.exception("command %d (%s) failed", command_id, kind)
            self._fail_command(command_id, str(exc) or type(exc).__name__)
            return
        if result is not None:  # finished at once; otherwise later (door, card)
            with self._unit() as work:
                self._finish_command(work, command_id, result=result)

    def _fail_command(self, command_id: int, error: str) -> None:
        with self._unit() as work:
            self._finish_command(work, command_id, error=error)

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
        """Open every compartment, staggered (an evacuation, the end of term). A compartment
        holding a device under safeguarding hold stays locked: nobody is to look at that
        device or take it, and the DSL can open it on its own if the building must be
        emptied. Every other device in a compartment that opens is flagged for the office to
        check it is still there."""
        if self.open_all is not None:
            raise ValueError("open all is already running")
        with self._unit() as work:
            records = (
                work.orm.execute(
                    select(CustodyRecord)
                    .join(Compartment, Compartment.id == CustodyRecord.compartment_id)
                    .where(
                        Compartment.kiosk_id == self.kiosk_id,
                        CustodyRecord.state.in_(
                            [
                                CustodyState.IN_LOCKER,
                                CustodyState.CONFISCATED,
                                CustodyState.SAFEGUARDING_HOLD,
                            ]
                        ),
                    )
                )
                .scalars()
                .all()
            )
            held = {
                record.compartment.number
                for record in records
                if record.state is CustodyState.SAFEGUARDING_HOLD
            }
            numbers = deque(n for n in sorted(self.compartment_ids) if n not in held)
            self.open_all = OpenAll(command_id, numbers, kept_locked=sorted(held))
            for record in records:
                if record.state is CustodyState.SAFEGUARDING_HOLD:
                    continue
                self.ledger.flag(
                    work.orm,
                    self.actor,
                    self.clock,
                    record,
                    flag=FLAG_CHECK,
                    detail=f"compartment {record.compartment.number} was unlocked by "
                    f"'open all' (command {command_id}): check the device is still inside",
                )
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "emergency.open_all",
                details={
                    "compartments": len(numbers),
                    "command": command_id,
                    "flagged": sum(
                        1 for r in records if r.state is not CustodyState.SAFEGUARDING_HOLD
                    ),
                    "kept_locked": sorted(held),
                },
            )
            self._show("alarm", *say.OPENING_EVERY, hold_s=0)
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
        if self.open_all is batch and not batch.waiting and not batch.in_flight:
            with self._unit() as work:
                self._finish_command(
                    work,
                    batch.command_id,
                    result={
                        "opened": sorted(batch.opened),
                        "failed": sorted(batch.failed),
                        "kept_locked": batch.kept_locked,
                    },
                )
                self.open_all = None
                self._show_idle()

    def _command_enrol_next_card(self, command_id: int, payload: dict[str, Any]) -> None:
        """Wait for the next unknown card and enrol it. Refused while a member of staff is
        using the kiosk; an enrolment still waiting is replaced (its command fails)."""
        if self.mode.name == "staff":
            raise ValueError(
                "a member of staff is using the kiosk (staff mode): try again when they have "
                "finished"
            )
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
        previous = self.mode
        try:
            with self._unit() as work:
                if previous.name == "enrol" and previous.command_id is not None:
                    self._finish_command(
                        work,
                        previous.command_id,
                        error=f"replaced by command {command_id} (another card to enrol)",
                    )
                self.mode = Mode(
                    "enrol",
                    self.clock.monotonic() + ENROL_WAIT_S,
                    enrol_pupil_id=payload.get("pupil_id"),
                    enrol_user_id=payload.get("user_id"),
                    enrol_label=label,
                    command_id=command_id,
                )
                self._show_mode(ENROL_WAIT_S)
        except BaseException:
            self.mode = previous
            raise
        self._after(ENROL_WAIT_S, "mode_end")
        return None

    # ======================================================================== reconciliation

    def _reconcile(self) -> None:
        """Bring the database and the cabinet into agreement after a (re)start
        (:mod:`kiosk.reconcile`), then wait for the doors found open."""
        open_doors = {
            number
            for number, door in self.cabinet.doors.items()
            if door.is_open and number in self.compartment_ids
        }
        self.open_doors = set(open_doors)
        reconciler = Reconciler(self.ledger, self.policy, self.actor, self.clock)
        with self._unit() as work:
            result = reconciler.reconcile(work.orm, self.kiosk_id, self.compartment_ids, open_doors)
            for waiting in result.waiting:
                self.awaiting_close[waiting.number] = Unlock(
                    waiting.number,
                    waiting.purpose,
                    waiting.record,
                    door_opened=True,
                    name=waiting.name,
                )
            for number in result.alarms:
                self._raise_alarm(work, number, "door_open")
            for number in open_doors:
                self._after(self.config.door_open_alarm_s, "door_alarm", number)
            self.audit.record(
                work.connection,
                self.clock,
                self.actor,
                "kiosk.started",
                details={"hardware": self.cabinet.backend, **result.summary},
            )
        log.info("reconciled at start: %s", result.summary)

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
        self.publisher.write_file(now)
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        faults = "; ".join(self.faults.values())
        network = "" if self.online else " (OFFLINE: working from the local copy)"
        return f"kiosk {self.config.name}: " + (f"FAULT {faults}" if faults else "ok") + network

    # ======================================================================== screen, state

    @property
    def screen(self) -> dict[str, Any]:
        """What the screen shows now."""
        return self._screen.current

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
        """Show it, for ``hold_s`` seconds (default SCREEN_HOLD_S; 0: until replaced)."""
        seq = self._screen.show(tone, title, message, name=name, compartment=compartment)
        hold = SCREEN_HOLD_S if hold_s is None else hold_s
        if hold > 0:
            self._after(hold, "screen_idle", seq)

    def _show_idle(self) -> None:
        """What the screen shows when nothing is happening: out of order, the prompt of the
        mode the kiosk is in, an open door's alarm, or the invitation to tap."""
        if self._kiosk_fault():
            self._show("alarm", *say.OUT_OF_ORDER, hold_s=0)
        elif self.mode.name != "pupil":
            self._show_mode(0)
        elif self.alarms:
            number = next(iter(self.alarms))
            self._show(
                "alarm",
                say.CLOSE_THE_DOOR,
                say.locker(number),
                hold_s=0,
                compartment=number,
            )
        else:
            self._show("idle", say.TAP_YOUR_CARD, "", hold_s=0)

    def _show_mode(self, hold_s: float) -> None:
        if self.mode.name == "enrol":
            self._show(
                "info", say.TAP_THE_NEW_CARD, say.for_whom(self.mode.enrol_label), hold_s=hold_s
            )
        else:
            self._show(
                "info",
                *say.STAFF_MODE,
                hold_s=hold_s,
            )

    def _timer_screen_idle(self, seq: int) -> None:
        if seq == self._screen.seq:
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

    def _write_state(self, connection: Connection, *, unit: str | None = None) -> None:
        """Publish the kiosk's state (screen, alarms, faults) if it changed; with ``unit``
        (the unit of work's key), always, with the key. Offline, the state file too (online
        the screen reads the database; the heartbeat keeps the file recent)."""
        if self.publisher.write(connection, self._state(), unit=unit) and not self.online:
            self.publisher.write_file(self.clock.now())

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
        self.publisher.published = None
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
            self._check_key(self.central)
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
        self.publisher.published = None
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
        self.publisher.write_file(self.clock.now())  # the screen stops saying "offline" now
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
        for key, when in list(self.timers.named("pending")):
            if key in created:
                self.timers.cancel("pending", key)
                if created[key] is not None:
                    self.timers.at(when, "pending", created[key])

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

    def _set_fault(
        self,
        key: str,
        message: str,
        *,
        compartments: frozenset[int] | set[int] | None = None,
        retry_s: float | None = None,
    ) -> None:
        """Record a fault (see :mod:`kiosk.faults`). ``compartments``: the fault of one part,
        which takes only those compartments out of use (None: the whole kiosk is out of
        order). ``retry_s``: a fault the kiosk found itself (no recovery will be reported):
        after that long the compartments are used again, and the next success clears it."""
        was_out_of_order = self._kiosk_fault()
        retry_at = None if retry_s is None else self.clock.monotonic() + retry_s
        if not self.fault_book.set(key, message, compartments=compartments, retry_at=retry_at):
            return
        log.error("kiosk fault: %s", message)
        self._guarded("recording a fault", self._record_fault, key, message, compartments)
        if self._kiosk_fault() and not was_out_of_order:
            self._indicate("error")

    def _record_fault(self, key: str, message: str, compartments: Any) -> None:
        details: dict[str, Any] = {"fault": key, "message": message}
        if compartments is not None:
            details["compartments"] = sorted(compartments)
        with self._unit() as work:
            self.audit.record(
                work.connection, self.clock, self.actor, "kiosk.fault", details=details
            )
            if compartments is None:
                self._show_idle()

    def _clear_fault(self, key: str) -> None:
        cleared = self.fault_book.clear(key)
        if cleared is None:
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
                if cleared.scope is None:
                    self._show_idle()
        except BaseException:
            self.fault_book.restore(key, cleared)
            raise
        if cleared.scope is None:
            self._idle_indication()

    def _hardware_fault(self, source: str, message: str) -> None:
        """A part reported failing: only the compartments it serves go out of use when the
        part is known (a lock, a door switch, an expander); anything else stops the kiosk
        until the hardware reports it working again."""
        scope = scope_of(source, self.cabinet.spec.compartments)
        self._set_fault(source, message, compartments=scope)

    def _source_of(self, error: HardwareError) -> str:
        """The part a fault report is about (called in the hardware's thread)."""
        return source_of(error, self.cabinet.faults)

    def _lock_fault(self, number: int, exc: BaseException) -> None:
        """The kiosk's own attempt to energise lock ``number`` failed: that compartment is
        out of use for LOCK_RETRY_S (or until the hardware reports the lock working)."""
        key = lock_source(number)
        if isinstance(exc, KeyError):
            self._set_fault(
                key, f"compartment {number} has no lock in [hardware]", compartments={number}
            )
            return
        reported = key in self.cabinet.faults  # its recovery will be reported
        self._set_fault(
            key,
            f"compartment {number} lock: {exc}",
            compartments={number},
            retry_s=None if reported else LOCK_RETRY_S,
        )

    def _lock_works(self, number: int) -> None:
        key = lock_source(number)
        if key not in self.cabinet.faults:
            self._guarded("clearing a fault", self._clear_fault, key)

    def _faulty(self) -> set[int]:
        """Compartments out of use now because a part of theirs fails."""
        return self.fault_book.out_of_use(self.clock.monotonic())

    def _kiosk_fault(self) -> bool:
        return self.fault_book.kiosk_wide()

    def _hardware_out_of_order(self) -> bool:
        return self.fault_book.blocks_deposits()

    def _no_pupil_compartment_works(self) -> bool:
        pupil = set(self.compartment_ids) - set(self.config.secure_compartments)
        return self.fault_book.none_of(pupil, self.clock.monotonic())

    def _database_fault(self, exc: Exception) -> None:
        self.faults["database"] = f"database: {type(exc).__name__}"
        self._show("alarm", *say.OUT_OF_ORDER, hold_s=0)
        self._indicate("error", beep="refused")

    def _signal(self, tone: str) -> None:
        if tone == "ok":
            self._indicate("ok", beep="ok")
        elif tone == "refused":
            self._indicate("refused", beep="refused")

    def _idle_indication(self) -> None:
        if self._kiosk_fault():
            self._indicate("error")
        elif self.alarms:
            self._indicate("alarm")
        else:
            self._indicate("idle")

    def _indicate(self, state: str, beep: str | None = None) -> None:
        """LED ``state`` and a ``beep``; while a door alarm lasts the LED stays on alarm
        (a tap still sounds its beep)."""
        try:
            if state == "alarm" or (not self.alarms and state != self._led):
                self._led = None  # in case it fails half-way
                self.cabinet.indicators.status(state)  # an alarm's blinking starts again
                self._led = state
            if beep:
                self.cabinet.indicators.beep(beep)
        except HardwareError as exc:
            log.warning("indicators: %s", exc)


# LiveClock and SimulatedClock live in kiosk.cabinet_clock; named here too for the scripts that
# take them from the controller (bench/).
__all__ = ["FLAG_UNVERIFIED", "Controller", "LiveClock", "SimulatedClock", "unreachable"]
