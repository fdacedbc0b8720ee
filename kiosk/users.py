"""Staff accounts, passwords (argon2id) and API tokens.

There are no default passwords: every account gets its password from the person who creates
it (``--password-stdin``) or a generated one printed once. Weak passwords are refused: fewer
than 12 characters, fewer than 6 different characters, a well-known password (also in
look-alike spelling such as ``P@ssw0rd``, or repeated), or one that contains the user name.
API tokens are random, shown once, and stored as SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
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
_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
TOKEN_PREFIX = "lk_"

# Words at the heart of the most common breached passwords; a password that is one of these
# with digits or symbols around it ("Password123!", "1qwerty2024") is refused.
COMMON_WORDS = frozenset(
    {
        "password",
        "passw0rd",
        "p@ssword",
        "qwerty",
        "qwertyuiop",
        "asdfgh",
        "letmein",
        "welcome",
        "iloveyou",
        "admin",
        "administrator",
        "football",
        "baseball",
        "monkey",
        "dragon",
        "sunshine",
        "princess",
        "abc",
        "abcdef",
        "abcdefgh",
        "changeme",
        "trustno",
        "school",
        "teacher",
        "headteacher",
        "safeguarding",
        "locker",
        "phonelocker",
        "secret",
        "master",
        "shadow",
        "superman",
        "batman",
        "starwars",
        "computer",
        "london",
        "summer",
        "winter",
        "autumn",
        "spring",
        "liverpool",
        "chelsea",
        "arsenal",
        "qazwsx",
        "zaq",
    }
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


def _is_common(core: str) -> bool:
    """``core`` is a well-known word, possibly in look-alike spelling or repeated."""
    for candidate in {core, *(core.translate(table) for table in _LEET)}:
        if candidate in COMMON_WORDS or any(
            candidate == word * (len(candidate) // len(word)) for word in COMMON_WORDS
        ):
            return True
    return False


def check_password(password: str, username: str) -> None:
    """ValidationError saying why ``password`` is too weak; nothing when it is fine."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"the password is too short ({len(password)} characters; at least "
            f"{MIN_PASSWORD_LENGTH}); three random words make a good one"
        )
    if len(set(password)) < 6:
        raise ValidationError("the password repeats too few characters (at least 6 different)")
    lowered = password.lower()
    core = re.sub(r"^[\W\d_]+|[\W\d_]+$", "", lowered)
    if password.isdigit() or len(set(core)) < 3 or _is_common(core):
        raise ValidationError(
            "the password is too easy to guess (a common word or a run of digits); "
            "three random words make a good one"
        )
    name = username.strip().lower()
    bare = re.sub(r"[._-]+", "", name)
    if name and (name in lowered or (len(bare) >= 3 and bare in re.sub(r"[._-]+", "", lowered))):
        raise ValidationError("the password must not contain the user name")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def generate_password(username: str = "") -> str:
    """A strong random password (16 characters from an unambiguous alphabet) that passes
    :func:`check_password` for ``username``."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(16))
        if len(set(password)) < 8:
            continue
        try:
            check_password(password, username)
        except ValidationError:
            continue
        return password


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
) -> User:
    """Add a member of staff; ValidationError for a bad name, an unknown role or a weak
    password, ConflictError when the name is taken."""
    username = check_username(username)
    role = role if isinstance(role, Role) else parse_role(str(role))
    check_password(password, username)
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
    session: Session, actor: Actor, clock: Clock, audit: AuditTrail, user: User, password: str
) -> None:
    check_password(password, user.username)
    user.password_hash = hash_password(password)
    user.password_changed_at = clock.now()
    audit.record(session, clock, actor, "user.password_changed", details={"user": user.username})


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user whose password matches, else None (same work either way)."""
    user = session.execute(
        select(User).where(User.username == username.strip().lower())
    ).scalar_one_or_none()
    if user is None or not user.active:
        _hasher_dummy_verify(password)
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


_DUMMY_HASH: str | None = None


def _hasher_dummy_verify(password: str) -> None:
    """Spend the time of a real check so response times do not reveal which names exist."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
    with contextlib.suppress(VerificationError):
        _hasher.verify(_DUMMY_HASH, password)


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
