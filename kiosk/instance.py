"""The instance directory: ``config.toml``, the SQLite database and the site secret.

Named by ``--home``, else ``LOCKER_HOME``, else ``./instance`` (on a Pi ``/var/lib/locker``).
``locker init`` creates it; everything else opens it with :meth:`Instance.open`, which
refuses an uninitialised directory with a message that says to run ``locker init``.

The site secret (32 random bytes, mode 0600) never leaves the instance directory except in
a backup made with ``--include-secret``. Keys for each purpose (card UIDs, the audit chain,
web sessions) are derived from it, so one leaked key does not give away the others.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from kiosk import config as config_module
from kiosk.audit import AuditTrail
from kiosk.config import Config, HardwareSchema
from kiosk.custody import CustodyLedger
from kiosk.db import Database
from kiosk.errors import InstanceError
from kiosk.policy import Policy

log = logging.getLogger(__name__)

SECRET_FILENAME = "secret.key"
DEFAULT_HOME = "instance"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$LOCKER_HOME``, else ``./instance``."""
    chosen = home or os.environ.get("LOCKER_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().absolute()


def _read_secret(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError:
        raise InstanceError(
            f"{path.parent} is not initialised (no {SECRET_FILENAME}): run `locker init`"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise InstanceError(
            f"{path} is unreadable or damaged; restore it from a backup made with "
            "--include-secret (without it, cards and the audit chain cannot be checked)"
        ) from None
    if len(secret) < 32:
        raise InstanceError(f"{path} is too short to be a site secret; restore it from a backup")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o027:  # the group may read it (the web app's own user, on a Pi); no more
        log.warning(
            "%s is open to other users (mode %o); run: chmod 600 %s (640 where the web app "
            "runs as its own user in the instance's group)",
            path,
            mode,
            path,
        )
    return secret


def _make_private_database(path: Path) -> str | None:
    """Create the empty SQLite file ``path`` with mode 0600 before SQLite first opens it
    (SQLite gives its -wal and -shm files the database file's mode), or take other users'
    permissions away from an existing one (its group keeps theirs: on a Pi the web app runs
    as its own user in the instance's group). Returns what was done, for the CLI to report."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return f"database file {path} (mode 0600)"
    changed = []
    for item in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(item.stat().st_mode)
            if item.is_file() and mode & 0o007:
                item.chmod(mode & 0o770)
                changed.append(f"{item.name} (was {mode:o})")
        except FileNotFoundError:
            continue
    if changed:
        return f"made the database private to its owner and group: {', '.join(changed)}"
    return None


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (refuses to overwrite)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _not_a_directory(path: Path) -> str:
    return (
        f"{path} is a file, not an instance directory: give --home (or LOCKER_HOME) the "
        "directory that holds config.toml, the database and the site secret"
    )


class Instance:
    """An opened instance directory and the services built on it."""

    def __init__(self, home: Path, config: Config, secret: bytes) -> None:
        self.home = home
        self.config = config
        self._secret = secret

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        hardware: HardwareSchema | None = None,
    ) -> Instance:
        path = resolve_home(home)
        if path.exists() and not path.is_dir():
            raise InstanceError(_not_a_directory(path))
        if not path.is_dir():
            raise InstanceError(f"{path} does not exist: run `locker init` (or pass --home)")
        secret = _read_secret(path / SECRET_FILENAME)
        config = config_module.load(path, env=env, overrides=overrides, hardware=hardware)
        return cls(path, config, secret)

    @classmethod
    def create(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        hardware_keys: list[tuple[str, str, str]] | None = None,
        hardware: HardwareSchema | None = None,
    ) -> tuple[Instance, list[str]]:
        """Create what is missing of the instance directory (never overwrites anything).

        Returns the instance and a list of what was created, for the CLI to report. The
        SQLite database file is created empty with mode 0600 (its schema comes from
        :func:`kiosk.migrate.upgrade`): it holds children's data.
        """
        path = resolve_home(home)
        created: list[str] = []
        if path.exists() and not path.is_dir():
            raise InstanceError(_not_a_directory(path))
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise InstanceError(
                    f"cannot create the instance directory {path}: {parent} is a file, "
                    "not a directory"
                )
        if not path.exists():
            path.mkdir(parents=True, mode=0o750)
            created.append(f"directory {path}")
        secret_path = path / SECRET_FILENAME
        if not secret_path.exists():
            _write_private(secret_path, secrets.token_hex(32) + "\n")
            created.append(f"site secret {secret_path} (mode 0600)")
        config_path = path / config_module.CONFIG_FILENAME
        if not config_path.exists():
            config_path.write_text(
                config_module.example(hardware_keys=hardware_keys), encoding="utf-8"
            )
            created.append(f"configuration {config_path} (every key commented, with defaults)")
        instance = cls.open(path, env=env, hardware=hardware)
        database = instance.sqlite_path
        if database is not None and database.parent.is_dir():
            done = _make_private_database(database)
            if done:
                created.append(done)
        return instance, created

    # ------------------------------------------------------------------ keys

    def key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the site secret."""
        return hmac.new(self._secret, f"locker/{purpose}".encode(), hashlib.sha256).digest()

    @cached_property
    def card_key(self) -> bytes:
        return self.key("card-uid")

    # ------------------------------------------------------------------ services

    @cached_property
    def database(self) -> Database:
        return Database(
            self.config.database_url(), busy_timeout_ms=self.config.database.busy_timeout_ms
        )

    @cached_property
    def policy(self) -> Policy:
        return Policy(self.config.policy)

    @cached_property
    def audit(self) -> AuditTrail:
        return AuditTrail(self.key("audit-chain"))

    @cached_property
    def ledger(self) -> CustodyLedger:
        return CustodyLedger(self.policy, self.audit)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        if not self.database.is_sqlite:
            return None
        return Path(self.database.engine.url.database or "")

    def close(self) -> None:
        if "database" in self.__dict__:
            self.database.dispose()
