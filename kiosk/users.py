"""Staff accounts, passwords (argon2id) and API tokens.

There are no default passwords: every account gets its password from the person who creates
it (``--password-stdin``) or a generated one printed once. Weak passwords are refused, with
a message saying why: fewer than 12 characters or 6 different ones, the user name or the
school's name in it, a word repeated, or a password made of well-known passwords and words
(also in look-alike spelling such as ``P@ssw0rd``), keyboard runs (``qwertyuiop``), runs of
the alphabet or digits (``abcdefgh``, ``123456``) and years (:func:`check_password`).
API tokens are random, shown once, and stored as SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk.actors import Actor
from kiosk.audit import AuditTrail
from kiosk.clock import Clock
from kiosk.errors import ConflictError, NotFound, ValidationError
from kiosk.models import ApiToken, Role, User
from kiosk.text import clean_text


@dataclass(frozen=True)
class StaffRef:
    """What the kiosk needs of a member of staff, read with their card (no ORM object)."""

    id: int
    username: str
    display_name: str
    role: Role
    active: bool


MIN_PASSWORD_LENGTH = 12
MIN_DISTINCT_CHARACTERS = 6
#: How much of a password must be its own: characters (a letter counts 1, a digit or symbol
#: 1/2) that are not part of a common word, a keyboard or alphabet run, a year or a repeat.
MIN_ORIGINAL = 6
_ANALYSED = 128  # characters of a password looked at (a longer one is long enough)
_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
TOKEN_PREFIX = "lk_"

# The most common breached passwords and the words at their heart, and words anyone would
# try on a school's system; a password made of these (in any case, in look-alike spelling
# such as "P@ssw0rd", with digits, symbols or a year around them, or repeated) is refused.
COMMON_WORDS = frozenset(
    {
        # the most common passwords (NCSC / Have I Been Pwned top lists)
        "password",
        "passw0rd",
        "p@ssword",
        "pass",
        "qwerty",
        "qwertyuiop",
        "asdfgh",
        "asdfghjkl",
        "zxcvbnm",
        "qazwsx",
        "zaq",
        "letmein",
        "welcome",
        "iloveyou",
        "loveme",
        "admin",
        "administrator",
        "root",
        "login",
        "guest",
        "test",
        "default",
        "changeme",
        "trustno",
        "access",
        "master",
        "secret",
        "shadow",
        "hello",
        "freedom",
        "whatever",
        "monkey",
        "dragon",
        "sunshine",
        "princess",
        "flower",
        "football",
        "baseball",
        "soccer",
        "hockey",
        "superman",
        "batman",
        "starwars",
        "pokemon",
        "minecraft",
        "ninja",
        "mustang",
        "charlie",
        "michael",
        "jordan",
        "daniel",
        "thomas",
        "jennifer",
        "computer",
        "internet",
        "samsung",
        "iphone",
        "google",
        "cheese",
        "pepper",
        "killer",
        "abc",
        "abcdef",
        "abcdefgh",
        # places, teams and seasons
        "london",
        "england",
        "liverpool",
        "chelsea",
        "arsenal",
        "manchester",
        "tottenham",
        "everton",
        "summer",
        "winter",
        "autumn",
        "spring",
        "monday",
        "friday",
        # this system and its users
        "school",
        "academy",
        "college",
        "teacher",
        "headteacher",
        "student",
        "pupil",
        "office",
        "staff",
        "safeguarding",
        "locker",
        "phonelocker",
        "phone",
        "mobile",
    }
)

_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "01234567890"
# Runs along a UK keyboard: rows, the letter rows one after another, and the columns
# ("1qaz2wsx"); QWERTZ and AZERTY rows too. Each is also matched backwards.
_KEYBOARD = (
    "`1234567890-=",
    "qwertyuiop[]",
    "asdfghjkl;'#",
    "\\zxcvbnm,./",
    "qwertyuiopasdfghjklzxcvbnm",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik,9ol.0p;/",
    "zaq1xsw2cde3vfr4bgt5nhy6mju7,ki8.lo9/;p0",
    "qazwsxedcrfvtgbyhnujmikolp",
    "qwertzuiop",
    "yxcvbnm",
    "azertyuiop",
    "wxcvbn",
)
_RUNS = {
    "sequence": (_ALPHABET, _ALPHABET[::-1], _DIGITS, _DIGITS[::-1]),
    "keyboard": tuple(run for row in _KEYBOARD for run in (row, row[::-1])),
}
_LONGEST_RUN = max(len(run) for runs in _RUNS.values() for run in runs)
_SEPARATORS = frozenset(" \t-_.,")
_YEAR = re.compile(r"(?:19|20)\d\d")

# Why a part of a password is guessable, as the message says it.
_REASONS = {
    "common": "a well-known password or word (such as 'password' or 'school')",
    "site": "the school's name",
    "keyboard": "a run of keys along the keyboard (such as 'qwerty' or '1qaz2wsx')",
    "sequence": "a run of the alphabet or of digits (such as 'abcdef' or '123456')",
    "year": "a year",
    "repeat": "repeated characters or words",
}
_ADVICE = (
    "choose three or four random words (like 'lantern quokka harbour'), or let the system "
    "generate a password"
)


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        roles = ", ".join(role.value for role in Role)
        raise ValidationError(f"unknown role {value!r}; roles are {roles}") from None


def check_username(username: str) -> str:
    username = username.strip().lower()
    if not _USERNAME.match(username):
        raise ValidationError(
            f"user name {username[:64]!r} must be 2-64 characters: lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return username


# Look-alike substitutions people use to "strengthen" a word ("P@ssw0rd", "L3tm3in"); a "1"
# stands for an "i" or an "l", so both readings are tried.
_LOOKALIKES = {"@": "a", "4": "a", "0": "o", "!": "i", "3": "e", "$": "s", "5": "s", "7": "t"}
_LEET = tuple(str.maketrans({**_LOOKALIKES, "1": one, "|": "l"}) for one in ("i", "l"))


def _site_words(site_name: str | None) -> frozenset[str]:
    """The school's name, whole and word by word (words of four letters or more)."""
    if not site_name:
        return frozenset()
    words = [word for word in re.split(r"[\W_]+", site_name.lower()) if len(word) >= 4]
    whole = re.sub(r"[\W_]+", "", site_name.lower())
    return frozenset(words + ([whole] if len(whole) >= 4 else []))


def _kind(piece: str, before: str, site: frozenset[str]) -> str | None:
    """Why ``piece`` (lower case, three characters or more) is guessable, or None."""
    variants = {piece, *(piece.translate(table) for table in _LEET)}
    if variants & site:
        return "site"
    if len(piece) <= _LONGEST_RUN:
        for kind, runs in _RUNS.items():
            if any(piece in run for run in runs):
                return kind
    if variants & COMMON_WORDS:
        return "common"
    if _YEAR.fullmatch(piece):
        return "year"
    if piece in before or len(set(piece)) == 1:
        return "repeat"
    return None


def _cost(char: str) -> float:
    return 1.0 if char.isalpha() else 0.5


def _guessable_parts(text: str, site: frozenset[str]) -> tuple[float, set[str]]:
    """Cover ``text`` with guessable parts so that as little as possible is left over.

    Returns what is left (letters count 1, other characters 1/2) and the kinds of part used.
    """
    size = len(text)
    best: list[tuple[float, tuple[str, ...]]] = [(float("inf"), ())] * (size + 1)
    best[0] = (0.0, ())
    for start in range(size):
        left, kinds = best[start]
        if left == float("inf"):
            continue
        step = left + _cost(text[start])
        if step < best[start + 1][0]:
            best[start + 1] = (step, kinds)
        for end in range(start + 3, size + 1):
            if left < best[end][0]:
                kind = _kind(text[start:end], text[:start], site)
                if kind is not None:
                    best[end] = (left, (*kinds, kind))
    left, kinds = best[size]
    return left, set(kinds)


def check_password(password: str, username: str, *, site_name: str | None = None) -> None:
    """ValidationError saying what makes ``password`` weak and what to do; nothing when it
    is fine.

    Refused: fewer than 12 characters or 6 different ones; almost no letters; the user name
    or the school's name (``site_name``) in it; the same word or characters repeated; and a
    password made (all but a few characters) of common passwords or words, keyboard runs
    ("qwertyuiop", "1qaz2wsx"), alphabet or digit runs ("abcdefgh", "123456"), years and
    repeats, in any case and look-alike spelling.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"the password is too short ({len(password)} characters; at least "
            f"{MIN_PASSWORD_LENGTH}); {_ADVICE}"
        )
    if len(set(password)) < MIN_DISTINCT_CHARACTERS:
        raise ValidationError(
            f"the password repeats too few characters (at least {MIN_DISTINCT_CHARACTERS} "
            f"different); {_ADVICE}"
        )
    lowered = "".join(char.lower() if len(char.lower()) == 1 else char for char in password)
    name = username.strip().lower()
    bare = re.sub(r"[._-]+", "", name)
    if name and (name in lowered or (len(bare) >= 3 and bare in re.sub(r"[._-]+", "", lowered))):
        raise ValidationError(f"the password must not contain the user name; {_ADVICE}")
    if len({char for char in lowered if char.isalpha()}) < 3:
        raise ValidationError(
            "the password is too easy to guess (a run of digits or symbols, with hardly any "
            f"letters); {_ADVICE}"
        )
    text = "".join(char for char in lowered if char not in _SEPARATORS)[:_ANALYSED]
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text == text[:size] * (len(text) // size):
            raise ValidationError(
                "the password is too easy to guess: it is the same word or characters "
                f"repeated; {_ADVICE}"
            )
    left, kinds = _guessable_parts(text, _site_words(site_name))
    if left < MIN_ORIGINAL:
        made_of = [reason for kind, reason in _REASONS.items() if kind in kinds]
        listed = (
            ", ".join(made_of[:-1]) + " and " + made_of[-1] if made_of[1:] else "".join(made_of)
        )
        what = f"it is mostly {listed}" if made_of else "too little of it is random"
        raise ValidationError(f"the password is too easy to guess: {what}; {_ADVICE}")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def generate_password(
    username: str = "", *, site_name: str | None = None, rng: random.Random | None = None
) -> str:
    """A strong random password (16 characters from an unambiguous alphabet) that passes
    :func:`check_password` for ``username`` and ``site_name``. ``rng`` is for tests; the
    default is the operating system's secure source."""
    choose = (rng or _SYSTEM_RANDOM).choice
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    while True:
        password = "".join(choose(alphabet) for _ in range(16))
        if len(set(password)) < 8:
            continue
        try:
            check_password(password, username, site_name=site_name)
        except ValidationError:
            continue
        return password


_SYSTEM_RANDOM = secrets.SystemRandom()


def find_user(session: Session, username: str) -> User:
    user = session.execute(
        select(User).where(User.username == username.strip().lower())
    ).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user {username!r} (add one with: locker user add)")
    return user


def add_user(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    *,
    username: str,
    role: Role | str,
    password: str,
    display_name: str | None = None,
    site_name: str | None = None,
) -> User:
    """Add a member of staff; ValidationError for a bad name, an unknown role or a weak
    password (``site_name``: the school's name, refused in it), ConflictError when the name
    is taken."""
    username = check_username(username)
    role = role if isinstance(role, Role) else parse_role(str(role))
    check_password(password, username, site_name=site_name)
    display = clean_text(display_name or username, "the display name", max_length=120)
    taken = session.execute(
        select(func.count()).select_from(User).where(User.username == username)
    ).scalar_one()
    if taken:
        raise ConflictError(f"user {username!r} already exists")
    now = clock.now()
    user = User(
        username=username,
        display_name=display,
        role=role,
        password_hash=hash_password(password),
        active=True,
        created_at=now,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "user.created",
        details={"user": username, "role": role.value},
    )
    return user


def set_password(
    session: Session,
    actor: Actor,
    clock: Clock,
    audit: AuditTrail,
    user: User,
    password: str,
    *,
    site_name: str | None = None,
) -> None:
    check_password(password, user.username, site_name=site_name)
    user.password_hash = hash_password(password)
    user.password_changed_at = clock.now()
    audit.record(session, clock, actor, "user.password_changed", details={"user": user.username})


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Does ``password`` match ``stored_hash`` (argon2id)? With no hash (no such user, or
    disabled) the same work is done against a dummy, so that the time taken does not say
    which names exist. Slow on purpose (~0.1 s): call it outside any write transaction."""
    global _DUMMY_HASH
    if stored_hash is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = _hasher.hash(secrets.token_hex(16))  # nobody knows it
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_DUMMY_HASH, password)
        return False
    try:
        return bool(_hasher.verify(stored_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` was made with weaker parameters than this version's."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return False


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user whose password matches, else None (same work either way). Verifies
    inside the caller's session: the web app reads, verifies and writes apart instead
    (``web.auth``), so no write lock is held while argon2 runs."""
    user = session.execute(
        select(User).where(User.username == username.strip().lower())
    ).scalar_one_or_none()
    active = user is not None and user.active
    if not verify_password(user.password_hash if active else None, password):
        return None
    assert user is not None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


_DUMMY_HASH: str | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, user: User, name: str = ""
) -> str:
    """A new API token for ``user``; the token itself is returned once and never stored."""
    if not user.active:
        raise ValidationError(f"user {user.username!r} is disabled")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    name = clean_text(name, "the token name", max_length=80, required=False)
    row = ApiToken(user=user, token_hash=token_digest(token), name=name, created_at=clock.now())
    session.add(row)
    session.flush()
    audit.record(
        session,
        clock,
        actor,
        "token.created",
        details={"user": user.username, "token": row.id, "name": name},
    )
    return token


def revoke_token(
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, token_id: int
) -> ApiToken:
    """Revoke the API token ``token_id`` (by its id: the token itself is never stored)."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = clock.now()
        session.flush()
        audit.record(
            session,
            clock,
            actor,
            "token.revoked",
            details={"user": row.user.username, "token": row.id},
        )
    return row


def user_for_token(session: Session, token: str, now: datetime) -> User | None:
    """The active user behind a bearer token, or None (revoked, unknown, disabled)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(
        select(ApiToken).where(
            ApiToken.token_hash == token_digest(token), ApiToken.revoked_at.is_(None)
        )
    ).scalar_one_or_none()
    if row is None or not row.user.active:
        return None
    row.last_used_at = now
    return row.user
