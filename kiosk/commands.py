"""Commands from the web (or the CLI) to a kiosk, through the ``commands`` table.

The database is the channel: the web inserts a command row, the kiosk that owns the cabinet
picks it up (oldest first), executes it, and records a result the web can show. This works
the same for one Pi on SQLite and for many kiosks sharing PostgreSQL (where pick-up uses
``FOR UPDATE SKIP LOCKED`` so two workers never take the same command).

Each kind's payload is checked here when it is submitted, so a kiosk never receives a
command it cannot understand.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.db import COMMAND_CHANNEL
from kiosk.errors import NotFound, ValidationError
from kiosk.models import Command, CommandStatus, Kiosk

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(minutes=2)


class CommandKind(enum.StrEnum):
    OPEN_COMPARTMENT = "open_compartment"  # {compartment, custody_id?, purpose?}
    OPEN_ALL = "open_all"  # {}: staggered, for an emergency or the end of term
    ENROL_NEXT_CARD = "enrol_next_card"  # {pupil_id} or {user_id}: the next unknown card
    SIM_TAP = "sim.tap"  # {uid}: simulated hardware only
    SIM_DOOR = "sim.door"  # {compartment, open, forced?}: forced pulls it open while locked
    SIM_FAULT = "sim.fault"  # {fault, compartment?, on}


SIM_KINDS = frozenset({CommandKind.SIM_TAP, CommandKind.SIM_DOOR, CommandKind.SIM_FAULT})
OPEN_PURPOSES = ("office", "confiscation", "release", "police", "return", "check")
SIM_FAULTS = ("reader_raise", "reader_garbage", "reader_vanish", "jam_lock", "stick_door_open")


def _int(payload: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"command payload: {key} must be a whole number >= {minimum}")
    return value


def _validate(kind: CommandKind, payload: Mapping[str, Any]) -> dict[str, Any]:
    if kind is CommandKind.OPEN_COMPARTMENT:
        clean: dict[str, Any] = {"compartment": _int(payload, "compartment")}
        if payload.get("custody_id") is not None:
            clean["custody_id"] = _int(payload, "custody_id")
        purpose = payload.get("purpose", "office")
        if purpose not in OPEN_PURPOSES:
            raise ValidationError(f"command payload: purpose must be one of {OPEN_PURPOSES}")
        clean["purpose"] = purpose
        return clean
    if kind is CommandKind.OPEN_ALL:
        return {}
    if kind is CommandKind.ENROL_NEXT_CARD:
        holders = [key for key in ("pupil_id", "user_id") if payload.get(key) is not None]
        if len(holders) != 1:
            raise ValidationError("command payload: give exactly one of pupil_id or user_id")
        return {holders[0]: _int(payload, holders[0])}
    if kind is CommandKind.SIM_TAP:
        uid = payload.get("uid")
        if not isinstance(uid, str) or not uid.strip():
            raise ValidationError("command payload: uid must be the card's UID in hex")
        from kiosk.cards import format_uid, normalise_uid

        return {"uid": format_uid(normalise_uid(uid))}
    if kind is CommandKind.SIM_DOOR:
        if not isinstance(payload.get("open"), bool):
            raise ValidationError("command payload: open must be true or false")
        clean = {"compartment": _int(payload, "compartment"), "open": payload["open"]}
        forced = payload.get("forced", False)
        if not isinstance(forced, bool):
            raise ValidationError("command payload: forced must be true or false")
        if forced:
            if not payload["open"]:
                raise ValidationError("command payload: only an opening door can be forced")
            clean["forced"] = True
        return clean
    if kind is CommandKind.SIM_FAULT:
        fault = payload.get("fault")
        if fault not in SIM_FAULTS:
            raise ValidationError(f"command payload: fault must be one of {SIM_FAULTS}")
        if not isinstance(payload.get("on"), bool):
            raise ValidationError("command payload: on must be true or false")
        clean = {"fault": fault, "on": payload["on"]}
        if fault in ("jam_lock", "stick_door_open"):
            clean["compartment"] = _int(payload, "compartment")
        return clean
    raise ValidationError(f"unknown command kind {kind!r}")  # pragma: no cover


def parse_kind(value: str) -> CommandKind:
    try:
        return CommandKind(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in CommandKind)
        raise ValidationError(f"unknown command {value!r}; commands are {kinds}") from None


def submit(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    *,
    kiosk: Kiosk,
    kind: CommandKind | str,
    payload: Mapping[str, Any] | None = None,
) -> Command:
    """Queue a command for ``kiosk``; ValidationError when the payload is wrong."""
    kind = parse_kind(kind) if isinstance(kind, str) else kind
    clean = _validate(kind, payload or {})
    command = Command(
        kiosk_id=kiosk.id,
        kind=kind.value,
        payload=clean,
        status=CommandStatus.PENDING,
        created_at=clock.now(),
        created_by=actor.label,
    )
    session.add(command)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":  # the kiosk hears it at commit
        session.execute(
            text("SELECT pg_notify(:channel, :kiosk)"),
            {"channel": COMMAND_CHANNEL, "kiosk": str(kiosk.id)},
        )
    if kind not in SIM_KINDS:  # simulator pokes are not school events
        audit.record(
            session,
            clock,
            actor,
            "command.submitted",
            kiosk=kiosk.name,
            custody_id=clean.get("custody_id"),
            details={"command": command.id, "kind": kind.value, "payload": clean},
        )
    return command


def claim_next(session: Session, kiosk_id: int, clock: Clock) -> Command | None:
    """Take the oldest pending command of a kiosk and mark it running (in the caller's
    transaction); None when there is none."""
    command = session.execute(
        select(Command)
        .where(Command.kiosk_id == kiosk_id, Command.status == CommandStatus.PENDING)
        .order_by(Command.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if command is not None:
        command.status, command.picked_at = CommandStatus.RUNNING, clock.now()
    return command


def has_pending(session: Session, kiosk_id: int) -> bool:
    return (
        session.execute(
            select(Command.id)
            .where(Command.kiosk_id == kiosk_id, Command.status == CommandStatus.PENDING)
            .limit(1)
        ).first()
        is not None
    )


def finish(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    command: Command,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> Command:
    """Record the outcome of a running command (done with ``result`` or failed with
    ``error``). A simulated tap's card UID is dropped from the payload once it is done:
    UIDs are kept only as keyed hashes, even on a simulator."""
    command.status = CommandStatus.FAILED if error else CommandStatus.DONE
    if command.kind == CommandKind.SIM_TAP.value:
        command.payload = {"uid": None}
    command.finished_at = clock.now()
    command.result = dict(result or {})
    command.error = error[:500] if error else None
    if CommandKind(command.kind) not in SIM_KINDS:
        audit.record(
            session,
            clock,
            actor,
            "command.failed" if error else "command.done",
            custody_id=command.payload.get("custody_id"),
            details={
                "command": command.id,
                "kind": command.kind,
                "error": error,
                "result": command.result,
            },
        )
    return command


def fail_abandoned(session: Session, clock: Clock, kiosk_id: int, reason: str) -> int:
    """Mark a kiosk's RUNNING commands failed (it restarted in the middle of them)."""
    result = session.execute(
        update(Command)
        .where(Command.kiosk_id == kiosk_id, Command.status == CommandStatus.RUNNING)
        .values(status=CommandStatus.FAILED, finished_at=clock.now(), error=reason[:500])
    )
    return result.rowcount or 0


def cancel_stale(
    session: Session, clock: Clock, kiosk_id: int, older_than: timedelta = STALE_AFTER
) -> int:
    """Cancel pending commands nobody picked up in time (the kiosk was off): opening a
    locker minutes after someone asked is worse than not opening it."""
    result = session.execute(
        update(Command)
        .where(
            Command.kiosk_id == kiosk_id,
            Command.status == CommandStatus.PENDING,
            Command.created_at < clock.now() - older_than,
        )
        .values(
            status=CommandStatus.CANCELLED,
            finished_at=clock.now(),
            error="not picked up in time (was the kiosk off?)",
        )
    )
    return result.rowcount or 0


def get(session: Session, command_id: int) -> Command:
    command = session.get(Command, command_id)
    if command is None:
        raise NotFound(f"no command {command_id}")
    return command


@dataclass(frozen=True)
class CommandView:
    """What the web shows about a command."""

    id: int
    kind: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, command: Command) -> CommandView:
        return cls(
            command.id,
            command.kind,
            command.status.value,
            command.created_at,
            command.finished_at,
            command.result,
            command.error,
        )
