"""Helpers for the deployment tests: the system tools they need, throw-away roots, manifests.

A test that needs a system tool (systemd-analyze, useradd, shellcheck) fails when
``CI=true`` and is skipped elsewhere with the command that installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from ..conftest import missing_part

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "install"
UNITS = REPO / "systemd"


def require_tool(name: str, package: str) -> str:
    """The path of ``name``; fail in CI, skip elsewhere, with the apt-get line, if missing."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found:
        return found
    missing_part(f"{name} is missing: apt-get install {package}")


def require_root() -> None:
    """The install scripts create users and chown files: they need root."""
    if os.geteuid() == 0:
        return
    missing_part("the install scripts need root (useradd, chown): run the tests as root")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without LOCKER_* settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCKER_", "PYTHONPATH", "VIRTUAL_ENV", "PIP_"))
    }
    env.update(extra)
    return env


def locker_program(directory: Path) -> Path:
    """A ``locker`` program for scripts that want one path: this interpreter's kiosk CLI."""
    program = directory / "locker"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kiosk "$@"\n', encoding="utf-8")
    program.chmod(0o755)
    return program


def manifest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, owner, group, and content hash or link target.

    Byte-compiled Python (``__pycache__``, ``*.pyc``) is left out: it is a cache.
    """
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if name != "__pycache__")
        for name in [*dirnames, *sorted(filenames)]:
            if name.endswith(".pyc"):
                continue
            path = Path(dirpath) / name
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                result[rel] = ("link", info.st_uid, info.st_gid, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = ("dir", oct(mode), info.st_uid, info.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                result[rel] = ("file", oct(mode), info.st_uid, info.st_gid, digest)
    return result


def manifest_diff(before: dict, after: dict) -> list[str]:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)} -> {after.get(key)}")
    return lines


def run(args: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 240):
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
