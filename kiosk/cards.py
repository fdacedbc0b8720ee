"""RFID cards: UIDs normalised, stored only as an HMAC with the site secret.

A UID is 4, 7 or 10 bytes (ISO 14443-3 single, double, triple size). People type them in
many ways (``de:ad:be:ef``, ``DE-AD-BE-EF``, ``0xDEADBEEF``, ``0xde, 0xad, 0xbe, 0xef``);
they all normalise to the same bytes. A 5-byte value whose last byte is the BCC check byte
of the first four (what the ``mfrc522`` library's ``read_id()`` returns) is accepted and the
BCC dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.db import Executor, connection_of
from kiosk.errors import ConflictError, NotFound, ValidationError
from kiosk.models import Card, Pupil, PupilStatus, User
from kiosk.pupils import PupilRef
from kiosk.users import StaffRef

UID_LENGTHS = (4, 7, 10)
# Built once: this lookup starts every tap.
_ACTIVE_CARD = (
    select(Card)
    .options(joinedload(Card.pupil), joinedload(Card.user))
    .where(Card.uid_hash == bindparam("uid_hash"), Card.revoked_at.is_(None))
)
_SEPARATORS = re.compile(r"[\s:,;\-._]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")


def _hex_digits(text: str) -> str | None:
    """The hex digits of a typed UID, or None when it is not one.

    Separators (spaces, ``:``, ``-``, ``.``, ``,``, ``;``, ``_``) and a ``0x`` prefix on the
    whole or on each group are dropped. Groups written as numbers (``0x4, 0xa1``, as
    Python's ``hex()`` prints them) are single bytes; any other single digit is a typo,
    not a guess.
    """
    groups = [group for group in _SEPARATORS.split(text.strip()) if group]
    prefixed = bool(groups) and all(group[:2].lower() == "0x" for group in groups)
    groups = [group[2:] if group[:2].lower() == "0x" else group for group in groups]
    if not groups or not all(group and _HEX.fullmatch(group) for group in groups):
        return None
    if prefixed and len(groups) > 1 and all(len(group) <= 2 for group in groups):
        return "".join(group.zfill(2) for group in groups)
    digits = "".join(groups)
    return None if len(digits) % 2 else digits


def normalise_uid(raw: str | bytes) -> bytes:
    """The UID's bytes; ValidationError that shows the accepted forms."""
    if isinstance(raw, bytes):
        uid = raw
    else:
        text = _hex_digits(str(raw))
        if text is None:
            raise ValidationError(
                f"not a card UID: {str(raw)[:40]!r}; give 4, 7 or 10 bytes in hex, "
                "e.g. DE:AD:BE:EF or 04A1B2C3D4E5F6"
            )
        uid = bytes.fromhex(text)
    if len(uid) == 5 and uid[0] ^ uid[1] ^ uid[2] ^ uid[3] == uid[4]:
        uid = uid[:4]  # mfrc522's read_id() appends the BCC byte
    if len(uid) not in UID_LENGTHS:
        raise ValidationError(
            f"a card UID is 4, 7 or 10 bytes; {uid.hex().upper()} is {len(uid)} bytes"
        )
    if len(uid) == 4 and uid[0] == 0x88:
        raise ValidationError(
            "that UID starts with the cascade tag 0x88: it is the first half of a 7-byte UID; "
            "read the whole UID"
        )
    return uid


def format_uid(uid: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in uid)


def uid_hash(key: bytes, uid: bytes) -> str:
    """The stored form of a UID: HMAC-SHA256 with the card key, hex."""
    return hmac.new(key, b"uid:" + uid, hashlib.sha256).hexdigest()


def uid_reference(hashed: str) -> str:
    """A short, non-reversible reference for logs and the audit trail."""
    return hashed[:12]


@dataclass(frozen=True)
class CardHolder:
    """Who an active card belongs to: a pupil or a member of staff."""

    card_id: int
    pupil: PupilRef | None
    user: StaffRef | None


_P, _U, _CARDS = Pupil.__table__, User.__table__, Card.__table__
_HOLDER = (
    select(
        _CARDS.c.id,
        _P.c.id,
        _P.c.admission_number,
        _P.c.forename,
        _P.c.preferred_forename,
        _P.c.surname,
        _P.c.status,
        _U.c.id,
        _U.c.username,
        _U.c.display_name,
        _U.c.role,
        _U.c.active,
    )
    .select_from(
        _CARDS.outerjoin(_P, _P.c.id == _CARDS.c.pupil_id).outerjoin(
            _U, _U.c.id == _CARDS.c.user_id
        )
    )
    .where(_CARDS.c.uid_hash == bindparam("uid_hash"), _CARDS.c.revoked_at.is_(None))
)


def holder_of(executor: Executor, key: bytes, uid: bytes) -> CardHolder | None:
    """The holder of the active card ``uid``, in one query (this starts every tap)."""
    row = connection_of(executor).execute(_HOLDER, {"uid_hash": uid_hash(key, uid)}).first()
    if row is None:
        return None
    pupil = PupilRef(*row[1:7]) if row[1] is not None else None
    user = StaffRef(*row[7:12]) if row[7] is not None else None
    return CardHolder(row[0], pupil, user)


def find_active(session: Session, key: bytes, uid: bytes) -> Card | None:
    """The active (unrevoked) card with this UID, with its holder loaded, or None."""
    return session.execute(_ACTIVE_CARD, {"uid_hash": uid_hash(key, uid)}).scalar_one_or_none()


def _holder(card: Card) -> str:
    if card.pupil is not None:
        return f"pupil {card.pupil.admission_number}"
    assert card.user is not None
    return f"staff member {card.user.username}"


def enrol(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    key: bytes,
    *,
    uid: bytes,
    pupil: Pupil | None = None,
    user: User | None = None,
) -> Card:
    """Give the card ``uid`` to a pupil on roll or an active member of staff (exactly one).

    ConflictError when the UID already belongs to someone (revoke it first).
    """
    if (pupil is None) == (user is None):
        raise ValidationError("a card belongs to exactly one pupil or one member of staff")
    if pupil is not None and pupil.status is not PupilStatus.ACTIVE:
        raise ValidationError(
            f"pupil {pupil.admission_number} is no longer on roll (marked as left by a roster "
            "import); import a roster that includes them first"
        )
    if user is not None and not user.active:
        raise ValidationError(f"staff member {user.username} is disabled")
    existing = find_active(session, key, uid)
    if existing is not None:
        raise ConflictError(
            f"card {format_uid(uid)} is already enrolled to {_holder(existing)}; "
            f"revoke it first (locker card revoke {format_uid(uid)})"
        )
    hashed = uid_hash(key, uid)
    card = Card(
        uid_hash=hashed,
        pupil=pupil,
        user=user,
        enrolled_at=clock.now(),
        enrolled_by=actor.label,
    )
    session.add(card)
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "card.enrolled",
        pupil_id=pupil.id if pupil else None,
        details={
            "card": card.id,
            "uid_ref": uid_reference(hashed),
            "holder": _holder(card),
        },
    )
    return card


def revoke(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, key: bytes, *, uid: bytes
) -> Card:
    """Revoke the active card ``uid``; NotFound when no active card has it."""
    card = find_active(session, key, uid)
    if card is None:
        raise NotFound(f"no active card {format_uid(uid)}")
    card.revoked_at, card.revoked_by = clock.now(), actor.label
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "card.revoked",
        pupil_id=card.pupil_id,
        details={"card": card.id, "uid_ref": uid_reference(card.uid_hash), "holder": _holder(card)},
    )
    return card
