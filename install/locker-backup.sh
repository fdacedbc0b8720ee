#!/bin/sh
# /opt/locker/libexec/locker-backup: one backup run, then keep only the newest backups.
# Run by locker-backup.service (as the locker user) every night; see docs/operations.md.
#
# Settings (environment; /etc/locker/backup.env is read by the service):
#   LOCKER_BACKUP_DIR            where to write (default /var/backups/locker)
#   LOCKER_BACKUP_KEEP           how many backups to keep (default 14)
#   LOCKER_BACKUP_REQUIRE_MOUNT  "yes": fail unless LOCKER_BACKUP_DIR is a mount point, so
#                                that a USB stick or share that is missing is noticed
#                                instead of the backup silently filling the SD card
#   LOCKER_BACKUP_PG_DUMP        "yes" on the ONE machine of a school with a shared
#                                PostgreSQL database that dumps it (pg_dump; needs the
#                                postgresql-client package); ignored with SQLite
#   LOCKER_BIN                   the locker program (default /opt/locker/venv/bin/locker);
#                                the Python beside it reads the configuration
#
# With SQLite (one cabinet), each backup is locker-YYYYMMDD-HHMMSS.db with .secret.key and
# .config.toml beside it (`locker backup DIR --include-secret`).
# With PostgreSQL (several cabinets), `locker backup` cannot copy the database: each Pi
# keeps what is its own, locker-YYYYMMDD-HHMMSS.secret.key and .config.toml (a new SD card
# needs both), and the one machine with LOCKER_BACKUP_PG_DUMP=yes also writes
# locker-YYYYMMDD-HHMMSS.pgdump (pg_dump --format=custom; restore with pg_restore).
# The secret is needed to restore either (docs/operations.md).
set -eu

dir="${LOCKER_BACKUP_DIR:-/var/backups/locker}"
keep="${LOCKER_BACKUP_KEEP:-14}"
require_mount="${LOCKER_BACKUP_REQUIRE_MOUNT:-no}"
pg_dump_here="${LOCKER_BACKUP_PG_DUMP:-no}"
locker="${LOCKER_BIN:-/opt/locker/venv/bin/locker}"
home="${LOCKER_HOME:-/var/lib/locker}"
# The configuration refuses LOCKER_* variables it does not know: keep ours to ourselves.
unset LOCKER_BACKUP_PG_DUMP
umask 077

fail() {
    echo "locker-backup: $*" >&2
    exit 1
}

case "$keep" in
    '' | *[!0-9]*) fail "LOCKER_BACKUP_KEEP=$keep is not a whole number" ;;
esac
[ "$keep" -ge 1 ] || fail "LOCKER_BACKUP_KEEP must be at least 1"
case "$pg_dump_here" in
    yes | no) ;;
    *) fail "LOCKER_BACKUP_PG_DUMP=$pg_dump_here: say yes or no" ;;
esac
[ -d "$dir" ] || fail "$dir does not exist (is the USB stick or network share mounted?)"
if [ "$require_mount" = yes ] && ! mountpoint -q "$dir"; then
    fail "$dir is not a mount point (LOCKER_BACKUP_REQUIRE_MOUNT=yes): is the stick plugged in?"
fi
[ -w "$dir" ] || fail "$dir is not writable by $(id -un) (see docs/operations.md, Backups)"

# Which database? Three lines: sqlite or postgresql; for PostgreSQL its libpq URL without
# the password, then the password (handed to pg_dump in its environment, not its arguments).
python="$(dirname "$locker")/python"
info="$(
    "$python" - "$home" <<'EOF'
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from kiosk.config import load

url = make_url(load(Path(sys.argv[1])).database_url())
if url.get_backend_name() != "postgresql":
    print("sqlite")
else:
    print("postgresql")
    print(url.set(drivername="postgresql", password=None).render_as_string(hide_password=False))
    print(url.password or "")
EOF
)" || fail "cannot read the configuration of $home (sudo locker config check says why)"
kind="$(printf '%s\n' "$info" | sed -n 1p)"

if [ "$kind" = sqlite ]; then
    "$locker" backup "$dir" --include-secret
else
    stem="$dir/locker-$(date -u +%Y%m%d-%H%M%S)"
    for part in secret.key config.toml; do
        [ -f "$home/$part" ] || fail "$home/$part is missing"
        cp "$home/$part" "$stem.$part.partial"
        chmod 0600 "$stem.$part.partial"
        mv "$stem.$part.partial" "$stem.$part"
        echo "wrote $stem.$part"
    done
    if [ "$pg_dump_here" = yes ]; then
        command -v pg_dump >/dev/null 2>&1 ||
            fail "pg_dump is missing: sudo apt install postgresql-client (its version must be at least the server's)"
        PGPASSWORD="$(printf '%s\n' "$info" | sed -n 3p)"
        PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
        export PGPASSWORD PGCONNECT_TIMEOUT
        url="$(printf '%s\n' "$info" | sed -n 2p)"
        if ! pg_dump --format=custom --no-password --file "$stem.pgdump.partial" --dbname "$url"; then
            rm -f "$stem.pgdump.partial"
            fail "pg_dump of the shared database failed (above)"
        fi
        mv "$stem.pgdump.partial" "$stem.pgdump"
        echo "wrote $stem.pgdump"
    else
        echo "the database is PostgreSQL: it is dumped by the machine with LOCKER_BACKUP_PG_DUMP=yes"
        echo "  in /etc/locker/backup.env (or on the database server), not here"
    fi
fi

# Names sort by date (oldest first in the C locale): drop all but the newest $keep backups,
# each with every file of its set (.db or .pgdump, .secret.key, .config.toml).
LC_ALL=C
export LC_ALL
stems="$(
    for path in "$dir"/locker-*.*; do
        [ -e "$path" ] || continue
        name="${path##*/}"
        stem="${name%%.*}"
        case "$stem" in
            locker-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9])
                case "${name#"$stem"}" in
                    .db | .pgdump | .secret.key | .config.toml) echo "$stem" ;;
                esac
                ;;
        esac
    done | sort -u
)"
count="$(printf '%s\n' "$stems" | grep -c . || true)"
excess=$((count - keep))
for stem in $stems; do
    [ "$excess" -gt 0 ] || break
    removed=""
    for suffix in .db .pgdump .secret.key .config.toml; do
        if [ -e "$dir/$stem$suffix" ]; then
            rm -f -- "$dir/$stem$suffix"
            removed="$removed $suffix"
        fi
    done
    echo "removed old backup $dir/$stem$(printf '%s' "$removed" | sed 's/^ //; s/ /, /g')"
    excess=$((excess - 1))
done
