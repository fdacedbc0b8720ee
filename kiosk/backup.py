"""Backups of the SQLite database, consistent while the kiosk keeps writing.

SQLite's online backup API copies a snapshot in one step; in WAL mode writers carry on
meanwhile. The copy is checked (``PRAGMA integrity_check``), switched to a self-contained
rollback journal, fsynced and only then renamed into place, so a half-written backup never
looks like a good one. Every file written is created with mode 0600 from the start: the
database holds children's, medical and safeguarding data.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

from kiosk.errors import ConflictError, LockerError, ValidationError

log = logging.getLogger(__name__)


def _create_private(path: Path) -> int:
    """Create ``path`` (it must not exist) with mode 0600; returns the open descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to the new file ``target``, mode 0600 before a byte is written."""
    with source.open("rb") as reader, os.fdopen(_create_private(target), "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


def resolve_target(dest: str | os.PathLike[str], now: datetime) -> Path:
    """The file a backup to ``dest`` is written to: ``dest`` itself, or a dated file in it
    when it is a directory. ValidationError when ``dest`` is empty, names a directory that
    does not exist (a trailing slash), or lies in a directory that does not exist."""
    text = os.fspath(dest)
    if not text.strip():
        raise ValidationError("the backup destination is empty: give a directory or a file name")
    path = Path(text)
    if path.is_dir():
        return path / f"locker-{now:%Y%m%d-%H%M%S}.db"
    names_a_directory = text.endswith(("/", os.sep)) or path.name in ("", ".", "..")
    if names_a_directory:
        if path.exists():
            raise ValidationError(f"{text} is not a directory")
        raise ValidationError(
            f"the directory {text} does not exist (is the USB stick mounted?); create it or "
            "give an existing one"
        )
    parent = path.parent
    if not parent.exists():
        raise ValidationError(
            f"the directory {parent} does not exist (is the USB stick mounted?); create it or "
            "give an existing one"
        )
    if not parent.is_dir():
        raise ValidationError(f"{parent} is not a directory")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(
    source: Path,
    dest: str | os.PathLike[str],
    *,
    now: datetime,
    secret: Path | None = None,
    config: Path | None = None,
) -> list[Path]:
    """Copy ``source`` to ``dest`` (a new file, or an existing directory to put a dated file
    in; given as typed, so that a trailing slash still says "a directory").

    The backup is mode 0600. With ``secret`` (and ``config``) those are copied beside it,
    mode 0600 too: without the secret a restored database cannot recognise cards or verify
    its audit chain. Returns the files written.
    """
    if not source.exists():
        raise LockerError(f"there is no database at {source}: run `locker init` first")
    target = resolve_target(dest, now)
    if target.exists():
        raise ConflictError(f"{target} already exists; choose another name or a directory")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    written: list[Path] = []
    try:
        os.close(_create_private(partial))  # SQLite keeps the mode of an existing file
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(partial)
        try:
            with dst:
                src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise LockerError(f"the backup copy failed its integrity check: {verdict}")
        finally:
            dst.close()
            src.close()
        _fsync(partial)
        partial.rename(target)
        written.append(target)
        for extra, suffix in ((secret, ".secret.key"), (config, ".config.toml")):
            if extra is not None:
                copy = target.with_name(target.stem + suffix)
                _copy_private(extra, copy)
                written.append(copy)
    except sqlite3.Error as exc:
        raise LockerError(f"backup failed: {exc}") from None
    except OSError as exc:
        raise LockerError(
            f"backup failed writing {exc.filename or target}: {exc.strerror}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("backup written to %s", target)
    return written
