"""The audit trail: append-only events, each chained to the one before by a keyed hash.

``hash = HMAC-SHA256(key, prev_hash | seq | time | kind | actor | kiosk | custody | pupil |
restricted | details)`` with a key derived from the site secret, so an event cannot be
edited, removed or reordered without :meth:`AuditTrail.verify` naming it, and a new chain
cannot be forged without the secret. ``seq`` is assigned under the lock of the single
``audit_head`` row, so the chain never forks however many writers there are. Every commit
that appends events also writes the head's **seal** (a keyed hash of its seq and hash):
without the secret the head cannot be moved back to an earlier event, so removing the most
recent events, or all of them, is found like any other removal.

A retention purge removes old events and appends an ``audit.purged`` checkpoint that lists
each removed run (first seq, last seq, hash of the last removed event); verification steps
over exactly those runs and nothing else. Checkpoints are never purged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from kiosk.actors import Actor
from kiosk.clock import Clock
from kiosk.db import Executor, before_commit, connection_of, run_before_commit_now
from kiosk.errors import AuditChainBroken, InstanceError
from kiosk.models import AuditEvent, AuditHead

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
PURGE_KIND = "audit.purged"
_HEAD_CACHE = "kiosk.audit.head"
_SEAL_HOOK = "kiosk.audit.seal"
_EVENTS = AuditEvent.__table__
_HEAD = AuditHead.__table__
# Built once: statement construction costs more than execution on the tap path.
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_SEAL_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(seal=bindparam("seal"))
_INSERT_EVENT = insert(_EVENTS)
_COLUMNS = (
    "seq",
    "occurred_at",
    "kind",
    "actor",
    "kiosk",
    "custody_id",
    "pupil_id",
    "restricted",
    "details",
    "prev_hash",
    "hash",
)
_ROW_FIELDS = ("id", *_COLUMNS)


def canonical_json(value: Mapping[str, Any] | None) -> str:
    """The one text form of an event's details (sorted keys, no spaces, UTF-8)."""
    return json.dumps(
        value or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


@dataclass
class RecordedEvent:
    """An event as written (what :meth:`AuditTrail.record` returns)."""

    seq: int
    occurred_at: datetime
    kind: str
    actor: str
    kiosk: str | None
    custody_id: int | None
    pupil_id: int | None
    restricted: bool
    details: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Gap:
    """A run of events removed by a retention purge."""

    first_seq: int
    last_seq: int
    last_hash: str


@dataclass(frozen=True)
class VerifyReport:
    events: int
    head_seq: int
    head_hash: str
    purged_runs: int
    records: int = 0  # custody records checked against their events


class AuditTrail:
    """Writes and verifies the chain. ``key`` is derived from the site secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the audit key must be at least 16 bytes")
        self._key = key

    def event_hash(
        self,
        prev_hash: str,
        seq: int,
        occurred_at: datetime,
        kind: str,
        actor: str,
        kiosk: str | None,
        custody_id: int | None,
        pupil_id: int | None,
        restricted: bool,
        details: str,
    ) -> str:
        fields = [
            prev_hash,
            seq,
            occurred_at.isoformat(timespec="microseconds"),
            kind,
            actor,
            kiosk,
            custody_id,
            pupil_id,
            bool(restricted),
            details,
        ]
        message = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def seal_of(self, seq: int, head_hash: str) -> str:
        """The head's seal: a keyed hash of its seq and hash (64 hex digits)."""
        message = json.dumps(["audit-head", seq, head_hash], separators=(",", ":"))
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def _seal_head(self, connection: Connection) -> None:
        """Before a commit that appended events: seal the head as it now stands."""
        cached = connection.info.get(_HEAD_CACHE)
        if cached is not None and cached[0] is connection.get_transaction():
            seq, head_hash = cached[1], cached[2]  # the last event was written at top level
        else:  # it was written in a savepoint: what the head says now counts
            seq, head_hash = connection.execute(_READ_HEAD).one()
        connection.execute(_SEAL_HEAD, {"seal": self.seal_of(seq, head_hash)})

    def _hash_of(self, event: Any, prev_hash: str) -> str:
        return self.event_hash(
            prev_hash,
            event.seq,
            event.occurred_at,
            event.kind,
            event.actor,
            event.kiosk,
            event.custody_id,
            event.pupil_id,
            event.restricted,
            event.details,
        )

    def record(
        self,
        executor: Executor,
        clock: Clock,
        actor: Actor,
        kind: str,
        *,
        kiosk: str | None = None,
        custody_id: int | None = None,
        pupil_id: int | None = None,
        details: Mapping[str, Any] | None = None,
        restricted: bool = False,
        at: datetime | None = None,
    ) -> RecordedEvent:
        """Append one event in the caller's transaction (it commits or rolls back with it).

        ``at`` is when it happened, if earlier than now (an observation written with the next
        unit of work); by default the clock's now.

        ``restricted`` marks safeguarding details that only the DSL and admin may read.
        Plain statements, no ORM objects: this runs on every tap. The head row moves with the
        insert itself (a database trigger), so it always names the last event written.
        """
        connection = connection_of(executor)
        # The head is read (and locked) once per transaction or savepoint: the cache is keyed
        # by the connection's innermost transaction, so leaving a savepoint (released or
        # rolled back) always reads the head again, and a rolled-back event can never be
        # chained to.
        scope = connection.get_nested_transaction() or connection.get_transaction()
        cached = connection.info.get(_HEAD_CACHE)
        if cached is not None and cached[0] is scope:
            seq, prev_hash = cached[1], cached[2]
        else:
            seq, prev_hash = connection.execute(_READ_HEAD).one()
        event = RecordedEvent(
            seq=seq + 1,
            occurred_at=at or clock.now(),
            kind=kind,
            actor=actor.label,
            kiosk=kiosk if kiosk is not None else actor.kiosk,
            custody_id=custody_id,
            pupil_id=pupil_id,
            restricted=restricted,
            details=canonical_json(details),
            prev_hash=prev_hash,
            hash="",
        )
        event.hash = self._hash_of(event, prev_hash)
        # The insert moves the head too (a trigger of migration 0002).
        connection.execute(_INSERT_EVENT, {name: getattr(event, name) for name in _COLUMNS})
        connection.info[_HEAD_CACHE] = (scope, event.seq, event.hash)
        before_commit(connection, _SEAL_HOOK, self._seal_head)
        return event

    def check_key(self, session: Session) -> None:
        """Raise InstanceError when this instance's secret is not the one the database was
        written with (a Pi given its own ``secret.key`` on a school's shared database: its
        events would break the chain for everyone, its cards would never match). A database
        with no events yet is anybody's. Reads the newest event only."""
        row = session.execute(
            select(*(getattr(AuditEvent, name) for name in _ROW_FIELDS))
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).first()
        if row is None:
            return
        try:
            ours = hmac.compare_digest(self._hash_of(row, row.prev_hash), row.hash)
        except (TypeError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InstanceError(
                "this instance's secret.key is not the one its database was written with (or "
                f"the newest audit event, seq {row.seq}, was edited): on a shared database "
                "every machine needs the same secret.key; copy it from the machine that "
                "created the database (docs/install.md, several cabinets in one school)"
            )

    # ------------------------------------------------------------------------------------

    def verify(self, session: Session, batch: int = 5000) -> VerifyReport:
        """Walk the whole chain, then check every custody record against its events
        (:func:`kiosk.custody.verify_records`); raise AuditChainBroken naming the first bad
        event or record."""
        from kiosk.custody import verify_records  # the ledger writes through this module

        # Inside a unit of work that appended events: seal them now, as its commit would.
        run_before_commit_now(session.connection(), _SEAL_HOOK)
        head = session.get(AuditHead, 1)
        if head is None:
            raise AuditChainBroken("the audit head row is missing: the chain cannot be checked")
        gaps = self._gaps(session)
        gaps_by_first = {gap.first_seq: gap for gap in gaps}
        prev_seq, prev_hash, count, runs_used = 0, GENESIS_HASH, 0, 0

        for event in self._events(session, batch):
            expected_prev = prev_hash
            if event.seq != prev_seq + 1:
                cursor, covering = prev_seq + 1, None
                while cursor in gaps_by_first and cursor < event.seq:
                    covering = gaps_by_first[cursor]
                    cursor = covering.last_seq + 1
                    runs_used += 1
                if covering is None or cursor != event.seq:
                    raise AuditChainBroken(
                        f"audit event seq {event.seq} (id {event.id}, {event.kind} at "
                        f"{event.occurred_at:%Y-%m-%d %H:%M:%S}) follows seq {prev_seq}: "
                        f"events {prev_seq + 1}..{event.seq - 1} were removed outside a "
                        "retention purge"
                    )
                expected_prev = covering.last_hash
            if event.prev_hash != expected_prev:
                raise AuditChainBroken(
                    f"audit event seq {event.seq} (id {event.id}, {event.kind} at "
                    f"{event.occurred_at:%Y-%m-%d %H:%M:%S}) does not follow the event before "
                    "it: an event was removed, reordered or edited"
                )
            try:
                intact = hmac.compare_digest(self._hash_of(event, event.prev_hash), event.hash)
            except (TypeError, ValueError, AttributeError):  # a field no longer of its type
                intact = False
            if not intact:
                raise AuditChainBroken(
                    f"audit event seq {event.seq} (id {event.id}, {event.kind} at "
                    f"{event.occurred_at:%Y-%m-%d %H:%M:%S}) was edited: its content does not "
                    "match its hash"
                )
            prev_seq, prev_hash, count = event.seq, event.hash, count + 1

        if head.seal is None or not hmac.compare_digest(
            head.seal, self.seal_of(head.seq, head.hash)
        ):
            raise AuditChainBroken(
                f"the audit head (seq {head.seq}) is not sealed with this site's secret: it was "
                "edited (the most recent events may have been removed), or the database "
                "belongs to another instance"
                + (
                    ""
                    if head.seal is not None
                    else "; a database upgraded from a version without seals is sealed by "
                    "`locker init`"
                )
            )
        if (head.seq, head.hash) != (prev_seq, prev_hash):
            raise AuditChainBroken(
                f"the audit head names seq {head.seq} but the last event is seq {prev_seq}: "
                "the most recent events were removed or the head was edited"
                if head.seq > prev_seq
                else f"the audit head names seq {head.seq}, an event that does not match the "
                f"last event (seq {prev_seq}): the head was edited"
            )
        return VerifyReport(count, head.seq, head.hash, runs_used, verify_records(session))

    def _events(self, session: Session, batch: int) -> Iterable[Any]:
        """Rows of every event in seq order, fetched in batches (no ORM identity map)."""
        columns = [getattr(AuditEvent, name) for name in _ROW_FIELDS]
        last = 0
        while True:
            query = select(*columns).where(AuditEvent.seq > last).order_by(AuditEvent.seq)
            try:
                rows = session.execute(query.limit(batch)).all()
            except (ValueError, TypeError):  # a value the database holds no longer parses
                self._unreadable(session, query, last, batch)
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    @staticmethod
    def _unreadable(session: Session, query: Any, after: int, batch: int) -> None:
        """Name the first event after seq ``after`` whose stored fields cannot be read."""
        seqs = session.execute(
            select(AuditEvent.seq).where(AuditEvent.seq > after).order_by(AuditEvent.seq)
        ).scalars()
        for seq in list(seqs)[:batch]:
            try:
                session.execute(query.where(AuditEvent.seq == seq)).all()
            except (ValueError, TypeError):
                raise AuditChainBroken(
                    f"audit event seq {seq} was edited: a stored field is no longer a valid value"
                ) from None
        raise AuditChainBroken(f"an audit event after seq {after} cannot be read")

    def _gaps(self, session: Session) -> list[Gap]:
        gaps: list[Gap] = []
        rows = session.execute(
            select(AuditEvent.seq, AuditEvent.details).where(AuditEvent.kind == PURGE_KIND)
        ).all()
        for seq, details in rows:
            try:
                runs = json.loads(details).get("runs", [])
                for first, last, last_hash in runs:
                    if not (isinstance(first, int) and isinstance(last, int) and last < seq):
                        raise ValueError
                    gaps.append(Gap(first, last, str(last_hash)))
            except (ValueError, TypeError, AttributeError):
                raise AuditChainBroken(
                    f"audit checkpoint seq {seq} ({PURGE_KIND}) is malformed"
                ) from None
        return gaps


def removed_runs(events: list[tuple[int, str]]) -> list[list[Any]]:
    """Group removed (seq, hash) pairs, in seq order, into runs [first, last, last_hash].

    Runs are contiguous in the seq order of the remaining chain; a run may border an older
    purged run, which verification chains through.
    """
    runs: list[list[Any]] = []
    for seq, event_hash in events:
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1], runs[-1][2] = seq, event_hash
        else:
            runs.append([seq, seq, event_hash])
    return runs
