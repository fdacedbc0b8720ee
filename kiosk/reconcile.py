"""Reconciliation at start: a kiosk that stopped (crashed, lost power, was killed) brings the
database into agreement with its cabinet before it serves anyone.

Whatever cannot be proven is flagged for the office, never forgotten and never given to a
second owner:

- commands the last run was carrying out are failed (nobody knows how far they got);
- every compartment's door state is the cabinet's, and no alarm is left from before;
- a deposit still pending behind a shut door is kept (the device is most likely inside) and
  flagged ``unverified`` (the pupil can tap again to confirm it, the office can check); one
  behind an open door waits for the door to close, as if the last run had seen it open;
- a confiscated device never seen stored behind a shut door is flagged for the office; one
  behind an open door waits for it to close;
- an open door with nothing waiting for it raises the door-open alarm (the controller's).

A service over a session, testable without a controller (:class:`Reconciler`); the controller
acts on what it returns, in the same unit of work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kiosk import commands
from kiosk.actors import Actor
from kiosk.clock import Clock
from kiosk.custody import FLAG_CHECK, FLAG_UNVERIFIED, CustodyLedger, RecordRef
from kiosk.models import Compartment, CustodyRecord, CustodyState
from kiosk.policy import Policy


@dataclass(frozen=True)
class Waiting:
    """An open door with a record in hand: the kiosk waits for it to close."""

    number: int
    purpose: str  # "deposit" or "confiscation"
    record: RecordRef
    name: str = ""  # the pupil's name as the screen shows it (deposits)


@dataclass
class Reconciliation:
    summary: dict[str, int] = field(
        default_factory=lambda: {
            "abandoned_commands": 0,
            "confirmed_open": 0,
            "flagged": 0,
            "doors_open": 0,
        }
    )
    waiting: list[Waiting] = field(default_factory=list)
    alarms: list[int] = field(default_factory=list)  # open doors with nothing in hand


class Reconciler:
    def __init__(self, ledger: CustodyLedger, policy: Policy, actor: Actor, clock: Clock) -> None:
        self.ledger = ledger
        self.policy = policy
        self.actor = actor
        self.clock = clock

    def reconcile(
        self,
        session: Session,
        kiosk_id: int,
        compartment_ids: Mapping[int, int],
        open_doors: Collection[int],
    ) -> Reconciliation:
        """Reconcile kiosk ``kiosk_id`` (its compartments: number -> id) with a cabinet whose
        doors ``open_doors`` stand open, in ``session``'s transaction."""
        result = Reconciliation()
        summary = result.summary
        summary["abandoned_commands"] = commands.fail_abandoned(
            session, self.clock, kiosk_id, "the kiosk restarted during this command"
        )
        for number, compartment_id in compartment_ids.items():
            session.execute(
                update(Compartment)
                .where(Compartment.id == compartment_id)
                .values(door_open=number in open_doors, alarm=None)
            )
        records = (
            session.execute(
                select(CustodyRecord)
                .join(Compartment, Compartment.id == CustodyRecord.compartment_id)
                .where(
                    Compartment.kiosk_id == kiosk_id,
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
        for record in records:
            number = record.compartment.number
            if record.state is CustodyState.PENDING_DEPOSIT:
                if number in open_doors:
                    name = self.policy.display_name(record.pupil)
                    result.waiting.append(Waiting(number, "deposit", RecordRef.of(record), name))
                    summary["confirmed_open"] += 1
                else:
                    self._unverified(session, record, number)
                    summary["flagged"] += 1
            elif record.stored_at is None:
                if number in open_doors:
                    result.waiting.append(Waiting(number, "confiscation", RecordRef.of(record)))
                elif record.flag is None:
                    self.ledger.flag(
                        session,
                        self.actor,
                        self.clock,
                        record,
                        flag=FLAG_CHECK,
                        detail=f"the kiosk restarted before secure compartment {number} "
                        "was seen to close: check the device is inside",
                    )
                    summary["flagged"] += 1
        waiting = {item.number for item in result.waiting}
        result.alarms = sorted(set(open_doors) - waiting)
        summary["doors_open"] = len(open_doors)
        commands.cancel_stale(session, self.clock, kiosk_id)
        return result

    def _unverified(self, session: Session, record: CustodyRecord, number: int) -> None:
        self.ledger.confirm_deposit(
            session, self.actor, self.clock, record, how="kiosk restart: unverified"
        )
        self.ledger.flag(
            session,
            self.actor,
            self.clock,
            record,
            flag=FLAG_UNVERIFIED,
            detail=f"the kiosk restarted before compartment {number} was seen to close; "
            "the pupil can re-tap to confirm, or the office can open it to check",
        )


__all__ = ["FLAG_UNVERIFIED", "Reconciler", "Reconciliation", "Waiting"]
