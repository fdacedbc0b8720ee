"""Backups of the SQLite database, consistent while the kiosk keeps writing.

SQLite's online backup API copies a snapshot in one step; in WAL mode writers carry on
meanwhile. The copy is checked (``PRAGMA integrity_check``), switched to a self-contained
rollback journal, fsynced and only then renamed into place, so a half-written backup never
looks like a good one.
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(
    source: Path,
    dest: Path,
    *,
    now: datetime,
    secret: Path | None = None,
    config: Path | None = None,
) -> list[Path]:
    """Copy ``source`` to ``dest`` (a new file, or a directory to put a dated file in).

    With ``secret`` (and ``config``) those are copied beside the backup, mode 0600: without
    the secret a restored database cannot recognise cards or verify its audit chain.
    Returns the files written.
    """
    if not source.exists():
        raise LockerError(f"there is no database at {source}: run `locker init` first")
    if dest.is_dir():
        target = dest / f"locker-{now:%Y%m%d-%H%M%S}.db"
    else:
        if not dest.parent.is_dir():
            raise ValidationError(f"{dest.parent} is not a directory (is the USB stick mounted?)")
        target = dest
    if target.exists():
        raise ConflictError(f"{target} already exists; choose another name or a directory")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    written: list[Path] = []
    try:
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
                shutil.copyfile(extra, copy)
                copy.chmod(0o600)
                _fsync(copy)
                written.append(copy)
    except sqlite3.Error as exc:
        raise LockerError(f"backup failed: {exc}") from None
    except OSError as exc:
        raise LockerError(f"backup failed writing {target}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("backup written to %s", target)
    return written
