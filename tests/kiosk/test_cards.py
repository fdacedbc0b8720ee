"""Cards (kiosk.cards): UIDs typed in many ways normalise to the same bytes; one active UID
belongs to one person; and a UID never reaches the database file in clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kiosk import cards
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.errors import ConflictError, NotFound, ValidationError
from kiosk.instance import Instance
from kiosk.models import AuditEvent, Card, PupilStatus, Role

from .conftest import add_pupil, add_user, make_instance

ACTOR = Actor.system("test")


def bcc(uid: bytes) -> int:
    return uid[0] ^ uid[1] ^ uid[2] ^ uid[3]


# ------------------------------------------------------------------------------ normalise


def uids() -> st.SearchStrategy[bytes]:
    """4-, 7- and 10-byte UIDs (a 4-byte UID never starts with the cascade tag 0x88)."""
    return st.sampled_from([4, 7, 10]).flatmap(
        lambda size: st.binary(min_size=size, max_size=size).filter(
            lambda uid: not (len(uid) == 4 and uid[0] == 0x88)
        )
    )


@st.composite
def typed(draw: st.DrawFn, uid: bytes) -> str:
    """``uid`` as a person or a tool might type it: any case, any separator, 0x prefixes."""
    pairs = [
        "".join(draw(st.sampled_from([char.lower(), char.upper()])) for char in f"{byte:02x}")
        for byte in uid
    ]
    separator = draw(st.sampled_from(["", ":", "-", " ", ".", ",", ", ", "_", " : ", ";"]))
    if draw(st.booleans()):  # 0x on every byte, as Python's hex() writes them
        body = (separator or " ").join(draw(st.sampled_from(["0x", "0X"])) + p for p in pairs)
    else:
        body = draw(st.sampled_from(["", "0x", "0X"])) + separator.join(pairs)
    padding = draw(st.sampled_from(["", " ", "\t", "\n", "  "]))
    return padding + body + padding


@settings(max_examples=300)
@given(st.data(), uids())
def test_every_way_of_typing_a_uid_gives_its_bytes(data: st.DataObject, uid: bytes) -> None:
    rendered = data.draw(typed(uid))
    assert cards.normalise_uid(rendered) == uid


@settings(max_examples=100)
@given(uids())
def test_format_uid_round_trips(uid: bytes) -> None:
    assert cards.normalise_uid(cards.format_uid(uid)) == uid
    assert cards.normalise_uid(uid) == uid


@settings(max_examples=100)
@given(st.binary(min_size=4, max_size=4).filter(lambda uid: uid[0] != 0x88))
def test_a_valid_bcc_byte_is_dropped(uid: bytes) -> None:
    """mfrc522's read_id() gives the 4-byte UID followed by its BCC check byte."""
    with_bcc = uid + bytes([bcc(uid)])
    assert cards.normalise_uid(with_bcc.hex()) == uid
    assert cards.normalise_uid(with_bcc) == uid
    wrong = uid + bytes([bcc(uid) ^ 0xFF])
    with pytest.raises(ValidationError, match="5 bytes"):
        cards.normalise_uid(wrong.hex())


def test_python_hex_output_with_single_digit_bytes() -> None:
    uid = bytes([0x04, 0xA1, 0x0B, 0xC3])
    assert cards.normalise_uid(", ".join(hex(byte) for byte in uid)) == uid


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "0x",
        "not a uid",
        "DE:AD:BE:E",  # a digit missing: not guessed
        "4:A1:B2:C3",  # nor here
        "DEADBE",  # 3 bytes
        "DEADBEEF0102",  # 6 bytes
        "0102030405060708",  # 8 bytes
        "DEADBEEF00",  # 5 bytes, not a BCC
        "88112233",  # the cascade tag: half of a 7-byte UID
        "ＤＥＡＤＢＥＥＦ",  # full-width letters
        "DE:AD:BE:EG",
        "0x0xDEADBEEF",
    ],
)
def test_bad_uids_are_refused_with_a_validation_error(raw: str) -> None:
    with pytest.raises(ValidationError) as caught:
        cards.normalise_uid(raw)
    assert "UID" in str(caught.value)


def test_bad_uid_bytes_are_refused() -> None:
    for raw in (b"", b"\x01\x02\x03", b"\x01" * 8, b"\x88\x01\x02\x03"):
        with pytest.raises(ValidationError):
            cards.normalise_uid(raw)


# ------------------------------------------------------------------------------ enrol/revoke


def test_enrol_and_revoke_a_pupil_card(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    pupil = add_pupil(session, clock, "2001")
    uid = cards.normalise_uid("04:A1:B2:C3:D4:E5:F6")
    card = cards.enrol(
        session, ACTOR, clock, instance.audit, instance.card_key, uid=uid, pupil=pupil
    )
    assert card.pupil_id == pupil.id and card.user_id is None
    assert card.uid_hash == cards.uid_hash(instance.card_key, uid) != uid.hex()
    found = cards.find_active(session, instance.card_key, uid)
    assert found is not None and found.id == card.id

    clock.advance(minutes=5)
    revoked = cards.revoke(session, ACTOR, clock, instance.audit, instance.card_key, uid=uid)
    assert revoked.id == card.id and revoked.revoked_at == clock.now()
    assert revoked.revoked_by == ACTOR.label
    assert cards.find_active(session, instance.card_key, uid) is None
    with pytest.raises(NotFound):
        cards.revoke(session, ACTOR, clock, instance.audit, instance.card_key, uid=uid)

    kinds = [e.kind for e in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()]
    assert kinds[-2:] == ["card.enrolled", "card.revoked"]
    instance.audit.verify(session)


def test_one_active_uid_belongs_to_one_person(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    first = add_pupil(session, clock, "2001")
    second = add_pupil(session, clock, "2002")
    staff = add_user(session, clock, "kl", Role.STAFF)
    uid = cards.normalise_uid("DE:AD:BE:EF")
    key, audit = instance.card_key, instance.audit
    cards.enrol(session, ACTOR, clock, audit, key, uid=uid, pupil=first)
    # The same card typed differently is the same card.
    for other in ({"pupil": second}, {"pupil": first}, {"user": staff}):
        with pytest.raises(ConflictError, match="2001"):
            cards.enrol(
                session, ACTOR, clock, audit, key, uid=cards.normalise_uid("0xdeadbeef"), **other
            )
    # Revoked, it can go to someone else; and back again after that.
    cards.revoke(session, ACTOR, clock, audit, key, uid=uid)
    card = cards.enrol(session, ACTOR, clock, audit, key, uid=uid, pupil=second)
    assert card.pupil_id == second.id
    cards.revoke(session, ACTOR, clock, audit, key, uid=uid)
    card = cards.enrol(session, ACTOR, clock, audit, key, uid=uid, user=staff)
    assert card.user_id == staff.id
    rows = session.execute(
        select(Card).where(Card.uid_hash == cards.uid_hash(key, uid)).order_by(Card.id)
    ).scalars()
    assert [row.revoked_at is None for row in rows] == [False, False, True]


def test_a_person_may_hold_several_cards(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    pupil = add_pupil(session, clock, "2001")
    for raw in ("01020304", "04:11:22:33:44:55:66"):
        cards.enrol(
            session,
            ACTOR,
            clock,
            instance.audit,
            instance.card_key,
            uid=cards.normalise_uid(raw),
            pupil=pupil,
        )
    assert len(session.execute(select(Card).where(Card.pupil_id == pupil.id)).all()) == 2


def test_a_card_has_exactly_one_holder(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    pupil = add_pupil(session, clock, "2001")
    staff = add_user(session, clock, "kl", Role.STAFF)
    uid = cards.normalise_uid("01020304")
    for holders in ({}, {"pupil": pupil, "user": staff}):
        with pytest.raises(ValidationError):
            cards.enrol(
                session, ACTOR, clock, instance.audit, instance.card_key, uid=uid, **holders
            )
    assert session.execute(select(Card)).first() is None


def test_no_card_for_a_leaver_or_a_disabled_account(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    leaver = add_pupil(session, clock, "2001")
    leaver.status, leaver.left_at = PupilStatus.LEFT, clock.now()
    staff = add_user(session, clock, "kl", Role.STAFF)
    staff.active = False
    session.flush()
    uid = cards.normalise_uid("01020304")
    for holder in ({"pupil": leaver}, {"user": staff}):
        with pytest.raises(ValidationError):
            cards.enrol(session, ACTOR, clock, instance.audit, instance.card_key, uid=uid, **holder)
    assert session.execute(select(Card)).first() is None


def test_the_database_refuses_a_second_active_card_with_the_same_uid(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    pupil = add_pupil(session, clock, "2001")
    card = cards.enrol(
        session,
        ACTOR,
        clock,
        instance.audit,
        instance.card_key,
        uid=b"\x01\x02\x03\x04",
        pupil=pupil,
    )
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(
            text(
                "INSERT INTO cards (uid_hash, pupil_id, enrolled_at, enrolled_by) "
                "VALUES (:hash, :pupil, :at, 'sql')"
            ),
            {"hash": card.uid_hash, "pupil": pupil.id, "at": "2026-09-07 06:45:00"},
        )


def test_uid_hash_depends_on_the_site_secret(tmp_path: Path) -> None:
    uid = b"\x04\xa1\xb2\xc3"
    one, two = make_instance(tmp_path / "one"), make_instance(tmp_path / "two")
    try:
        assert cards.uid_hash(one.card_key, uid) != cards.uid_hash(two.card_key, uid)
        assert cards.uid_hash(one.card_key, uid) == cards.uid_hash(one.card_key, uid)
    finally:
        one.close()
        two.close()


# ------------------------------------------------------------------------------ never in clear


def uid_forms(uid: bytes) -> list[bytes]:
    """Every spelling of ``uid`` that could betray it in a file."""
    forms = {uid}
    for case in (str.upper, str.lower):
        digits = case(uid.hex())
        for separator in ("", ":", "-", " "):
            pairs = [digits[i : i + 2] for i in range(0, len(digits), 2)]
            forms.add(separator.join(pairs).encode())
            forms.add(separator.join(pairs).encode("utf-16-le"))
    forms.add(str(int.from_bytes(uid, "big")).encode())
    return sorted(forms)


def database_files(instance: Instance) -> dict[str, bytes]:
    path = instance.sqlite_path
    assert path is not None
    found = {}
    for suffix in ("", "-wal", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            found[candidate.name] = candidate.read_bytes()
    return found


UIDS = {
    "2001": bytes.fromhex("5A17C3E9"),
    "2002": bytes.fromhex("04A1B2C3D4E5F6"),
    "2003": bytes.fromhex("08E1D2C3B4A59687F0E1"),
    "staff": bytes.fromhex("6B2F9D41"),
    "revoked": bytes.fromhex("7C3E0A52"),
}


@pytest.mark.sqlite_only
def test_a_card_uid_never_appears_in_clear_in_the_database(
    instance: Instance, clock: ManualClock
) -> None:
    key = instance.card_key
    with instance.database.transaction() as session:
        pupils = {number: add_pupil(session, clock, number) for number in ("2001", "2002", "2003")}
        staff = add_user(session, clock, "kl", Role.STAFF)
        for number, pupil in pupils.items():
            cards.enrol(session, ACTOR, clock, instance.audit, key, uid=UIDS[number], pupil=pupil)
        cards.enrol(session, ACTOR, clock, instance.audit, key, uid=UIDS["staff"], user=staff)
        cards.enrol(
            session, ACTOR, clock, instance.audit, key, uid=UIDS["revoked"], pupil=pupils["2001"]
        )
    with instance.database.transaction() as session:
        cards.revoke(session, ACTOR, clock, instance.audit, key, uid=UIDS["revoked"])
    # A refused enrolment (and its rollback) leaves nothing either.
    with pytest.raises(ConflictError), instance.database.transaction() as session:
        pupil = session.get(type(pupils["2002"]), pupils["2002"].id)
        cards.enrol(session, ACTOR, clock, instance.audit, key, uid=UIDS["2001"], pupil=pupil)

    files = database_files(instance)
    everything = b"".join(files.values())
    # The scan sees the data: the holders, the keyed hashes and the audit events are there.
    assert b"2003" in everything
    assert cards.uid_hash(key, UIDS["2003"]).encode() in everything
    with instance.database.reader() as session:
        events = session.execute(select(AuditEvent).where(AuditEvent.kind.like("card.%")))
        details = [json.loads(event.details) for event in events.scalars()]
    assert len(details) == 6 and all("uid_ref" in item for item in details)

    for name, uid in UIDS.items():
        for form in uid_forms(uid):
            for filename, content in files.items():
                assert form not in content, f"UID of {name} found as {form!r} in {filename}"


@pytest.mark.sqlite_only
def test_the_uid_stays_out_after_a_checkpoint(instance: Instance, clock: ManualClock) -> None:
    uid = bytes.fromhex("3D5F7A91")
    with instance.database.transaction() as session:
        pupil = add_pupil(session, clock, "2001")
        cards.enrol(session, ACTOR, clock, instance.audit, instance.card_key, uid=uid, pupil=pupil)
    with instance.database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    content = b"".join(database_files(instance).values())
    assert cards.uid_hash(instance.card_key, uid).encode() in content
    for form in uid_forms(uid):
        assert form not in content
