"""Helpers for the deployment tests: the system tools they need, throw-away roots, manifests.

A test that needs a system tool (systemd-analyze, useradd, shellcheck, debootstrap) fails
when ``CI=true`` and is skipped elsewhere with the command that installs it.

:func:`debian_root` makes a throw-away Debian bookworm system (debootstrap, minbase, with
the packages the install script's first step installs): built once from a Debian mirror
(``DEPLOY_TEST_MIRROR``, default deb.debian.org; about two minutes) and kept as a tarball
in ``tests/deploy/.cache`` (``DEPLOY_TEST_CACHE`` names another directory; delete it to
build afresh), then unpacked for each test session in a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
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
    """A ``locker`` program for scripts that want one path: this interpreter's kiosk CLI,
    with a ``python`` beside it (as in the virtual environment) that is this interpreter."""
    program = directory / "locker"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kiosk "$@"\n', encoding="utf-8")
    program.chmod(0o755)
    python = directory / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    return program


def manifest(root: Path, exclude: Iterable[str] = ()) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, owner, group, and content hash or link target.

    Byte-compiled Python (``__pycache__``, ``*.pyc``) is left out: it is a cache; so are the
    directories ``exclude`` names (relative to ``root``), and everything in them.
    """
    result: dict[str, tuple[object, ...]] = {}
    skipped = {root / name for name in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            name
            for name in dirnames
            if name != "__pycache__" and Path(dirpath, name) not in skipped
        )
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


def run(
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 240,
    input: str | None = None,
):
    return subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
    )


# ------------------------------------------------------------------------------ Debian roots

DEBIAN_SUITE = "bookworm"
#: What install-pi.sh's first step installs, and systemd (systemctl) and ca-certificates
#: (pip over HTTPS): all there already, so the step's apt-get install finds nothing to do.
DEBIAN_PACKAGES = (
    "python3-venv",
    "python3-dev",
    "python3-pip",
    "build-essential",
    "swig",
    "systemd",
    "ca-certificates",
)
CACHE = Path(os.environ.get("DEPLOY_TEST_CACHE") or Path(__file__).parent / ".cache")
MIRROR = os.environ.get("DEPLOY_TEST_MIRROR") or "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Directories of a Debian root whose contents are nobody's state: caches, logs, mounts.
VOLATILE = (
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var/tmp",
    "var/cache",
    "var/log",
    "var/lib/apt/lists",
    "root/.cache",
)


def debian_tarball() -> Path:
    """The cached Debian root (a tarball), made with debootstrap if there is none yet."""
    debootstrap = require_tool("debootstrap", "debootstrap")
    recipe = f"{DEBIAN_SUITE} minbase {','.join(DEBIAN_PACKAGES)} {MIRROR}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    tarball = CACHE / f"debian-{DEBIAN_SUITE}-{key}.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    try:
        result = run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE,
                str(build / "root"),
                MIRROR,
            ],
            env=clean_env(),
            timeout=1200,
        )
        if result.returncode != 0:
            log = (result.stdout + result.stderr).strip().splitlines()[-15:]
            missing_part(
                f"debootstrap {DEBIAN_SUITE} from {MIRROR} failed (is the mirror reachable? "
                "DEPLOY_TEST_MIRROR names another one):\n" + "\n".join(log)
            )
        for deb in (build / "root/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = tarball.with_suffix(".partial")
        packed = run(["tar", "-C", str(build / "root"), "-cf", str(partial), "."], env=clean_env())
        assert packed.returncode == 0, packed.stderr
        partial.rename(tarball)  # a half-made cache never looks like a good one
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def debian_root(target: Path) -> Path:
    """A fresh Debian system at ``target`` (unpacked from the cache). It trusts the
    certificate authorities this machine trusts, so pip reaches PyPI through the same
    proxy, if there is one."""
    tarball = debian_tarball()
    target.mkdir(parents=True)
    unpacked = run(["tar", "-C", str(target), "-xf", str(tarball)], env=clean_env())
    assert unpacked.returncode == 0, unpacked.stderr
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copyfile(bundle, target / "etc/ssl/certs/ca-certificates.crt")
    return target


def in_root(
    root: Path,
    args: list[str],
    *,
    user: str | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
):
    """Run ``args`` inside the Debian system ``root`` (chroot, as ``user`` = "USER:GROUP"
    or root), with /dev and /proc mounted in a mount namespace of its own."""
    userspec = [f"--userspec={user}"] if user else []
    environment = [f"{key}={value}" for key, value in (env or {}).items()]
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        'root="$1"; shift; mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" '
        '&& exec chroot "$@"',
        "sh",
        str(root),
        *userspec,
        str(root),
        "/usr/bin/env",
        "-i",
        f"PATH={CHROOT_PATH}",
        "HOME=/root",
        "LANG=C.UTF-8",
        *environment,
        *args,
    ]
    return run(command, env=clean_env(), input=input, timeout=timeout)
