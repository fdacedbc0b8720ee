"""Users (kiosk.users): weak passwords and unknown roles refused, argon2 hashes stored (never
the password), authentication, and API tokens stored only as SHA-256."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk import users
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.errors import ConflictError, NotFound, ValidationError
from kiosk.instance import Instance
from kiosk.models import ApiToken, AuditEvent, Role, User

ACTOR = Actor.system("test")
GOOD = "purple-otter-canal-42"


def database_bytes(instance: Instance) -> bytes:
    path = instance.sqlite_path
    assert path is not None
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def add(
    session: Session, clock: ManualClock, instance: Instance, username: str, **kw: object
) -> User:
    options = {"role": Role.OFFICE, "password": GOOD, **kw}
    return users.add_user(session, ACTOR, clock, instance.audit, username=username, **options)


# ------------------------------------------------------------------------------ passwords


WEAK = {
    "short": ("Tr0ub4dor&3", "too short"),
    "empty": ("", "too short"),
    "few distinct characters": ("abababababababab", "different"),
    "one character": ("zzzzzzzzzzzzzzzz", "different"),
    "all digits": ("902846137560", "too easy"),
    "digits with spaces": ("9028 4613 7560", "too easy"),
    "common word plus digits": ("Password1234", "too easy"),
    "common word plus symbols": ("!!Welcome2026!!", "too easy"),
    "common word in look-alikes": ("P@ssw0rd2024!", "too easy"),
    "look-alike letmein": ("L3tm3in!2024", "too easy"),
    "school words": ("Safeguarding2026", "too easy"),
    "keyboard run": ("qwertyuiop123", "too easy"),
    "repeated common word": ("qwertyqwerty", "too easy"),
    "user name": ("x-kate.lovell-99", "user name"),
    "user name in capitals": ("KATE.LOVELL-rocks", "user name"),
    "user name without the dot": ("katelovell-rocks!", "user name"),
    # keyboard runs, alphabet runs, repeats (the reviewer's cases first)
    "keyboard row into the next row": ("qwertyuiopas", "run of keys along the keyboard"),
    "alphabet run": ("abcdefghijkl", "run of the alphabet"),
    "repeated word with a space": ("password password", "same word or characters repeated"),
    "keyboard columns": ("1qaz2wsx3edc4rfv", "run of keys along the keyboard"),
    "keyboard row backwards": ("poiuytrewq!!", "run of keys along the keyboard"),
    "alphabet backwards": ("ZYXWVUTSRQPO", "run of the alphabet"),
    "alphabet with separators": ("a-b-c-d-e-f-g-h", "run of the alphabet"),
    "repeated word, other case": ("Monkey-MONKEY-monkey", "same word or characters repeated"),
    "repeated made-up word": ("zorbly zorbly", "same word or characters repeated"),
    "two common words": ("welcome-sunshine", "well-known password or word"),
    "common word and a keyboard run": ("Football-qwerty1", "too easy"),
    "the school's name": ("Greenfield2026!", "the school's name"),
    "the school's name whole": ("greenfieldacademy", "the school's name"),
}
SITE = "Greenfield Academy"


@pytest.mark.parametrize("case", sorted(WEAK))
def test_weak_passwords_are_refused(case: str) -> None:
    password, reason = WEAK[case]
    with pytest.raises(ValidationError, match=reason) as caught:
        users.check_password(password, "kate.lovell", site_name=SITE)
    message = str(caught.value)
    # What is wrong, then what to do; never the password itself.
    assert "three or four random words" in message or "user name" in message
    assert not password or password not in message


def test_the_school_name_is_only_refused_when_given() -> None:
    users.check_password("Greenfield-otter-canal", "kate.lovell")
    with pytest.raises(ValidationError, match="the school's name"):
        users.check_password("Greenfield2026!", "kate.lovell", site_name=SITE)


GOOD_PASSWORDS = [
    GOOD,
    "correct horse battery staple",
    "Mango!Tractor!Violin",
    "Tr0ub4dor&3xyzzy",
    "zoë-łukasz-siobhán",
    "7 herons, 3 barges",
]


@pytest.mark.parametrize("password", GOOD_PASSWORDS)
def test_good_passwords_are_accepted(password: str) -> None:
    users.check_password(password, "kate.lovell", site_name=SITE)


def test_generated_passwords_are_strong_and_different() -> None:
    generated = {users.generate_password("kate.lovell") for _ in range(50)}
    assert len(generated) == 50
    for password in generated:
        users.check_password(password, "kate.lovell")
        assert len(password) >= users.MIN_PASSWORD_LENGTH


USERNAMES = st.sampled_from(["kate.lovell", "office", "dsl1", "abc", "qwe", "head-teacher"])
SITES = st.sampled_from([None, "Our School", SITE, "St Mary's Catholic High School", "Abcde"])


@settings(max_examples=300)
@given(st.integers(0, 2**64), USERNAMES, SITES)
def test_generated_passwords_always_pass(seed: int, username: str, site) -> None:
    password = users.generate_password(username, site_name=site, rng=random.Random(seed))
    assert len(password) == 16
    users.check_password(password, username, site_name=site)


@settings(max_examples=300)
@given(st.text("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=16, max_size=16))
def test_random_draws_of_the_generator_alphabet_mostly_pass(password: str) -> None:
    """The generator retries until a password passes; this says it rarely needs to: what
    fails is only what a guesser would try first."""
    try:
        users.check_password(password, "kate.lovell")
    except ValidationError as exc:
        assert len(set(password)) < 6 or "too easy" in str(exc), (password, str(exc))


def _mixed_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(char.upper() if flip else char for char, flip in zip(text, flips, strict=True))


DECORATION = st.sampled_from(["", "1", "12", "123", "!", "1!", "2024", "2026!", "?", "99", "#1"])


@st.composite
def runs(draw: st.DrawFn, sequences: tuple[str, ...]) -> str:
    """A run of at least 12 characters along one of ``sequences`` (either way), in any
    case, perhaps with a few digits or symbols after it."""
    sequence = draw(st.sampled_from([s for s in sequences if len(s) >= 12]))
    sequence = sequence[::-1] if draw(st.booleans()) else sequence
    length = draw(st.integers(12, len(sequence)))
    start = draw(st.integers(0, len(sequence) - length))
    return _mixed_case(draw, sequence[start : start + length]) + draw(DECORATION)


LEET = {"a": "@", "o": "0", "e": "3", "s": "$", "i": "1"}


@st.composite
def common_passwords(draw: st.DrawFn) -> str:
    """One or two well-known words, capitalised or in look-alike spelling, with digits, a
    year or symbols around them: at least 12 characters."""
    words = sorted(word for word in users.COMMON_WORDS if len(word) >= 5)
    parts = draw(st.lists(st.sampled_from(words), min_size=1, max_size=2))
    text = draw(st.sampled_from(["", "-", " ", "_"])).join(parts)
    if draw(st.booleans()):
        text = "".join(LEET.get(char, char) if draw(st.booleans()) else char for char in text)
    text = _mixed_case(draw, text)
    text = draw(st.sampled_from(["", "!", "!!", "1"])) + text + draw(DECORATION) + draw(DECORATION)
    if len(text) < users.MIN_PASSWORD_LENGTH:
        text += "2024" + "!" * (users.MIN_PASSWORD_LENGTH - len(text))
    return text


@st.composite
def repeated_words(draw: st.DrawFn) -> str:
    """Any word (even a made-up one) repeated, with or without separators, any case."""
    word = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8))
    times = draw(st.integers(2, 4))
    while len(word) * times < 12:
        times += 1
    separator = draw(st.sampled_from(["", " ", "-", "."]))
    return separator.join(_mixed_case(draw, word) for _ in range(times))


@st.composite
def school_names(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["greenfield", "academy", "greenfieldacademy"]))
    text = _mixed_case(draw, name) + draw(DECORATION) + draw(DECORATION) + "2026"
    return text + "!" * (users.MIN_PASSWORD_LENGTH - len(text))


WEAK_FAMILIES = st.one_of(
    runs(tuple(users._KEYBOARD)),
    runs(("abcdefghijklmnopqrstuvwxyz", "012345678901234567890")),
    common_passwords(),
    repeated_words(),
    school_names(),
)


@settings(max_examples=500)
@given(WEAK_FAMILIES)
def test_known_weak_families_are_always_refused(password: str) -> None:
    assert len(password) >= users.MIN_PASSWORD_LENGTH
    with pytest.raises(ValidationError) as caught:
        users.check_password(password, "kate.lovell", site_name=SITE)
    message = str(caught.value)
    assert re.search(r"too easy|repeats too few|hardly any letters", message), message
    assert "three or four random words" in message


# ------------------------------------------------------------------------------ roles and names


@pytest.mark.parametrize("value", ["office", " Office ", "DSL", "admin", "staff"])
def test_known_roles_parse(value: str) -> None:
    assert users.parse_role(value) is Role(value.strip().lower())


@pytest.mark.parametrize("value", ["superuser", "", "administrator", "root", "off ice"])
def test_unknown_roles_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="unknown role"):
        users.parse_role(value)


def test_add_user_refuses_an_unknown_role_and_writes_nothing(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    events = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    with pytest.raises(ValidationError, match="unknown role"):
        add(session, clock, instance, "kate", role="superuser")
    assert session.execute(select(User)).first() is None
    assert session.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == events


@pytest.mark.parametrize("username", ["k", "Kate Lovell", "-kate", "kate!", "x" * 65, "ké"])
def test_bad_usernames_are_refused(username: str) -> None:
    with pytest.raises(ValidationError, match="user name"):
        users.check_username(username)


def test_usernames_are_folded_to_lower_case() -> None:
    assert users.check_username("  K.Lovell ") == "k.lovell"


# ------------------------------------------------------------------------------ accounts


@pytest.mark.sqlite_only
def test_add_user_stores_an_argon2_hash_never_the_password(
    instance: Instance, clock: ManualClock
) -> None:
    password = "Lantern-Quokka-Harbour"
    with instance.database.transaction() as session:
        user = add(session, clock, instance, "Kate.Lovell", role=Role.DSL, password=password)
        user_id = user.id
    with instance.database.reader() as session:
        stored = session.get(User, user_id)
        assert stored is not None
        assert (stored.username, stored.role, stored.active) == ("kate.lovell", Role.DSL, True)
        assert stored.password_hash.startswith("$argon2id$")
        assert PasswordHasher().verify(stored.password_hash, password)
        event = session.execute(
            select(AuditEvent).where(AuditEvent.kind == "user.created")
        ).scalar_one()
        assert json.loads(event.details) == {"user": "kate.lovell", "role": "dsl"}
    content = database_bytes(instance)
    assert b"kate.lovell" in content  # the scan sees the row
    assert password.encode() not in content
    assert password.lower().encode() not in content


def test_add_user_refuses_weak_passwords_and_taken_names(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    with pytest.raises(ValidationError):
        add(session, clock, instance, "kate", password="Password1234")
    assert session.execute(select(User)).first() is None
    add(session, clock, instance, "kate")
    with pytest.raises(ConflictError):
        add(session, clock, instance, " KATE ", password="another-fine-passphrase")


def test_authenticate(instance: Instance, session: Session, clock: ManualClock) -> None:
    user = add(session, clock, instance, "kate")
    assert users.authenticate(session, "kate", GOOD) is user
    assert users.authenticate(session, " Kate ", GOOD) is user
    assert users.authenticate(session, "kate", GOOD + "x") is None
    assert users.authenticate(session, "kate", GOOD.upper()) is None
    assert users.authenticate(session, "nobody", GOOD) is None
    user.active = False
    assert users.authenticate(session, "kate", GOOD) is None


def test_set_password(instance: Instance, session: Session, clock: ManualClock) -> None:
    user = add(session, clock, instance, "kate")
    with pytest.raises(ValidationError):
        users.set_password(session, ACTOR, clock, instance.audit, user, "kate-is-here-2026")
    clock.advance(days=1)
    new = "velvet-gondola-thistle"
    users.set_password(session, ACTOR, clock, instance.audit, user, new)
    assert user.password_changed_at == clock.now()
    assert users.authenticate(session, "kate", new) is user
    assert users.authenticate(session, "kate", GOOD) is None


def test_find_user(instance: Instance, session: Session, clock: ManualClock) -> None:
    user = add(session, clock, instance, "kate")
    assert users.find_user(session, "KATE") is user
    with pytest.raises(NotFound, match="locker user add"):
        users.find_user(session, "nobody")


# ------------------------------------------------------------------------------ tokens


@pytest.mark.sqlite_only
def test_tokens_are_shown_once_and_stored_as_sha256(instance: Instance, clock: ManualClock) -> None:
    with instance.database.transaction() as session:
        user = add(session, clock, instance, "kate")
        token = users.create_token(session, ACTOR, clock, instance.audit, user, name="dashboard")
        other = users.create_token(session, ACTOR, clock, instance.audit, user)
    assert token.startswith(users.TOKEN_PREFIX) and token != other
    with instance.database.reader() as session:
        rows = session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all()
        assert [row.token_hash for row in rows] == [
            hashlib.sha256(value.encode()).hexdigest() for value in (token, other)
        ]
        assert rows[0].name == "dashboard"
    content = database_bytes(instance)
    assert rows[0].token_hash.encode() in content
    for value in (token, other):
        assert value.encode() not in content
        assert value[len(users.TOKEN_PREFIX) :].encode() not in content


def test_token_lookup(instance: Instance, session: Session, clock: ManualClock) -> None:
    user = add(session, clock, instance, "kate")
    token = users.create_token(session, ACTOR, clock, instance.audit, user)
    clock.advance(minutes=3)
    assert users.user_for_token(session, token, clock.now()) is user
    row = session.execute(select(ApiToken)).scalar_one()
    assert row.last_used_at == clock.now()
    for wrong in ("", token[:-1], token + "x", token[len(users.TOKEN_PREFIX) :], "lk_" + "a" * 43):
        assert users.user_for_token(session, wrong, clock.now()) is None


def test_a_revoked_token_is_refused(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    user = add(session, clock, instance, "kate")
    token = users.create_token(session, ACTOR, clock, instance.audit, user)
    kept = users.create_token(session, ACTOR, clock, instance.audit, user)
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == users.token_digest(token))
    ).scalar_one()
    users.revoke_token(session, ACTOR, clock, instance.audit, row.id)
    assert users.user_for_token(session, token, clock.now()) is None
    assert users.user_for_token(session, kept, clock.now()) is user
    kinds = [e.kind for e in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()]
    assert kinds[-1] == "token.revoked"
    with pytest.raises(NotFound):
        users.revoke_token(session, ACTOR, clock, instance.audit, row.id + 100)
    instance.audit.verify(session)


def test_tokens_of_a_disabled_user_are_refused(
    instance: Instance, session: Session, clock: ManualClock
) -> None:
    user = add(session, clock, instance, "kate")
    token = users.create_token(session, ACTOR, clock, instance.audit, user)
    user.active = False
    assert users.user_for_token(session, token, clock.now()) is None
    with pytest.raises(ValidationError, match="disabled"):
        users.create_token(session, ACTOR, clock, instance.audit, user)
