"""The ledger's tables, as SQLAlchemy 2.0 typed models.

Nothing here is SQLite-only: enums are stored as checked strings, times as aware UTC
(:class:`kiosk.db.UTCDateTime`), and the custody invariants are partial unique indexes and
check constraints that SQLite and PostgreSQL both enforce. The transition guard (terminal
states are final, a held device never goes to a pupil or parent) is a trigger created by the
first migration, because a check constraint cannot see the previous state.

Migrations (``kiosk/migrations``) are the source of the schema on disk; a test compares
them with these models.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from kiosk.db import UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


def _enum(kind: type[enum.Enum], name: str) -> Enum:
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Role(enum.StrEnum):
    """Staff roles. ``staff`` may confiscate and refer; ``office`` also releases and sees the
    dashboard; ``dsl`` also handles safeguarding holds; ``admin`` runs the system."""

    STAFF = "staff"
    OFFICE = "office"
    DSL = "dsl"
    ADMIN = "admin"


class PupilStatus(enum.StrEnum):
    ACTIVE = "active"
    LEFT = "left"


class CompartmentKind(enum.StrEnum):
    PUPIL = "pupil"
    SECURE = "secure"


class CustodyKind(enum.StrEnum):
    DAILY = "daily"  # a pupil locked the device away for the day
    CONFISCATION = "confiscation"  # staff took the device


class CustodyState(enum.StrEnum):
    PENDING_DEPOSIT = "PENDING_DEPOSIT"
    IN_LOCKER = "IN_LOCKER"
    CANCELLED = "CANCELLED"
    COLLECTED = "COLLECTED"
    CONFISCATED = "CONFISCATED"
    RELEASED_TO_PARENT = "RELEASED_TO_PARENT"
    SAFEGUARDING_HOLD = "SAFEGUARDING_HOLD"
    HANDED_TO_POLICE = "HANDED_TO_POLICE"
    RETURNED_TO_PUPIL = "RETURNED_TO_PUPIL"


ACTIVE_STATES: frozenset[CustodyState] = frozenset(
    {
        CustodyState.PENDING_DEPOSIT,
        CustodyState.IN_LOCKER,
        CustodyState.CONFISCATED,
        CustodyState.SAFEGUARDING_HOLD,
    }
)
TERMINAL_STATES: frozenset[CustodyState] = frozenset(set(CustodyState) - ACTIVE_STATES)
DAILY_ACTIVE_STATES: frozenset[CustodyState] = frozenset(
    {CustodyState.PENDING_DEPOSIT, CustodyState.IN_LOCKER}
)
CONFISCATION_KIND_STATES: frozenset[CustodyState] = frozenset(
    {
        CustodyState.CONFISCATED,
        CustodyState.SAFEGUARDING_HOLD,
        CustodyState.RELEASED_TO_PARENT,
        CustodyState.HANDED_TO_POLICE,
        CustodyState.RETURNED_TO_PUPIL,
    }
)


def sql_in(states: frozenset[CustodyState] | set[CustodyState]) -> str:
    """``('A', 'B')`` for a constraint's SQL text, in a stable order."""
    return "(" + ", ".join(f"'{state.value}'" for state in sorted(states)) + ")"


class ExemptionKind(enum.StrEnum):
    MEDICAL = "medical"
    EDUCATIONAL_VISIT = "educational_visit"
    YOUNG_CARER = "young_carer"
    OTHER = "other"


class CommandStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# ------------------------------------------------------------------------------------------
# People


class Pupil(Base):
    __tablename__ = "pupils"

    id: Mapped[int] = mapped_column(primary_key=True)
    admission_number: Mapped[str] = mapped_column(String(20), unique=True)
    forename: Mapped[str] = mapped_column(String(100))
    preferred_forename: Mapped[str | None] = mapped_column(String(100))
    surname: Mapped[str] = mapped_column(String(100))
    year_group: Mapped[str | None] = mapped_column(String(20))
    form: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[PupilStatus] = mapped_column(
        _enum(PupilStatus, "pupil_status"), default=PupilStatus.ACTIVE
    )
    left_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    contacts: Mapped[list[Contact]] = relationship(
        back_populates="pupil", cascade="all, delete-orphan", order_by="Contact.position"
    )

    __table_args__ = (
        CheckConstraint(
            "(status = 'left' AND left_at IS NOT NULL) OR (status = 'active' AND left_at IS NULL)",
            name="left_at_matches_status",
        ),
    )

    @property
    def first_name(self) -> str:
        return self.preferred_forename or self.forename


class Contact(Base):
    """An adult the school may release a confiscated device to (from the roster)."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    pupil_id: Mapped[int] = mapped_column(ForeignKey("pupils.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(120))
    relation: Mapped[str] = mapped_column("relationship", String(60), default="")

    pupil: Mapped[Pupil] = relationship(back_populates="contacts")

    __table_args__ = (
        UniqueConstraint("pupil_id", "position", name="uq_contacts_pupil_position"),
        CheckConstraint("position >= 1", name="position_positive"),
    )


class User(Base):
    """A member of staff who signs in to the dashboard or taps a staff card."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token for the JSON API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class Card(Base):
    """An RFID card. The UID is stored only as an HMAC with the site secret.

    A card belongs to exactly one pupil or one member of staff; an active (unrevoked) UID
    belongs to one person only (partial unique index).
    """

    __tablename__ = "cards"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid_hash: Mapped[str] = mapped_column(String(64))
    pupil_id: Mapped[int | None] = mapped_column(
        ForeignKey("pupils.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    enrolled_at: Mapped[datetime]
    enrolled_by: Mapped[str] = mapped_column(String(80))
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(80))

    pupil: Mapped[Pupil | None] = relationship()
    user: Mapped[User | None] = relationship()

    __table_args__ = (
        CheckConstraint(
            "(pupil_id IS NULL AND user_id IS NOT NULL) OR "
            "(pupil_id IS NOT NULL AND user_id IS NULL)",
            name="one_holder",
        ),
        Index(
            "uq_cards_active_uid",
            "uid_hash",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )


# ------------------------------------------------------------------------------------------
# Cabinets


class Kiosk(Base):
    """A cabinet and the Pi that drives it. ``state`` is the controller's published status
    (screen, faults, alarms), refreshed with every heartbeat."""

    __tablename__ = "kiosks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    label: Mapped[str] = mapped_column(String(120))
    heartbeat_at: Mapped[datetime | None]
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    compartments: Mapped[list[Compartment]] = relationship(
        back_populates="kiosk", order_by="Compartment.number"
    )


class Compartment(Base):
    __tablename__ = "compartments"

    id: Mapped[int] = mapped_column(primary_key=True)
    kiosk_id: Mapped[int] = mapped_column(ForeignKey("kiosks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[CompartmentKind] = mapped_column(_enum(CompartmentKind, "compartment_kind"))
    label: Mapped[str] = mapped_column(String(40))
    out_of_service: Mapped[bool] = mapped_column(Boolean, default=False)
    out_of_service_reason: Mapped[str | None] = mapped_column(String(200))
    door_open: Mapped[bool | None] = mapped_column(Boolean)
    alarm: Mapped[str | None] = mapped_column(String(40))
    failed_unlocks: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]

    kiosk: Mapped[Kiosk] = relationship(back_populates="compartments")

    __table_args__ = (
        UniqueConstraint("kiosk_id", "number", name="uq_compartments_kiosk_number"),
        CheckConstraint("number >= 1", name="number_positive"),
        CheckConstraint("failed_unlocks >= 0", name="failed_unlocks_not_negative"),
    )


# ------------------------------------------------------------------------------------------
# Custody


class CustodyRecord(Base):
    """One device's stay with the school; its ``state`` moves only along the transition
    table of :mod:`kiosk.custody`."""

    __tablename__ = "custody_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    pupil_id: Mapped[int] = mapped_column(ForeignKey("pupils.id", ondelete="RESTRICT"))
    kind: Mapped[CustodyKind] = mapped_column(_enum(CustodyKind, "custody_kind"))
    state: Mapped[CustodyState] = mapped_column(_enum(CustodyState, "custody_state"))
    compartment_id: Mapped[int | None] = mapped_column(
        ForeignKey("compartments.id", ondelete="RESTRICT")
    )
    kiosk_id: Mapped[int | None] = mapped_column(ForeignKey("kiosks.id", ondelete="SET NULL"))
    device: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[datetime]
    started_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    pending_until: Mapped[datetime | None]
    stored_at: Mapped[datetime | None]
    confiscated_at: Mapped[datetime | None]
    confiscated_by: Mapped[str | None] = mapped_column(String(80))
    confiscation_reason: Mapped[str | None] = mapped_column(String(500))
    release_not_before: Mapped[datetime | None]
    ever_held: Mapped[bool] = mapped_column(Boolean, default=False)
    held_at: Mapped[datetime | None]
    held_by: Mapped[str | None] = mapped_column(String(80))
    hold_reason: Mapped[str | None] = mapped_column(String(1000))
    hold_lifted_note: Mapped[str | None] = mapped_column(String(1000))
    collector_name: Mapped[str | None] = mapped_column(String(120))
    collector_relationship: Mapped[str | None] = mapped_column(String(60))
    collector_contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL")
    )
    id_checked: Mapped[bool] = mapped_column(Boolean, default=False)
    police_reference: Mapped[str | None] = mapped_column(String(80))
    ended_by: Mapped[str | None] = mapped_column(String(80))
    end_reason: Mapped[str | None] = mapped_column(String(500))
    flag: Mapped[str | None] = mapped_column(String(40))
    flag_detail: Mapped[str | None] = mapped_column(String(500))
    flagged_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)

    pupil: Mapped[Pupil] = relationship()
    compartment: Mapped[Compartment | None] = relationship()
    kiosk: Mapped[Kiosk | None] = relationship()

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        # A compartment holds at most one active record.
        Index(
            "uq_custody_active_compartment",
            "compartment_id",
            unique=True,
            sqlite_where=text(f"state IN {sql_in(ACTIVE_STATES)}"),
            postgresql_where=text(f"state IN {sql_in(ACTIVE_STATES)}"),
        ),
        # A pupil has at most one active daily deposit.
        Index(
            "uq_custody_active_daily_pupil",
            "pupil_id",
            unique=True,
            sqlite_where=text(f"kind = 'daily' AND state IN {sql_in(DAILY_ACTIVE_STATES)}"),
            postgresql_where=text(f"kind = 'daily' AND state IN {sql_in(DAILY_ACTIVE_STATES)}"),
        ),
        Index("ix_custody_records_state", "state"),
        Index("ix_custody_records_pupil_started", "pupil_id", "started_at"),
        Index("ix_custody_records_started_at", "started_at"),
        Index("ix_custody_records_kiosk_updated", "kiosk_id", "updated_at"),
        CheckConstraint(
            f"(state IN {sql_in(TERMINAL_STATES)} AND ended_at IS NOT NULL) OR "
            f"(state NOT IN {sql_in(TERMINAL_STATES)} AND ended_at IS NULL)",
            name="ended_iff_terminal",
        ),
        CheckConstraint(
            f"kind = 'daily' OR state IN {sql_in(CONFISCATION_KIND_STATES)}",
            name="confiscation_states",
        ),
        CheckConstraint("kind = 'confiscation' OR compartment_id IS NOT NULL", name="daily_placed"),
        CheckConstraint(
            "state <> 'RELEASED_TO_PARENT' OR (collector_name IS NOT NULL AND id_checked = TRUE)",
            name="release_recorded",
        ),
        CheckConstraint(
            "state <> 'HANDED_TO_POLICE' OR police_reference IS NOT NULL",
            name="police_reference",
        ),
        CheckConstraint(
            "state <> 'SAFEGUARDING_HOLD' OR (hold_reason IS NOT NULL AND ever_held = TRUE)",
            name="hold_recorded",
        ),
        CheckConstraint(
            "state <> 'PENDING_DEPOSIT' OR pending_until IS NOT NULL", name="pending_deadline"
        ),
    )


class Exemption(Base):
    """A written agreement that lets a pupil keep a device (medical monitoring, a visit,
    a young carer), approved by an admin."""

    __tablename__ = "exemptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    pupil_id: Mapped[int] = mapped_column(ForeignKey("pupils.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ExemptionKind] = mapped_column(_enum(ExemptionKind, "exemption_kind"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date | None] = mapped_column(Date)
    review_on: Mapped[date | None] = mapped_column(Date)
    agreement_reference: Mapped[str] = mapped_column(String(120))
    notes: Mapped[str] = mapped_column(String(500), default="")
    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    approved_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(80))
    revoke_reason: Mapped[str | None] = mapped_column(String(500))

    pupil: Mapped[Pupil] = relationship()

    __table_args__ = (
        CheckConstraint("ends_on IS NULL OR ends_on >= starts_on", name="dates_in_order"),
        CheckConstraint("ends_on IS NOT NULL OR review_on IS NOT NULL", name="open_needs_review"),
    )


# ------------------------------------------------------------------------------------------
# Audit trail


class AuditEvent(Base):
    """An append-only event; ``hash`` chains it to the event before (see kiosk.audit).

    ``custody_id`` and ``pupil_id`` are plain numbers, not foreign keys: an event is never
    changed after it is written, not even when the row it names is purged.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    occurred_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(60))
    actor: Mapped[str] = mapped_column(String(80))
    kiosk: Mapped[str | None] = mapped_column(String(40))
    custody_id: Mapped[int | None] = mapped_column(Integer)
    pupil_id: Mapped[int | None] = mapped_column(Integer)
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_kind_occurred_at", "kind", "occurred_at"),
        Index("ix_audit_events_custody_id", "custody_id"),
        Index("ix_audit_events_pupil_id", "pupil_id"),
    )


class AuditHead(Base):
    """The single row naming the last event of the chain (seq and hash), sealed.

    Appending locks it (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so the
    chain never forks; ``locker audit verify`` checks that the last event matches it, and
    that ``seal`` (a keyed hash of seq and hash, written at every commit that appends) is
    right, so the head cannot be moved back to hide the most recent events.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]
    seal: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


# ------------------------------------------------------------------------------------------
# Commands (web -> kiosk)


class Command(Base):
    """A request from the web app to a kiosk (open a compartment, open all, enrol the next
    card, ...). The kiosk picks it up, executes it and records the result."""

    __tablename__ = "commands"

    id: Mapped[int] = mapped_column(primary_key=True)
    kiosk_id: Mapped[int] = mapped_column(ForeignKey("kiosks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[CommandStatus] = mapped_column(
        _enum(CommandStatus, "command_status"), default=CommandStatus.PENDING
    )
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80))
    picked_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(500))

    kiosk: Mapped[Kiosk] = relationship()

    __table_args__ = (Index("ix_commands_kiosk_status", "kiosk_id", "status", "id"),)


class OfflineReplay(Base):
    """One event a kiosk recorded while it could not reach the database, applied centrally.

    Written in the same transaction as what the event did, so a replay interrupted at any
    moment resumes without doing anything twice (the unique key is the guarantee).
    """

    __tablename__ = "offline_replays"

    id: Mapped[int] = mapped_column(primary_key=True)
    kiosk_id: Mapped[int] = mapped_column(ForeignKey("kiosks.id", ondelete="CASCADE"))
    session: Mapped[str] = mapped_column(String(36))
    local_seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(60))
    outcome: Mapped[str] = mapped_column(String(40))
    custody_id: Mapped[int | None] = mapped_column(Integer)
    applied_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("kiosk_id", "session", "local_seq", name="uq_offline_replays_event"),
    )
